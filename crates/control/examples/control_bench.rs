//! Control-plane benchmark (run by `bench/control/run`): for N services
//! (2 ports, 3 pods each, a VirtualService and DestinationRule per 10
//! services) measures snapshot build, one proxy's full translation, the
//! bytes of xDS per proxy and, with C in-process ADS clients connected to
//! an ADS server serving [`TranslationGenerator`] (the generator weftd
//! serves), the time from an endpoint change to every client having
//! accepted (ACKed) the new EDS, and the CPU this process spent on it.
//!
//! `control_bench gen N DIR` writes the YAML files into DIR (for weftd);
//! `control_bench run N CLIENTS ROUNDS` measures (CLIENTS 0 skips ADS).
//! Output: `key=value` lines the run script collects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weft_api::store::{StoreOptions, build_snapshot};
use weft_control::discovery::apply_snapshot;
use weft_control::translate::{MeshView, ProxyNode, TranslateOptions, TranslationGenerator};
use weft_control::xds_cache::XdsCache;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{
    AdsClient, AdsServer, Any, ClientConfig, DebounceConfig, ProxyKind, ProxyMetadata, PushScope,
    Pusher, ServerOptions, XdsMetrics,
};

/// Pod `p` of service `i`: its name, namespace, version label and IP.
fn pod(i: usize, p: usize, generation: usize) -> (String, String, String, String) {
    let ip = i * 3 + p;
    (
        format!("svc-{i}-{p}"),
        format!("ns-{}", i % 10),
        format!("v{}", p % 2 + 1),
        format!(
            "10.{}.{}.{}",
            128 + ip / 65536 + generation * 8,
            (ip / 256) % 256,
            ip % 256
        ),
    )
}

/// The YAML of service `i` (one file per service). `generation` moves the
/// IPs of service 0's pods (an endpoint change).
fn service_file(i: usize, generation: usize) -> String {
    let ns = format!("ns-{}", i % 10);
    let mut doc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  clusterIP: 10.{a}.{b}.{c}\n  selector: {{app: svc-{i}}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  - {{name: grpc, port: 9090}}\n",
        a = 96 + i / 65536,
        b = (i / 256) % 256,
        c = i % 256
    );
    for p in 0..3 {
        let (name, ns, v, ip) = pod(i, p, if i == 0 { generation } else { 0 });
        doc.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: svc-{i}, version: {v}}}\nspec:\n  containers: [{{name: app}}]\nstatus:\n  podIP: {ip}\n"
        ));
    }
    if i.is_multiple_of(10) {
        doc.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: svc-{i}, subset: v2}}\n  - route:\n    - destination: {{host: svc-{i}, subset: v1}}\n      weight: 90\n    - destination: {{host: svc-{i}, subset: v2}}\n      weight: 10\n    retries: {{attempts: 2, perTryTimeout: 1s}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  host: svc-{i}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
        ));
    }
    doc
}

fn generate(n: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("svc-{i}.yaml"), service_file(i, 0)))
        .collect()
}

