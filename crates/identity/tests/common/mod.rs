//! Shared helpers of the integration tests: CAs, workload certificates and a
//! loopback mTLS echo server.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_identity::tls::{self, MeshTrust};
use weft_identity::workload::{ProvideFuture, WorkloadCertError};
use weft_identity::{
    CertificateAuthority, CertificateManager, CertificateProvider, LocalCertificateProvider,
    RotationPolicy, SpiffeId,
};

pub const TD: &str = "cluster.local";

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

pub fn trust(ca: &CertificateAuthority) -> MeshTrust {
    MeshTrust::new(&[ca.root_cert_der().clone()], vec![TD.to_string()]).unwrap()
}

/// Signs with an explicit validity window (for expired certificates).
pub struct WindowProvider {
    pub ca: Arc<CertificateAuthority>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertificateProvider for WindowProvider {
    fn create_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
        csr_pem: &'a str,
        _ttl: Option<Duration>,
    ) -> ProvideFuture<'a> {
        Box::pin(async move {
            self.ca
                .sign_csr_with_validity(csr_pem, id, self.not_before, self.not_after)
                .map(|c| c.chain_pem)
                .map_err(|e| WorkloadCertError::Provider {
                    id: id.to_string(),
                    reason: e.to_string(),
                })
        })
    }
}

pub async fn manager(ca: &Arc<CertificateAuthority>, id: SpiffeId) -> Arc<CertificateManager> {
    let provider = Arc::new(LocalCertificateProvider::new(
        Arc::clone(ca),
        Duration::from_secs(24 * 3600),
    ));
    CertificateManager::new(id, provider, RotationPolicy::default())
        .await
        .unwrap()
}

pub async fn expired_manager(
    ca: &Arc<CertificateAuthority>,
    id: SpiffeId,
) -> Arc<CertificateManager> {
    let now = SystemTime::now();
    let provider = Arc::new(WindowProvider {
        ca: Arc::clone(ca),
        not_before: now - Duration::from_secs(7200),
        not_after: now - Duration::from_secs(3600),
    });
    CertificateManager::new(id, provider, RotationPolicy::default())
        .await
        .unwrap()
}

/// What the server saw of one accepted connection.
#[derive(Debug)]
pub struct Accepted {
    /// Peer SPIFFE ID, or the handshake failure reason.
    pub result: Result<SpiffeId, String>,
    pub alpn: Option<Vec<u8>>,
}

/// An mTLS echo server on 127.0.0.1: reports each handshake on the channel,
/// then echoes bytes until EOF.
pub async fn echo_server(
    server: Arc<CertificateManager>,
    trust: &MeshTrust,
    alpn: Vec<Vec<u8>>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Accepted>,
) {
    let config = tls::server_config(server, trust, alpn).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Accepted {
                            result: Err(tls::handshake_failure_reason(&e)),
                            alpn: None,
                        });
                    }
                    Ok(mut stream) => {
                        let (_, conn) = stream.get_ref();
                        let result = tls::peer_spiffe_id(conn.peer_certificates())
                            .map_err(|e| e.to_string());
                        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                        let _ = tx.send(Accepted { result, alpn });
                        let mut buf = [0u8; 1024];
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects with an ISTIO_MUTUAL-style client config and the Istio SNI.
pub async fn connect(
    addr: std::net::SocketAddr,
    client: Arc<CertificateManager>,
    trust: &MeshTrust,
    expected: Vec<SpiffeId>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = tls::client_config(client, trust, expected, &[b"h2"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let sni = ServerName::try_from("outbound_.80_.v1_.reviews.default.svc.cluster.local").unwrap();
    connector.connect(sni, tcp).await
}

/// Writes `msg` and reads the echo back.
pub async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    stream.flush().await?;
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}
