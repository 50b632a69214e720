//! CPU cost of one admission review without the network (not a test): the
//! pure path `/inject` runs per request (decode, inject, JSON Patch diff),
//! and the injection alone.
//!
//! `cargo run --release -p weft-control --example review_cpu`

use serde_json::json;
use std::path::Path;
use std::time::Instant;
use weft_control::namespaces::NamespaceStore;
use weft_control::webhook::admission::review;

fn main() -> anyhow::Result<()> {
    let mut namespaces = NamespaceStore::default();
    namespaces.add_documents(
        Path::new("bench.yaml"),
        "kind: Namespace\nmetadata: {name: bench, labels: {istio-injection: enabled}}\n",
    )?;
    let settings = weft_inject::Settings::default();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "reviews-v1-7d8f9c-", "namespace": "bench", "labels": {"app": "reviews"}},
        "spec": {"containers": [{"name": "reviews", "image": "reviews:v1",
            "ports": [{"name": "http", "containerPort": 9080}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}}}]}
    });
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": "bench", "object": pod}
    }))?;
    for _ in 0..100 {
        review(&body, &settings, &namespaces)?;
    }
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        review(&body, &settings, &namespaces)?;
    }
    println!(
        "admission review, identical pods: {:.0} us/review",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let t = Instant::now();
    for _ in 0..n {
        weft_inject::inject_object(&pod, &settings, None)?;
    }
    println!(
        "injection alone, identical pods:  {:.0} us/pod",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let t = Instant::now();
    for i in 0..n {
        let mut p = pod.clone();
        p["metadata"]["labels"]["bench-index"] = json!(i.to_string());
        weft_inject::inject_object(&p, &settings, None)?;
    }
    println!(
        "injection alone, distinct pods:   {:.0} us/pod",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    Ok(())
}
