//! The sidecar's mutual-TLS leg to weftd (`weft_proxy::xds::relay`) against
//! a real rustls server on loopback that reports the client certificate of
//! each connection, with certificates from a real `weft_identity` CA:
//!
//! - before the workload certificate exists, connections present none;
//! - afterwards each new connection presents the certificate current at its
//!   handshake: after a rotation the next connection presents the new one
//!   while an open connection keeps the one it started with;
//! - a server certificate not valid for the expected name is refused, and
//!   the reason (name mismatch, with the address) is what the readiness
//!   reason shows.
//!
//! One test function: the certificate source and the connection status are
//! process-wide, as in the weft-proxy binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_identity::{
    CertificateAuthority, CertificateManager, LocalCertificateProvider, RotationPolicy, ServerSan,
    SpiffeId,
};
use weft_proxy::identity::WorkloadIdentity;
use weft_proxy::xds::{TlsSettings, relay, status};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server (optional client certificates chained to `ca`) that
/// answers each `?` with the serial of the connection's client certificate
/// (`none` without one).
async fn serial_server(ca: &Arc<CertificateAuthority>) -> SocketAddr {
    let id = SpiffeId::new("cluster.local", "istio-system", "istiod").unwrap();
    let serving = LocalCertificateProvider::new(ca.clone(), Duration::from_secs(3600))
        .with_server_names(vec![ServerSan::parse("127.0.0.1").unwrap()]);
    let manager = CertificateManager::new(id, Arc::new(serving), RotationPolicy::default())
        .await
        .expect("serving certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_cert_der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(manager);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let serial = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|leaf| {
                        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
                        cert.raw_serial_as_string()
                    })
                    .unwrap_or_else(|| "none".into());
                let mut buf = [0u8; 1];
                while tls.read_exact(&mut buf).await.is_ok() {
                    if tls
                        .write_all(format!("{serial}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A connection through the relay (as the ADS client makes one).
async fn open(relay: SocketAddr) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::new(tokio::net::TcpStream::connect(relay).await.unwrap())
}

/// The serial the server saw on `conn`.
async fn serial(conn: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> String {
    use tokio::io::AsyncBufReadExt;
    conn.get_mut().write_all(b"?").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_line(&mut line))
        .await
        .expect("answer within 10 s")
        .expect("read");
    line.trim().to_owned()
}

fn settings(addr: SocketAddr, root: PathBuf, name: &str) -> TlsSettings {
    TlsSettings {
        address: addr.to_string(),
        server_name: name.to_owned(),
        server_name_from: "the test".to_owned(),
        roots_file: root,
        roots_from: "WEFT_ROOT_CERT_FILE",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_presents_the_current_certificate_and_bad_names_are_refused() {
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, ca.root_cert_pem()).unwrap();
    let server = serial_server(&ca).await;
    let local = relay::start(settings(server, root.clone(), "127.0.0.1"))
        .await
        .expect("relay");

    // No certificate source yet: the connection presents none.
    let mut early = open(local).await;
    assert_eq!(serial(&mut early).await, "none");

    let id = SpiffeId::new("cluster.local", "default", "reviews").unwrap();
    let identity = Arc::new(WorkloadIdentity::new(
        Some(id.clone()),
        vec![ca.root_cert_der().clone()],
        "waiting",
    ));
    weft_proxy::identity::install(identity.clone());
    let workload = LocalCertificateProvider::new(ca.clone(), Duration::from_secs(3600));
    let manager = CertificateManager::new(id, Arc::new(workload), RotationPolicy::default())
        .await
        .unwrap();
    identity.set_manager(manager.clone());
    let first = manager.current().serial.clone();

    let mut before = open(local).await;
    assert_eq!(serial(&mut before).await, first);
    let second = manager.rotate().await.unwrap().serial.clone();
    assert_ne!(first, second);
    let mut after = open(local).await;
    assert_eq!(
        serial(&mut after).await,
        second,
        "a new connection presents the rotated certificate"
    );
    assert_eq!(
        serial(&mut before).await,
        first,
        "an open connection keeps its certificate"
    );
    assert_eq!(serial(&mut early).await, "none");

    // A server certificate without the expected name is refused.
    status::set_address(&server.to_string());
    let wrong = relay::start(settings(server, root, "wrong.example"))
        .await
        .expect("relay");
    let mut refused = open(wrong).await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), refused.read_to_end(&mut buf))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing came through: {buf:?}");
    let problem = status::problem().expect("the failure is recorded");
    assert!(
        problem.contains("name mismatch")
            && problem.contains("wrong.example")
            && problem.contains(&server.to_string()),
        "{problem}"
    );
}
