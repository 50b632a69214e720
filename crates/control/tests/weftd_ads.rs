//! The real `weftd` binary as a control plane: it loads a `file://` config
//! directory, serves ADS to a weft_xds client introducing itself as
//! productpage's sidecar, shows the proxy's ACKed versions on
//! `/debug/syncz`, re-pushes when the VirtualService file changes, pushes
//! endpoints only when a Pod is added, and on an invalid object reports it
//! on `/debug/config_errors` while serving its last good version.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use prost::Message as _;
use support::{monitoring_get as get, monitoring_json as get_json};
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{AdsClient, Any, ClientConfig, ClientState, ProxyMetadata};

/// Generous bound for anything asynchronous (file watch, debounce, push).
const BOUND: Duration = Duration::from_secs(30);

struct Weftd {
    _process: support::Weftd,
    xds: SocketAddr,
    monitoring: SocketAddr,
}

fn start(dir: &Path) -> Weftd {
    let process = support::Weftd::start(dir, std::iter::empty::<&str>());
    Weftd {
        xds: process.addr("xds-addr"),
        monitoring: process.addr("monitoring-addr"),
        _process: process,
    }
}

const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: productpage-v1-6b746f74dc-9stvs, namespace: default, labels: {app: productpage, version: v1}}
spec: {serviceAccountName: bookinfo-productpage, containers: [{name: productpage, ports: [{containerPort: 9080}]}]}
status: {phase: Running, podIP: 10.1.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-545db77b95-2ps7q, namespace: default, labels: {app: reviews, version: v1}}
spec: {containers: [{name: reviews, ports: [{containerPort: 9080}]}]}
status: {phase: Running, podIP: 10.1.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-7bf8c9648f-7mzqx, namespace: default, labels: {app: reviews, version: v2}}
spec: {containers: [{name: reviews, ports: [{containerPort: 9080}]}]}
status: {phase: Running, podIP: 10.1.0.22}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn virtual_service(w1: u32, w2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {w2}}}
"#
    )
}

const REVIEWS_V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const REVIEWS_V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";

type Held = Arc<Mutex<BTreeMap<String, Vec<Any>>>>;

