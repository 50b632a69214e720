//! The service registry: services and endpoints from Kubernetes objects and
//! ServiceEntry/WorkloadEntry, host resolution and subsets.

mod common;

use std::collections::BTreeMap;

use common::{decode_all, fixture};
use weft_api::Object;
use weft_api::registry::*;
use weft_api::validate::Protocol;

fn registry() -> Registry {
    let mut objs: Vec<Object> = Vec::new();
    for f in ["bookinfo.yaml", "egress.yaml"] {
        objs.extend(decode_all(f, &fixture(f)).into_iter().map(|(o, _)| o));
    }
    Registry::build(&objs, &RegistryOptions::default())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn kubernetes_services_get_fqdns_vips_and_protocols() {
    let reg = registry();
    let ratings = reg
        .service("ratings.bookinfo.svc.cluster.local")
        .expect("ratings");
    assert_eq!(ratings.addresses, ["10.96.0.21"]);
    assert_eq!(ratings.source, ServiceSource::Kubernetes);
    let protos: Vec<(u32, Protocol)> = ratings.ports.iter().map(|p| (p.port, p.protocol)).collect();
    assert_eq!(
        protos,
        [
            (9080, Protocol::Http),
            (9090, Protocol::Grpc),
            (3306, Protocol::Mysql)
        ]
    );
    let custom = Registry::build(
        &[],
        &RegistryOptions {
            domain: "corp.internal".into(),
        },
    );
    assert_eq!(custom.domain(), "corp.internal");
}

#[test]
fn endpoint_slices_give_endpoints_with_pod_details() {
    let reg = registry();
    let eps = reg.endpoints("ratings.bookinfo.svc.cluster.local", 9080);
    assert_eq!(eps.len(), 2);
    let ready = eps
        .iter()
        .find(|e| e.address == "10.244.0.31")
        .expect("ready endpoint");
    assert_eq!(ready.port, 8080);
    assert!(ready.healthy);
    assert_eq!(ready.service_account, "bookinfo-ratings");
    assert_eq!(ready.labels["version"], "v1");
    assert_eq!(ready.workload_name, "ratings-v1-xyz");
    assert_eq!(
        ready.locality.zone, "eu-west-1b",
        "zone from the slice when the pod has none"
    );
    assert!(
        !eps.iter()
            .find(|e| e.address == "10.244.0.32")
            .expect("not ready")
            .healthy
    );
    // The grpc port has a slice port; the mysql port has none, so no endpoints.
    assert_eq!(
        reg.endpoints("ratings.bookinfo.svc.cluster.local", 9090)
            .len(),
        2
    );
    assert!(
        reg.endpoints("ratings.bookinfo.svc.cluster.local", 3306)
            .is_empty()
    );
}

#[test]
fn services_without_slices_select_running_pods() {
    let reg = registry();
    let eps = reg.endpoints("reviews.bookinfo.svc.cluster.local", 9080);
    let addrs: Vec<&str> = eps.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(
        addrs,
        ["10.244.0.11", "10.244.0.12"],
        "the Succeeded pod is not an endpoint"
    );
    assert_eq!(
        eps[0].locality,
        Locality {
            region: "us-east".into(),
            zone: "us-east-1a".into(),
            subzone: String::new()
        }
    );
    assert_eq!(eps[1].locality.to_string(), "us-west/us-west-2b/rack7");
    let v2 = reg.subset_endpoints(
        "reviews.bookinfo.svc.cluster.local",
        9080,
        &labels(&[("version", "v2")]),
    );
    assert_eq!(v2.len(), 1);
    assert_eq!(v2[0].workload_name, "reviews-v2-def");
}

#[test]
fn service_entries_static_dns_and_workload_selector() {
    let reg = registry();
    let db = reg.service("db.legacy.internal").expect("db");
    assert_eq!(db.resolution, Resolution::ClientSideLb);
    assert_eq!(db.location, MeshLocation::Internal);
    let eps = reg.endpoints("db.legacy.internal", 5432);
    let ports: Vec<(&str, u32, u32)> = eps
        .iter()
        .map(|e| (e.address.as_str(), e.port, e.weight))
        .collect();
    assert_eq!(
        ports,
        [("192.168.50.11", 15432, 1), ("192.168.50.12", 25432, 3)]
    );
    assert_eq!(eps[0].locality.to_string(), "eu/eu-1/rack1");

    let httpbin = reg.service("httpbin.org").expect("httpbin");
    assert_eq!(httpbin.resolution, Resolution::DnsLb);
    assert_eq!(httpbin.location, MeshLocation::External);
    let eps = reg.endpoints("httpbin.org", 443);
    assert_eq!((eps[0].address.as_str(), eps[0].port), ("httpbin.org", 443));

    let vm = reg.endpoints("api.vm.internal", 80);
    assert_eq!(vm.len(), 1);
    assert_eq!((vm[0].address.as_str(), vm[0].port), ("172.16.0.5", 8080));
    assert_eq!(vm[0].service_account, "vm-api");
    assert_eq!(vm[0].network, "vm-net");
    assert_eq!(vm[0].locality.to_string(), "us-east/us-east-1b/");
}

#[test]
fn host_resolution_like_istio() {
    let reg = registry();
    let fqdn = "reviews.bookinfo.svc.cluster.local";
    for name in ["reviews", "reviews.bookinfo", "reviews.bookinfo.svc", fqdn] {
        assert_eq!(
            reg.lookup(name, "bookinfo").map(|s| s.hostname.as_str()),
            Some(fqdn),
            "{name}"
        );
    }
    assert!(
        reg.lookup("reviews", "default").is_none(),
        "short names are namespace-relative"
    );
    assert_eq!(
        reg.lookup("reviews.bookinfo", "default")
            .map(|s| s.hostname.as_str()),
        Some(fqdn)
    );
    assert_eq!(
        reg.lookup("httpbin.org", "default")
            .map(|s| s.hostname.as_str()),
        Some("httpbin.org")
    );
    assert_eq!(
        reg.resolve_config("reviews", "bookinfo")
            .map(|s| s.hostname.as_str()),
        Some(fqdn)
    );
    assert!(
        reg.resolve_config("reviews.bookinfo", "bookinfo").is_none(),
        "config hosts with a dot are taken as written"
    );
}

#[test]
fn conflicting_hosts_keep_the_kubernetes_service() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: clash, namespace: bookinfo}\nspec:\n  hosts: [reviews.bookinfo.svc.cluster.local]\n  resolution: DNS\n  ports: [{number: 80, name: http, protocol: HTTP}]\n";
    let mut objs: Vec<Object> = decode_all("b.yaml", &fixture("bookinfo.yaml"))
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    objs.extend(decode_all("se.yaml", se).into_iter().map(|(o, _)| o));
    let reg = Registry::build(&objs, &RegistryOptions::default());
    assert_eq!(
        reg.service("reviews.bookinfo.svc.cluster.local")
            .map(|s| s.source.clone()),
        Some(ServiceSource::Kubernetes)
    );
    assert_eq!(reg.conflicts.len(), 1);
}

#[test]
fn protocol_from_port_name_and_app_protocol() {
    assert_eq!(Protocol::from_port(Some("http-web"), None), Protocol::Http);
    assert_eq!(Protocol::from_port(Some("grpc-web"), None), Protocol::Grpc);
    assert_eq!(
        Protocol::from_port(Some("web"), Some("kubernetes.io/h2c")),
        Protocol::Http2
    );
    assert_eq!(
        Protocol::from_port(Some("tcp-db"), Some("mongo")),
        Protocol::Mongo
    );
    assert_eq!(
        Protocol::from_port(Some("metrics"), None),
        Protocol::Unsupported
    );
    assert_eq!(Protocol::from_port(None, None), Protocol::Unsupported);
}
