//! The real `weftd` binary with real ADS clients (weft_xds's `AdsClient`
//! over loopback gRPC):
//!
//! - what weftd keeps per proxy follows the connected proxies: 12 sidecars
//!   in 3 namespaces connect and disconnect, and `/debug/cachez`,
//!   `/debug/syncz`, `pilot_xds` and `weft_xds_cache_*` go back to their
//!   baseline; a proxy connecting again gets the whole config, equal to a
//!   fresh translation;
//! - an endpoint change of a headless service is an endpoints-only push
//!   that also brings the new NameTable to the sidecar with DNS capture
//!   (once per change), never to a proxy without DNS capture, and an
//!   ordinary endpoint change sends no NameTable.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{monitoring_get as get, monitoring_json as get_json};
use weft_api::store::{Store, StoreOptions};
use weft_control::translate::{MeshView, ProxyNode, TranslateOptions};
use weft_xds::nds::{NAME_TABLE, NameTable};
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{AdsClient, Any, ClientConfig, ClientHandle, ProxyMetadata};

/// Generous bound for anything asynchronous (file watch, debounce, push).
const BOUND: Duration = Duration::from_secs(60);
const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// The value of an unlabelled sample in weftd's `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{body}"))
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

/// Whether syncz shows `id` with every type in `types` ACKed as sent.
fn synced(syncz: &Value, id: &str, types: &[&str]) -> bool {
    syncz.as_array().is_some_and(|rows| {
        rows.iter().any(|r| {
            let v = &r["weft_versions"];
            r["proxy"] == id
                && types.iter().all(|t| {
                    let sent = v[t]["sent"].as_str().unwrap_or("");
                    !sent.is_empty() && Some(sent) == v[t]["acked"].as_str()
                })
        })
    })
}

/// Responses a client handed to its handler, per type URL, with the last
/// resources of each.
#[derive(Default)]
struct Seen {
    calls: BTreeMap<String, usize>,
    last: BTreeMap<String, Vec<Any>>,
}

type Shared = Arc<Mutex<Seen>>;

fn spawn(
    xds: SocketAddr,
    md: &ProxyMetadata,
    extra_types: Option<Vec<String>>,
) -> (ClientHandle, Shared) {
    let seen: Shared = Arc::default();
    let sink = seen.clone();
    let mut config = ClientConfig::new(format!("http://{xds}"), md.to_node());
    if let Some(t) = extra_types {
        config.extra_types = t;
    }
    let handle = AdsClient::spawn(config, move |type_url: &str, resources: &[Any]| {
        let mut s = sink.lock().map_err(|e| e.to_string())?;
        *s.calls.entry(type_url.to_string()).or_default() += 1;
        s.last.insert(type_url.to_string(), resources.to_vec());
        Ok(())
    })
    .expect("client");
    (handle, seen)
}

