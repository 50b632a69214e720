//! Load benchmark for a running weftd's `/inject` webhook (not a test):
//! sends N AdmissionReviews over C keep-alive HTTPS connections and reports
//! reviews per second and latency percentiles. Every response must be an
//! injected (patched) review; anything else counts as an error.
//!
//! `cargo run --release -p weft-control --example webhook_load -- --addr 127.0.0.1:15017 --ca ca.pem`
//! (bench/inject/run.sh starts weftd and runs this).

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_control::webhook::client::WebhookClient;

#[derive(Parser)]
struct Args {
    /// weftd's webhook address.
    #[arg(long, default_value = "127.0.0.1:15017")]
    addr: SocketAddr,
    /// CA bundle that signs weftd's certificate (weftd --ca-bundle-out).
    #[arg(long)]
    ca: PathBuf,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Total reviews to send.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Namespace of the reviewed pods (must select injection in weftd's config).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Make every pod different (a label with its index), so no rendering
    /// can be reused; by default the pods are identical, as the pods of one
    /// ReplicaSet are when it scales up.
    #[arg(long)]
    distinct: bool,
}

/// A typical application pod: two ports, HTTP probes to rewrite.
fn review(namespace: &str, i: usize, distinct: bool) -> Vec<u8> {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-7d8f9c-",
            "namespace": namespace,
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7d8f9c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d8f9c",
                                 "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]
        },
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "containers": [{
                "name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.1",
                "ports": [{"name": "http", "containerPort": 9080}, {"name": "metrics", "containerPort": 9090}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/health", "port": 9080}},
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
            }]
        }
    });
    if distinct {
        pod["metadata"]["labels"]["bench-index"] = json!(i.to_string());
    }
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE", "object": pod
        }
    }))
    .expect("serialize review")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca =
        std::fs::read_to_string(&args.ca).with_context(|| format!("--ca {}", args.ca.display()))?;
    let per_conn = args.requests.div_ceil(args.connections.max(1));
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(WebhookClient::connect(args.addr, &args.server_name, &ca).await?);
    }
    // Warm-up outside the measurement.
    for c in clients.iter_mut() {
        c.review(review(&args.namespace, 0, false)).await?;
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (n, mut client) in clients.into_iter().enumerate() {
        let ns = args.namespace.clone();
        let distinct = args.distinct;
        let count = per_conn.min(args.requests.saturating_sub(n * per_conn));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            let mut errors = 0usize;
            for i in 0..count {
                let body = review(&ns, n * per_conn + i, distinct);
                let t = Instant::now();
                let (status, resp) = client.review(body).await?;
                lat.push(t.elapsed());
                let v: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
                if status != 200 || v["response"]["patch"].as_str().is_none() {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut all = Vec::with_capacity(args.requests);
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed();
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "reviews: {} ({} pods) over {} keep-alive HTTPS connections, errors: {errors}",
        all.len(),
        if args.distinct {
            "distinct"
        } else {
            "identical"
        },
        args.connections
    );
    println!("elapsed: {:.3} s", elapsed.as_secs_f64());
    println!(
        "throughput: {:.0} reviews/s",
        all.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 90.0)),
        ms(percentile(&all, 99.0)),
        ms(*all.last().unwrap_or(&Duration::ZERO))
    );
    if errors > 0 {
        anyhow::bail!("{errors} reviews were not answered with a patch");
    }
    Ok(())
}
