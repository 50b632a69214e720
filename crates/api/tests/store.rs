//! The file config source: snapshots, last-good retention on reload, and
//! watching a directory.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::files;
use weft_api::store::{Snapshot, Store, StoreOptions, build_snapshot};
use weft_api::{Kind, ObjectKey};

fn dr(subsets: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  subsets: [{subsets}]\n"
    )
}

fn vs(w1: i32, w2: i32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n      weight: {w1}\n    - destination: {{host: reviews, subset: v2}}\n      weight: {w2}\n"
    )
}

fn svc(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"
    )
}

fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn weights(s: &Snapshot) -> Vec<Option<i32>> {
    let o = s
        .get(&key(Kind::VirtualService, "reviews"))
        .expect("vs present");
    o.as_virtual_service().expect("vs").http[0]
        .route
        .iter()
        .map(|r| r.weight)
        .collect()
}

const SUBSETS: &str = "{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}";

#[test]
fn invalid_object_keeps_last_good_version_and_file_keeps_valid_objects() {
    let opts = StoreOptions::default();
    let multi = |vs_text: &str| format!("{}---\n{vs_text}---\n{}", svc("a"), svc("b"));
    let v1 = build_snapshot(
        &files(&[("dr.yaml", &dr(SUBSETS)), ("app.yaml", &multi(&vs(90, 10)))]),
        vec![],
        None,
        &opts,
    );
    assert_eq!(v1.version, 1);
    assert_eq!(v1.len(), 4);
    assert!(!v1.has_errors());

    // The VS becomes invalid (weights sum to 95) and service b is renamed c.
    let broken = format!("{}---\n{}---\n{}", svc("a"), vs(90, 5), svc("c"));
    let v2 = build_snapshot(
        &files(&[("dr.yaml", &dr(SUBSETS)), ("app.yaml", &broken)]),
        vec![],
        Some(&v1),
        &opts,
    );
    assert_eq!(v2.version, 2);
    assert_eq!(weights(&v2), [Some(90), Some(10)], "last good VS kept");
    assert!(v2.stale.contains(&key(Kind::VirtualService, "reviews")));
    assert!(
        v2.get(&key(Kind::Service, "c")).is_some(),
        "valid objects of the same file are applied"
    );
    assert!(
        v2.get(&key(Kind::Service, "b")).is_none(),
        "removed objects are removed"
    );
    let errs: Vec<String> = v2
        .problems
        .iter()
        .filter(|p| p.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs,
        [
            "app.yaml[doc 2] VirtualService default/reviews: spec.http[0].route: weights sum to 95, must be 100"
        ]
    );
    // Unchanged objects are shared, not copied.
    assert!(Arc::ptr_eq(
        v1.get(&key(Kind::Service, "a")).expect("a"),
        v2.get(&key(Kind::Service, "a")).expect("a")
    ));

    let dbg = v2.debug_json();
    assert_eq!(dbg["version"], 2);
    assert_eq!(dbg["stale"][0], "VirtualService default/reviews");
    assert_eq!(dbg["problems"][0]["path"], "spec.http[0].route");
    assert_eq!(dbg["problems"][0]["document"], 2);
    assert_eq!(dbg["problems"][0]["kind"], "VirtualService");

    let cs = v2.diff(&v1);
    assert_eq!(
        cs.added.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(
        cs.removed
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert!(
        cs.updated.is_empty(),
        "the invalid VS kept its last good version: {cs:?}"
    );
    assert!(!cs.only_workloads());
    assert!(v2.diff(&v2).is_empty());

    // Objects of files whose text did not change are reused as is.
    assert!(Arc::ptr_eq(
        v1.get(&key(Kind::DestinationRule, "reviews")).expect("dr"),
        v2.get(&key(Kind::DestinationRule, "reviews")).expect("dr")
    ));

    // Same input again: no new version.
    let v3 = build_snapshot(
        &files(&[("dr.yaml", &dr(SUBSETS)), ("app.yaml", &broken)]),
        vec![],
        Some(&v2),
        &opts,
    );
    assert_eq!(v3.version, 2);

    // Fixed: the new version replaces the last good one.
    let fixed = format!("{}---\n{}", svc("a"), vs(70, 30));
    let v4 = build_snapshot(
        &files(&[("dr.yaml", &dr(SUBSETS)), ("app.yaml", &fixed)]),
        vec![],
        Some(&v3),
        &opts,
    );
    assert_eq!(v4.version, 3);
    assert_eq!(weights(&v4), [Some(70), Some(30)]);
    assert!(v4.stale.is_empty());
    assert!(!v4.has_errors());
}

#[test]
fn invalid_object_without_previous_version_is_left_out() {
    let s = build_snapshot(
        &files(&[("app.yaml", &vs(50, 10))]),
        vec![],
        None,
        &StoreOptions::default(),
    );
    assert!(s.is_empty());
    assert!(s.has_errors());
}

#[test]
fn yaml_syntax_error_keeps_the_files_previous_objects() {
    let opts = StoreOptions::default();
    let good = format!("{}---\n{}", svc("a"), svc("b"));
    let v1 = build_snapshot(&files(&[("app.yaml", &good)]), vec![], None, &opts);
    let broken = format!("{}---\nkind: Service\n  metadata: [\n", svc("a"));
    let v2 = build_snapshot(&files(&[("app.yaml", &broken)]), vec![], Some(&v1), &opts);
    assert!(
        v2.get(&key(Kind::Service, "b")).is_some(),
        "undecodable document keeps the file's previous objects"
    );
    assert!(v2.stale.contains(&key(Kind::Service, "b")));
    assert!(
        v2.problems
            .iter()
            .any(|p| p.origin.doc == 2 && p.error.message.starts_with("invalid YAML"))
    );
    // Deleting the file removes its objects.
    let v3 = build_snapshot(&files(&[]), vec![], Some(&v2), &opts);
    assert!(v3.is_empty());
}

#[test]
fn cross_object_errors_are_reported_but_do_not_reject() {
    let s = build_snapshot(
        &files(&[("vs.yaml", &vs(90, 10))]),
        vec![],
        None,
        &StoreOptions::default(),
    );
    assert!(s.get(&key(Kind::VirtualService, "reviews")).is_some());
    assert_eq!(
        s.problems
            .iter()
            .filter(|p| p.error.path.ends_with(".subset"))
            .count(),
        2
    );
}

#[test]
fn mesh_config_comes_from_the_istio_config_map() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    accessLogFile: /dev/stdout\n";
    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-settings, namespace: default}\ndata: {a: b}\n";
    let s = build_snapshot(
        &files(&[("cm.yaml", cm), ("o.yaml", other)]),
        vec![],
        None,
        &StoreOptions::default(),
    );
    assert_eq!(
        s.mesh_config().access_log_file.as_deref(),
        Some("/dev/stdout")
    );
    assert_eq!(s.len(), 2);
}

