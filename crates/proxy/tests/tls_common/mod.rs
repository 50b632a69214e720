//! Test PKI and TLS config snippets for the TLS tests: a mesh CA (weft's
//! own), workload certificates written as PEM files, and Istio-shaped
//! `DownstreamTlsContext` / `UpstreamTlsContext` blocks in YAML flow style
//! (the same text runs Envoy and weft-proxy).
#![allow(dead_code)]

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use weft_identity::{CertificateAuthority, SpiffeId};

/// A CA and a directory of PEM files.
pub struct Pki {
    pub ca: CertificateAuthority,
    pub dir: tempfile::TempDir,
}

/// A certificate chain file and its key file.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = CertificateAuthority::generate_self_signed("weft-test").expect("CA");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("root.pem"), ca.root_cert_pem()).expect("root");
        Pki { ca, dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// Issues a certificate for `id` valid in `[from, until]`.
    pub fn issue_between(
        &self,
        name: &str,
        id: &str,
        from: SystemTime,
        until: SystemTime,
    ) -> CertFiles {
        let id = SpiffeId::parse(id).expect("spiffe id");
        let (key, csr) = weft_identity::workload::generate_key_and_csr(&id).expect("csr");
        let issued = self
            .ca
            .sign_csr_with_validity(&csr, &id, from, until)
            .expect("sign");
        // Leaf and intermediates; the root is the trust anchor.
        let n = issued.chain_pem.len().max(2) - 1;
        let chain = issued.chain_pem[..n].concat();
        let files = CertFiles {
            chain: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.chain, chain).expect("chain");
        std::fs::write(&files.key, key.serialize_pem()).expect("key");
        files
    }

    /// A certificate for `id` valid for a day.
    pub fn issue(&self, name: &str, id: &str) -> CertFiles {
        let now = SystemTime::now();
        self.issue_between(
            name,
            id,
            now - Duration::from_secs(60),
            now + Duration::from_secs(86400),
        )
    }

    /// A certificate for `id` that expired an hour ago.
    pub fn issue_expired(&self, name: &str, id: &str) -> CertFiles {
        let now = SystemTime::now();
        self.issue_between(
            name,
            id,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// An SdsSecretConfig: `sds` true gives Istio's `sds_config` (served from
/// the workload identity by weft-proxy, from `sds-grpc` by Envoy).
fn sds(name: &str, sds: bool) -> serde_json::Value {
    if sds {
        json!({"name": name, "sds_config": {"api_config_source": {"api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
            "resource_api_version": "V3"}})
    } else {
        json!({"name": name})
    }
}

/// A CommonTlsContext in Istio's shape.
pub fn common(
    cert: &str,
    root: &str,
    use_sds: bool,
    san: Option<serde_json::Value>,
    alpn: &[&str],
) -> serde_json::Value {
    let mut default_vc = json!({});
    if let Some(m) = san {
        default_vc = json!({"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": m}]});
    }
    json!({
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [sds(cert, use_sds)],
        "combined_validation_context": {
            "default_validation_context": default_vc,
            "validation_context_sds_secret_config": sds(root, use_sds)
        }
    })
}

/// A filter chain's `transport_socket` (one line of YAML flow style).
pub fn downstream(common: serde_json::Value, require_client_cert: bool) -> String {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
        "require_client_certificate": require_client_cert}})
    .to_string()
}

/// A cluster's `transport_socket`.
pub fn upstream(common: serde_json::Value, sni: &str) -> String {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
        "sni": sni}})
    .to_string()
}

/// Reads `path` until `pred` holds for its text (access logs are written
/// by a background task), at most 10 s.
pub async fn wait_for_log(path: &Path, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&text) || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file access log entry with the TLS operators.
pub fn access_log(path: &Path) -> String {
    json!([{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path.display().to_string(),
        "log_format": {"text_format_source": {"inline_string":
            "[%PROTOCOL%] %RESPONSE_CODE% %RESPONSE_FLAGS% cluster=%UPSTREAM_CLUSTER% reason=%UPSTREAM_TRANSPORT_FAILURE_REASON% peer=%DOWNSTREAM_PEER_URI_SAN% local=%DOWNSTREAM_LOCAL_URI_SAN% tls=%DOWNSTREAM_TLS_VERSION% sni=%REQUESTED_SERVER_NAME% fp=%DOWNSTREAM_PEER_FINGERPRINT_256%\n"}}}}])
    .to_string()
}

