//! The same server-sidecar security scenario as `weftd_envoy_security.rs`,
//! with the real `weft-proxy` (`weft-proxy run --xds-address`, sidecar mode)
//! instead of Envoy: weftd translates a mesh-wide PeerAuthentication STRICT
//! and reviews' AuthorizationPolicies (DENY `/admin/*`, ALLOW only the
//! productpage identity); weft-proxy gets its workload certificate from
//! weftd's CA itself (`CA_ADDR`, `WEFT_TOKEN_FILE`, `WEFT_ROOT_CERT_FILE`).
//!
//! Checked, as with Envoy: a plaintext client is refused, an mTLS client
//! with the allowed identity is served and the application sees its SPIFFE
//! id in `x-forwarded-client-cert`, `/admin/*` and another identity get 403
//! `RBAC: access denied`, and weftd recorded no NACK.
//!
//! The weft-proxy binary is found as `support/scenario.rs` says (built by
//! cargo next to weftd, or `$WEFT_BIN_DIR`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_control::sds_agent::{AgentSecrets, fetch_secrets};
use weft_identity::tls::{SpiffeServerVerifier, provider};
use weft_identity::{CaClient, MeshTrust, SpiffeId, TokenStore};
use weft_testbed::{Node, Pod};

#[path = "support/scenario.rs"]
mod scenario;
#[path = "weftd_envoy_security/sidecar.rs"]
#[allow(dead_code)]
mod sidecar;
mod support;

use sidecar::*;

/// Where the application listens (the pod IP weftd's registry knows).
const APP_IP: &str = "10.1.0.50";
const PORT: u16 = 9080;
const XDS: &str = "127.0.0.1:15010";
const ADMIN: u16 = 15000;
/// Generous bound for start-up (a liveness limit, not a timing claim).
const BOUND: Duration = Duration::from_secs(30);

const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
const ALLOWED_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const OTHER_ID: &str = "spiffe://cluster.local/ns/default/sa/intruder";

fn start_weft_proxy(pod: &Pod, w: &Workload, token: &Path, root: &Path) -> Killed {
    let mut cmd = pod
        .command(scenario::weft_proxy_bin())
        .expect("command in pod");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("POD_NAME", w.pod)
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", &w.ip)
        .env("SERVICE_ACCOUNT", w.sa)
        .env("ISTIO_META_WORKLOAD_NAME", format!("{}-v1", w.app))
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env(
            "ISTIO_METAJSON_LABELS",
            format!(
                r#"{{"app":"{}","version":"v1","security.istio.io/tlsMode":"istio"}}"#,
                w.app
            ),
        )
        .env("CA_ADDR", "127.0.0.1:15012")
        .env("WEFT_TOKEN_FILE", token)
        .env("WEFT_ROOT_CERT_FILE", root)
        .args(["run", "--xds-address", XDS, "--concurrency", "1"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    Killed(cmd.spawn().expect("start weft-proxy"), "weft-proxy")
}

#[test]
fn weft_proxy_enforces_strict_mtls_and_authorization_from_weftd() {
    weft_testbed::require_root();
    let node = Node::new().expect("testbed node");
    let (pod, target) = server_pod(&node, "wp-sec");

    let work = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(work.path().join("config")).expect("config dir");
    let reviews = Workload::reviews(APP_IP);
    config(&work.path().join("config"), &[&reviews], "STRICT");
    let store = TokenStore::new();
    let proxy_token = work.path().join("reviews.token");
    store
        .issue_to_file("default", reviews.sa, reviews.pod, &proxy_token)
        .expect("proxy token");
    let token = |sa: &str| {
        store
            .issue("default", sa, &format!("{sa}-pod"))
            .expect("token")
    };
    let tokens = [
        (ALLOWED_ID, token("productpage")),
        (OTHER_ID, token("intruder")),
    ];
    store
        .save(&work.path().join("tokens.json"))
        .expect("save tokens");
    let mut weftd = start_weftd(&pod, work.path(), XDS);

    pod.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut ca = ca_client(&mut weftd).await;
            let allowed = secrets(&mut ca, &tokens, ALLOWED_ID).await;
            let other = secrets(&mut ca, &tokens, OTHER_ID).await;
            let root_file = work.path().join("root-cert.pem");
            std::fs::write(&root_file, &allowed.root_pem).expect("write the mesh root");
            let root = CertificateDer::from_pem_slice(allowed.root_pem.as_bytes()).expect("root");

            let app = tokio::net::TcpListener::bind((APP_IP, PORT))
                .await
                .expect("bind app");
            tokio::spawn(serve_app(app));
            let mut proxy = start_weft_proxy(&pod, &reviews, &proxy_token, &root_file);

            let allowed_cfg = client_config(&root, &allowed);
            let other_cfg = client_config(&root, &other);
            let plain = assert_policy_decisions(
                target,
                &allowed_cfg,
                &other_cfg,
                &mut [&mut weftd, &mut proxy],
            )
            .await;
            // STRICT: plaintext is refused (no HTTP response at all).
            assert!(plain.is_err(), "plaintext request was answered: {plain:?}");

            let metrics = scenario::http_text(&pod, "127.0.0.1:15014", "/metrics");
            let rejects: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("pilot_total_xds_rejects") && !l.trim_end().ends_with(" 0")
                })
                .collect();
            assert!(rejects.is_empty(), "weft-proxy NACKed: {rejects:?}");
            drop(proxy);
        });
    })
    .expect("enter pod");
    drop(weftd);
}