fn sidecar(ns: &str, app: &str, ip: &str) -> ProxyMetadata {
    ProxyMetadata {
        ips: vec![ip.into()],
        pod_name: format!("{app}-0"),
        namespace: ns.into(),
        workload_name: app.into(),
        labels: [("app", app)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ProxyMetadata::default()
    }
}

/// Three namespaces with two services each; `gamma` scopes its sidecars
/// with a Sidecar resource.
fn mesh() -> String {
    let mut out = String::new();
    for (n, ns) in ["alpha", "beta", "gamma"].iter().enumerate() {
        for (s, svc) in ["web", "api"].iter().enumerate() {
            out.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.{n}.{s}0\n  selector: {{app: {svc}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {svc}-0, namespace: {ns}, labels: {{app: {svc}}}}}\nspec: {{containers: [{{name: app, ports: [{{containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: 10.1.{n}.{s}0}}\n---\n"
            ));
        }
    }
    out.push_str("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: gamma}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n");
    out
}

/// The versions a fresh translation of `dir` gives `md`'s proxy.
fn expected_versions(dir: &Path, md: &ProxyMetadata) -> BTreeMap<String, String> {
    let store = Store::load(dir, StoreOptions::default()).expect("load config");
    let view = MeshView::new(&store.snapshot(), TranslateOptions::default());
    let proxy = ProxyNode::from_node(&md.to_node()).expect("proxy node");
    let res = view.translate(&proxy);
    TYPES
        .iter()
        .map(|t| (t.to_string(), res.resource_set(t).version()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_proxy_state_follows_connected_proxies() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), mesh()).expect("write config");
    let weftd = support::Weftd::start(dir.path(), std::iter::empty::<&str>());
    let (xds, mon) = (weftd.addr("xds-addr"), weftd.addr("monitoring-addr"));
    let baseline = get_json(mon, "/debug/cachez");
    for k in [
        "connectedProxies",
        "proxies",
        "proxyParts",
        "scopes",
        "nameTables",
    ] {
        assert_eq!(baseline[k], 0, "{k} before any proxy: {baseline}");
    }

    let mut clients = Vec::new();
    for (n, ns) in ["alpha", "beta", "gamma"].iter().enumerate() {
        for i in 0..4 {
            let md = sidecar(ns, ["web", "api"][i % 2], &format!("10.2.{n}.{i}"));
            let md = ProxyMetadata {
                pod_name: format!("{}-{i}", md.workload_name),
                ..md
            };
            let (handle, seen) = spawn(xds, &md, None);
            clients.push((md, handle, seen));
        }
    }
    wait_for("12 sidecars synced", || {
        let syncz = get_json(mon, "/debug/syncz");
        let short = ["cds", "eds", "lds", "rds"];
        clients
            .iter()
            .all(|(md, _, _)| synced(&syncz, &md.node_id(), &short))
            .then_some(())
    })
    .await;
    let busy = get_json(mon, "/debug/cachez");
    assert_eq!(busy["connectedProxies"], 12, "{busy}");
    assert_eq!(busy["proxies"], 12, "{busy}");
    assert_eq!(busy["proxyParts"], 12, "{busy}");
    assert_eq!(busy["scopes"], 3, "one scope per namespace: {busy}");
    assert_eq!(metric(mon, "pilot_xds"), 12.0);
    assert_eq!(metric(mon, "weft_xds_cache_proxies"), 12.0);

    for (_, handle, _) in clients.drain(..) {
        handle.shutdown().await;
    }
    let after = wait_for("weftd to forget every proxy", || {
        let c = get_json(mon, "/debug/cachez");
        (c["connectedProxies"] == 0 && c["proxies"] == 0).then_some(c)
    })
    .await;
    for k in [
        "connectedProxies",
        "streams",
        "proxies",
        "proxyParts",
        "scopes",
        "nameTables",
    ] {
        assert_eq!(after[k], baseline[k], "{k} after every proxy left: {after}");
    }
    assert_eq!(get_json(mon, "/debug/syncz"), Value::Array(vec![]));
    assert_eq!(metric(mon, "pilot_xds"), 0.0);
    assert_eq!(metric(mon, "weft_xds_cache_proxies"), 0.0);
    assert_eq!(metric(mon, "weft_xds_cache_scopes"), 0.0);

    // A sidecar that comes back gets its whole config, as translated anew.
    let md = sidecar("gamma", "api", "10.2.2.9");
    let (handle, _) = spawn(xds, &md, None);
    let want = expected_versions(dir.path(), &md);
    let state = handle.state();
    wait_for("the returning sidecar's config", || {
        let st = state.borrow();
        TYPES
            .iter()
            .all(|t| Some(st.version(t)) == want.get(*t).map(String::as_str))
            .then_some(())
    })
    .await;
    let back = get_json(mon, "/debug/cachez");
    assert_eq!(
        (back["proxies"].as_u64(), back["scopes"].as_u64()),
        (Some(1), Some(1)),
        "{back}"
    );
    handle.shutdown().await;
}

const HEADLESS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp-pg, port: 5432}]
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
kind: Service
metadata: {name: productpage, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: productpage}
  ports: [{name: http, port: 9080, targetPort: 8080}]
"#;

fn pod(app: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-0, namespace: default, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: app}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
    )
}

/// Replaces `path` in one step (a hidden temporary file renamed over it),
/// so the config watch never sees it empty.
fn replace(path: &Path, text: &str) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the config file");
}

fn db_ips(seen: &Shared) -> Option<Vec<String>> {
    let s = seen.lock().expect("lock");
    let any = s.last.get(NAME_TABLE)?.first()?;
    let table = NameTable::from_any(any).expect("NameTable");
    Some(table.table.get("db.default.svc.cluster.local")?.ips.clone())
}

