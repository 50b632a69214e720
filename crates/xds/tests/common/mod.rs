//! Shared helpers for the ADS integration tests: a generator tests can
//! mutate, real Envoy resources, a server on an ephemeral loopback port and
//! raw gRPC streams for protocol-level checks.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use weft_xds::names::to_any;
use weft_xds::{
    AdsServer, Any, DebounceConfig, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    DiscoveryRequest, DiscoveryResponse, Generator, Node, NodeInfo, ProxySyncStatus, Pusher,
    ResourceSet, ServerOptions, XdsMetrics,
};

/// Upper bound for anything a test waits on; only reached when a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

// === generator ===

/// Resources per (node id or "*", type URL); a node without its own entry
/// gets the "*" entry.
#[derive(Default)]
pub struct TestGenerator {
    sets: Mutex<HashMap<(String, String), ResourceSet>>,
}

impl TestGenerator {
    pub fn set(&self, node: &str, type_url: &str, set: ResourceSet) {
        self.sets
            .lock()
            .unwrap()
            .insert((node.to_string(), type_url.to_string()), set);
    }

    pub fn set_all(&self, type_url: &str, set: ResourceSet) {
        self.set("*", type_url, set);
    }

    pub fn get(&self, node: &str, type_url: &str) -> ResourceSet {
        let sets = self.sets.lock().unwrap();
        sets.get(&(node.to_string(), type_url.to_string()))
            .or_else(|| sets.get(&("*".to_string(), type_url.to_string())))
            .cloned()
            .unwrap_or_default()
    }
}

impl Generator for TestGenerator {
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet {
        self.get(&node.id, type_url)
    }
}

// === resources ===

pub fn eds_cluster(name: &str) -> (String, Any) {
    eds_cluster_marked(name, "")
}

/// An EDS cluster whose definition differs by `marker` (its alt_stat_name).
pub fn eds_cluster_marked(name: &str, marker: &str) -> (String, Any) {
    let c = Cluster {
        name: name.to_string(),
        alt_stat_name: marker.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Default::default()
    };
    (name.to_string(), to_any(&c))
}

/// A static cluster whose content differs by `marker` (its alt_stat_name).
pub fn static_cluster(name: &str, marker: &str) -> (String, Any) {
    let c = Cluster {
        name: name.to_string(),
        alt_stat_name: marker.to_string(),
        ..Default::default()
    };
    (name.to_string(), to_any(&c))
}

/// A load assignment whose content differs by `marker` (a key of its named endpoints).
pub fn cla(cluster: &str, marker: &str) -> (String, Any) {
    let mut c = ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        ..Default::default()
    };
    c.named_endpoints.insert(
        marker.to_string(),
        envoy_types::pb::envoy::config::endpoint::v3::Endpoint::default(),
    );
    (cluster.to_string(), to_any(&c))
}

pub fn rds_listener(name: &str, route: &str) -> (String, Any) {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let l = Listener {
        name: name.to_string(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ConfigType::TypedConfig(to_any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.to_string(), to_any(&l))
}

pub fn route(name: &str, domain: &str) -> (String, Any) {
    let r = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: domain.to_string(),
            domains: vec![domain.to_string()],
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.to_string(), to_any(&r))
}

pub fn set(items: impl IntoIterator<Item = (String, Any)>) -> ResourceSet {
    items.into_iter().collect()
}

// === server ===

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: AdsServer,
    pub pusher: Pusher,
    pub generator: Arc<TestGenerator>,
    pub registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(debounce: DebounceConfig) -> TestServer {
        Self::start_at("127.0.0.1:0".parse().unwrap(), debounce, Arc::default()).await
    }

    pub async fn start_at(
        addr: SocketAddr,
        debounce: DebounceConfig,
        generator: Arc<TestGenerator>,
    ) -> TestServer {
        let mut registry = Registry::default();
        let metrics = Arc::new(XdsMetrics::new(&mut registry));
        let pusher = Pusher::spawn(debounce);
        let server = AdsServer::new(
            generator.clone(),
            &pusher,
            metrics,
            ServerOptions::default(),
        );
        let listener = weft_xds::server::bind(addr).expect("bind test xDS port");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("xDS server failed");
        });
        TestServer {
            addr,
            server,
            pusher,
            generator,
            registry,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("xDS server did not shut down")
                .unwrap();
        }
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }

    /// Polls until no stream is open.
    pub async fn wait_no_streams(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.server.sync_status().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "streams still open: {:#?}",
                self.server.sync_status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.server.metrics().connected_proxies(), 0);
    }

    /// Polls sync status until `pred` holds for the stream of `proxy`.
    pub async fn wait_status(
        &self,
        proxy: &str,
        pred: impl Fn(&ProxySyncStatus) -> bool,
    ) -> ProxySyncStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let all = self.server.sync_status();
            if let Some(s) = all.iter().find(|s| s.proxy_id == proxy && pred(s)) {
                return s.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sync status of {proxy} never matched: {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn debounce_ms(ms: u64) -> DebounceConfig {
    DebounceConfig {
        after: Duration::from_millis(ms),
        max: Duration::from_secs(10),
    }
}

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: "test".to_string(),
        ..Default::default()
    }
}

// === raw streams ===

pub struct RawSotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl RawSotw {
    pub async fn connect(url: &str) -> RawSotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .expect("connect to test xDS server");
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .expect("open ADS stream")
            .into_inner();
        RawSotw { tx, rx }
    }

    pub fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).expect("stream open");
    }

    /// First request of a type (with node).
    pub fn subscribe(&self, node_id: &str, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: Some(node(node_id)),
            type_url: type_url.to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
    }

    pub fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: resp.version_info.clone(),
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
    }

    pub fn nack(&self, resp: &DiscoveryResponse, previous_version: &str, message: &str) {
        self.send(DiscoveryRequest {
            version_info: previous_version.to_string(),
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.to_string(),
                details: vec![],
            }),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
            .expect("stream failed")
            .expect("stream ended")
    }

    /// A response if one is already waiting.
    pub async fn try_recv(&mut self) -> Option<DiscoveryResponse> {
        tokio::task::yield_now().await;
        match tokio::time::timeout(Duration::ZERO, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("stream broke: {other:?}"),
            Err(_) => None,
        }
    }

    pub async fn recv_err(&mut self) -> tonic::Status {
        match tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
        {
            Err(status) => status,
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }
}

pub struct RawDelta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl RawDelta {
    pub async fn connect(url: &str) -> RawDelta {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .expect("connect to test xDS server");
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .expect("open delta ADS stream")
            .into_inner();
        RawDelta { tx, rx }
    }

    pub fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).expect("stream open");
    }

    pub fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        });
    }

    /// A response if one is already waiting.
    pub async fn try_recv(&mut self) -> Option<DeltaDiscoveryResponse> {
        tokio::task::yield_now().await;
        match tokio::time::timeout(Duration::ZERO, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("stream broke: {other:?}"),
            Err(_) => None,
        }
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
            .expect("stream failed")
            .expect("stream ended")
    }
}

/// Names of the resources in a state-of-the-world response.
pub fn names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|a| weft_xds::names::resource_name(a).unwrap())
        .collect()
}
