//! The injection webhook reads namespaces live from weftd's config store:
//! labelling a namespace `istio-injection=enabled` in the watched
//! directory makes the next review inject, removing the label stops it,
//! without restarting anything. Reviews go through the real HTTP handler
//! path (`admission::review` with `Discovery::namespaces()`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_control::discovery::{Discovery, DiscoveryOptions};
use weft_control::webhook::admission::{Decision, review};
use weft_inject::Settings;

fn review_for(ns: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": ns, "operation": "CREATE",
                    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                               "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}
    }))
    .unwrap()
}

fn namespace(labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {{{labels}}}\n")
}

/// Waits (bounded) until the store has applied a snapshot newer than `version`.
async fn wait_past(d: &Discovery, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.store().snapshot().version <= version {
        assert!(
            Instant::now() < deadline,
            "the config watch did not apply the change within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_label_changes_apply_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("namespace.yaml");
    std::fs::write(&file, namespace("team: a")).unwrap();
    let options = DiscoveryOptions {
        watch_debounce: Duration::from_millis(50),
        ..DiscoveryOptions::default()
    };
    let d = Discovery::start(dir.path(), options).unwrap();
    let namespaces = d.namespaces();
    assert!(namespaces.is_live());
    assert_eq!(namespaces.len(), 1);
    let settings = Settings::default();

    let (resp, decision) = review(&review_for("shop"), &settings, &namespaces).unwrap();
    assert!(matches!(decision, Decision::Skipped(_)), "{decision:?}");
    assert!(resp["response"].get("patch").is_none());

    let v = d.store().snapshot().version;
    std::fs::write(&file, namespace("team: a, istio-injection: enabled")).unwrap();
    wait_past(&d, v).await;
    assert_eq!(
        namespaces.labels("shop").get("istio-injection"),
        Some(&Value::from("enabled"))
    );
    let (resp, decision) = review(&review_for("shop"), &settings, &namespaces).unwrap();
    assert_eq!(decision, Decision::Injected);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    assert!(
        resp["response"]["patch"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );

    let v = d.store().snapshot().version;
    std::fs::write(&file, namespace("istio-injection: disabled")).unwrap();
    wait_past(&d, v).await;
    let (_, decision) = review(&review_for("shop"), &settings, &namespaces).unwrap();
    assert!(matches!(decision, Decision::Skipped(_)), "{decision:?}");
    // An unknown namespace has no labels.
    assert!(namespaces.labels("nowhere").is_empty());
}