fn calls(seen: &Shared, type_url: &str) -> usize {
    seen.lock()
        .expect("lock")
        .calls
        .get(type_url)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_endpoint_changes_push_name_tables_to_dns_proxies_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.yaml"), HEADLESS).expect("write");
    let db = dir.path().join("db-pod.yaml");
    let reviews = dir.path().join("reviews-pod.yaml");
    std::fs::write(&db, pod("db", "10.1.0.50")).expect("write");
    std::fs::write(&reviews, pod("reviews", "10.1.0.21")).expect("write");
    std::fs::write(
        dir.path().join("pp-pod.yaml"),
        pod("productpage", "10.1.0.10"),
    )
    .expect("write");
    let weftd = support::Weftd::start(dir.path(), std::iter::empty::<&str>());
    let (xds, mon) = (weftd.addr("xds-addr"), weftd.addr("monitoring-addr"));

    let mut dns = sidecar("default", "productpage", "10.1.0.10");
    dns.extra.insert("DNS_CAPTURE".into(), "true".into());
    let (dns_client, dns_seen) = spawn(xds, &dns, None);
    // Subscribes to NDS although it did not ask for DNS capture.
    let plain = sidecar("default", "reviews", "10.1.0.21");
    let (plain_client, plain_seen) = spawn(xds, &plain, Some(vec![NAME_TABLE.to_string()]));
    wait_for("both proxies synced, NDS included", || {
        let syncz = get_json(mon, "/debug/syncz");
        let all = ["cds", "eds", "lds", "nds"];
        (synced(&syncz, &dns.node_id(), &all) && synced(&syncz, &plain.node_id(), &all))
            .then_some(())
    })
    .await;
    assert_eq!(db_ips(&dns_seen), Some(vec!["10.1.0.50".to_string()]));
    assert_eq!(
        calls(&plain_seen, NAME_TABLE),
        1,
        "the initial (empty) answer"
    );
    assert!(
        db_ips(&plain_seen).is_none(),
        "no table without DNS capture"
    );
    let full_before = metric(mon, "weft_push_triggers_full_total");
    let eds_before = metric(mon, "weft_push_triggers_eds_total");

    // The headless service's pod moves: EDS-only push with NDS.
    replace(&db, &pod("db", "10.1.0.51"));
    wait_for("the new db IP in the DNS proxy's table", || {
        (db_ips(&dns_seen)? == ["10.1.0.51"]).then_some(())
    })
    .await;
    assert_eq!(calls(&dns_seen, NAME_TABLE), 2);
    assert_eq!(metric(mon, "weft_push_triggers_full_total"), full_before);
    assert_eq!(
        metric(mon, "weft_push_triggers_eds_total"),
        eds_before + 1.0
    );

    // An ordinary endpoint change: EDS, no NameTable.
    let eds_version = dns_client.state().borrow().version(ENDPOINT).to_string();
    replace(&reviews, &pod("reviews", "10.1.0.22"));
    let state = dns_client.state();
    wait_for("the reviews endpoint change at the DNS proxy", || {
        (state.borrow().version(ENDPOINT) != eds_version).then_some(())
    })
    .await;
    // Sentinel: the next headless change brings exactly one more table, so
    // none came in between.
    replace(&db, &pod("db", "10.1.0.52"));
    wait_for("the third db IP", || {
        (db_ips(&dns_seen)? == ["10.1.0.52"]).then_some(())
    })
    .await;
    assert_eq!(
        calls(&dns_seen, NAME_TABLE),
        3,
        "one table per headless change"
    );
    assert_eq!(
        calls(&plain_seen, NAME_TABLE),
        1,
        "no table pushed without DNS capture"
    );
    assert_eq!(metric(mon, "weft_push_triggers_full_total"), full_before);
    dns_client.shutdown().await;
    plain_client.shutdown().await;
}