// === bootstrap builders (JSON, which both proxies read as YAML) ===

pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// An HTTP connection manager routing everything to `cluster`.
pub fn hcm(stat: &str, cluster: &str, extra: serde_json::Value, log: &Path) -> serde_json::Value {
    let mut v = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat,
            "access_log": serde_json::from_str::<serde_json::Value>(&access_log(log)).expect("json"),
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "10s"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }
    });
    if let (Some(tc), Some(extra)) = (v["typed_config"].as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            tc.insert(k.clone(), x.clone());
        }
    }
    v
}

/// A tcp_proxy to `cluster`.
pub fn tcp(stat: &str, cluster: &str, log: &Path) -> serde_json::Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": stat, "cluster": cluster,
        "access_log": serde_json::from_str::<serde_json::Value>(&access_log(log)).expect("json")}})
}

/// A listener on `addr` with the TLS inspector and `chains`.
pub fn listener(
    name: &str,
    addr: std::net::SocketAddr,
    chains: Vec<serde_json::Value>,
) -> serde_json::Value {
    json!({"name": name,
        "address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": chains})
}

/// A STATIC cluster; `endpoints` are (address, transport_socket_match metadata).
pub fn cluster(
    name: &str,
    endpoints: &[(std::net::SocketAddr, Option<&str>)],
    extra: serde_json::Value,
) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(a, mode)| {
            let mut e = json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()}}}});
            if let Some(m) = mode {
                e["metadata"] =
                    json!({"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": m}}});
            }
            e
        })
        .collect();
    let mut c = json!({"name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}});
    if let (Some(o), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            o.insert(k.clone(), x.clone());
        }
    }
    c
}

/// A whole bootstrap (with `secrets` YAML appended under static_resources).
pub fn bootstrap(
    listeners: Vec<serde_json::Value>,
    clusters: Vec<serde_json::Value>,
    secrets_json: Vec<serde_json::Value>,
) -> String {
    let mut sr = json!({"listeners": listeners, "clusters": clusters});
    if !secrets_json.is_empty() {
        sr["secrets"] = json!(secrets_json);
    }
    json!({"static_resources": sr}).to_string()
}

/// A tls_certificate secret.
pub fn cert_secret(name: &str, c: &CertFiles) -> serde_json::Value {
    json!({"name": name, "tls_certificate": {
        "certificate_chain": {"filename": path(&c.chain)},
        "private_key": {"filename": path(&c.key)}}})
}

/// A validation_context secret with a trusted CA file.
pub fn root_secret(name: &str, root: &Path) -> serde_json::Value {
    json!({"name": name, "validation_context": {"trusted_ca": {"filename": path(root)}}})
}

/// A transport_socket string parsed back into JSON.
pub fn ts(s: String) -> serde_json::Value {
    serde_json::from_str(&s).expect("transport socket json")
}

// === processes ===

/// A proxy process (Envoy or the weft-proxy binary), killed on drop.
pub struct Process {
    pub child: std::process::Child,
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

static BASE_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs Envoy 1.40 on `config` (JSON) and waits until `ports` listen.
pub async fn envoy(config: &str, ports: &[u16]) -> Process {
    let base_id = (std::process::id() % 100_000) * 40
        + 20
        + BASE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 20;
    let args = vec![
        "--concurrency".to_owned(),
        "1".into(),
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "warn".into(),
        "--file-flush-interval-msec".into(),
        "50".into(),
        "--base-id".into(),
        base_id.to_string(),
    ];
    spawn("envoy", args, config, &[], ports).await
}

/// Runs the weft-proxy binary on `config` with extra environment.
pub async fn weft(config: &str, env: &[(&str, String)], ports: &[u16]) -> Process {
    let args = [
        "--concurrency",
        "1",
        "--health-address",
        "off",
        "--prometheus-address",
        "off",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    spawn(env!("CARGO_BIN_EXE_weft-proxy"), args, config, env, ports).await
}

/// Runs the weft-proxy binary through `cmd` (e.g. `Pod::command`, so it
/// runs inside a test network namespace).
pub async fn weft_cmd(
    cmd: std::process::Command,
    config: &str,
    env: &[(&str, String)],
    ports: &[u16],
) -> Process {
    let args = [
        "--concurrency",
        "1",
        "--health-address",
        "off",
        "--prometheus-address",
        "off",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    spawn_with(cmd, "weft-proxy", args, config, env, ports).await
}

async fn spawn(
    program: &str,
    args: Vec<String>,
    config: &str,
    env: &[(&str, String)],
    ports: &[u16],
) -> Process {
    spawn_with(
        std::process::Command::new(program),
        program,
        args,
        config,
        env,
        ports,
    )
    .await
}

async fn spawn_with(
    mut cmd: std::process::Command,
    program: &str,
    mut args: Vec<String>,
    config: &str,
    env: &[(&str, String)],
    ports: &[u16],
) -> Process {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bootstrap.json");
    std::fs::write(&cfg, config).expect("config");
    let stderr = dir.path().join("stderr.log");
    args.insert(0, cfg.display().to_string());
    args.insert(0, "-c".into());
    cmd.args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e} (is it on PATH?)"));
    let mut p = Process {
        child,
        stderr,
        _dir: dir,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("{program} exited ({status}):\n{}", p.stderr_tail());
        }
        if ports.iter().all(|port| listening(p.child.id(), *port)) {
            return p;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{program} did not listen on {ports:?}:\n{}",
                p.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `port` is in LISTEN state in process `pid`'s network namespace.
pub fn listening(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X} ");
    [
        format!("/proc/{pid}/net/tcp"),
        format!("/proc/{pid}/net/tcp6"),
    ]
    .iter()
    .any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&want) && l.split_whitespace().nth(3) == Some("0A"))
    })
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

