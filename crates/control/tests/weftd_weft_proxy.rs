//! The real `weftd` binary serving the real `weft-proxy` (`weft-proxy run
//! --xds-address`, the sidecar mode) over ADS, with live traffic: the same
//! scenario and the same assertions as `weftd_envoy.rs` with Envoy (shared
//! in `support/scenario.rs`), plus what only this pair shows:
//!
//! - a resource weft-proxy cannot honour (a route header whose Envoy format
//!   operator it does not implement) is NACKed with the field path; weftd
//!   shows the NACK on `/debug/syncz` and counts it in
//!   `pilot_total_xds_rejects`; the previous routing keeps serving, and a
//!   later good config is accepted again;
//! - name resolution through weft-proxy's DNS proxy: with DNS capture
//!   (`weft-proxy iptables --redirect-dns`), an app's `getent hosts`
//!   resolves `reviews`, `reviews.default` and the FQDN to the VIP from
//!   weftd's NDS table, other names go to the pod's upstream resolver, and
//!   answers keep coming from the last table after weftd is gone.
//!
//! The weft-proxy binary is found as `support/scenario.rs` says (built by
//! cargo next to weftd, or `$WEFT_BIN_DIR`).

#[path = "support/scenario.rs"]
mod scenario;

use std::process::Stdio;
use std::time::{Duration, Instant};

use scenario::{
    BOUND, CLIENT_POD, Killed, MONITORING, Mesh, Sidecar, XDS, http_text, run_routing_scenario,
    wait_for, wait_routing,
};
use weft_testbed::RunAs;

/// The proxy's uid/gid, excluded from capture.
const PROXY_UID: u32 = 1337;