/// How endpoint-only changes are pushed (no binary): a headless pod
/// moving is EDS with NDS, and the cached name table follows it; an
/// ordinary pod moving is EDS alone; a change of service accounts or of
/// whether every headless instance runs a sidecar (what clusters read) is
/// a full push, as in Istio.
#[test]
fn endpoint_changes_push_what_they_change() {
    use weft_api::store::build_snapshot;
    use weft_control::discovery::apply_snapshot;
    use weft_control::translate::TranslationGenerator;
    use weft_xds::{NodeInfo, PushScope, XdsType};

    let files = |db: &str, reviews: &str, pp: &str| {
        BTreeMap::from([
            ("services.yaml".to_string(), HEADLESS.to_string()),
            ("db.yaml".to_string(), db.to_string()),
            ("reviews.yaml".to_string(), reviews.to_string()),
            ("pp.yaml".to_string(), pp.to_string()),
        ])
    };
    // Another productpage pod, so adding the sidecar's own pod later does
    // not change productpage's service accounts.
    let pp1 = pod("productpage", "10.1.0.11").replace("productpage-0", "productpage-1");
    let opts = StoreOptions::default();
    let topts = TranslateOptions::default();
    let mut snap = build_snapshot(
        &files(&pod("db", "10.1.0.50"), &pod("reviews", "10.1.0.21"), &pp1),
        Vec::new(),
        None,
        &opts,
    );
    let generator = TranslationGenerator::new(MeshView::new(&snap, topts.clone()));
    let mut md = sidecar("default", "productpage", "10.1.0.10");
    md.extra.insert("DNS_CAPTURE".into(), "true".into());
    let node = NodeInfo::from_node(Some(md.to_node())).unwrap();
    let table = |g: &TranslationGenerator| {
        let set = weft_xds::Generator::generate(g, &node, NAME_TABLE);
        let t = NameTable::from_any(&set.iter().next().expect("a table").any).unwrap();
        t.table["db.default.svc.cluster.local"].ips.clone()
    };
    assert_eq!(table(&generator), ["10.1.0.50"]);
    let inbound = |g: &TranslationGenerator, node: &NodeInfo| {
        let set = weft_xds::Generator::generate(g, node, CLUSTER);
        let names = set.names().filter(|n| n.starts_with("inbound|"));
        names.map(str::to_string).collect::<Vec<_>>()
    };
    let reviews_node =
        NodeInfo::from_node(Some(sidecar("default", "reviews", "10.1.0.21").to_node())).unwrap();
    assert_eq!(inbound(&generator, &node), ["inbound|9080||"]);
    let reviews_cds = weft_xds::Generator::generate(&generator, &reviews_node, CLUSTER);
    assert_eq!(generator.cache().detail().proxies, 2);
    let eds = PushScope::Types([XdsType::Endpoint].into());
    let mut step = |db: String, reviews: String, pp: &str| {
        let next = build_snapshot(&files(&db, &reviews, pp), Vec::new(), Some(&snap), &opts);
        let request = apply_snapshot(&generator, &snap, &next, &topts);
        snap = next;
        request
    };

    // A headless pod moves: EDS and NDS; the cached table follows.
    let r = step(pod("db", "10.1.0.51"), pod("reviews", "10.1.0.21"), &pp1);
    assert_eq!(r.scope, eds, "{}", r.reason);
    assert_eq!(r.type_urls, [NAME_TABLE.to_string()].into());
    assert_eq!(table(&generator), ["10.1.0.51"]);
    let fresh = weft_control::translate::nds::generate(&generator.view(), &node);
    assert_eq!(
        weft_xds::Generator::generate(&generator, &node, NAME_TABLE).version(),
        fresh.version()
    );
    // Nobody's own part is touched: both proxies' entries carried over.
    assert_eq!(generator.cache().detail().proxies, 2);

    // An ordinary pod moves away from the reviews sidecar's address: EDS,
    // and CDS/LDS for that sidecar (its inbound ports read its endpoint);
    // productpage's own part is kept.
    let own = PushScope::Types([XdsType::Endpoint, XdsType::Cluster, XdsType::Listener].into());
    let r = step(pod("db", "10.1.0.51"), pod("reviews", "10.1.0.22"), &pp1);
    assert_eq!(r.scope, own, "{}", r.reason);
    assert!(r.type_urls.is_empty(), "{:?}", r.type_urls);
    assert_eq!(generator.cache().detail().proxies, 1);
    assert_eq!(
        weft_xds::Generator::generate(&generator, &reviews_node, CLUSTER).version(),
        reviews_cds.version(),
        "reviews' inbound port did not change"
    );

    // productpage's own pod appears: its inbound port follows the
    // endpoint (targetPort 8080), so CDS and LDS are pushed too.
    let pp = format!("{pp1}---\n{}", pod("productpage", "10.1.0.10"));
    let r = step(pod("db", "10.1.0.51"), pod("reviews", "10.1.0.22"), &pp);
    assert_eq!(r.scope, own, "{}", r.reason);
    assert_eq!(inbound(&generator, &node), ["inbound|8080||"]);

    let with_sa = pod("reviews", "10.1.0.22").replace(
        "spec: {containers",
        "spec: {serviceAccountName: bookinfo-reviews, containers",
    );
    let r = step(pod("db", "10.1.0.51"), with_sa.clone(), &pp);
    assert_eq!(
        r.scope,
        PushScope::Full,
        "service accounts changed: {}",
        r.reason
    );

    let with_sidecar = pod("db", "10.1.0.51").replace(
        "labels: {app: db}",
        "labels: {app: db, security.istio.io/tlsMode: istio}",
    );
    let r = step(with_sidecar, with_sa, &pp);
    assert_eq!(
        r.scope,
        PushScope::Full,
        "every db instance has a sidecar now: {}",
        r.reason
    );
    assert_eq!(table(&generator), ["10.1.0.51"]);
}