// === a CA serving CreateCertificate over TLS (weftd's 15012 role) ===

/// weftd's CA in the test process: IstioCertificateService over TLS with
/// bootstrap tokens, aborted on drop.
pub struct TestCa {
    pub addr: std::net::SocketAddr,
    pub tokens: weft_identity::TokenStore,
    pub root: PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestCa {
    pub async fn start() -> TestCa {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Self::start_on(l).await
    }

    /// Serves on `listener` (e.g. one bound inside a test network namespace).
    pub async fn start_on(listener: std::net::TcpListener) -> TestCa {
        use std::sync::Arc;
        use weft_identity::*;
        let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").expect("CA"));
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root-cert.pem");
        std::fs::write(&root, ca.root_cert_pem()).expect("root");
        let mesh = MeshTrust::new(&[ca.root_cert_der().clone()], vec!["cluster.local".into()])
            .expect("trust");
        let tokens = TokenStore::new();
        let authenticators: Vec<Arc<dyn Authenticator>> = vec![
            Arc::new(PeerCertificateAuthenticator::new(vec![
                "cluster.local".into(),
            ])),
            Arc::new(BootstrapTokenAuthenticator::new(tokens.clone())),
        ];
        let service =
            CertificateService::new(Arc::clone(&ca), authenticators, SigningPolicy::default());
        let own_id = SpiffeId::new("cluster.local", "istio-system", "istiod").expect("id");
        let own = CertificateManager::new(
            own_id,
            Arc::new(LocalCertificateProvider::new(
                Arc::clone(&ca),
                Duration::from_secs(86400),
            )),
            RotationPolicy::default(),
        )
        .await
        .expect("istiod cert");
        let config = tls::control_plane_server_config(own, &mesh).expect("server config");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(IstioCertificateServer::new(Arc::new(service)))
                .serve_with_incoming(grpc_tls::mtls_incoming(listener, Arc::new(config)))
                .await;
        });
        TestCa {
            addr,
            tokens,
            root,
            task,
            _dir: dir,
        }
    }

    /// The environment of a sidecar for `ns`/`sa` (token written to `dir`).
    pub fn sidecar_env(
        &self,
        dir: &Path,
        ns: &str,
        sa: &str,
        ttl: &str,
    ) -> Vec<(&'static str, String)> {
        let token = dir.join(format!("token-{ns}-{sa}"));
        self.tokens
            .issue_to_file(ns, sa, &format!("{sa}-pod"), &token)
            .expect("token");
        vec![
            ("CA_ADDR", self.addr.to_string()),
            ("WEFT_TOKEN_FILE", token.display().to_string()),
            ("WEFT_ROOT_CERT_FILE", self.root.display().to_string()),
            ("POD_NAMESPACE", ns.to_owned()),
            ("SERVICE_ACCOUNT", sa.to_owned()),
            ("SECRET_TTL", ttl.to_owned()),
        ]
    }
}
