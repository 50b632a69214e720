//! The translation [`Generator`] weftd serves: resources per type URL for a
//! proxy's node, cached per proxy and view version, refreshed on update.

use std::collections::BTreeMap;

use weft_api::store::{StoreOptions, build_snapshot};
use weft_control::translate::{MeshView, TranslateOptions, TranslationGenerator};
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use weft_xds::{Generator, Node, NodeInfo, ProxyMetadata};

const CONFIG: &str = "
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
spec: {containers: [{name: reviews}]}
status: {phase: Running, podIP: 10.1.0.21}
";

fn view(
    extra: &str,
    previous: Option<&weft_api::store::Snapshot>,
) -> (MeshView, weft_api::store::Snapshot) {
    let files = BTreeMap::from([("config.yaml".to_string(), format!("{CONFIG}{extra}"))]);
    let snap = build_snapshot(&files, Vec::new(), previous, &StoreOptions::default());
    (MeshView::new(&snap, TranslateOptions::default()), snap)
}

fn node() -> NodeInfo {
    let md = ProxyMetadata {
        ips: vec!["10.1.0.21".into()],
        pod_name: "reviews-v1-545db77b95-2ps7q".into(),
        namespace: "default".into(),
        labels: [("app".to_string(), "reviews".to_string())].into(),
        ..ProxyMetadata::default()
    };
    NodeInfo::from_node(Some(md.to_node())).unwrap()
}

#[test]
fn serves_each_type_for_a_weft_proxy_node() {
    let (v, _) = view("", None);
    let generator = TranslationGenerator::new(v);
    let node = node();
    let names = |t: &str| {
        generator
            .generate(&node, t)
            .names()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(LISTENER),
        ["0.0.0.0_9080", "virtualInbound", "virtualOutbound"]
    );
    assert_eq!(names(ROUTE), ["9080"]);
    assert!(
        names(CLUSTER).contains(&"outbound|9080||reviews.default.svc.cluster.local".to_string())
    );
    assert!(names(CLUSTER).contains(&"inbound|9080||".to_string()));
    assert_eq!(
        names(ENDPOINT),
        ["outbound|9080||reviews.default.svc.cluster.local"]
    );
    assert!(names(SECRET).is_empty());
    // The four types of one push come from one translation.
    let a = generator.resources(&node).unwrap();
    let b = generator.resources(&node).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

#[test]
fn update_changes_only_what_changed() {
    let (v1, snap1) = view("", None);
    let generator = TranslationGenerator::new(v1);
    let node = node();
    let before_clusters = generator.generate(&node, CLUSTER);
    let before_routes = generator.generate(&node, ROUTE);
    let vs = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - timeout: 3s
    route:
    - destination: {host: reviews}
";
    let (v2, _) = view(vs, Some(&snap1));
    generator.update(v2);
    let after_clusters = generator.generate(&node, CLUSTER);
    let after_routes = generator.generate(&node, ROUTE);
    assert_eq!(
        before_clusters.version(),
        after_clusters.version(),
        "clusters did not change"
    );
    assert_ne!(
        before_routes.version(),
        after_routes.version(),
        "the route did"
    );
}

#[test]
fn a_node_without_namespace_gets_nothing() {
    let (v, _) = view("", None);
    let generator = TranslationGenerator::new(v);
    let node = NodeInfo::from_node(Some(Node {
        id: "nonsense".into(),
        ..Node::default()
    }))
    .unwrap();
    assert!(generator.resources(&node).is_err());
    assert!(generator.generate(&node, LISTENER).is_empty());
}

#[test]
fn mesh_config_shapes_proxy_settings() {
    let mesh = "---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    trustDomain: example.org
    defaultConfig:
      concurrency: 2
      drainDuration: 45s
";
    let (v, _) = view(mesh, None);
    let mut md = ProxyMetadata {
        ips: vec!["10.1.0.21".into()],
        pod_name: "reviews-v1-545db77b95-2ps7q".into(),
        namespace: "default".into(),
        ..ProxyMetadata::default()
    };
    md.extra.insert("DNS_CAPTURE".into(), "true".into());
    md.extra.insert("DNS_AUTO_ALLOCATE".into(), "true".into());
    let node = weft_control::translate::ProxyNode::from_node(&md.to_node()).unwrap();
    let settings = v.translate(&node).settings;
    assert_eq!(settings.concurrency, Some(2));
    assert_eq!(settings.drain_duration.as_deref(), Some("45s"));
    assert_eq!(settings.trust_domain, "example.org");
    assert!(settings.dns_capture && settings.dns_auto_allocate);
}