/// The sidecar of pod `p` of service `i`, as its node metadata.
fn sidecar(i: usize, p: usize) -> ProxyMetadata {
    let (name, ns, v, ip) = pod(i, p, 0);
    ProxyMetadata {
        kind: ProxyKind::Sidecar,
        ips: vec![ip],
        pod_name: name,
        namespace: ns,
        workload_name: format!("svc-{i}-{v}"),
        labels: [
            ("app".to_string(), format!("svc-{i}")),
            ("version".to_string(), v),
        ]
        .into(),
        service_account: "default".to_string(),
        ..ProxyMetadata::default()
    }
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15: 11 and 12 after the comm field.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Accepts every update without work: the clients measure the protocol,
/// not weft-proxy's compilation.
struct NoWork;

impl weft_xds::ConfigHandler for NoWork {
    fn apply(&mut self, _: &str, _: &[Any]) -> Result<(), String> {
        Ok(())
    }

    fn apply_update(&mut self, _: &weft_xds::Update<'_>) -> Result<(), String> {
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| {
        args.get(i)
            .map(|a| {
                a.parse()
                    .unwrap_or_else(|_| panic!("argument {i} `{a}` is not a number"))
            })
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("gen") => {
            let n = num(1, 1000);
            let dir = args.get(2).expect("usage: control_bench gen N DIR");
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {dir}: {e}"));
            for (name, text) in generate(n) {
                let path = format!("{dir}/{name}");
                std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
            }
        }
        Some("run") => run(num(1, 1000), num(2, 1000), num(3, 5)),
        Some("weftd") => {
            let usage = "usage: control_bench weftd N DIR XDS_ADDR WEFTD_PID CLIENTS ROUNDS";
            let dir = args.get(2).expect(usage).clone();
            let addr = args.get(3).expect(usage).clone();
            let pid: u32 = args
                .get(4)
                .expect(usage)
                .parse()
                .expect("WEFTD_PID is a number");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(against_weftd(
                num(1, 1000),
                dir,
                addr,
                pid,
                num(5, 1000),
                num(6, 3),
            ));
        }
        _ => panic!(
            "usage: control_bench gen N DIR | run N CLIENTS ROUNDS | weftd N DIR XDS_ADDR WEFTD_PID CLIENTS ROUNDS"
        ),
    }
}

fn run(n: usize, clients: usize, rounds: usize) {
    let files = generate(n);
    let opts = StoreOptions::default();
    let t = Instant::now();
    let snap = build_snapshot(&files, vec![], None, &opts);
    let snapshot_time = t.elapsed();
    assert!(
        !snap.has_errors(),
        "generated config must be valid: {:?}",
        snap.problems.first()
    );
    let t = Instant::now();
    let view = MeshView::new(&snap, TranslateOptions::default());
    let view_time = t.elapsed();
    println!("services={n}");
    println!("snapshot_ms={:.1}", ms(snapshot_time));
    println!("meshview_ms={:.1}", ms(view_time));

    // One proxy's full translation, median of 5, plus encoding.
    let node = ProxyNode::from_metadata(sidecar(0, 0).node_id(), sidecar(0, 0))
        .expect("sidecar has a namespace");
    let mut times = Vec::new();
    let mut encode_times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let res = view.translate(&node);
        times.push(t.elapsed());
        let t = Instant::now();
        let sets: Vec<_> = [LISTENER, ROUTE, CLUSTER, ENDPOINT]
            .iter()
            .map(|ty| res.resource_set(ty))
            .collect();
        encode_times.push(t.elapsed());
        last = Some(sets);
    }
    times.sort();
    encode_times.sort();
    let sets = last.expect("five runs");
    let bytes: usize = sets
        .iter()
        .flat_map(|s| s.iter())
        .map(|r| r.any.value.len())
        .sum();
    let counts: Vec<usize> = sets.iter().map(|s| s.len()).collect();
    println!("translate_ms={:.1}", ms(times[2]));
    println!("encode_ms={:.1}", ms(encode_times[2]));
    println!("xds_bytes_per_proxy={bytes}");
    println!(
        "resources_lds_rds_cds_eds={}/{}/{}/{}",
        counts[0], counts[1], counts[2], counts[3]
    );
    println!("rss_after_translate_mib={:.0}", rss_mib());
    drop(sets);

    // Memory one proxy's translation costs while held: 10 distinct
    // proxies' decoded resources (what TranslationGenerator caches), then
    // their encoded sets (what the ADS server holds per stream).
    let held = 10;
    let before = rss_mib();
    let decoded: Vec<_> = (0..held)
        .map(|k| {
            let md = sidecar(k % n, k / n % 3);
            let node = ProxyNode::from_metadata(format!("{}-{k}", md.node_id()), md)
                .expect("sidecar has a namespace");
            view.translate(&node)
        })
        .collect();
    let mid = rss_mib();
    let encoded: Vec<Vec<_>> = decoded
        .iter()
        .map(|res| {
            [LISTENER, ROUTE, CLUSTER, ENDPOINT]
                .iter()
                .map(|ty| res.resource_set(ty))
                .collect()
        })
        .collect();
    let after = rss_mib();
    println!(
        "rss_per_held_translation_mib={:.1}",
        (mid - before) / held as f64
    );
    println!(
        "rss_per_held_encoded_sets_mib={:.1}",
        (after - mid) / held as f64
    );
    drop((encoded, decoded));
    cache_costs(n, &view);
    if clients > 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(ads(n, clients, rounds, files, snap, view));
    }
}

