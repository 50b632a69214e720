//! gRPC over mesh mTLS, as weftd's 15012 port needs it: an incoming stream
//! of rustls connections that carries the client's SPIFFE ID into tonic
//! request extensions ([`PeerIdentity`]), and a tonic connector that dials
//! with a rustls client config.
//!
//! Owns only the TLS plumbing between tonic and rustls; what a peer
//! identity authorizes is decided by the authenticators (`auth`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, http};

use crate::grpc::{CaClient, CaClientError};
use crate::spiffe::SpiffeId;

/// Who is on the other end of the connection a request came on: its
/// address and its client certificate's SPIFFE ID (`None`: TLS without a
/// client certificate). Found in tonic request extensions when the server
/// runs on [`mtls_incoming`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The client's address.
    pub remote: SocketAddr,
    /// The verified client certificate's SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
}

/// An accepted server-side TLS connection and its peer identity.
pub struct MtlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl MtlsConnection {
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
}

impl AsyncRead for MtlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for MtlsConnection {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

/// Accepts TCP connections from `listener` and completes TLS handshakes
/// concurrently (a slow or failing client holds up no one); yields the
/// established ones for `Server::serve_with_incoming`. Failed handshakes are
/// logged with their reason and dropped.
pub fn mtls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<MtlsConnection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a control-plane connection");
                    continue;
                }
            };
            let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let spiffe_id =
                            crate::tls::peer_spiffe_id(stream.get_ref().1.peer_certificates()).ok();
                        let peer = PeerIdentity { remote, spiffe_id };
                        let _ = conn_tx.send(Ok(MtlsConnection { stream, peer })).await;
                    }
                    Err(e) => {
                        tracing::info!(%remote, reason = %crate::tls::handshake_failure_reason(&e), "TLS handshake failed")
                    }
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A tonic connector that dials `addr` and speaks TLS with `config`,
/// sending `server_name` as SNI.
#[derive(Clone)]
pub struct MtlsConnector {
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
}

impl MtlsConnector {
    pub fn new(config: ClientConfig, addr: SocketAddr, server_name: ServerName<'static>) -> Self {
        Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            addr,
            server_name,
        }
    }
}

impl tonic::codegen::Service<http::Uri> for MtlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = this.connector.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

impl CaClient {
    /// Connects to the CA at `addr` over TLS with `config` (mesh mTLS, or a
    /// bootstrap config without a client certificate).
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: ServerName<'static>,
        config: ClientConfig,
    ) -> Result<Self, CaClientError> {
        let err = |reason: String| CaClientError::Connect {
            address: addr.to_string(),
            reason,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| err(e.to_string()))?;
        let channel = endpoint
            .connect_with_connector(MtlsConnector::new(config, addr, server_name))
            .await
            .map_err(|e| err(format!("{e}: {}", source_chain(&e))))?;
        Ok(Self::new(channel))
    }
}

fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        match s.downcast_ref::<io::Error>() {
            Some(io) => parts.push(crate::tls::handshake_failure_reason(io)),
            None => parts.push(s.to_string()),
        }
        cur = s.source();
    }
    parts.join(": ")
}
