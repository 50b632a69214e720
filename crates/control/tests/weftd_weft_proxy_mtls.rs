//! The real `weftd` and the real `weft-proxy` over 15012, as Istio's agent
//! talks to istiod: xDS and the CA over mutual TLS, weftd's certificate
//! verified against the mesh root as the host of the discovery address
//! (`--tls-san 127.0.0.1`), the workload certificate presented by the
//! proxy. Everything runs in one testbed pod's network namespace, on its
//! loopback (the routing fixture of `support/scenario.rs`); the plaintext
//! port 15010 is blocked there, so xDS can only flow over TLS.
//!
//! - With a bootstrap token the proxy gets its configuration and a
//!   certificate (admin `/certs` shows its SPIFFE ID), routes traffic,
//!   turns ready, and weftd's `/debug/syncz` shows its stream ACKed.
//! - With `ISTIOD_SAN=wrong.example` it refuses weftd's certificate, logs
//!   the reason with the address, and stays not ready with the reason on
//!   `/healthz/ready`; weftd never sees its stream.
//! - Without a token it gets no certificate, and so no configuration
//!   either: weftd refuses xDS on 15012 from a client with neither a mesh
//!   certificate nor a token (UNAUTHENTICATED, as istiod does), the proxy
//!   logs the reason and weftd never shows its stream; it stays not ready
//!   with the reason on `/healthz/ready`, and `weft-proxy wait` gives up.
//!
//! Needs root (network namespaces). The weft-proxy binary is found as
//! `support/scenario.rs` says.

#[path = "support/scenario.rs"]
mod scenario;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use scenario::{CLIENT_POD, Killed, MONITORING, Mesh, http_text, run_in, wait_for, wait_routing};
use weft_identity::TokenStore;

const DISCOVERY: &str = "127.0.0.1:15012";
const HEALTH: &str = "127.0.0.1:15021";
const ADMIN: &str = "127.0.0.1:15000";
const CLIENT_SA: &str = "bookinfo-productpage";

/// The pod with the routing fixture and plaintext xDS blocked, a bootstrap
/// token for the productpage sidecar, and the mesh root weftd wrote.
struct Secured {
    mesh: Mesh,
    token: PathBuf,
    root: PathBuf,
}

