//! weft-proxy as an xDS client: the real `weft-proxy run --xds-address`
//! binary against an in-process weft_xds ADS server on 127.0.0.1 serving a
//! listener (HCM with RDS), a route, an EDS cluster and its endpoints.

mod support;

use prost_reflect::DynamicMessage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::sync::oneshot;
use weft_xds::{
    AdsServer, Any, DebounceConfig, NodeInfo, PushRequest, Pusher, ResourceSet, ServerOptions,
    XdsMetrics,
};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const WAIT: Duration = Duration::from_secs(20);

/// A resource written as Envoy YAML, encoded as an `Any`.
fn any(type_url: &str, yaml: &str) -> Any {
    let name = type_url.rsplit('/').next().unwrap();
    let desc = weft_proxy::config::pool()
        .get_message_by_name(name)
        .expect("type in pool");
    let msg = DynamicMessage::deserialize(desc, serde_yaml::Deserializer::from_str(yaml))
        .unwrap_or_else(|e| panic!("bad test resource {yaml}: {e}"));
    Any {
        type_url: type_url.to_owned(),
        value: prost::Message::encode_to_vec(&msg),
    }
}

fn listener(port: u16, extra_hcm: &str) -> Any {
    named_listener("virtualInbound", port, extra_hcm)
}

fn named_listener(name: &str, port: u16, extra_hcm: &str) -> Any {
    any(
        LISTENER,
        &format!(
            r#"
name: {name}
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: inbound
      {extra_hcm}
      rds: {{route_config_name: "8080", config_source: {{ads: {{}}, resource_api_version: V3}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        ),
    )
}

fn route(cluster: &str) -> Any {
    any(
        ROUTE,
        &format!(
            r#"
name: "8080"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: {cluster}}}
"#
        ),
    )
}

fn eds_cluster(name: &str) -> Any {
    any(
        CLUSTER,
        &format!(
            r#"
name: {name}
type: EDS
connect_timeout: 1s
eds_cluster_config: {{service_name: {name}, eds_config: {{ads: {{}}, resource_api_version: V3}}}}
"#
        ),
    )
}

fn endpoints(name: &str, port: u16) -> Any {
    any(
        ENDPOINT,
        &format!(
            r#"
cluster_name: {name}
endpoints:
- lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
        ),
    )
}

#[derive(Default)]
struct Resources(Mutex<HashMap<String, Vec<(String, Any)>>>);

impl Resources {
    fn set(&self, type_url: &str, items: Vec<(&str, Any)>) {
        self.0.lock().unwrap().insert(
            type_url.to_owned(),
            items.into_iter().map(|(n, a)| (n.to_owned(), a)).collect(),
        );
    }
}

impl weft_xds::Generator for Resources {
    fn generate(&self, _node: &NodeInfo, type_url: &str) -> ResourceSet {
        let mut set = ResourceSet::new();
        for (n, a) in self.0.lock().unwrap().get(type_url).into_iter().flatten() {
            set.insert(n.clone(), a.clone());
        }
        set
    }
}

struct Server {
    ads: AdsServer,
    pusher: Pusher,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_server(listener: std::net::TcpListener, gen_: Arc<Resources>) -> Server {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(XdsMetrics::new(&mut registry));
    let pusher = Pusher::spawn(DebounceConfig {
        after: Duration::from_millis(10),
        max: Duration::from_secs(1),
    });
    let ads = AdsServer::new(gen_, &pusher, metrics, ServerOptions::default());
    let (stop, stopped) = oneshot::channel();
    let s = ads.clone();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        s.serve(listener, async move {
            let _ = stopped.await;
        })
        .await
        .expect("xDS server");
    });
    Server {
        ads,
        pusher,
        stop: Some(stop),
        task,
    }
}

struct ProxyChild(Child);
impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    dead_port()
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(addr: SocketAddr) -> Option<u16> {
    let r = tokio::time::timeout(Duration::from_secs(2), async {
        let s = tokio::net::TcpStream::connect(addr).await.ok()?;
        drop(s);
        Some(get(addr, "svc", "/").await.status)
    })
    .await;
    r.ok().flatten()
}

/// Runs the real binary as the injector would: `run --xds-address` plus
/// Istio's environment.
fn spawn_proxy(xds_addr: SocketAddr, health: SocketAddr) -> ProxyChild {
    let child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["run", "--xds-address", &xds_addr.to_string()])
        .args(["--concurrency", "1", "--admin-address", "127.0.0.1:0"])
        .args([
            "--health-address",
            &health.to_string(),
            "--prometheus-address",
            "off",
        ])
        .env("POD_NAME", "reviews-v1-abc")
        .env("POD_NAMESPACE", "bookinfo")
        .env("INSTANCE_IP", "127.0.0.1")
        .env("SERVICE_ACCOUNT", "reviews")
        .env("ISTIO_META_WORKLOAD_NAME", "reviews-v1")
        .env(
            "ISTIO_METAJSON_LABELS",
            r#"{"app":"reviews","version":"v1"}"#,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weft-proxy");
    ProxyChild(child)
}

