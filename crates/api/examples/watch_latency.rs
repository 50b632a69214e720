//! Measures the time from writing a file to the watcher delivering the new
//! snapshot, for a directory of N services (one file each).
//!
//! Run: `cargo run --release -p weft-api --example watch_latency -- 1000`

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use weft_api::store::{Store, StoreOptions};
use weft_api::watch::{DEFAULT_DEBOUNCE, watch};

fn service(i: usize, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: {port}}}]\n"
    )
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = std::env::temp_dir().join(format!("weft-watch-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    for i in 0..n {
        std::fs::write(dir.join(format!("svc-{i}.yaml")), service(i, 80)).expect("write");
    }
    let store = Arc::new(Store::load(&dir, StoreOptions::default()).expect("load"));
    let (tx, rx) = mpsc::channel();
    let watcher = watch(Arc::clone(&store), DEFAULT_DEBOUNCE, move |s| {
        let _ = tx.send((Instant::now(), s.version));
    })
    .expect("watch");
    let mut samples = Vec::new();
    for round in 0..10u32 {
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        std::fs::write(dir.join("svc-0.yaml"), service(0, 81 + round)).expect("write");
        let (at, version) = rx.recv_timeout(Duration::from_secs(30)).expect("snapshot");
        samples.push(at - start);
        assert!(version >= 2);
    }
    drop(watcher);
    let _ = std::fs::remove_dir_all(&dir);
    samples.sort();
    println!(
        "services={n} debounce_ms={} write_to_snapshot_ms p50={:.1} max={:.1}",
        DEFAULT_DEBOUNCE.as_millis(),
        samples[samples.len() / 2].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}