#[test]
fn store_reloads_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dr.yaml"), dr(SUBSETS)).expect("write");
    std::fs::write(dir.path().join("vs.yaml"), vs(90, 10)).expect("write");
    let store = Store::load(dir.path(), StoreOptions::default()).expect("load");
    assert_eq!(store.snapshot().len(), 2);
    let r = store.reload().expect("reload");
    assert!(!r.changed);
    std::fs::write(dir.path().join("vs.yaml"), vs(20, 70)).expect("write");
    let r = store.reload().expect("reload");
    assert!(r.changed);
    assert_eq!(weights(&r.snapshot), [Some(90), Some(10)]);
    assert_eq!(
        r.snapshot.problems.iter().filter(|p| p.is_error()).count(),
        1
    );
    assert!(Store::load(dir.path().join("missing"), StoreOptions::default()).is_err());
}

#[test]
fn watch_emits_a_new_snapshot_after_a_file_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dr.yaml"), dr(SUBSETS)).expect("write");
    std::fs::write(dir.path().join("vs.yaml"), vs(90, 10)).expect("write");
    let store = Arc::new(Store::load(dir.path(), StoreOptions::default()).expect("load"));
    let (tx, rx) = mpsc::channel();
    let watcher = weft_api::watch::watch(
        Arc::clone(&store),
        weft_api::watch::DEFAULT_DEBOUNCE,
        move |s| {
            let _ = tx.send(s);
        },
    )
    .expect("watch");

    std::fs::write(dir.path().join("vs.yaml"), vs(50, 50)).expect("write");
    // Generous bound: this is a liveness check, not a latency assertion.
    let snap = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a snapshot after the edit");
    assert_eq!(weights(&snap), [Some(50), Some(50)]);
    assert_eq!(snap.version, 2);

    // A new file in a new subdirectory is picked up too.
    std::fs::create_dir(dir.path().join("more")).expect("mkdir");
    std::fs::write(dir.path().join("more/svc.yaml"), svc("extra")).expect("write");
    let snap = loop {
        let s = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a snapshot after the new file");
        if s.get(&key(Kind::Service, "extra")).is_some() {
            break s;
        }
    };
    assert!(snap.version >= 3);
    drop(watcher);
}

