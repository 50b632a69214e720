//! Starting the real `weftd` binary in tests: every port on 127.0.0.1:0, a
//! fresh CA directory per process (removed with it), the address line weftd
//! prints parsed, and the process killed on drop.
#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Weftd {
    child: Child,
    line: String,
    _ca: tempfile::TempDir,
}

impl Weftd {
    /// Starts weftd on `config_dir` with `extra` flags after the defaults
    /// (an explicit `--ca-dir` in `extra` wins over the temporary one).
    pub fn start<I, S>(config_dir: &Path, extra: I) -> Weftd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let ca = tempfile::tempdir().expect("CA dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weftd"))
            .arg("--config")
            .arg(format!("file://{}", config_dir.display()))
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
            .env("WEFT_CA_DIR", ca.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start weftd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read weftd's address line");
        Weftd {
            child,
            line,
            _ca: ca,
        }
    }

    /// The address weftd printed for `key` (e.g. `xds-addr`).
    pub fn addr(&self, key: &str) -> SocketAddr {
        let prefix = format!("{key}=");
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("weftd printed no {key}: {:?}", self.line))
            .parse()
            .expect("address")
    }
}

impl Drop for Weftd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === node-agent SDS for Envoy sidecars (the bootstrap's `sds-grpc`) ===

/// Secrets for `spiffe_id` (e.g. `spiffe://cluster.local/ns/default/sa/x`)
/// signed by `ca`: what a node agent serves as `default` and `ROOTCA`.
pub fn agent_secrets(
    ca: &weft_identity::CertificateAuthority,
    spiffe_id: &str,
) -> weft_control::sds_agent::AgentSecrets {
    let id = weft_identity::SpiffeId::parse(spiffe_id).expect("SPIFFE id");
    let (key, csr) = weft_identity::workload::generate_key_and_csr(&id).expect("key and CSR");
    let issued = ca
        .sign_csr(&csr, &id, std::time::Duration::from_secs(3600))
        .expect("signed");
    let (_root, leaf_and_intermediates) = issued.chain_pem.split_last().expect("chain");
    weft_control::sds_agent::AgentSecrets {
        chain_pem: leaf_and_intermediates.concat(),
        key_pem: key.serialize_pem(),
        root_pem: ca.root_cert_pem().to_string(),
    }
}

/// Serves `secrets` over SDS (`sds_agent::AgentSds`) on `listener` (a
/// bound, possibly in-namespace, std listener) from `rt`, until the runtime
/// stops.
pub fn serve_agent_sds(
    rt: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    secrets: weft_control::sds_agent::AgentSecrets,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let (publish, watch) = tokio::sync::watch::channel(std::sync::Arc::new(secrets));
        let _keep = publish;
        let _ = tonic::transport::Server::builder()
            .add_service(weft_control::sds_agent::AgentSds::new(watch).service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
}

/// The `sds-grpc` static cluster of an Istio-style sidecar bootstrap
/// (proto3 JSON), pointing at an agent SDS on `addr`.
pub fn sds_grpc_cluster(addr: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "name": "sds-grpc", "type": "STATIC", "connectTimeout": "1s",
        "loadAssignment": {"clusterName": "sds-grpc", "endpoints": [{"lbEndpoints": [{"endpoint": {"address":
            {"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}}}}]}]},
        "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicitHttpConfig": {"http2ProtocolOptions": {}}}}
    })
}

/// A plain HTTP/1.1 GET to weftd's monitoring port (15014's debug and
/// metrics handlers); returns (status, body).
pub fn monitoring_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect monitoring");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: weftd\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// [`monitoring_get`] of a JSON document that must be served with 200.
pub fn monitoring_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = monitoring_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}