/// Starts weft-proxy in the pod as the productpage sidecar, with the
/// environment Istio's injector sets (plus `extra`), as uid/gid 1337.
fn start_weft_proxy(mesh: &Mesh, extra: &[(&str, &str)]) -> Killed {
    let ip = mesh.pod.addr().to_string();
    let mut cmd = mesh
        .pod
        .command_as(
            scenario::weft_proxy_bin(),
            RunAs::User {
                uid: PROXY_UID,
                gid: PROXY_UID,
            },
        )
        .expect("command in pod");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("POD_NAME", CLIENT_POD)
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", &ip)
        .env("SERVICE_ACCOUNT", "bookinfo-productpage")
        .env("ISTIO_META_WORKLOAD_NAME", "productpage-v1")
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env(
            "ISTIO_METAJSON_LABELS",
            r#"{"app":"productpage","version":"v1"}"#,
        )
        .envs(extra.iter().copied())
        .args(["run", "--xds-address", XDS, "--concurrency", "1"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    Killed(cmd.spawn().expect("start weft-proxy"), "weft-proxy")
}

/// weftd's view of the weft-proxy stream on `/debug/syncz`.
fn syncz_row(mesh: &Mesh) -> Option<serde_json::Value> {
    let text = http_text(&mesh.pod, MONITORING, "/debug/syncz");
    let rows: serde_json::Value = serde_json::from_str(&text).ok()?;
    rows.as_array()?
        .iter()
        .find(|r| r["proxy"].as_str().is_some_and(|p| p.contains(CLIENT_POD)))
        .cloned()
}

/// `pilot_total_xds_rejects` per type from weftd's metrics.
fn rejects(mesh: &Mesh) -> Vec<(String, f64)> {
    http_text(&mesh.pod, MONITORING, "/metrics")
        .lines()
        .filter(|l| l.starts_with("pilot_total_xds_rejects{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

struct WeftProxy;

impl Sidecar for WeftProxy {
    /// From weftd's side: every type the proxy holds was ACKed at the
    /// version last sent, with no NACK and no rejects counted; from the
    /// proxy's side (admin `/config_dump`): route `9080` and both reviews
    /// subsets' endpoints are held. Returns the ACKed RDS version.
    fn assert_all_accepted(&self, mesh: &Mesh) -> String {
        let start = Instant::now();
        let row = loop {
            let row = syncz_row(mesh);
            let settled = row.as_ref().is_some_and(|r| {
                ["lds", "cds", "rds", "eds"].iter().all(|t| {
                    let v = &r["weft_versions"][t];
                    v["sent"].as_str().is_some_and(|s| !s.is_empty()) && v["sent"] == v["acked"]
                })
            });
            if settled {
                break row.expect("checked");
            }
            assert!(
                start.elapsed() < BOUND,
                "weft-proxy did not ACK every type at the version sent: {row:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            row.get("weft_last_nack").is_none(),
            "weft-proxy NACKed: {row}"
        );
        let rejected: Vec<_> = rejects(mesh)
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .collect();
        assert!(rejected.is_empty(), "pilot_total_xds_rejects: {rejected:?}");
        let dump = http_text(&mesh.pod, "127.0.0.1:15000", "/config_dump");
        for held in [
            "\"9080\"",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
        ] {
            assert!(dump.contains(held), "weft-proxy's config_dump lacks {held}");
        }
        row["weft_versions"]["rds"]["acked"]
            .as_str()
            .expect("rds acked version")
            .to_string()
    }
}

#[test]
fn weft_proxy_routes_per_virtual_service_from_weftd_like_envoy() {
    let mesh = Mesh::new("wp-client");
    let mut weftd = mesh.start_weftd();
    let mut proxy = start_weft_proxy(&mesh, &[]);
    run_routing_scenario(
        &mesh,
        &WeftProxy,
        &mut [&mut weftd, &mut proxy],
        "weft-proxy",
    );
    drop(proxy);
    drop(weftd);
}

/// The initial VirtualService with every non-fault route adding a header
/// whose value uses an Envoy format operator weft-proxy does not implement,
/// and the split changed to 100% v2 (which must NOT take effect).
const UNHONOURABLE_VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: fault
    match:
    - uri: {prefix: /fault}
    fault:
      abort:
        httpStatus: 418
        percentage: {value: 100}
    route:
    - destination: {host: reviews, subset: v1}
  - name: all-v2
    headers:
      request:
        set:
          x-weft-meta: '%DYNAMIC_METADATA(weft.test:key)%'
    route:
    - destination: {host: reviews, subset: v2}
";

#[test]
fn weft_proxy_nacks_what_it_cannot_honour_and_keeps_routing() {
    let mesh = Mesh::new("wp-nack");
    let mut weftd = mesh.start_weftd();
    let mut proxy = start_weft_proxy(&mesh, &[]);
    let procs = &mut [&mut weftd, &mut proxy];
    wait_routing(&mesh, procs);
    let good = WeftProxy.assert_all_accepted(&mesh);

    mesh.replace_virtual_service(UNHONOURABLE_VS);
    // weftd accepts the VirtualService (the operator is valid Envoy
    // syntax), sends the new route, and weft-proxy NACKs it.
    let mut nack = None;
    wait_for("weftd to record weft-proxy's NACK", procs, || {
        nack = syncz_row(&mesh).and_then(|r| {
            r["weft_last_nack"]["rds"]["message"]
                .as_str()
                .map(str::to_owned)
        });
        nack.is_some()
    });
    let nack = nack.expect("waited for");
    eprintln!("NACK: {nack}");
    assert!(
        nack.starts_with("RouteConfiguration 9080: virtual_hosts["),
        "names the resource: {nack}"
    );
    assert!(
        nack.contains("request_headers_to_add[0].header.value"),
        "names the field path: {nack}"
    );
    assert!(
        nack.contains("DYNAMIC_METADATA"),
        "names the operator: {nack}"
    );
    let rds_rejects = rejects(&mesh)
        .into_iter()
        .find(|(l, _)| l.contains("type=\"rds\""))
        .map_or(0.0, |(_, v)| v);
    assert!(
        rds_rejects >= 1.0,
        "pilot_total_xds_rejects{{type=\"rds\"}} is {rds_rejects}"
    );
    let row = syncz_row(&mesh).expect("syncz row");
    assert_eq!(
        row["weft_versions"]["rds"]["acked"].as_str(),
        Some(good.as_str()),
        "the proxy stays on its last accepted route: {row}"
    );

    // The previous routing keeps serving: the 90/10 split (not the 100%
    // v2 of the refused route), jason to v2, the fault abort.
    scenario::assert_initial_routing(&mesh, "weft-proxy after NACK");

    // A good config afterwards is accepted and routes.
    mesh.replace_virtual_service(&Mesh::updated_virtual_service());
    wait_for("weft-proxy converging to 100% v2", procs, || {
        mesh.pod
            .enter(|| {
                (0..30).all(|_| scenario::get("/", &[]).is_ok_and(|r| r.version() == Some("v2")))
            })
            .expect("enter pod")
    });
    let start = Instant::now();
    loop {
        let row = syncz_row(&mesh).expect("syncz row");
        let v = &row["weft_versions"]["rds"];
        if v["sent"] == v["acked"] && v["acked"].as_str() != Some(good.as_str()) {
            break;
        }
        assert!(
            start.elapsed() < BOUND,
            "the good route was not ACKed: {row}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(proxy);
    drop(weftd);
}

// === DNS ===

/// The pod's (fake) cluster resolver: the address apps send DNS to, which
/// capture redirects to weft-proxy's DNS proxy.
const NAMESERVER: &str = "10.96.0.53";

/// A ServiceEntry host without addresses: with DNS auto-allocation it
/// resolves to a 240.240.0.0/16 VIP.
const SERVICE_ENTRY: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts: [httpbin.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.80}]
  ports: [{number: 80, name: http, protocol: HTTP}]
";

/// A minimal upstream DNS server standing in for the cluster's resolver
/// behind weft-proxy: `outside.test` A 192.0.2.55, NXDOMAIN for anything
/// else. Bound inside the pod on 127.0.0.1; stops when dropped.
struct Upstream {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(mesh: &Mesh) -> Upstream {
        let sock = mesh
            .pod
            .enter(|| std::net::UdpSocket::bind("127.0.0.1:0"))
            .expect("enter pod")
            .expect("bind the upstream DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("address");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = upstream_reply(&buf[..n]) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        Upstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The upstream's answer to one query (DNS wire format, RFC 1035 §4).
fn upstream_reply(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut name = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        name.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let known = name.join(".") == "outside.test";
    let answer = known && qtype == 1;
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]);
    // QR, opcode and RD as asked, RA; NXDOMAIN (3) for unknown names.
    r.push(0x80 | (q[2] & 0x79));
    r.push(0x80 | if known { 0 } else { 3 });
    r.extend_from_slice(&[0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if answer {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 55]);
    }
    Some(r)
}

/// `getent hosts NAME` run as an app (root, captured) inside the pod, with
/// the pod's resolv.conf bind-mounted over /etc/resolv.conf in a private
/// mount namespace: the first address, if it resolved.
fn getent(mesh: &Mesh, resolv: &std::path::Path, name: &str) -> Option<String> {
    let out = mesh
        .pod
        .command("unshare")
        .expect("command in pod")
        .args(["-m", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec getent hosts \"$1\"")
        .arg(resolv)
        .arg(name)
        .output()
        .expect("run getent");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.trim().is_empty(),
            "getent hosts {name}: {}: {err}",
            out.status
        );
        return None;
    }
    text.split_whitespace().next().map(str::to_owned)
}

#[test]
fn apps_resolve_mesh_names_through_weft_proxy_dns_with_capture() {
    let mesh = Mesh::new("wp-dns");
    mesh.pod
        .netns()
        .ip(&["addr", "add", &format!("{NAMESERVER}/32"), "dev", "lo"])
        .expect("nameserver address on lo");
    std::fs::write(mesh.config.join("httpbin-se.yaml"), SERVICE_ENTRY).expect("ServiceEntry");
    // weft-proxy runs as 1337 and reads the pod's resolv.conf from here.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(mesh.tmp.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod tmp");
    let resolv = mesh.tmp.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {NAMESERVER}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 attempts:1 timeout:2\n"
        ),
    )
    .expect("resolv.conf");
    let upstream = Upstream::start(&mesh);

    // istio-init's capture with DNS: UDP/TCP 53 to the pod's nameserver
    // from anyone but 1337 goes to 127.0.0.1:15053.
    let capture = mesh
        .pod
        .command(scenario::weft_proxy_bin())
        .expect("command in pod")
        .args(["iptables", "-p", "15001", "-z", "15006", "-u", "1337"])
        .args([
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
        ])
        .args([
            "--ipv6=false",
            "--redirect-dns",
            "--dns-servers",
            NAMESERVER,
        ])
        .output()
        .expect("weft-proxy iptables");
    assert!(
        capture.status.success(),
        "weft-proxy iptables: {}",
        String::from_utf8_lossy(&capture.stderr)
    );

    let mut weftd = mesh.start_weftd();
    let upstreams = upstream.addr.to_string();
    let resolv_path = resolv.to_str().expect("utf-8 path").to_owned();
    let mut proxy = start_weft_proxy(
        &mesh,
        &[
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_META_DNS_AUTO_ALLOCATE", "true"),
            ("WEFT_DNS_RESOLV_CONF", &resolv_path),
            ("WEFT_DNS_UPSTREAMS", &upstreams),
        ],
    );

    let mut bare = None;
    wait_for(
        "getent hosts reviews through weft-proxy's DNS proxy",
        &mut [&mut weftd, &mut proxy],
        || {
            bare = getent(&mesh, &resolv, "reviews");
            bare.is_some()
        },
    );
    assert_eq!(bare.as_deref(), Some(scenario::VIP), "reviews");
    // weftd shows the NameTable sent and ACKed on /debug/syncz.
    wait_for("NDS ACKed on syncz", &mut [&mut weftd, &mut proxy], || {
        syncz_row(&mesh).is_some_and(|row| {
            let nds = &row["weft_versions"]["nds"];
            nds["acked"].as_str().is_some_and(|v| !v.is_empty()) && nds["acked"] == nds["sent"]
        })
    });
    for name in ["reviews.default", "reviews.default.svc.cluster.local"] {
        assert_eq!(
            getent(&mesh, &resolv, name).as_deref(),
            Some(scenario::VIP),
            "{name}"
        );
    }
    // Another service of the namespace (its VIP is what the routing tests
    // above send traffic to; here the pod's same-namespace "pods" sit on
    // lo, where full capture would loop the sidecar's own upstream calls).
    assert_eq!(
        getent(&mesh, &resolv, "productpage").as_deref(),
        Some("10.96.0.10")
    );
    // The ServiceEntry host without addresses: its auto-allocated VIP.
    let se = getent(&mesh, &resolv, "httpbin.example.com").expect("httpbin.example.com resolves");
    assert!(se.starts_with("240.240."), "auto-allocated VIP, got {se}");
    // Not a mesh name: forwarded to the upstream resolver.
    assert_eq!(
        getent(&mesh, &resolv, "outside.test").as_deref(),
        Some("192.0.2.55"),
        "forwarded name"
    );
    assert_eq!(getent(&mesh, &resolv, "nowhere.test"), None);

    // weftd goes away: answers come from the last table.
    drop(weftd);
    std::thread::sleep(Duration::from_millis(300));
    proxy.assert_running();
    assert_eq!(
        getent(&mesh, &resolv, "reviews").as_deref(),
        Some(scenario::VIP),
        "after weftd stopped"
    );
    drop(proxy);
    drop(upstream);
}