/// The [`Secured`] pod and weftd in it (`--tls-san 127.0.0.1`).
fn secured_mesh(name: &str) -> (Secured, Killed) {
    let mesh = Mesh::new(name);
    run_in(
        &mesh.pod,
        "iptables",
        &[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
            "--dport",
            "15010",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
    let dir = mesh.tmp.path().to_owned();
    let store = TokenStore::new();
    let token = dir.join("productpage.token");
    store
        .issue_to_file("default", CLIENT_SA, CLIENT_POD, &token)
        .expect("bootstrap token");
    let tokens = dir.join("tokens.json");
    store.save(&tokens).expect("save tokens");
    let root = dir.join("root-cert.pem");
    let weftd = scenario::start_weftd_with(
        &mesh.pod,
        &dir,
        &mesh.config,
        &[
            "--tls-san",
            "127.0.0.1",
            "--bootstrap-tokens",
            tokens.to_str().expect("utf-8 path"),
            "--root-cert-out",
            root.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        root.is_file(),
        "weftd wrote no mesh root at {}",
        root.display()
    );
    (Secured { mesh, token, root }, weftd)
}

/// Starts weft-proxy in the pod as the productpage sidecar with the
/// injector's environment, discovery address 127.0.0.1:15012 (from
/// `PROXY_CONFIG`), the mesh root and `extra`; its log goes to `log`.
fn start_proxy(s: &Secured, log: &Path, extra: &[(&str, &str)]) -> Killed {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("proxy log");
    let err = out.try_clone().expect("proxy log");
    let mut cmd = s
        .mesh
        .pod
        .command(scenario::weft_proxy_bin())
        .expect("command in pod");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("POD_NAME", CLIENT_POD)
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", s.mesh.pod.addr().to_string())
        .env("SERVICE_ACCOUNT", CLIENT_SA)
        .env("ISTIO_META_WORKLOAD_NAME", "productpage-v1")
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env(
            "ISTIO_METAJSON_LABELS",
            r#"{"app":"productpage","version":"v1"}"#,
        )
        .env(
            "PROXY_CONFIG",
            format!(r#"{{"discoveryAddress":"{DISCOVERY}"}}"#),
        )
        .env("WEFT_ROOT_CERT_FILE", &s.root)
        .envs(extra.iter().copied())
        .args(["run", "--concurrency", "1"])
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    Killed(cmd.spawn().expect("start weft-proxy"), "weft-proxy")
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Status and body of `GET path` on `addr` inside the pod (None when
/// nothing answers).
fn get_status(s: &Secured, addr: &str, path: &str) -> Option<(u16, String)> {
    s.mesh
        .pod
        .enter(|| {
            let mut c = TcpStream::connect(addr).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            c.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .ok()?;
            let mut text = String::new();
            c.read_to_string(&mut text).ok()?;
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
            Some((status, body))
        })
        .expect("enter pod")
}

/// weftd's `/debug/syncz` row of the productpage sidecar, if any.
fn syncz_row(s: &Secured) -> Option<serde_json::Value> {
    let text = http_text(&s.mesh.pod, MONITORING, "/debug/syncz");
    let rows: serde_json::Value = serde_json::from_str(&text).ok()?;
    rows.as_array()?
        .iter()
        .find(|r| r["proxy"].as_str().is_some_and(|p| p.contains(CLIENT_POD)))
        .cloned()
}

fn acked(row: &serde_json::Value, types: &[&str]) -> bool {
    types.iter().all(|t| {
        let v = &row["weft_versions"][t];
        v["sent"].as_str().is_some_and(|x| !x.is_empty()) && v["sent"] == v["acked"]
    })
}

#[test]
fn weft_proxy_gets_config_and_a_certificate_from_weftd_over_mtls() {
    let (s, mut weftd) = secured_mesh("wp-mtls-ok");
    let log = s.mesh.tmp.path().join("proxy.log");
    let token = s.token.to_str().expect("utf-8 path").to_owned();
    let mut proxy = start_proxy(&s, &log, &[("WEFT_TOKEN_FILE", &token)]);
    {
        let procs = &mut [&mut weftd, &mut proxy];
        wait_routing(&s.mesh, procs);
        wait_for("weft-proxy ready on 15021", procs, || {
            get_status(&s, HEALTH, "/healthz/ready") == Some((200, "LIVE\n".into()))
        });
        wait_for("weftd's syncz showing the proxy's ACKs", procs, || {
            syncz_row(&s).is_some_and(|r| acked(&r, &["lds", "cds", "rds", "eds"]))
        });
    }
    let (_, dump) = get_status(&s, ADMIN, "/config_dump").expect("config_dump");
    assert!(
        dump.contains("sdsConfig"),
        "the configuration references SDS secrets (readiness waited for them)"
    );
    let (status, certs) = get_status(&s, ADMIN, "/certs").expect("/certs");
    assert_eq!(status, 200, "{certs}");
    assert!(
        certs.contains(&format!("spiffe://cluster.local/ns/default/sa/{CLIENT_SA}")),
        "the workload certificate from weftd's CA: {certs}"
    );
    let text = read_log(&log);
    assert!(
        text.contains("xDS over mutual TLS") && text.contains(DISCOVERY),
        "weft-proxy used TLS to {DISCOVERY}: {text}"
    );
    assert!(!text.contains("cannot connect to weftd over TLS"), "{text}");
    // The proxy waited for its certificate before its first stream, so
    // weftd never refused it as unauthenticated.
    assert!(!text.contains("authentication failure"), "{text}");
    let metrics = http_text(&s.mesh.pod, MONITORING, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.trim_end() == "pilot_xds_auth_failures_total 0"),
        "weftd refused an xDS stream of the proxy: {metrics}"
    );
    drop(proxy);
    drop(weftd);
}

#[test]
fn a_proxy_expecting_another_name_refuses_weftd_and_stays_not_ready() {
    let (s, mut weftd) = secured_mesh("wp-mtls-san");
    let log = s.mesh.tmp.path().join("proxy.log");
    let token = s.token.to_str().expect("utf-8 path").to_owned();
    let mut proxy = start_proxy(
        &s,
        &log,
        &[("WEFT_TOKEN_FILE", &token), ("ISTIOD_SAN", "wrong.example")],
    );
    let procs = &mut [&mut weftd, &mut proxy];
    wait_for("the refusal in weft-proxy's log", procs, || {
        let text = read_log(&log);
        text.contains("name mismatch") && text.contains("wrong.example") && text.contains(DISCOVERY)
    });
    let mut last = None;
    wait_for("/healthz/ready naming the mismatch", procs, || {
        last = get_status(&s, HEALTH, "/healthz/ready");
        last.as_ref()
            .is_some_and(|(st, body)| *st == 503 && body.contains("name mismatch"))
    });
    let (_, body) = last.expect("checked");
    assert!(
        body.starts_with("PRE_INITIALIZING\n") && body.contains(DISCOVERY),
        "{body}"
    );
    assert!(syncz_row(&s).is_none(), "weftd saw a stream from the proxy");
    drop(proxy);
    drop(weftd);
}

#[test]
fn a_proxy_without_a_token_gets_no_certificate_and_stays_not_ready() {
    let (s, mut weftd) = secured_mesh("wp-mtls-tok");
    let log = s.mesh.tmp.path().join("proxy.log");
    let mut proxy = start_proxy(&s, &log, &[]);
    let procs = &mut [&mut weftd, &mut proxy];
    // The CA refuses it twice (it keeps retrying), and so does xDS: no
    // client certificate and no token (the reason reaches the proxy's log).
    wait_for(
        "two refused certificate requests and a refused xDS stream",
        procs,
        || {
            let text = read_log(&log);
            text.matches("no workload certificate yet").count() >= 2
                && text.contains("authentication failure: no client certificate")
        },
    );
    assert!(
        syncz_row(&s).is_none(),
        "weftd served xDS to an unauthenticated proxy"
    );
    let (status, body) = get_status(&s, HEALTH, "/healthz/ready").expect("/healthz/ready");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("PRE_INITIALIZING\n") && body.contains(DISCOVERY),
        "{body}"
    );
    let (_, admin_body) = get_status(&s, ADMIN, "/ready").expect("/ready");
    assert_eq!(admin_body, body);
    // holdApplicationUntilProxyStarts: `weft-proxy wait` gives up, with why.
    let out = s
        .mesh
        .pod
        .command(scenario::weft_proxy_bin())
        .expect("command in pod")
        .args(["wait", "--timeoutSeconds", "2", "--periodMillis", "200"])
        .arg("--url")
        .arg(format!("http://{HEALTH}/healthz/ready"))
        .output()
        .expect("weft-proxy wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wait succeeded: {err}");
    assert!(err.contains(DISCOVERY), "{err}");
    drop(proxy);
    drop(weftd);
}