/// What weftd's encoded cache costs: the first proxies of each scope (a
/// scope translation each), further proxies of known scopes (own part and a
/// union only), and the RSS the cache holds per proxy.
fn cache_costs(n: usize, view: &MeshView) {
    let types = [LISTENER, ROUTE, CLUSTER, ENDPOINT];
    let cache = XdsCache::new(view.clone());
    let proxies = (3 * n).min(200);
    let node = |k: usize| sidecar(k % n, k / n % 3).to_node();
    let before = rss_mib();
    let t = Instant::now();
    let first = proxies / 2;
    for k in 0..first {
        for ty in types {
            cache.generate(&node(k), ty).expect("valid node");
        }
    }
    let first_time = t.elapsed();
    let (_, scopes) = cache.stats();
    let t = Instant::now();
    for k in first..proxies {
        for ty in types {
            cache.generate(&node(k), ty).expect("valid node");
        }
    }
    let more_time = t.elapsed();
    let after = rss_mib();
    let (held, scopes_after) = cache.stats();
    println!("cache_proxies={held} cache_scope_parts={scopes_after}");
    println!(
        "cache_first_{first}_proxies_ms={:.1} (scope parts: {scopes})",
        ms(first_time)
    );
    println!(
        "cache_per_further_proxy_ms={:.2}",
        ms(more_time) / (proxies - first) as f64
    );
    println!(
        "cache_rss_per_proxy_mib={:.2} (approximate: allocator reuse)",
        (after - before) / held as f64
    );
}

async fn ads(
    n: usize,
    clients: usize,
    rounds: usize,
    mut files: BTreeMap<String, String>,
    mut snap: weft_api::store::Snapshot,
    view: MeshView,
) {
    let generator = Arc::new(TranslationGenerator::new(view));
    let pusher = Pusher::spawn(DebounceConfig {
        after: Duration::ZERO,
        max: Duration::from_secs(10),
    });
    let metrics = Arc::new(XdsMetrics::unregistered());
    let server = AdsServer::new(
        generator.clone(),
        &pusher,
        metrics.clone(),
        ServerOptions::default(),
    );
    let listener = weft_xds::server::bind("127.0.0.1:0".parse().expect("address"))
        .expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let srv = server.clone();
    tokio::spawn(async move { srv.serve(listener, std::future::pending()).await });

    // Each client reports every EDS version it accepts, with a timestamp.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, Instant)>();
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let tx = tx.clone();
        // Client c is the sidecar of pod c/n of service c%n (distinct node ids).
        let md = sidecar(c % n, (c / n) % 3);
        let mut node = md.to_node();
        if c >= 3 * n {
            node.id = format!("{}-{c}", node.id);
        }
        let mut config = ClientConfig::new(format!("http://{addr}"), node);
        config.connect_timeout = Duration::from_secs(60);
        let handle = AdsClient::spawn(config, NoWork).expect("client");
        let mut state = handle.state();
        tokio::spawn(async move {
            let mut last = String::new();
            while state.changed().await.is_ok() {
                let v = state.borrow_and_update().version(ENDPOINT).to_string();
                if v != last && !v.is_empty() {
                    let _ = tx.send((c, v.clone(), Instant::now()));
                    last = v;
                }
            }
        });
        handles.push(handle);
    }
    let mut synced = vec![false; clients];
    let mut count = 0;
    while count < clients {
        let (c, _, _) = rx.recv().await.expect("clients report");
        if !synced[c] {
            synced[c] = true;
            count += 1;
        }
    }
    let initial_sync = started.elapsed();
    let initial_cpu = cpu_seconds() - cpu0;
    // Late reports of the initial sync must not count as round 1's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while rx.try_recv().is_ok() {}
    println!("clients={clients}");
    println!("initial_sync_s={:.2}", initial_sync.as_secs_f64());
    println!("initial_sync_cpu_s={:.2}", initial_cpu);
    println!("rss_with_clients_mib={:.0}", rss_mib());

    let mut all = Vec::new();
    let mut totals = Vec::new();
    let mut rebuilds = Vec::new();
    let cpu_before = cpu_seconds();
    for round in 1..=rounds {
        // An endpoint change: service 0's pods move. The pipeline is weftd's
        // on a file change (rebuild snapshot, new view, EDS push).
        let t0 = Instant::now();
        files.insert("svc-0.yaml".to_string(), service_file(0, round));
        let next = build_snapshot(&files, vec![], Some(&snap), &StoreOptions::default());
        // weftd's path: endpoints-only when only workloads changed.
        let request = apply_snapshot(&generator, &snap, &next, &TranslateOptions::default());
        assert_ne!(request.scope, PushScope::Full, "{}", request.reason);
        snap = next;
        rebuilds.push(t0.elapsed());
        pusher.trigger(request);
        let latencies = round_latencies(&mut rx, clients, t0).await;
        totals.push(*latencies.last().expect("clients"));
        all.extend(latencies);
    }
    let cpu = cpu_seconds() - cpu_before;
    all.sort();
    totals.sort();
    rebuilds.sort();
    println!("rounds={rounds}");
    println!("rebuild_ms_median={:.1}", ms(rebuilds[rebuilds.len() / 2]));
    println!("ack_p50_ms={:.1}", ms(percentile(&all, 0.5)));
    println!("ack_p99_ms={:.1}", ms(percentile(&all, 0.99)));
    println!("all_acked_median_ms={:.1}", ms(totals[totals.len() / 2]));
    println!(
        "all_acked_max_ms={:.1}",
        ms(*totals.last().expect("rounds"))
    );
    println!("cpu_s_per_push={:.2}", cpu / rounds as f64);
    println!("rss_after_pushes_mib={:.0}", rss_mib());
    println!(
        "eds_pushes={} connected={}",
        metrics.pushes(ENDPOINT),
        metrics.connected_proxies()
    );
    for h in handles {
        h.shutdown().await;
    }
}

