//! The routing scenario real `weftd` serves to a sidecar in a testbed
//! network namespace, shared by the Envoy test (`weftd_envoy.rs`) and the
//! weft-proxy test (`weftd_weft_proxy.rs`) so both data planes are held to
//! the same assertions.
//!
//! Everything runs inside one fresh network namespace (a testbed pod), so
//! the sidecar binds Istio's fixed ports (15001, 15006, admin 15000) and
//! weftd its defaults without colliding with anything on the machine:
//!
//! - weftd watches a config dir (`tests/weftd_envoy/config`: reviews v1/v2
//!   pods, a DestinationRule with subsets and a VirtualService with a fault
//!   abort on `/fault`, `end-user: jason` → v2, and a 90/10 split);
//! - the sidecar boots as the productpage client workload's (node id and
//!   metadata) with ADS to weftd;
//! - the reviews pods' IPs are extra addresses on the namespace's loopback,
//!   where this test's HTTP servers answer with their version;
//! - capture is one iptables rule, as `istio-iptables` would set up for the
//!   app: `-t nat -A OUTPUT -p tcp -d <reviews VIP> --dport 9080 -j REDIRECT
//!   --to-ports 15001`. The sidecar's own upstream connections go to pod
//!   IPs, so they are not captured and no uid exclusion is needed.
//!
//! Included with `#[path]` by the tests that use it (not through
//! `support/mod.rs`, which other test binaries share).
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_testbed::{Node, Pod};

pub const VIP: &str = "10.96.0.20";
pub const PODS: [(&str, &str); 2] = [("v1", "10.1.0.21"), ("v2", "10.1.0.22")];
pub const HOST: &str = "reviews.default.svc.cluster.local:9080";
pub const ADMIN: u16 = 15000;
pub const XDS: &str = "127.0.0.1:15010";
pub const MONITORING: &str = "127.0.0.1:15014";
/// The client workload the sidecar belongs to.
pub const CLIENT_POD: &str = "productpage-v1-6b746f74dc-9stvs";
/// Generous bound for start-up and for convergence after a config change
/// (a liveness limit, not a timing claim).
pub const BOUND: Duration = Duration::from_secs(30);

/// A child process killed (and reaped) on drop.
pub struct Killed(pub Child, pub &'static str);

impl Killed {
    pub fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().expect("try_wait") {
            panic!("{} exited early with {status} (its log is above)", self.1);
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/weftd_envoy")
}

/// Copies the fixture config into `dir`, with the client pod's address.
pub fn write_config(dir: &Path, client_ip: &str) {
    for entry in std::fs::read_dir(fixtures().join("config")).expect("fixture config dir") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("fixture file");
        let name = path.file_name().expect("file name");
        std::fs::write(dir.join(name), text.replace("CLIENT_IP", client_ip)).expect("write config");
    }
}

/// Runs `program args` inside the pod's namespace and asserts success.
pub fn run_in(pod: &Pod, program: &str, args: &[&str]) {
    let out = pod
        .command(program)
        .expect("command in pod")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The reviews version that answered (the servers' body), if any.
    pub fn version(&self) -> Option<&str> {
        (self.status == 200).then(|| self.body.trim())
    }
}

/// Sends one keep-alive request on `conn` and reads its response
/// (Content-Length bodies only: both the servers and the sidecars' local
/// replies send one).
pub fn send(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.get_mut().write_all(req.as_bytes())?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h)? == 0 {
            return Err(bad("connection closed in headers".into()));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
    };
    let len: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(format!("no content-length in {:?}", resp.headers)))?;
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    resp.body = String::from_utf8_lossy(&body).into_owned();
    Ok(resp)
}

/// A connection to reviews' VIP (captured to the sidecar). Call inside the pod.
pub fn connect() -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect((VIP, 9080))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(s))
}

/// One request on a fresh connection. Call inside the pod.
pub fn get(path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    send(&mut connect()?, path, headers)
}

