//! Unit tests of the name table: Kubernetes and ServiceEntry hosts,
//! auto-allocation, headless services, Sidecar scoping.

use std::collections::BTreeMap;

use weft_api::store::{StoreOptions, build_snapshot};
use weft_xds::{NodeInfo, ProxyMetadata};

use super::*;
use crate::translate::TranslateOptions;

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
kind: Service
metadata: {name: ratings, namespace: other}
spec:
  clusterIP: 10.96.0.30
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: default, labels: {app: db}}
spec: {containers: [{name: db}]}
status: {phase: Running, podIP: 10.1.0.50}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fixed, namespace: default}
spec:
  hosts: [fixed.example.com]
  addresses: [192.0.2.10]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.11}]
  ports: [{number: 3306, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ['*.wild.example.com']
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
";

fn view(extra: &str) -> MeshView {
    let files = BTreeMap::from([("config.yaml".to_string(), format!("{CONFIG}{extra}"))]);
    let snap = build_snapshot(&files, Vec::new(), None, &StoreOptions::default());
    MeshView::new(&snap, TranslateOptions::default())
}

fn node(extra: &[(&str, &str)]) -> ProxyNode {
    let mut md = ProxyMetadata {
        ips: vec!["10.1.0.5".into()],
        pod_name: "productpage-v1-abc".into(),
        namespace: "default".into(),
        ..ProxyMetadata::default()
    };
    for (k, v) in extra {
        md.extra.insert(k.to_string(), v.to_string());
    }
    ProxyNode::from_node(&md.to_node()).unwrap()
}

fn ips(t: &NameTable, host: &str) -> Vec<String> {
    t.table.get(host).map(|i| i.ips.clone()).unwrap_or_default()
}

#[test]
fn no_table_without_dns_capture() {
    assert_eq!(build_name_table(&view(""), &node(&[])), None);
}

#[test]
fn kubernetes_services_carry_short_name_and_namespace() {
    let t = build_name_table(&view(""), &node(&[("DNS_CAPTURE", "true")])).unwrap();
    let reviews = &t.table["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.ips, ["10.96.0.20"]);
    assert_eq!(reviews.registry, "Kubernetes");
    assert_eq!(reviews.shortname, "reviews");
    assert_eq!(reviews.namespace, "default");
    assert_eq!(ips(&t, "ratings.other.svc.cluster.local"), ["10.96.0.30"]);
    // Headless: the pod IPs.
    assert_eq!(ips(&t, "db.default.svc.cluster.local"), ["10.1.0.50"]);
    // ServiceEntry with an address: External, no short name.
    let fixed = &t.table["fixed.example.com"];
    assert_eq!(fixed.ips, ["192.0.2.10"]);
    assert_eq!(fixed.registry, "External");
    assert!(fixed.shortname.is_empty() && fixed.namespace.is_empty());
    // No address and no auto-allocation: nothing to answer.
    assert!(!t.table.contains_key("httpbin.example.com"));
    assert!(!t.table.contains_key("*.wild.example.com"));
}

#[test]
fn auto_allocated_vip_is_the_listener_vip() {
    let v = view("");
    let n = node(&[("DNS_CAPTURE", "true"), ("DNS_AUTO_ALLOCATE", "true")]);
    let t = build_name_table(&v, &n).unwrap();
    let got = ips(&t, "httpbin.example.com");
    assert_eq!(got.len(), 1, "{t:?}");
    assert!(got[0].starts_with("240.240."), "{got:?}");
    let svc = v.registry.service("httpbin.example.com").unwrap();
    assert_eq!(vips(svc, &n), got, "NDS and listeners agree on the VIP");
    // Stable: the same input allocates the same address.
    assert_eq!(build_name_table(&view(""), &n).unwrap(), t);
    // Wildcards and resolution NONE never get one.
    assert!(!t.table.contains_key("*.wild.example.com"));
    // Routes of port 80 carry the VIP as a domain, so captured traffic to
    // it is routed.
    let res = v.translate(&n);
    let vip = &got[0];
    let routed = res.routes.iter().flat_map(|r| &r.virtual_hosts).any(|vh| {
        vh.domains
            .iter()
            .any(|d| d == vip || d.starts_with(&format!("{vip}:")))
    });
    assert!(routed, "no virtual host names {vip}");
}

#[test]
fn sidecar_scoping_limits_the_table() {
    let sidecar = "
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: ['./*']}]
";
    let t = build_name_table(&view(sidecar), &node(&[("DNS_CAPTURE", "true")])).unwrap();
    assert!(t.table.contains_key("reviews.default.svc.cluster.local"));
    assert!(
        !t.table.contains_key("ratings.other.svc.cluster.local"),
        "{:?}",
        t.table.keys().collect::<Vec<_>>()
    );
}

#[test]
fn service_entries_sharing_a_host_merge_and_kubernetes_wins() {
    let extra = "
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-decorator, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [240.0.0.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
";
    let t = build_name_table(&view(extra), &node(&[("DNS_CAPTURE", "true")])).unwrap();
    let reviews = &t.table["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.registry, "Kubernetes");
    assert_eq!(reviews.ips, ["10.96.0.20"]);
}

#[test]
fn generate_serves_one_named_resource() {
    let v = view("");
    let md = ProxyMetadata {
        ips: vec!["10.1.0.5".into()],
        pod_name: "productpage-v1-abc".into(),
        namespace: "default".into(),
        extra: [("DNS_CAPTURE".to_string(), "true".to_string())].into(),
        ..ProxyMetadata::default()
    };
    let node = NodeInfo::from_node(Some(md.to_node())).unwrap();
    let set = generate(&v, &node);
    assert_eq!(set.names().collect::<Vec<_>>(), [NAME_TABLE_RESOURCE]);
    let mut plain = md.clone();
    plain.extra.clear();
    let node = NodeInfo::from_node(Some(plain.to_node())).unwrap();
    assert!(generate(&v, &node).is_empty());
}