// === against a running weftd ===

/// One lightweight ADS client (state of the world): subscribes to CDS and
/// LDS, then to the EDS and RDS names they need, ACKs every response and
/// keeps nothing but names; reports each EDS version it ACKs.
async fn light_client(
    addr: String,
    node: weft_xds::Node,
    id: usize,
    report: mpsc::UnboundedSender<(usize, String, Instant)>,
) -> Result<(), String> {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use weft_xds::DiscoveryRequest;
    use weft_xds::names::{eds_names, rds_names};
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let request =
        |type_url: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
            node: Some(node.clone()),
            type_url: type_url.to_string(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            ..Default::default()
        };
    tx.send(request(CLUSTER, vec![], String::new(), String::new()))
        .await
        .map_err(|e| e.to_string())?;
    tx.send(request(LISTENER, vec![], String::new(), String::new()))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("stream: {e}"))?
        .into_inner();
    let mut eds: Vec<String> = Vec::new();
    let mut rds: Vec<String> = Vec::new();
    let mut nonces: BTreeMap<String, (String, String)> = BTreeMap::new();
    while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
        let ty = resp.type_url.clone();
        let names = match ty.as_str() {
            CLUSTER => {
                let next: Vec<String> = eds_names(&resp.resources).into_iter().collect();
                if next != eds {
                    eds = next;
                    let (v, n) = nonces.get(ENDPOINT).cloned().unwrap_or_default();
                    tx.send(request(ENDPOINT, eds.clone(), v, n))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                vec![]
            }
            LISTENER => {
                let next: Vec<String> = rds_names(&resp.resources).into_iter().collect();
                if next != rds {
                    rds = next;
                    let (v, n) = nonces.get(ROUTE).cloned().unwrap_or_default();
                    tx.send(request(ROUTE, rds.clone(), v, n))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                vec![]
            }
            ENDPOINT => eds.clone(),
            ROUTE => rds.clone(),
            _ => vec![],
        };
        let version = resp.version_info.clone();
        drop(resp.resources);
        nonces.insert(ty.clone(), (version.clone(), resp.nonce.clone()));
        tx.send(request(&ty, names, version.clone(), resp.nonce))
            .await
            .map_err(|e| e.to_string())?;
        if ty == ENDPOINT {
            let _ = report.send((id, version, Instant::now()));
        }
    }
    Ok(())
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn proc_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// C light clients against the real weftd (pid `pid`) serving DIR (made
/// by `gen N DIR`); then ROUNDS endpoint changes made by rewriting
/// `svc-0.yaml` in DIR (weftd's file watch, snapshot, EDS-only push): time
/// from the write until every client ACKed a new EDS version, weftd's CPU
/// and RSS (read from /proc of that pid).
async fn against_weftd(
    n: usize,
    dir: String,
    addr: String,
    pid: u32,
    clients: usize,
    rounds: usize,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, Instant)>();
    let cpu0 = proc_cpu_seconds(pid);
    let rss0 = proc_rss_mib(pid);
    let started = Instant::now();
    // Connect in batches, each synced before the next, so initial pushes
    // of large configs do not all sit in buffers at once.
    let default_batch = if n >= 10_000 {
        25
    } else if n >= 1000 {
        100
    } else {
        clients
    };
    let batch = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(default_batch);
    let mut synced = vec![false; clients];
    let mut count = 0;
    let mut c = 0;
    while c < clients {
        let end = (c + batch).min(clients);
        for k in c..end {
            let md = sidecar(k % n, (k / n) % 3);
            let mut node = md.to_node();
            if k >= 3 * n {
                node.id = format!("{}-{k}", node.id);
            }
            let (addr, tx) = (format!("http://{addr}"), tx.clone());
            tokio::spawn(async move {
                if let Err(e) = light_client(addr, node, k, tx).await {
                    eprintln!("client {k}: {e}");
                }
            });
        }
        while count < end {
            let (k, _, _) = rx.recv().await.expect("clients report");
            if !synced[k] {
                synced[k] = true;
                count += 1;
            }
        }
        c = end;
    }
    let initial = started.elapsed();
    let initial_cpu = proc_cpu_seconds(pid) - cpu0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    println!(
        "services={n} clients={clients} (real weftd pid {pid}, light clients in another process)"
    );
    println!("weftd_rss_before_clients_mib={rss0:.1}");
    println!("initial_sync_s={:.2}", initial.as_secs_f64());
    println!("weftd_initial_sync_cpu_s={initial_cpu:.2}");
    println!("weftd_rss_with_clients_mib={:.1}", proc_rss_mib(pid));
    let mut all = Vec::new();
    let mut totals = Vec::new();
    let cpu_before = proc_cpu_seconds(pid);
    for round in 1..=rounds {
        let path = format!("{dir}/svc-0.yaml");
        let t0 = Instant::now();
        // A generation whose file differs from the current one (DIR may
        // come from an earlier run).
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        let text = (round..)
            .step_by(rounds.max(1))
            .map(|g| service_file(0, g))
            .find(|t| *t != current)
            .expect("some generation differs");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let latencies = round_latencies(&mut rx, clients, t0).await;
        totals.push(*latencies.last().expect("clients"));
        all.extend(latencies);
        // Let late ACK traffic settle before the next round.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu = proc_cpu_seconds(pid) - cpu_before;
    all.sort();
    totals.sort();
    println!("rounds={rounds}");
    println!("ack_p50_ms={:.1}", ms(percentile(&all, 0.5)));
    println!("ack_p99_ms={:.1}", ms(percentile(&all, 0.99)));
    println!("all_acked_median_ms={:.1}", ms(totals[totals.len() / 2]));
    println!(
        "all_acked_max_ms={:.1}",
        ms(*totals.last().expect("rounds"))
    );
    println!("weftd_cpu_s_per_push={:.2}", cpu / rounds as f64);
    println!("weftd_rss_after_pushes_mib={:.1}", proc_rss_mib(pid));
}

/// One round's ACK latencies, sorted: for each of `clients`, the time from
/// `t0` to the first new EDS version it reports after `t0` (that round's).
async fn round_latencies(
    rx: &mut mpsc::UnboundedReceiver<(usize, String, Instant)>,
    clients: usize,
    t0: Instant,
) -> Vec<Duration> {
    let mut done = vec![false; clients];
    let mut latencies = Vec::with_capacity(clients);
    while latencies.len() < clients {
        let (c, _, at) = rx.recv().await.expect("clients report");
        if at > t0 && !done[c] {
            done[c] = true;
            latencies.push(at - t0);
        }
    }
    latencies.sort();
    latencies
}