async fn health_status(health: SocketAddr) -> Option<u16> {
    let r = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::net::TcpStream::connect(health).await.ok()?;
        Some(get(health, "x", "/healthz/ready").await.status)
    });
    r.await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_routes_and_endpoints() {
    let a = upstream("a").await;
    let gen_ = Arc::new(Resources::default());
    let port = free_port();
    gen_.set(LISTENER, vec![("virtualInbound", listener(port, ""))]);
    gen_.set(CLUSTER, vec![("svc-a", eds_cluster("svc-a"))]);
    gen_.set(ENDPOINT, vec![("svc-a", endpoints("svc-a", a.addr.port()))]);
    let xds_sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let xds_addr = xds_sock.local_addr().unwrap();
    let server = start_server(xds_sock, gen_.clone());
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _child = spawn_proxy(xds_addr, health);
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    // The listener is up (no route yet: 404) but the proxy is not ready.
    wait_until("the listener answers", || async {
        status(listen).await == Some(404)
    })
    .await;
    assert_eq!(health_status(health).await, Some(503));
    gen_.set(ROUTE, vec![("8080", route("svc-a"))]);
    server.pusher.trigger(PushRequest::full("route arrives"));
    wait_until("ready once the route arrived", || async {
        health_status(health).await == Some(200)
    })
    .await;
    assert_eq!(status(listen).await, Some(200));
    assert!(a.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_follows_ads_and_keeps_serving() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let gen_ = Arc::new(Resources::default());
    let port = free_port();
    gen_.set(LISTENER, vec![("virtualInbound", listener(port, ""))]);
    gen_.set(ROUTE, vec![("8080", route("svc-a"))]);
    gen_.set(
        CLUSTER,
        vec![
            ("svc-a", eds_cluster("svc-a")),
            ("svc-b", eds_cluster("svc-b")),
        ],
    );
    gen_.set(
        ENDPOINT,
        vec![
            ("svc-a", endpoints("svc-a", a.addr.port())),
            ("svc-b", endpoints("svc-b", b.addr.port())),
        ],
    );
    let xds_sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let xds_addr = xds_sock.local_addr().unwrap();
    let mut server = start_server(xds_sock, gen_.clone());

    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _child = spawn_proxy(xds_addr, health);
    let proxy_id = "sidecar~127.0.0.1~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local";
    let listen = SocketAddr::from(([127, 0, 0, 1], port));

    // Ready once listeners and clusters are applied; traffic reaches svc-a.
    wait_until("/healthz/ready answers 200", || async {
        health_status(health).await == Some(200)
    })
    .await;
    wait_until("requests reach upstream a", || async {
        status(listen).await == Some(200) && a.hits() > 0
    })
    .await;
    let node = server.ads.node(proxy_id).expect("server knows the node");
    assert_eq!(node.metadata_str("NAMESPACE"), Some("bookinfo"));
    assert_eq!(node.metadata_str("WORKLOAD_NAME"), Some("reviews-v1"));
    assert_eq!(node.metadata_str("SERVICE_ACCOUNT"), Some("reviews"));
    assert_eq!(node.metadata_str("INSTANCE_IPS"), Some("127.0.0.1"));
    assert_eq!(
        node.metadata_map("LABELS")
            .get("version")
            .map(String::as_str),
        Some("v1")
    );

    // Change the route: traffic follows to b (over EDS).
    gen_.set(ROUTE, vec![("8080", route("svc-b"))]);
    server.pusher.trigger(PushRequest::full("route to b"));
    wait_until("traffic follows the route to b", || async {
        let before = b.hits();
        status(listen).await == Some(200) && b.hits() > before
    })
    .await;

    // A listener added later is bound and served.
    let port2 = free_port();
    gen_.set(
        LISTENER,
        vec![
            ("virtualInbound", listener(port, "")),
            ("extra", named_listener("extra", port2, "")),
        ],
    );
    server.pusher.trigger(PushRequest::full("new listener"));
    let listen2 = SocketAddr::from(([127, 0, 0, 1], port2));
    wait_until("the added listener serves", || async {
        status(listen2).await == Some(200)
    })
    .await;

    // An unsupported field: NACKed with its path, routing to b unchanged.
    gen_.set(
        LISTENER,
        vec![("virtualInbound", listener(port, "via: weft"))],
    );
    server.pusher.trigger(PushRequest::full("bad listener"));
    let mut nack = String::new();
    wait_until("the server records a NACK", || {
        let st = server.ads.sync_status();
        let found = st
            .iter()
            .find(|s| s.proxy_id == proxy_id)
            .and_then(|s| s.types.get(LISTENER))
            .and_then(|t| t.last_nack.as_ref().map(|n| n.message.clone()));
        if let Some(m) = found {
            nack = m;
        }
        let done = !nack.is_empty();
        async move { done }
    })
    .await;
    assert!(
        nack.contains("Listener virtualInbound")
            && nack.contains("filter_chains[0].filters[0].typed_config")
            && nack.contains("unsupported"),
        "NACK names resource and field: {nack}"
    );
    let before = (a.hits(), b.hits());
    for _ in 0..5 {
        assert_eq!(status(listen).await, Some(200));
    }
    assert_eq!(a.hits(), before.0, "old routing (to b) kept after NACK");
    assert_eq!(b.hits(), before.1 + 5);

    // Removing a listener closes its port; the other keeps serving.
    gen_.set(LISTENER, vec![("virtualInbound", listener(port, ""))]);
    server.pusher.trigger(PushRequest::full("drop extra"));
    wait_until("the removed listener's port is closed", || async {
        tokio::net::TcpStream::connect(listen2).await.is_err()
    })
    .await;
    assert_eq!(status(listen).await, Some(200));

    // weftd goes away: traffic keeps flowing.
    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(WAIT, &mut server.task)
        .await
        .expect("server stops")
        .unwrap();
    let before = b.hits();
    for _ in 0..5 {
        assert_eq!(status(listen).await, Some(200));
    }
    assert_eq!(b.hits(), before + 5);
}