#[test]
fn pod_only_changes_are_workload_only() {
    let pod = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: default, labels: {{app: a}}}}\nspec: {{containers: [{{name: a}}]}}\nstatus: {{podIP: {ip}}}\n"
        )
    };
    let opts = StoreOptions::default();
    let v1 = build_snapshot(
        &files(&[("svc.yaml", &svc("a")), ("pod.yaml", &pod("10.0.0.1"))]),
        vec![],
        None,
        &opts,
    );
    let v2 = build_snapshot(
        &files(&[("svc.yaml", &svc("a")), ("pod.yaml", &pod("10.0.0.2"))]),
        vec![],
        Some(&v1),
        &opts,
    );
    let cs = v2.diff(&v1);
    assert_eq!(
        cs.updated
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["Pod default/p"]
    );
    assert!(cs.only_workloads());
}

#[test]
fn objects_from_another_source_get_the_same_rules() {
    use weft_api::decode::decode_value;
    use weft_api::store::build_snapshot_from_objects;
    let decode = |text: &str| {
        let value: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
        let origin = weft_api::Origin {
            file: "kubernetes".into(),
            doc: 1,
            line: 1,
        };
        decode_value(value, origin)
            .expect("decodes")
            .expect("an object")
    };
    let opts = StoreOptions::default();
    let v1 =
        build_snapshot_from_objects(vec![decode(&dr(SUBSETS)), decode(&vs(90, 10))], None, &opts);
    assert_eq!(v1.len(), 2);
    assert!(!v1.has_errors());
    let v2 = build_snapshot_from_objects(
        vec![decode(&dr(SUBSETS)), decode(&vs(90, 1))],
        Some(&v1),
        &opts,
    );
    assert_eq!(weights(&v2), [Some(90), Some(10)]);
    assert_eq!(v2.version, 2);
    assert!(v2.has_errors());
}

#[test]
fn many_files_give_the_same_result_as_a_sequential_check() {
    let mut entries = Vec::new();
    for i in 0..300 {
        let text = if i % 50 == 7 {
            vs(10, 10).replace("name: reviews", &format!("name: bad-{i}"))
        } else {
            svc(&format!("s{i}"))
        };
        entries.push((format!("f{i:03}.yaml"), text));
    }
    let map: std::collections::BTreeMap<String, String> = entries.into_iter().collect();
    let snap = build_snapshot(&map, vec![], None, &StoreOptions::default());
    let report = weft_api::analyze_files(&map);
    assert_eq!(snap.problems, report.problems);
    assert_eq!(snap.len(), 294);
    // Per bad VS: weights and two unknown subsets; and the five later ones
    // claim host `reviews` already claimed by the first.
    assert_eq!(report.errors().count(), 6 * 3 + 5);
}

#[test]
fn resync_picks_up_a_replaced_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("config");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("dr.yaml"), dr(SUBSETS)).expect("write");
    std::fs::write(dir.join("vs.yaml"), vs(90, 10)).expect("write");
    let store = Arc::new(Store::load(&dir, StoreOptions::default()).expect("load"));
    let (tx, rx) = mpsc::channel();
    let opts = weft_api::watch::WatchOptions {
        debounce: Duration::from_millis(50),
        resync: Duration::from_millis(300),
    };
    let _watcher = weft_api::watch::watch_with(Arc::clone(&store), opts, move |s| {
        let _ = tx.send(s);
    })
    .expect("watch");
    // Replacing the directory drops the inotify watch; the resync still
    // notices the new content.
    std::fs::remove_dir_all(&dir).expect("rm");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("dr.yaml"), dr(SUBSETS)).expect("write");
    std::fs::write(dir.join("vs.yaml"), vs(30, 70)).expect("write");
    let snap = loop {
        let s = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a snapshot after the directory was replaced");
        if s.get(&key(Kind::VirtualService, "reviews")).is_some()
            && weights(&s) == [Some(30), Some(70)]
        {
            break s;
        }
    };
    assert!(snap.version >= 2);
}
