//! The real `weftd` configuring two weft-proxy sidecars (`weft-proxy run
//! --xds-address`, the sidecar mode) with mesh security: a mesh-wide
//! PeerAuthentication STRICT, pods labelled `security.istio.io/tlsMode:
//! istio` (auto mTLS). Each sidecar gets its workload certificate from
//! weftd's CA over TLS (contract 3: CA_ADDR defaults to the xDS host on
//! 15012, WEFT_TOKEN_FILE, WEFT_ROOT_CERT_FILE from `--root-cert-out`).
//!
//! client pod app -> reviews VIP (iptables REDIRECT to 15001) -> client
//! sidecar -> auto mTLS -> server pod :9080 (REDIRECT to 15006) -> server
//! sidecar (STRICT) -> app, which sees the caller's SPIFFE ID in XFCC.
//! Plaintext from the client pod straight to the server pod is refused.
//!
//! weftd is `$WEFT_BIN_DIR/weftd`, else built by cargo next to this
//! package's weft-proxy (same target directory and profile). Needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_testbed::{Node, Pod, require_root};

const PORT: u16 = 9080;
const VIP: &str = "10.96.0.20";
const CLIENT_SA: &str = "productpage";

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weftd`: `$WEFT_BIN_DIR/weftd`, else built next to weft-proxy.
fn weftd_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        let bin = PathBuf::from(dir).join("weftd");
        assert!(
            bin.is_file(),
            "WEFT_BIN_DIR has no weftd: {}",
            bin.display()
        );
        return bin;
    }
    let proxy = Path::new(env!("CARGO_BIN_EXE_weft-proxy"));
    let profile_dir = proxy.parent().expect("weft-proxy's directory");
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", "weft-control", "--bin", "weftd"])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run {cargo} to build weftd (or set WEFT_BIN_DIR): {e}"));
    assert!(status.success(), "building weftd failed: {status}");
    let bin = profile_dir.join("weftd");
    assert!(bin.is_file(), "no weftd at {}", bin.display());
    bin
}

fn mesh_config(dir: &Path, server_ip: &str, client_ip: &str) {
    let workload = |app: &str, pod: &str, sa: &str, vip: &str, ip: &str| {
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: {app}, namespace: default, labels: {{app: {app}}}}}
spec:
  clusterIP: {vip}
  selector: {{app: {app}}}
  ports:
  - {{name: http, port: {PORT}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: default
  labels: {{app: {app}, version: v1, security.istio.io/tlsMode: istio}}
spec:
  serviceAccountName: {sa}
  containers: [{{name: {app}, ports: [{{containerPort: {PORT}}}]}}]
status: {{phase: Running, podIP: {ip}}}
---
"#
        )
    };
    let mesh = workload(
        "reviews",
        "reviews-v1-0",
        "bookinfo-reviews",
        VIP,
        server_ip,
    ) + &workload(
        "productpage",
        "productpage-v1-0",
        CLIENT_SA,
        "10.96.0.10",
        client_ip,
    );
    std::fs::write(dir.join("mesh.yaml"), mesh).expect("mesh.yaml");
    std::fs::write(
        dir.join("security.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
    )
    .expect("security.yaml");
}

fn iptables(pod: &Pod, args: &[&str]) {
    let out = pod
        .command("iptables")
        .expect("command in pod")
        .args(args)
        .output()
        .expect("iptables");
    assert!(
        out.status.success(),
        "iptables {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server app on 0.0.0.0:9080 in `pod`: answers with the XFCC it got.
fn app_in(pod: &Pod) {
    let l = pod
        .enter(|| std::net::TcpListener::bind(("0.0.0.0", PORT)))
        .expect("enter pod")
        .expect("bind app");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let xfcc = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-forwarded-client-cert:"))
                    .map(str::trim)
                    .unwrap_or("-")
                    .to_owned();
                let body = format!("xfcc={xfcc}");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

/// GET `path` from inside `pod` to `addr`; (status, body).
fn get_in(pod: &Pod, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = pod
        .enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: reviews.default.svc.cluster.local:{PORT}\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response: {out:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn sidecar(
    pod: &Pod,
    xds: &str,
    ns_sa: (&str, &str),
    app: &str,
    token: &Path,
    root: &Path,
) -> Killed {
    let child = pod
        .command(env!("CARGO_BIN_EXE_weft-proxy"))
        .expect("command in pod")
        .env("RUST_LOG", "info")
        .env("POD_NAME", format!("{app}-v1-0"))
        .env("POD_NAMESPACE", ns_sa.0)
        .env("SERVICE_ACCOUNT", ns_sa.1)
        .env("INSTANCE_IP", pod.addr().to_string())
        .env("ISTIO_META_WORKLOAD_NAME", format!("{app}-v1"))
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env(
            "ISTIO_METAJSON_LABELS",
            format!(r#"{{"app":"{app}","version":"v1","security.istio.io/tlsMode":"istio"}}"#),
        )
        .env("WEFT_TOKEN_FILE", token)
        .env("WEFT_ROOT_CERT_FILE", root)
        .args(["run", "--xds-address", xds, "--concurrency", "1"])
        .args(["--health-address", "off", "--prometheus-address", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weft-proxy");
    Killed(child)
}

#[test]
fn two_weft_proxy_sidecars_use_auto_mtls_from_weftd() {
    require_root();
    let weftd_bin = weftd_bin();
    let node = Node::new().expect("node");
    let client = node.add_pod("client").expect("client pod");
    let server = node.add_pod("server").expect("server pod");
    let port = PORT.to_string();
    iptables(
        &server,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15006",
        ],
    );
    iptables(
        &client,
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            VIP,
            "--dport",
            &port,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    );
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    std::fs::create_dir(w.join("config")).expect("config dir");
    mesh_config(
        &w.join("config"),
        &server.addr().to_string(),
        &client.addr().to_string(),
    );
    let store = weft_identity::TokenStore::new();
    let (server_token, client_token) = (w.join("server.token"), w.join("client.token"));
    store
        .issue_to_file("default", "bookinfo-reviews", "reviews-v1-0", &server_token)
        .expect("token");
    store
        .issue_to_file("default", CLIENT_SA, "productpage-v1-0", &client_token)
        .expect("token");
    store.save(&w.join("tokens.json")).expect("save tokens");
    let root = w.join("root-cert.pem");

    // weftd in the server pod, xDS and its CA reachable from both pods.
    let mut weftd = server
        .command(&weftd_bin)
        .expect("command in pod")
        .arg("--config")
        .arg(format!("file://{}", w.join("config").display()))
        .args([
            "--xds-addr",
            "0.0.0.0:15010",
            "--xds-tls-addr",
            "0.0.0.0:15012",
        ])
        .args([
            "--monitoring-addr",
            "127.0.0.1:15014",
            "--webhook-addr",
            "127.0.0.1:15017",
        ])
        .args(["--ready-addr", "127.0.0.1:8081", "--debounce-ms", "50"])
        .arg("--ca-dir")
        .arg(w.join("ca"))
        .arg("--bootstrap-tokens")
        .arg(w.join("tokens.json"))
        .arg("--root-cert-out")
        .arg(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weftd");
    let mut line = String::new();
    BufReader::new(weftd.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("weftd's address line");
    let _weftd = Killed(weftd);
    assert!(root.is_file(), "weftd wrote no root certificate ({line})");

    app_in(&server);
    let xds = format!("{}:15010", server.addr());
    let _server_sidecar = sidecar(
        &server,
        &xds,
        ("default", "bookinfo-reviews"),
        "reviews",
        &server_token,
        &root,
    );
    let _client_sidecar = sidecar(
        &client,
        &xds,
        ("default", CLIENT_SA),
        "productpage",
        &client_token,
        &root,
    );

    let vip: SocketAddr = (VIP.parse::<std::net::Ipv4Addr>().expect("vip"), PORT).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        match get_in(&client, vip, "/reviews/1") {
            Ok((200, body)) => break (200, body),
            other if Instant::now() > deadline => {
                panic!("no mesh call through the sidecars: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert_eq!(status, 200);
    assert!(
        body.contains("by=spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
            && body.ends_with("uri=spiffe://cluster.local/ns/default/sa/productpage"),
        "the server app should see the caller's SPIFFE ID in XFCC: {body}"
    );

    // STRICT: plaintext from the client pod straight to the server pod.
    let direct: SocketAddr = (server.addr(), PORT).into();
    let plain = get_in(&client, direct, "/plaintext");
    assert!(
        plain.is_err(),
        "plaintext reached the server app: {plain:?}"
    );
}
