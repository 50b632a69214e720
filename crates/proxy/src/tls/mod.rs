//! TLS in the data plane (rustls): downstream termination on filter chains
//! with a `DownstreamTlsContext`, upstream origination for clusters with an
//! `UpstreamTlsContext` (directly or through Istio's
//! `transport_socket_matches`), and what a TLS connection tells the rest of
//! the proxy about its peer ([`TlsInfo`]).
//!
//! - [`secrets`]: static secrets and secret references (`default`/`ROOTCA`);
//! - [`context`]: TLS contexts compiled into rustls configs;
//! - [`verify`]: chain and SAN checks, SAN/subject extraction;
//! - [`xfcc`]: the `x-forwarded-client-cert` header of an HCM;
//! - [`Stream`]: a plaintext or TLS byte stream, as HTTP and TCP handling
//!   see it.
//!
//! Certificates of the workload (`default`, `ROOTCA`) come from
//! `crate::identity`. This module does not own sockets or listeners.

pub mod context;
pub mod secrets;
pub mod verify;
pub mod xfcc;

pub use context::{ClientTls, ServerTls};
pub use secrets::{DEFAULT_SECRET, ROOT_CA_SECRET, Secrets};

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the TLS handshake of a downstream connection established.
///
/// Policy and telemetry read the peer identity from here (through
/// `ConnMeta::tls` / [`TlsInfo::peer_principal`]): RBAC `principal_name`
/// and `authenticated` match the peer's URI SAN, Istio's
/// `source_principal` label is the same value, and
/// `connection_security_policy` is `mutual_tls` when [`TlsInfo::is_mutual`].
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// `TLSv1_2` / `TLSv1_3` (Envoy's `%DOWNSTREAM_TLS_VERSION%` spelling).
    pub version: &'static str,
    /// The negotiated ALPN value, if any.
    pub alpn: Option<String>,
    /// URI SANs of the client certificate (e.g. `spiffe://cluster.local/ns/a/sa/b`).
    pub peer_uri_sans: Vec<String>,
    pub peer_dns_sans: Vec<String>,
    /// The client certificate's subject (RFC 2253), empty when it has none.
    pub peer_subject: Option<String>,
    /// Hex SHA-256 of the client certificate (DER), XFCC's `Hash`.
    pub peer_cert_sha256: Option<String>,
    /// URI SANs of the certificate this proxy presented.
    pub local_uri_sans: Vec<String>,
}

impl TlsInfo {
    /// The peer's identity as Envoy's RBAC and Istio's `source_principal`
    /// see it: the first URI SAN of the client certificate (the full
    /// `spiffe://...` URI). `None` without a client certificate.
    pub fn peer_principal(&self) -> Option<&str> {
        self.peer_uri_sans.first().map(String::as_str)
    }

    /// Whether the client presented a (verified) certificate: mutual TLS.
    pub fn is_mutual(&self) -> bool {
        self.peer_cert_sha256.is_some()
    }

    /// Reads what the handshake established on a server connection.
    pub fn from_server(conn: &rustls::ServerConnection) -> TlsInfo {
        let mut info = TlsInfo {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1_3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1_2",
                _ => "-",
            },
            alpn: conn
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
            ..TlsInfo::default()
        };
        if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
            let names = verify::cert_names(leaf);
            info.peer_uri_sans = names.uris;
            info.peer_dns_sans = names.dns;
            info.peer_subject = Some(names.subject);
            let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
            info.peer_cert_sha256 =
                Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect());
        }
        info
    }
}

/// Accepts a TLS connection on `tcp` with `tls`: reads the ClientHello,
/// picks the config for the offered ALPN, and completes the handshake.
/// The error is a failure reason for logs.
pub async fn accept(
    tls: &ServerTls,
    tcp: TcpStream,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo), String> {
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(|e| weft_identity::tls::handshake_failure_reason(&e))?;
    let hello = start.client_hello();
    let offered: Vec<Vec<u8>> = hello
        .alpn()
        .map(|i| i.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let config = tls.config_for(offered.iter().map(Vec::as_slice))?;
    let local_uri_sans = config
        .cert_resolver
        .resolve(hello)
        .and_then(|k| k.end_entity_cert().ok().map(|c| verify::cert_names(c).uris))
        .unwrap_or_default();
    let stream = start
        .into_stream(config)
        .await
        .map_err(|e| weft_identity::tls::handshake_failure_reason(&e))?;
    let mut info = TlsInfo::from_server(stream.get_ref().1);
    info.local_uri_sans = local_uri_sans;
    Ok((stream, info))
}

/// A connection's bytes: plaintext or TLS (either side).
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref().0,
            Stream::Client(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Client(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
