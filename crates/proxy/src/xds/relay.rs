//! The mutual-TLS leg to weftd (pilot-agent's XDS proxy, in-process): the
//! ADS client speaks plain HTTP/2 to a listener on the loopback interface
//! this module owns, and every connection accepted there is carried to
//! weftd over a fresh TLS connection ([`super::tls`] decides its settings).
//!
//! Each TLS connection presents the workload certificate that is current
//! at its handshake (sessions are never resumed, which would carry an older
//! identity), so after a rotation the next stream (the ADS client
//! reconnects with backoff when one breaks) presents the new one; an open
//! stream keeps the certificate it started with. A connection that fails
//! (unknown CA, name mismatch, refused client certificate) is logged with
//! the reason and the address and recorded for the readiness reason
//! ([`super::status`]); the local connection is then closed, so the ADS
//! client sees the failure and backs off as with plaintext.
//!
//! Only connections from this process are carried: the listener is on
//! 127.0.0.1 of the pod, and a connection is accepted only when its peer
//! socket is one of this process's own (checked in `/proc`), so an
//! application in the pod cannot ride on the proxy's certificate.

use super::status;
use super::tls::{TlsSettings, explain_failure};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// TCP connect and TLS handshake limit per attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The workload certificate current at each handshake (none before the
/// first is issued).
#[derive(Debug)]
struct WorkloadClientCert;

impl ResolvesClientCert for WorkloadClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        crate::identity::current().and_then(|w| w.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The rustls client config for `s`: roots from its file, host-name
/// verification of weftd's certificate, the workload certificate as client
/// certificate, ALPN `h2`. The error names the file or variable at fault.
pub fn client_config(s: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let file = || format!("{} {}", s.roots_from, s.roots_file.display());
    let pem = std::fs::read(&s.roots_file).map_err(|e| format!("{}: {e}", file()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", file()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable root certificate: {e}", file()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in the file", file()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_client_cert_resolver(Arc::new(WorkloadClientCert));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session would carry the identity of the connection it
    // resumes; every connection presents the certificate current now.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The server name to verify, or an error naming where it came from.
pub fn server_name(s: &TlsSettings) -> Result<ServerName<'static>, String> {
    ServerName::try_from(s.server_name.clone()).map_err(|_| {
        format!(
            "{:?} (from {}) is neither a DNS name nor an IP address",
            s.server_name, s.server_name_from
        )
    })
}

/// Starts the relay on the current runtime and returns the loopback
/// address the ADS client should dial (`http://ADDR`).
pub async fn start(s: TlsSettings) -> Result<SocketAddr, String> {
    let config = Arc::new(client_config(&s)?);
    let name = server_name(&s)?;
    let listener = match TcpListener::bind(("127.0.0.1", 0)).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(("::1", 0))
            .await
            .map_err(|e| format!("binding the local xDS relay on loopback: {e}"))?,
    };
    let local = listener
        .local_addr()
        .map_err(|e| format!("local xDS relay address: {e}"))?;
    tracing::info!(xds = %s.address, server_name = %s.server_name, roots = %s.roots_file.display(), "xDS over mutual TLS");
    let connector = tokio_rustls::TlsConnector::from(config);
    let s = Arc::new(s);
    tokio::spawn(async move {
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "local xDS relay: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !super::peer::is_own_socket(local, peer) {
                tracing::warn!(%peer, "local xDS relay: refused a connection not shown to come from this process");
                continue;
            }
            tokio::spawn(carry(conn, connector.clone(), name.clone(), s.clone()));
        }
    });
    Ok(local)
}

/// Dials weftd over TLS and copies bytes both ways until either side ends.
async fn carry(
    mut local: TcpStream,
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    s: Arc<TlsSettings>,
) {
    // weftd's 15012 refuses xDS without a client certificate or token, so
    // while the first certificate is on its way, wait for it (bounded)
    // rather than open a stream that is sure to be refused.
    let presented = wait_for_certificate(CONNECT_TIMEOUT).await;
    let fail = |reason: String| {
        tracing::warn!(xds = %s.address, %reason, "cannot connect to weftd over TLS");
        status::set_transport_error(Some(reason));
    };
    let dial = async {
        let tcp = TcpStream::connect(&s.address)
            .await
            .map_err(|e| format!("cannot connect to weftd at {}: {e}", s.address))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| describe(&e, &s, presented))
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok(u)) => u,
        Ok(Err(reason)) => return fail(reason),
        Err(_) => {
            return fail(format!(
                "no TLS connection to weftd at {} within {CONNECT_TIMEOUT:?}",
                s.address
            ));
        }
    };
    status::set_transport_error(None);
    tracing::debug!(xds = %s.address, client_cert = presented, "TLS connection to weftd");
    if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut upstream).await
        && tls_error(&e).is_some()
    {
        // TLS 1.3 servers refuse a client certificate after the handshake:
        // the alert shows up on the first read.
        fail(describe(&e, &s, presented));
    }
}

/// Whether a workload certificate is there to present, waiting up to
/// `limit` for the first one when this proxy has a certificate source.
async fn wait_for_certificate(limit: Duration) -> bool {
    let Some(identity) = crate::identity::current() else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if identity.certified_key().is_some() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

fn describe(e: &std::io::Error, s: &TlsSettings, presented: bool) -> String {
    match tls_error(e) {
        Some(tls) => explain_failure(tls, s, presented),
        None => format!("TLS with weftd at {} failed: {e}", s.address),
    }
}
