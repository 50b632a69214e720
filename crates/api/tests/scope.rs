//! Visibility and Sidecar scoping helpers, workload → services, and
//! auto-allocated ServiceEntry VIPs.

mod common;

use std::collections::BTreeMap;

use common::{decode_all, fixture};
use weft_api::Object;
use weft_api::registry::*;

fn objects(files: &[&str]) -> Vec<Object> {
    files
        .iter()
        .flat_map(|f| decode_all(f, &fixture(f)).into_iter().map(|(o, _)| o))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn export_to_visibility() {
    assert!(export_visible(&[], "a", "b", &[]), "public by default");
    assert!(!export_visible(&strings(&["."]), "a", "b", &[]));
    assert!(export_visible(&strings(&["."]), "a", "a", &[]));
    assert!(export_visible(&strings(&["b", "c"]), "a", "b", &[]));
    assert!(!export_visible(&strings(&["~"]), "a", "a", &[]));
    assert!(
        !export_visible(&[], "a", "b", &strings(&["."])),
        "mesh default applies when unset"
    );
    assert!(export_visible(&strings(&["*"]), "a", "b", &strings(&["."])));
}

#[test]
fn egress_hosts_match_namespace_and_host() {
    let dot = EgressHost::parse("./*", "bookinfo").expect("parse");
    assert_eq!(dot.namespace, NamespaceSelector::Named("bookinfo".into()));
    assert!(dot.matches("bookinfo", "reviews.bookinfo.svc.cluster.local"));
    assert!(!dot.matches("default", "reviews.default.svc.cluster.local"));
    let any = EgressHost::parse("*/httpbin.org", "bookinfo").expect("parse");
    assert!(any.matches("egress", "httpbin.org"));
    assert!(!any.matches("egress", "api.httpbin.org"));
    let wild = EgressHost::parse("istio-system/*.example.com", "x").expect("parse");
    assert!(wild.matches("istio-system", "a.example.com"));
    assert!(!wild.matches("other", "a.example.com"));
    let none = EgressHost::parse("~/*", "x").expect("parse");
    assert!(!none.matches("x", "anything"));
    assert_eq!(EgressHost::parse("no-slash", "x"), None);
}

#[test]
fn sidecar_selection_prefers_selector_then_namespace_then_root() {
    let root = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  egress: [{hosts: [\"*/*\"]}]\n";
    let mut objs = objects(&["egress.yaml"]);
    objs.extend(decode_all("root.yaml", root).into_iter().map(|(o, _)| o));
    let pick = |ns: &str, l: &[(&str, &str)]| {
        sidecar_for_workload(&objs, ns, &labels(l), "istio-system")
            .map(|o| format!("{}/{}", o.namespace(), o.name()))
    };
    assert_eq!(
        pick("bookinfo", &[("app", "ratings")]).as_deref(),
        Some("bookinfo/ratings")
    );
    assert_eq!(
        pick("bookinfo", &[("app", "reviews")]).as_deref(),
        Some("bookinfo/default")
    );
    assert_eq!(
        pick("shop", &[("app", "ratings")]).as_deref(),
        Some("istio-system/default")
    );
    assert_eq!(
        sidecar_for_workload(&objs, "shop", &labels(&[]), "nowhere"),
        None
    );
}

#[test]
fn services_for_a_workload() {
    let objs = objects(&["bookinfo.yaml", "egress.yaml"]);
    let reg = Registry::build(&objs, &RegistryOptions::default());
    let names = |ns: &str, l: &[(&str, &str)]| -> Vec<String> {
        reg.services_for_workload(ns, &labels(l))
            .iter()
            .map(|s| s.hostname.clone())
            .collect()
    };
    assert_eq!(
        names("bookinfo", &[("app", "reviews"), ("version", "v1")]),
        ["reviews.bookinfo.svc.cluster.local"]
    );
    assert_eq!(names("bookinfo", &[("app", "vm-api")]), ["api.vm.internal"]);
    assert!(names("other", &[("app", "reviews")]).is_empty());
}

#[test]
fn service_entries_without_addresses_get_stable_vips() {
    let objs = objects(&["bookinfo.yaml", "egress.yaml"]);
    let reg = Registry::build(&objs, &RegistryOptions::default());
    let vip = |h: &str| {
        reg.service(h)
            .and_then(|s| s.auto_allocated_address.clone())
    };
    let httpbin = vip("httpbin.org").expect("httpbin gets a VIP");
    assert!(httpbin.starts_with("240.240."), "{httpbin}");
    assert_ne!(vip("api.vm.internal"), Some(httpbin.clone()));
    assert_eq!(vip("db.legacy.internal"), None, "has an address");
    assert_eq!(
        vip("reviews.bookinfo.svc.cluster.local"),
        None,
        "Kubernetes services have cluster IPs"
    );
    // Adding an unrelated ServiceEntry does not move existing VIPs.
    let extra = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: extra, namespace: default}\nspec:\n  hosts: [extra.example.com]\n  resolution: DNS\n  ports: [{number: 443, name: tls, protocol: TLS}]\n";
    let mut more = objs.clone();
    more.extend(decode_all("extra.yaml", extra).into_iter().map(|(o, _)| o));
    let reg2 = Registry::build(&more, &RegistryOptions::default());
    assert_eq!(
        reg2.service("httpbin.org")
            .and_then(|s| s.auto_allocated_address.clone()),
        Some(httpbin)
    );
    assert!(
        reg2.service("extra.example.com")
            .and_then(|s| s.auto_allocated_address.clone())
            .is_some()
    );
}

#[test]
fn destination_rule_lookup_order() {
    let dr = |name: &str, ns: &str, host: &str, extra: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: \"{host}\"\n{extra}"
        )
    };
    let texts = [
        dr("in-service-ns", "shop", "cart", ""),
        dr("in-client-ns", "web", "cart.shop.svc.cluster.local", ""),
        dr("root-wild", "istio-system", "*.svc.cluster.local", ""),
        dr(
            "private",
            "other",
            "cart.shop.svc.cluster.local",
            "  exportTo: [\".\"]\n",
        ),
        dr(
            "selected",
            "web",
            "cart.shop.svc.cluster.local",
            "  workloadSelector: {matchLabels: {app: x}}\n",
        ),
    ];
    let objs: Vec<Object> = texts
        .iter()
        .flat_map(|t| decode_all("dr.yaml", t).into_iter().map(|(o, _)| o))
        .collect();
    let pick = |client: &str, host: &str| {
        destination_rule_for(
            &objs,
            host,
            client,
            "shop",
            "istio-system",
            DEFAULT_DOMAIN,
            &[],
        )
        .map(|o| o.name().to_string())
    };
    let cart = "cart.shop.svc.cluster.local";
    assert_eq!(pick("web", cart).as_deref(), Some("in-client-ns"));
    assert_eq!(pick("shop", cart).as_deref(), Some("in-service-ns"));
    assert_eq!(pick("billing", cart).as_deref(), Some("in-service-ns"));
    assert_eq!(
        pick("billing", "pay.billing.svc.cluster.local").as_deref(),
        Some("root-wild")
    );
    assert_eq!(
        pick("other", "pay.billing.svc.cluster.local").as_deref(),
        Some("root-wild")
    );
    assert_eq!(
        pick("other", cart).as_deref(),
        Some("private"),
        "a rule in the client's namespace wins"
    );
    assert_eq!(pick("web", "httpbin.org"), None);
}
