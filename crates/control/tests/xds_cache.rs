//! The encoded per-proxy cache ([`weft_control::xds_cache`]) serves exactly
//! what a full translation gives each proxy: for every golden scenario and
//! for the scenario's proxy plus a sidecar of every workload in it (so
//! proxies share scope parts), all four types are byte-equal to
//! `MeshView::translate`. After an endpoint change only the changed
//! services' assignments are rebuilt, the rest are the same `Arc`s, and the
//! result still equals a full translation.

#[path = "golden/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weft_api::store::{StoreOptions, build_snapshot};
use weft_control::discovery::apply_snapshot;
use weft_control::translate::{MeshView, ProxyNode, TranslateOptions, TranslationGenerator};
use weft_control::xds_cache::XdsCache;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{Node, ProxyKind, ProxyMetadata, PushScope};

const TYPES: [&str; 4] = [LISTENER, ROUTE, CLUSTER, ENDPOINT];

/// A sidecar for every workload endpoint in the view, plus `extra`.
fn nodes(view: &MeshView, extra: Node) -> Vec<Node> {
    let mut seen = BTreeSet::new();
    let mut out = vec![extra];
    for svc in view.registry.services() {
        for e in view.registry.all_endpoints(&svc.hostname) {
            if e.workload_name.is_empty() || !seen.insert(e.address.clone()) {
                continue;
            }
            let md = ProxyMetadata {
                kind: ProxyKind::Sidecar,
                ips: vec![e.address.clone()],
                pod_name: e.workload_name.clone(),
                namespace: e.namespace.clone(),
                labels: e.labels.clone(),
                service_account: e.service_account.clone(),
                ..ProxyMetadata::default()
            };
            out.push(md.to_node());
        }
    }
    // The same workload in another namespace: another scope.
    let mut other = out[0].clone();
    other.id = other.id.replace("default", "elsewhere");
    if let Some(md) = other.metadata.as_mut() {
        md.fields.insert(
            "NAMESPACE".into(),
            weft_xds::string_struct([("x", "elsewhere")]).fields["x"].clone(),
        );
    }
    out.push(other);
    out
}

/// Every type served by `cache` for `node` equals a full translation.
fn assert_same(cache: &XdsCache, view: &MeshView, node: &Node, what: &str) {
    let proxy = ProxyNode::from_node(node).expect("valid node");
    let full = view.translate(&proxy);
    for t in TYPES {
        let want = full.resource_set(t);
        let got = cache.generate(node, t).expect("valid node");
        let names = |s: &weft_xds::ResourceSet| s.names().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(names(&got), names(&want), "{what}: {} {t}: names", node.id);
        for r in want.iter() {
            let g = got.get(&r.name).expect("same names");
            assert!(
                g.any == r.any,
                "{what}: {} {t} {}: cached bytes differ from a full translation",
                node.id,
                r.name
            );
        }
        assert_eq!(got.version(), want.version(), "{what}: {} {t}", node.id);
    }
}

#[test]
fn cached_output_equals_full_translation_in_every_scenario() {
    let mut totals = (0, 0);
    for name in harness::scenarios() {
        let snapshot = harness::snapshot_of(&name);
        let dir = harness::golden_dir().join(&name);
        let proxy_file = if dir.join("proxy.yaml").exists() {
            dir.join("proxy.yaml")
        } else {
            harness::golden_dir().join("_base/proxy.yaml")
        };
        let view = MeshView::new(&snapshot, TranslateOptions::default());
        let cache = XdsCache::new(view.clone());
        let nodes = nodes(&view, harness::node_of(&proxy_file));
        assert!(nodes.len() >= 3, "{name}: too few proxies to compare");
        // Twice: the second round is served from the cache.
        for round in 0..2 {
            for node in &nodes {
                assert_same(&cache, &view, node, &format!("{name} round {round}"));
            }
        }
        let (proxies, scopes) = cache.stats();
        let ids: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(proxies, ids.len(), "{name}");
        assert!(scopes <= proxies, "{name}");
        totals.0 += proxies;
        totals.1 += scopes;
    }
    let (proxies, scopes) = totals;
    assert!(
        scopes * 3 < proxies * 2,
        "{scopes} scope parts for {proxies} proxies: too little shared"
    );
}

