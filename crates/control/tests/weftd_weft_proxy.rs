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
