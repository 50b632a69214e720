//! Measures the config pipeline at scale: decode + validate
//! (`check_files`), snapshot build, and registry build for N services
//! (2 ports, 3 pods each, a VirtualService and DestinationRule per 10
//! services), the shape of the control-plane benchmark.
//!
//! Run: `cargo run --release -p weft-api --example scale -- 1000`

use std::collections::BTreeMap;
use std::time::Instant;

use weft_api::registry::RegistryOptions;
use weft_api::store::{StoreOptions, build_snapshot};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let files = generate(n);
    let bytes: usize = files.values().map(String::len).sum();

    let t = Instant::now();
    let checks: Vec<_> = files
        .iter()
        .map(|(p, text)| weft_api::analyze::check_file(p, text))
        .collect();
    let decode_validate_time = t.elapsed();
    let t = Instant::now();
    let checked = weft_api::analyze::merge_checks(&checks, "cluster.local");
    let merge_time = t.elapsed();
    drop((checks, checked));

    println!("rss_after_files_and_sequential_check_mb={:.0}", rss_mb());
    let t = Instant::now();
    let snap = build_snapshot(&files, vec![], None, &StoreOptions::default());
    println!("rss_after_snapshot_mb={:.0}", rss_mb());
    let snapshot_time = t.elapsed();
    assert!(
        !snap.has_errors(),
        "generated config must be valid: {:?}",
        snap.problems.first()
    );

    let t = Instant::now();
    let reg = snap.registry(&RegistryOptions::default());
    let registry_time = t.elapsed();

    // A reload with one file changed.
    let mut changed = files.clone();
    if let Some(v) = changed.get_mut("svc-0.yaml") {
        *v = v
            .replace("weight: 90", "weight: 80")
            .replace("weight: 10", "weight: 20");
    }
    let t = Instant::now();
    let next = build_snapshot(&changed, vec![], Some(&snap), &StoreOptions::default());
    let reload_time = t.elapsed();

    println!("rss_after_all_mb={:.0}", rss_mb());
    println!(
        "services={n} objects={} yaml_bytes={bytes} decode_validate_ms={:.1} merge_cross_ms={:.1} snapshot_ms={:.1} registry_ms={:.1} reload_ms={:.1} endpoints={} version_after_reload={}",
        snap.len(),
        decode_validate_time.as_secs_f64() * 1e3,
        merge_time.as_secs_f64() * 1e3,
        snapshot_time.as_secs_f64() * 1e3,
        registry_time.as_secs_f64() * 1e3,
        reload_time.as_secs_f64() * 1e3,
        reg.services()
            .map(|s| reg.all_endpoints(&s.hostname).len())
            .sum::<usize>(),
        next.version,
    );
}

/// Resident set size of this process in MiB (Linux `/proc/self/statm`).
fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn generate(n: usize) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for i in 0..n {
        let mut doc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns-{ns}}}\nspec:\n  clusterIP: 10.{a}.{b}.{c}\n  selector: {{app: svc-{i}}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  - {{name: grpc, port: 9090}}\n",
            ns = i % 10,
            a = 96 + i / 65536,
            b = (i / 256) % 256,
            c = i % 256
        );
        for p in 0..3 {
            let ip = i * 3 + p;
            doc.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{i}-{p}\n  namespace: ns-{ns}\n  labels: {{app: svc-{i}, version: v{v}}}\nspec:\n  containers: [{{name: app}}]\nstatus:\n  podIP: 10.{x}.{y}.{z}\n",
                ns = i % 10,
                v = p % 2 + 1,
                x = 128 + ip / 65536,
                y = (ip / 256) % 256,
                z = ip % 256
            ));
        }
        if i % 10 == 0 {
            doc.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}, namespace: ns-{ns}}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: svc-{i}, subset: v2}}\n  - route:\n    - destination: {{host: svc-{i}, subset: v1}}\n      weight: 90\n    - destination: {{host: svc-{i}, subset: v2}}\n      weight: 10\n    retries: {{attempts: 2, perTryTimeout: 1s}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{i}, namespace: ns-{ns}}}\nspec:\n  host: svc-{i}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n",
                ns = i % 10
            ));
        }
        files.insert(format!("svc-{i}.yaml"), doc);
    }
    files
}