/// A plain `GET path` to `addr` inside the pod (admin and debug ports);
/// empty when unreachable.
pub fn http_text(pod: &Pod, addr: &str, path: &str) -> String {
    pod.enter(|| {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(
            out.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    })
    .expect("enter pod")
    .unwrap_or_default()
}

/// Starts the reviews servers (inside the pod) on a runtime the caller keeps.
pub fn start_reviews(pod: &Pod, rt: &tokio::runtime::Runtime) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    for (version, ip) in PODS {
        let listener = pod
            .enter(|| std::net::TcpListener::bind((ip, 9080)))
            .expect("enter pod")
            .unwrap_or_else(|e| panic!("bind reviews-{version} on {ip}:9080: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("{version}\n")),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
}

/// Starts weftd in the pod, in `workdir` (where anything it writes by
/// default, such as its CA directory, lands).
pub fn start_weftd(pod: &Pod, workdir: &Path, config: &Path) -> Killed {
    start_weftd_with(pod, workdir, config, &[])
}

/// [`start_weftd`] with `extra` flags after the defaults.
pub fn start_weftd_with(pod: &Pod, workdir: &Path, config: &Path, extra: &[&str]) -> Killed {
    let mut child = pod
        .command(env!("CARGO_BIN_EXE_weftd"))
        .expect("command in pod")
        .current_dir(workdir)
        .arg("--config")
        .arg(format!("file://{}", config.display()))
        .args(["--xds-addr", XDS, "--monitoring-addr", MONITORING])
        .args(["--webhook-addr", "127.0.0.1:15017"])
        .args(["--ready-addr", "127.0.0.1:8080", "--debounce-ms", "50"])
        .args(["--ca-dir"])
        .arg(workdir.join("ca"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weftd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read weftd's address line");
    assert!(line.contains("xds-addr="), "weftd printed {line:?}");
    Killed(child, "weftd")
}

/// The `weft-proxy` binary: `$WEFT_BIN_DIR/weft-proxy`, else built (or
/// found up to date) by cargo next to this package's `weftd`, in the same
/// target directory and profile.
pub fn weft_proxy_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        let bin = PathBuf::from(dir).join("weft-proxy");
        assert!(
            bin.is_file(),
            "WEFT_BIN_DIR has no weft-proxy: {}",
            bin.display()
        );
        return bin;
    }
    let weftd = Path::new(env!("CARGO_BIN_EXE_weftd"));
    let profile_dir = weftd.parent().expect("weftd's directory");
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_string))
        .unwrap_or_else(|| "cargo".to_string());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "weft-proxy",
        "--bin",
        "weft-proxy",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => {}
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run {cargo} to build weft-proxy (or set WEFT_BIN_DIR): {e}"));
    assert!(status.success(), "building weft-proxy failed: {status}");
    let bin = profile_dir.join("weft-proxy");
    assert!(bin.is_file(), "no weft-proxy at {}", bin.display());
    bin
}

/// Polls until `ok` holds, checking the processes stay up.
pub fn wait_for(what: &str, procs: &mut [&mut Killed], mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        for p in procs.iter_mut() {
            p.assert_running();
        }
        assert!(start.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The netns pod with the reviews servers, the captured VIP and weftd's
/// config dir; everything is removed on drop.
pub struct Mesh {
    pub pod: Pod,
    pub tmp: tempfile::TempDir,
    pub config: PathBuf,
    _rt: tokio::runtime::Runtime,
    _node: Node,
}

impl Mesh {
    /// Sets up the pod `name` (root required).
    pub fn new(name: &str) -> Mesh {
        weft_testbed::require_root();
        let node = Node::new().expect("testbed node");
        let pod = node.add_pod(name).expect("testbed pod");
        for (_, ip) in PODS {
            pod.netns()
                .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
                .expect("reviews pod address on lo");
        }
        pod.netns()
            .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])
            .expect("reviews VIP on lo");
        run_in(
            &pod,
            "iptables",
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
                "9080",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ],
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        start_reviews(&pod, &rt);
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        write_config(&config, &pod.addr().to_string());
        Mesh {
            pod,
            tmp,
            config,
            _rt: rt,
            _node: node,
        }
    }

    /// The runtime serving the reviews pods (for more in-pod servers).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self._rt
    }

    pub fn start_weftd(&self) -> Killed {
        start_weftd(&self.pod, self.tmp.path(), &self.config)
    }

    /// Replaces the VirtualService file atomically (as editors and
    /// kubectl-like tools do) with `text`.
    pub fn replace_virtual_service(&self, text: &str) {
        let staged = self.tmp.path().join("reviews-vs.yaml.staged");
        std::fs::write(&staged, text).expect("stage VirtualService");
        std::fs::rename(&staged, self.config.join("reviews-vs.yaml"))
            .expect("replace VirtualService");
    }

    /// The fixture's follow-up VirtualService (everything outside /fault to v2).
    pub fn updated_virtual_service() -> String {
        std::fs::read_to_string(fixtures().join("update/reviews-vs.yaml")).expect("update fixture")
    }
}

