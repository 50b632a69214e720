//! Rough figures for the identity path on this machine: CSR signing per
//! second (CA side), key+CSR generation per second (proxy side) and full
//! mTLS handshakes per second over 127.0.0.1 with SPIFFE verification.
//!
//! `cargo run -p weft-identity --example identity_bench --release [N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_identity::tls::{self, MeshTrust};
use weft_identity::workload::generate_key_and_csr;
use weft_identity::{
    CertificateAuthority, CertificateManager, LocalCertificateProvider, RotationPolicy, SpiffeId,
};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let id = SpiffeId::new("cluster.local", "default", "reviews").unwrap();

    let start = Instant::now();
    let csrs: Vec<String> = (0..n)
        .map(|_| generate_key_and_csr(&id).unwrap().1)
        .collect();
    let keygen = start.elapsed();
    let start = Instant::now();
    for csr in &csrs {
        ca.sign_csr(csr, &id, Duration::from_secs(86400)).unwrap();
    }
    let signing = start.elapsed();

    let provider = || {
        Arc::new(LocalCertificateProvider::new(
            Arc::clone(&ca),
            Duration::from_secs(86400),
        ))
    };
    let server = CertificateManager::new(id.clone(), provider(), RotationPolicy::default())
        .await
        .unwrap();
    let client_id = SpiffeId::new("cluster.local", "default", "productpage").unwrap();
    let client = CertificateManager::new(client_id, provider(), RotationPolicy::default())
        .await
        .unwrap();
    let mesh = MeshTrust::new(&[ca.root_cert_der().clone()], vec!["cluster.local".into()]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tls::server_config(server, &mesh, vec![]).unwrap(),
    ));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        tls::client_config(client, &mesh, vec![id.clone()], &[]).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                    }
                }
            });
        }
    });
    let sni = ServerName::try_from("outbound_.9080_._.reviews.default.svc.cluster.local").unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = connector.connect(sni.clone(), tcp).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    let handshakes = start.elapsed();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("n={n}");
    println!("key+CSR generation: {:.0}/s", rate(keygen));
    println!("CSR signing (CA):   {:.0}/s", rate(signing));
    println!(
        "mTLS handshakes (client+server on one thread, TLS 1.3, P-256): {:.0}/s",
        rate(handshakes)
    );
}
