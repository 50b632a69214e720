//! Load check for the ADS server: N in-process `AdsClient`s (each its own
//! TCP connection over loopback) follow CDS/EDS for M EDS clusters; then
//! R endpoint changes are pushed (EDS only) and for each the time from the
//! trigger to every client having accepted it is measured, with the CPU
//! the process spent.
//!
//! `cargo run --release -p weft-xds --example ads_load -- [CLIENTS] [CLUSTERS] [ROUNDS] [DEBOUNCE_MS]`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use tokio::sync::mpsc;
use weft_xds::names::to_any;
use weft_xds::types::{CLUSTER, ENDPOINT};
use weft_xds::{
    AdsClient, AdsServer, Any, ClientConfig, DebounceConfig, NodeInfo, PushRequest, Pusher,
    ResourceSet, ServerOptions, XdsMetrics,
};

fn cluster(i: usize) -> (String, Any) {
    let name = format!("outbound|80||svc-{i}.default.svc.cluster.local");
    let c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Default::default()
    };
    (name, to_any(&c))
}

fn cla(i: usize, generation: u32) -> (String, Any) {
    let name = format!("outbound|80||svc-{i}.default.svc.cluster.local");
    let endpoint = |n: u32| LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    address: format!("10.{}.{}.{}", i / 250 % 250, i % 250, n + generation % 200),
                    port_specifier: Some(PortSpecifier::PortValue(8080)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let c = ClusterLoadAssignment {
        cluster_name: name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: (0..3).map(endpoint).collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    (name, to_any(&c))
}

/// Same resources for every proxy; endpoints of cluster 0 move per generation.
struct Mesh {
    clusters: ResourceSet,
    endpoints: Mutex<ResourceSet>,
}

impl weft_xds::Generator for Mesh {
    fn generate(&self, _node: &NodeInfo, type_url: &str) -> ResourceSet {
        match type_url {
            CLUSTER => self.clusters.clone(),
            ENDPOINT => self.endpoints.lock().unwrap().clone(),
            _ => ResourceSet::new(),
        }
    }

    fn cache_key(&self, _node: &NodeInfo, _type_url: &str) -> Option<String> {
        Some("every-proxy".to_string())
    }
}

/// Accepts everything without copying (weft-proxy compiles here).
struct NoWork;

impl weft_xds::ConfigHandler for NoWork {
    fn apply(&mut self, _: &str, _: &[Any]) -> Result<(), String> {
        Ok(())
    }

    fn apply_update(&mut self, _: &weft_xds::Update<'_>) -> Result<(), String> {
        Ok(())
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm field.
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let clients = args.first().copied().unwrap_or(1000);
    let clusters = args.get(1).copied().unwrap_or(100);
    let rounds = args.get(2).copied().unwrap_or(10);
    let debounce_ms = args.get(3).copied().unwrap_or(0) as u64;

    let mesh = Arc::new(Mesh {
        clusters: (0..clusters).map(cluster).collect(),
        endpoints: Mutex::new((0..clusters).map(|i| cla(i, 0)).collect()),
    });
    let pusher = Pusher::spawn(DebounceConfig {
        after: Duration::from_millis(debounce_ms),
        max: Duration::from_secs(10),
    });
    let metrics = Arc::new(XdsMetrics::unregistered());
    let server = AdsServer::new(
        mesh.clone(),
        &pusher,
        metrics.clone(),
        ServerOptions::default(),
    );
    let listener = weft_xds::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = server.clone();
    tokio::spawn(async move { srv.serve(listener, std::future::pending()).await });

    // Each client reports every EDS version it accepts, with a timestamp.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, Instant)>();
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let tx = tx.clone();
        let node = weft_xds::Node {
            id: format!(
                "sidecar~10.1.{}.{}~load-{c}.default~default.svc.cluster.local",
                c / 250,
                c % 250
            ),
            ..Default::default()
        };
        let mut config = ClientConfig::new(format!("http://{addr}"), node);
        config.connect_timeout = Duration::from_secs(30);
        // weft-proxy would compile the resources here; this measures the
        // protocol, so the handler accepts without work.
        let handle = AdsClient::spawn(config, NoWork).unwrap();
        let mut state = handle.state();
        tokio::spawn(async move {
            let mut last = String::new();
            while state.changed().await.is_ok() {
                let v = state.borrow_and_update().version(ENDPOINT).to_string();
                if v != last {
                    let _ = tx.send((c, v.clone(), Instant::now()));
                    last = v;
                }
            }
        });
        handles.push(handle);
    }
    let initial = mesh.endpoints.lock().unwrap().version();
    let mut synced = vec![false; clients];
    let mut count = 0;
    while count < clients {
        let (c, v, _) = rx.recv().await.unwrap();
        if v == initial && !synced[c] {
            synced[c] = true;
            count += 1;
        }
    }
    println!(
        "{clients} clients x {clusters} EDS clusters synced in {:.2?}; RSS {:.0} MiB; CPU {:.2} s",
        started.elapsed(),
        rss_mib(),
        cpu_seconds()
    );

    let mut all = Vec::new();
    let mut totals = Vec::new();
    let cpu_before = cpu_seconds();
    for round in 1..=rounds as u32 {
        let want = {
            let mut eps = mesh.endpoints.lock().unwrap();
            let (name, any) = cla(0, round);
            eps.insert(name, any);
            eps.version()
        };
        let t0 = Instant::now();
        pusher.trigger(PushRequest::endpoints(format!("round {round}")));
        let mut done = vec![false; clients];
        let mut n = 0;
        let mut latencies = Vec::with_capacity(clients);
        while n < clients {
            let (c, v, at) = rx.recv().await.unwrap();
            if v == want && !done[c] {
                done[c] = true;
                n += 1;
                latencies.push(at - t0);
            }
        }
        latencies.sort();
        totals.push(*latencies.last().unwrap());
        all.extend(latencies);
    }
    let cpu = cpu_seconds() - cpu_before;
    all.sort();
    totals.sort();
    println!(
        "EDS push to all {clients} clients accepted, over {rounds} rounds (debounce {debounce_ms} ms): \
         per-client p50 {:.2?} p99 {:.2?}; all-clients p50 {:.2?} max {:.2?}; CPU {:.2} s ({:.1} ms per push); RSS {:.0} MiB",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&totals, 0.5),
        totals.last().unwrap(),
        cpu,
        cpu * 1000.0 / rounds as f64,
        rss_mib()
    );
    println!(
        "server: {} EDS pushes, {} connected",
        metrics.pushes(ENDPOINT),
        metrics.connected_proxies()
    );
    for h in handles {
        h.shutdown().await;
    }
}