#[test]
fn endpoint_change_rebuilds_only_changed_assignments() {
    let base = std::fs::read_to_string(harness::golden_dir().join("_base/bookinfo.yaml")).unwrap();
    let files = |text: &str| BTreeMap::from([("bookinfo.yaml".to_string(), text.to_string())]);
    let opts = StoreOptions::default();
    let snap1 = build_snapshot(&files(&base), Vec::new(), None, &opts);
    let view1 = MeshView::new(&snap1, TranslateOptions::default());
    let generator = TranslationGenerator::new(view1.clone());
    let nodes = nodes(
        &view1,
        harness::node_of(&harness::golden_dir().join("_base/proxy.yaml")),
    );
    let before: Vec<_> = nodes
        .iter()
        .map(|n| generator.cache().generate(n, ENDPOINT).unwrap())
        .collect();
    let clusters_before: Vec<_> = nodes
        .iter()
        .map(|n| generator.cache().generate(n, CLUSTER).unwrap())
        .collect();
    // Every sidecar in `default` shares one scope part; `elsewhere` has its own.
    let (proxies, scopes) = generator.cache().stats();
    assert!(proxies >= 5, "{proxies} proxies");
    assert_eq!(scopes, 2, "{proxies} proxies");

    // reviews-v2 moves to another IP: only reviews' assignments change.
    assert!(base.contains("podIP: 10.1.0.22"));
    let moved = base.replace("podIP: 10.1.0.22", "podIP: 10.1.0.122");
    let snap2 = build_snapshot(&files(&moved), Vec::new(), Some(&snap1), &opts);
    let request = apply_snapshot(&generator, &snap1, &snap2, &TranslateOptions::default());
    // CDS and LDS too: one of the proxies is reviews-v2's own sidecar
    // (10.1.0.22), whose inbound ports follow its endpoint.
    use weft_xds::XdsType::{Cluster, Endpoint, Listener};
    assert_eq!(
        request.scope,
        PushScope::Types([Endpoint, Cluster, Listener].into()),
        "{}",
        request.reason
    );
    let view2 = generator.view();
    assert_eq!(view2.version, snap2.version);
    for (node, old) in nodes.iter().zip(&before) {
        assert_same(generator.cache(), &view2, node, "after the endpoint change");
        let new = generator.cache().generate(node, ENDPOINT).unwrap();
        let changed: Vec<String> = new
            .changed_from(old)
            .iter()
            .map(|r| r.name.clone())
            .collect();
        for name in &changed {
            assert!(
                name.ends_with("|reviews.default.svc.cluster.local"),
                "{}: {name} changed though only reviews moved",
                node.id
            );
        }
        if node.id.contains("productpage") && !node.id.contains("elsewhere") {
            assert!(!changed.is_empty(), "reviews' assignment did not change");
        }
        for r in new.iter() {
            if !r.name.contains("reviews") {
                assert!(
                    Arc::ptr_eq(r, old.get(&r.name).unwrap()),
                    "{} {}: rebuilt though its service did not change",
                    node.id,
                    r.name
                );
            }
        }
    }
    // Clusters carried over: the same shared map.
    let clusters_after = generator.cache().generate(&nodes[0], CLUSTER).unwrap();
    assert_eq!(clusters_after.version(), clusters_before[0].version());

    // A config change is a full push, and the output still matches.
    let with_vs = format!(
        "{moved}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - timeout: 3s\n    route:\n    - destination: {{host: reviews}}\n"
    );
    let snap3 = build_snapshot(&files(&with_vs), Vec::new(), Some(&snap2), &opts);
    let request = apply_snapshot(&generator, &snap2, &snap3, &TranslateOptions::default());
    assert_eq!(request.scope, PushScope::Full, "{}", request.reason);
    let view3 = generator.view();
    for node in &nodes {
        assert_same(generator.cache(), &view3, node, "after a config change");
    }
}

#[test]
fn source_labels_split_scopes_and_routes_still_match() {
    let base = std::fs::read_to_string(harness::golden_dir().join("_base/bookinfo.yaml")).unwrap();
    let config = format!(
        "{base}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - sourceLabels: {{app: productpage}}\n    route:\n    - destination: {{host: reviews, subset: v2}}\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n"
    );
    let files = BTreeMap::from([("bookinfo.yaml".to_string(), config)]);
    let snap = build_snapshot(&files, Vec::new(), None, &StoreOptions::default());
    assert!(!snap.has_errors(), "{:?}", snap.problems.first());
    let view = MeshView::new(&snap, TranslateOptions::default());
    let cache = XdsCache::new(view.clone());
    let nodes = nodes(
        &view,
        harness::node_of(&harness::golden_dir().join("_base/proxy.yaml")),
    );
    for node in &nodes {
        assert_same(&cache, &view, node, "sourceLabels");
    }
    // productpage's routes differ from reviews' own sidecar's: the key
    // keeps them apart although both live in `default`.
    let route_of = |pod: &str| {
        let node = nodes
            .iter()
            .find(|n| n.id.contains(pod))
            .unwrap_or_else(|| panic!("no node for {pod}"));
        cache.generate(node, ROUTE).unwrap().version()
    };
    assert_ne!(route_of("productpage"), route_of("ratings"));
}