/// Clusters (with weights) the route configuration `9080` sends reviews to.
fn reviews_weights(held: &Held) -> BTreeMap<String, u32> {
    let held = held.lock().expect("lock");
    let mut out = BTreeMap::new();
    for any in held.get(ROUTE).into_iter().flatten() {
        let rc = RouteConfiguration::decode(any.value.as_slice()).expect("decode route");
        for vh in rc
            .virtual_hosts
            .iter()
            .filter(|v| v.domains.iter().any(|d| d == "reviews"))
        {
            for r in &vh.routes {
                let Some(Action::Route(a)) = &r.action else {
                    continue;
                };
                match &a.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => {
                        out.insert(c.clone(), 100);
                    }
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        for c in &w.clusters {
                            out.insert(c.name.clone(), c.weight.map_or(0, |w| w.value));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn names(held: &Held, type_url: &str) -> Vec<String> {
    let held = held.lock().expect("lock");
    held.get(type_url)
        .into_iter()
        .flatten()
        .map(|a| weft_xds::names::resource_name(a).expect("name"))
        .collect()
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn version(state: &tokio::sync::watch::Receiver<ClientState>, t: &str) -> String {
    state.borrow().version(t).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_serves_ads_pushes_changes_and_reports_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("base.yaml"), BASE).expect("write base");
    let vs_path = dir.path().join("reviews-vs.yaml");
    std::fs::write(&vs_path, virtual_service(100, 0)).expect("write vs");
    let weftd = start(dir.path());

    let me = ProxyMetadata {
        ips: vec!["10.1.0.10".into()],
        pod_name: "productpage-v1-6b746f74dc-9stvs".into(),
        namespace: "default".into(),
        workload_name: "productpage-v1".into(),
        service_account: "bookinfo-productpage".into(),
        labels: [("app", "productpage"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ProxyMetadata::default()
    };
    let node_id = me.node_id();
    let held: Held = Arc::default();
    let sink = held.clone();
    let client = AdsClient::spawn(
        ClientConfig::new(format!("http://{}", weftd.xds), me.to_node()),
        move |type_url: &str, resources: &[Any]| -> Result<(), String> {
            sink.lock()
                .map_err(|e| e.to_string())?
                .insert(type_url.to_string(), resources.to_vec());
            Ok(())
        },
    )
    .expect("client");
    let state = client.state();

    // Istio-named listeners and clusters arrive.
    wait_for("listeners and clusters", || {
        let l = names(&held, LISTENER);
        let c = names(&held, CLUSTER);
        (l.iter().any(|n| n == "virtualOutbound")
            && c.iter().any(|n| n == REVIEWS_V1)
            && !names(&held, ENDPOINT).is_empty())
        .then_some(())
    })
    .await;
    let listeners = names(&held, LISTENER);
    for want in ["virtualOutbound", "virtualInbound", "0.0.0.0_9080"] {
        assert!(
            listeners.iter().any(|n| n == want),
            "{want} missing from {listeners:?}"
        );
    }
    let clusters = names(&held, CLUSTER);
    for want in [
        "outbound|9080||reviews.default.svc.cluster.local",
        REVIEWS_V1,
        REVIEWS_V2,
        "PassthroughCluster",
        "BlackHoleCluster",
    ] {
        assert!(
            clusters.iter().any(|n| n == want),
            "{want} missing from {clusters:?}"
        );
    }
    let first = wait_for("the reviews route", || {
        let w = reviews_weights(&held);
        (!w.is_empty()).then_some(w)
    })
    .await;
    assert_eq!(first.get(REVIEWS_V1), Some(&100), "route: {first:?}");
    assert!(
        first.get(REVIEWS_V2).is_none_or(|w| *w == 0),
        "route: {first:?}"
    );

    // syncz: the proxy, with every type ACKed at the version sent.
    let row = wait_for("syncz to show the proxy ACKed", || {
        let syncz = get_json(weftd.monitoring, "/debug/syncz");
        syncz.as_array()?.iter().find_map(|r| {
            let v = &r["weft_versions"];
            let acked = ["lds", "cds", "rds", "eds"].iter().all(|t| {
                let sent = v[t]["sent"].as_str().unwrap_or("");
                !sent.is_empty() && Some(sent) == v[t]["acked"].as_str()
            });
            (r["proxy"] == node_id.as_str() && acked).then(|| r.clone())
        })
    })
    .await;
    assert_eq!(row["proxy_type"], "sidecar");
    assert_eq!(row["listener_sent"], row["listener_acked"]);
    assert_eq!(
        row["weft_versions"]["lds"]["acked"].as_str(),
        Some(version(&state, LISTENER).as_str()),
        "syncz and the client agree on the LDS version"
    );

    // config_dump by pod.namespace, in Envoy's admin format.
    let dump = get_json(
        weftd.monitoring,
        "/debug/config_dump?proxyID=productpage-v1-6b746f74dc-9stvs.default",
    );
    let cds = dump["configs"]
        .as_array()
        .expect("configs")
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        .expect("clusters in dump");
    assert_eq!(
        cds["version_info"].as_str(),
        row["weft_versions"]["cds"]["acked"].as_str(),
        "dump: {cds}"
    );
    assert!(
        cds["dynamic_active_clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .any(|c| c["cluster"]["name"] == REVIEWS_V2
                && c["cluster"]["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster")
    );
    let (status, _) = get(
        weftd.monitoring,
        "/debug/config_dump?proxyID=nobody.nowhere",
    );
    assert_eq!(status, 404);

    // Edit the VirtualService: a new RDS version with the 50/50 split.
    let (lds, rds) = (version(&state, LISTENER), version(&state, ROUTE));
    std::fs::write(&vs_path, virtual_service(50, 50)).expect("rewrite vs");
    let split = wait_for("the 50/50 route push", || {
        let w = reviews_weights(&held);
        (w.get(REVIEWS_V2) == Some(&50)).then_some(w)
    })
    .await;
    assert_eq!(split.get(REVIEWS_V1), Some(&50));
    assert_ne!(version(&state, ROUTE), rds, "RDS version changes");
    assert_eq!(version(&state, LISTENER), lds, "listeners did not change");

    // A new Pod of an existing service: an endpoints-only push.
    let (cds_v, eds_v) = (version(&state, CLUSTER), version(&state, ENDPOINT));
    std::fs::write(
        dir.path().join("reviews-v3.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v3-84779c7bbc-abcde, namespace: default, labels: {app: reviews, version: v3}}\nspec: {containers: [{name: reviews}]}\nstatus: {phase: Running, podIP: 10.1.0.23}\n",
    )
    .expect("write pod");
    wait_for("the EDS push", || {
        (version(&state, ENDPOINT) != eds_v).then_some(())
    })
    .await;
    assert_eq!(version(&state, CLUSTER), cds_v, "clusters did not change");
    let metrics = wait_for("the EDS trigger metric", || {
        let (_, m) = get(weftd.monitoring, "/metrics");
        m.lines()
            .any(|l| l.starts_with("weft_push_triggers_eds_total ") && !l.ends_with(" 0"))
            .then_some(m)
    })
    .await;
    for want in [
        "pilot_xds_pushes{type=\"eds\"}",
        "pilot_xds 1",
        "pilot_proxy_convergence_time_count",
        "weft_config_errors 0",
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }

    // An invalid VirtualService: reported, and its last good version kept.
    let rds_good = version(&state, ROUTE);
    std::fs::write(&vs_path, virtual_service(50, 30)).expect("write invalid vs");
    let errors = wait_for("config_errors to report the VirtualService", || {
        let e = get_json(weftd.monitoring, "/debug/config_errors");
        (!e["problems"].as_array()?.is_empty()).then_some(e)
    })
    .await;
    let text = errors.to_string();
    assert!(
        text.contains("reviews") && text.contains("weight"),
        "{text}"
    );
    assert!(
        errors["stale"]
            .as_array()
            .expect("stale")
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains("reviews"))),
        "the VirtualService is served from its last good version: {text}"
    );
    // The metric follows once the watch callback has applied the snapshot.
    wait_for("weft_config_errors 1", || {
        let (_, m) = get(weftd.monitoring, "/metrics");
        m.contains("weft_config_errors 1").then_some(())
    })
    .await;
    assert_eq!(
        reviews_weights(&held),
        split,
        "the last good route is still held"
    );
    assert_eq!(version(&state, ROUTE), rds_good);
    assert_eq!(state.borrow().nacks, 0);

    client.shutdown().await;
}

/// Incremental (delta) ADS against weftd: the first CDS response carries
/// the Istio-named clusters, the ACK shows on `/debug/syncz` as a delta
/// stream, and a VirtualService edit sends only the changed route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_serves_delta_ads() {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use weft_xds::DeltaDiscoveryRequest;

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("base.yaml"), BASE).expect("write base");
    let vs_path = dir.path().join("reviews-vs.yaml");
    std::fs::write(&vs_path, virtual_service(100, 0)).expect("write vs");
    let weftd = start(dir.path());
    let me = ProxyMetadata {
        ips: vec!["10.1.0.10".into()],
        pod_name: "productpage-v1-6b746f74dc-9stvs".into(),
        namespace: "default".into(),
        labels: [("app".to_string(), "productpage".to_string())].into(),
        ..ProxyMetadata::default()
    };
    let node_id = me.node_id();
    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{}", weftd.xds))
        .await
        .expect("connect ADS");
    let (tx, rx) = tokio::sync::mpsc::channel::<DeltaDiscoveryRequest>(16);
    let subscribe = |type_url: &str, node: bool| DeltaDiscoveryRequest {
        node: node.then(|| me.to_node()),
        type_url: type_url.to_string(),
        ..Default::default()
    };
    tx.send(subscribe(CLUSTER, true)).await.expect("send");
    // RDS is not a wildcard type: subscribe by name, as Envoy does.
    tx.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["9080".to_string()],
        ..subscribe(ROUTE, false)
    })
    .await
    .expect("send");
    let mut responses = ads
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open delta stream")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(BOUND, responses.message())
            .await
            .expect("a delta response within the bound")
            .expect("stream ok")
            .expect("stream open")
    };
    let mut first_routes = Vec::new();
    let mut clusters = Vec::new();
    while clusters.is_empty() || first_routes.is_empty() {
        let r = next().await;
        let names: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
        if r.type_url == CLUSTER {
            clusters = names;
        } else if r.type_url == ROUTE {
            first_routes = names;
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await
        .expect("ack");
    }
    assert!(clusters.iter().any(|n| n == REVIEWS_V1), "{clusters:?}");
    assert!(first_routes.iter().any(|n| n == "9080"), "{first_routes:?}");

    wait_for("syncz to show the delta stream ACKed", || {
        let syncz = get_json(weftd.monitoring, "/debug/syncz");
        syncz.as_array()?.iter().find(|r| {
            r["proxy"] == node_id.as_str()
                && r["stream"] == "delta"
                && r["cluster_sent"].is_string()
                && r["cluster_sent"] == r["cluster_acked"]
        })?;
        Some(())
    })
    .await;

    // Only the route configuration changes; clusters are not resent.
    std::fs::write(&vs_path, virtual_service(50, 50)).expect("rewrite vs");
    let r = next().await;
    assert_eq!(r.type_url, ROUTE, "the first push after the edit is RDS");
    let changed: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(changed, ["9080"], "only the changed route is sent");
    let rc = RouteConfiguration::decode(
        r.resources[0]
            .resource
            .as_ref()
            .expect("resource")
            .value
            .as_slice(),
    )
    .expect("decode");
    assert!(format!("{rc:?}").contains(REVIEWS_V2), "{rc:?}");
}