/// What a data plane under test reports about the config it accepted.
pub trait Sidecar {
    /// Asserts every update so far was accepted (LDS, CDS, RDS for route
    /// `9080`, EDS for both reviews subsets, nothing rejected) and returns
    /// a token that changes whenever a new route configuration is applied.
    fn assert_all_accepted(&self, mesh: &Mesh) -> String;
}

/// Waits until a request through the captured VIP reaches a reviews pod.
pub fn wait_routing(mesh: &Mesh, procs: &mut [&mut Killed]) {
    wait_for("the sidecar routing to reviews", procs, || {
        mesh.pod
            .enter(|| get("/", &[]))
            .expect("enter pod")
            .is_ok_and(|r| r.version().is_some())
    });
}

/// The initial VirtualService: a 90/10 split within statistical tolerance,
/// `end-user: jason` always to v2, `/fault` aborted with 418.
pub fn assert_initial_routing(mesh: &Mesh, label: &str) {
    // 90/10 split over 400 requests: v2 expected 40 (sd 6); accept 5%..17%.
    let versions: Vec<String> = mesh
        .pod
        .enter(|| {
            (0..400)
                .map(|i| {
                    let r = get("/reviews/1", &[]).unwrap_or_else(|e| panic!("request {i}: {e}"));
                    r.version()
                        .unwrap_or_else(|| panic!("request {i}: {r:?}"))
                        .to_string()
                })
                .collect()
        })
        .expect("enter pod");
    let v2 = versions.iter().filter(|v| *v == "v2").count();
    let v1 = versions.iter().filter(|v| *v == "v1").count();
    assert_eq!(v1 + v2, 400, "only v1 and v2 answer: {versions:?}");
    eprintln!("{label}: weighted split: v1 {v1}, v2 {v2} of 400");
    assert!((20..=68).contains(&v2), "v2 share {v2}/400 outside 5%..17%");

    mesh.pod
        .enter(|| {
            for i in 0..50 {
                let r = get("/reviews/1", &[("end-user", "jason")]).expect("jason request");
                assert_eq!(r.version(), Some("v2"), "jason request {i}: {r:?}");
                let r = get("/fault/1", &[]).expect("fault request");
                assert_eq!(r.status, 418, "fault request {i}: {r:?}");
            }
        })
        .expect("enter pod");
}

/// The whole scenario: initial routing, then a live VirtualService edit
/// that the sidecar converges to while a connection opened before it keeps
/// being served.
pub fn run_routing_scenario(
    mesh: &Mesh,
    sidecar: &dyn Sidecar,
    procs: &mut [&mut Killed],
    label: &str,
) {
    wait_routing(mesh, procs);
    let before = sidecar.assert_all_accepted(mesh);
    assert_initial_routing(mesh, label);

    // A keep-alive connection opened before the change.
    let mut kept = mesh
        .pod
        .enter(connect)
        .expect("enter pod")
        .expect("connect");
    let r = send(&mut kept, "/", &[]).expect("request on the kept connection");
    assert_eq!(r.status, 200, "{r:?}");

    mesh.replace_virtual_service(&Mesh::updated_virtual_service());
    let changed = Instant::now();

    // Converged once 30 fresh requests in a row reach v2 (p = 0.1^30 under
    // the old split).
    wait_for("the sidecar converging to 100% v2", procs, || {
        mesh.pod
            .enter(|| (0..30).all(|_| get("/", &[]).is_ok_and(|r| r.version() == Some("v2"))))
            .expect("enter pod")
    });
    eprintln!(
        "{label}: converged to 100% v2 {:?} after the file change",
        changed.elapsed()
    );
    let after = sidecar.assert_all_accepted(mesh);
    assert_ne!(after, before, "the route change arrived over RDS");

    // The connection opened before the change is still served, by the new
    // routing, and the sidecar does not ask to close it.
    for i in 0..5 {
        let r = send(&mut kept, "/", &[]).unwrap_or_else(|e| {
            panic!("kept-alive request {i} after the change failed (connection dropped?): {e}")
        });
        assert_eq!(r.version(), Some("v2"), "kept-alive request {i}: {r:?}");
        assert_ne!(r.header("connection"), Some("close"), "{r:?}");
    }
    let r = mesh
        .pod
        .enter(|| get("/fault/x", &[]))
        .expect("enter pod")
        .expect("fault request after the change");
    assert_eq!(r.status, 418, "{r:?}");
}
