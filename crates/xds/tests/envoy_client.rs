//! Real Envoy 1.40 as an ADS client of this server (state of the world and
//! delta): it must ACK everything, route real traffic over loopback with
//! the pushed config, survive CDS changes without stuck warming, keep
//! serving after a NACK, and follow EDS-only pushes.
//!
//! Needs `envoy` on PATH (scripts/setup installs it); fails loudly otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_xds::names::to_any;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{Any, PushRequest, XdsType};

const ENVOY_WAIT: Duration = Duration::from_secs(30);

// === resources ===

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    })
}

fn socket(port: u16) -> Option<Address> {
    Some(Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

fn backend_cluster(timeout_ms: i32) -> (String, Any) {
    let c = Cluster {
        name: "backend".into(),
        connect_timeout: Some(PbDuration {
            seconds: i64::from(timeout_ms / 1000),
            nanos: (timeout_ms % 1000) * 1_000_000,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: ads(),
            service_name: String::new(),
        }),
        ..Default::default()
    };
    ("backend".into(), to_any(&c))
}

fn backend_endpoints(port: u16) -> (String, Any) {
    let c = ClusterLoadAssignment {
        cluster_name: "backend".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: socket(port),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    ("backend".into(), to_any(&c))
}

/// A listener; `stat_prefix` empty makes Envoy reject it.
fn http_listener(port: u16, stat_prefix: &str) -> (String, Any) {
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: "local".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(to_any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let l = Listener {
        name: "http".into(),
        address: socket(port),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ConfigType::TypedConfig(to_any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    ("http".into(), to_any(&l))
}

fn routes(direct_body: &str) -> (String, Any) {
    let prefix = |p: &str| {
        Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(p.into())),
            ..Default::default()
        })
    };
    let r = RouteConfiguration {
        name: "local".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![
                Route {
                    r#match: prefix("/direct"),
                    action: Some(Action::DirectResponse(DirectResponseAction {
                        status: 200,
                        body: Some(DataSource {
                            specifier: Some(Specifier::InlineString(direct_body.into())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                Route {
                    r#match: prefix("/"),
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster("backend".into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    ("local".into(), to_any(&r))
}

// === loopback helpers ===

/// A backend answering every HTTP/1.1 request with `body`.
async fn backend(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over a fresh connection; the status code and body, or the error.
async fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Decodes an HTTP/1.1 chunked body (Envoy's admin answers that way).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Retries `GET path` until the body is `want` (config converging).
async fn wait_body(port: u16, path: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + ENVOY_WAIT;
    let mut last;
    loop {
        last = get(port, path).await;
        if matches!(&last, Ok((200, body)) if body == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} via Envoy never returned {want:?}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === Envoy ===

struct Envoy {
    child: tokio::process::Child,
    admin_port: u16,
    dir: tempfile::TempDir,
}

impl Envoy {
    async fn start(node_id: &str, xds_port: u16, delta: bool) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
        let bootstrap = format!(
            r#"node: {{ id: "{node_id}", cluster: "test" }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {xds_port} }} }} }}
"#
        );
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let admin_file = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = tokio::process::Command::new("envoy")
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `envoy` (install Envoy 1.40 with scripts/setup): {e}")
            });
        let admin_port = wait_admin(&admin_file, dir.path()).await;
        Envoy {
            child,
            admin_port,
            dir,
        }
    }

    /// The last lines of Envoy's log, for failure messages.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Envoy's `update_rejected` counters that are not zero.
    async fn rejected_counters(&self) -> Vec<String> {
        let (_, stats) = get(self.admin_port, "/stats?filter=update_rejected")
            .await
            .expect("Envoy admin /stats");
        stats
            .lines()
            .filter(|l| !l.trim_end().ends_with(": 0"))
            .map(str::to_string)
            .collect()
    }

    async fn stat(&self, name: &str) -> u64 {
        let (_, stats) = get(self.admin_port, &format!("/stats?filter=^{name}$"))
            .await
            .expect("Envoy admin /stats");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no stat {name} in {stats:?}"))
    }
}

async fn wait_admin(file: &Path, dir: &Path) -> u16 {
    let deadline = tokio::time::Instant::now() + ENVOY_WAIT;
    loop {
        if let Ok(addr) = std::fs::read_to_string(file)
            && let Some(port) = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok())
        {
            return port;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(PathBuf::from(dir).join("envoy.log"));
            panic!("Envoy did not start: {log:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(delta: bool) {
    let srv = TestServer::start(debounce_ms(10)).await;
    let port_a = backend("from-a").await;
    let port_b = backend("from-b").await;
    let listen = free_port();
    let g = &srv.generator;
    g.set_all(CLUSTER, set([backend_cluster(1000)]));
    g.set_all(ENDPOINT, set([backend_endpoints(port_a)]));
    g.set_all(LISTENER, set([http_listener(listen, "ingress")]));
    g.set_all(ROUTE, set([routes("gen-1")]));

    let id = if delta { "envoy-delta" } else { "envoy-sotw" };
    let mut envoy = Envoy::start(id, srv.addr.port(), delta).await;
    let all_synced = |s: &weft_xds::ProxySyncStatus| {
        [CLUSTER, ENDPOINT, LISTENER, ROUTE]
            .iter()
            .all(|t| s.types.get(*t).is_some_and(|t| t.synced()))
    };
    srv.wait_status(id, all_synced).await;
    wait_body(listen, "/direct", "gen-1").await;
    wait_body(listen, "/", "from-a").await;
    let rejected = envoy.rejected_counters().await;
    assert!(rejected.is_empty(), "{rejected:?}\n{}", envoy.log());

    // CDS changes while the endpoints stay the same: the cluster must not
    // get stuck warming, and routes follow.
    g.set_all(CLUSTER, set([backend_cluster(2000)]));
    g.set_all(ROUTE, set([routes("gen-2")]));
    srv.pusher.trigger(PushRequest::full("cds and rds change"));
    wait_body(listen, "/direct", "gen-2").await;
    let cds_version = g.get(id, CLUSTER).version();
    srv.wait_status(id, |s| {
        all_synced(s) && s.types[CLUSTER].acked_version == cds_version
    })
    .await;
    let deadline = tokio::time::Instant::now() + ENVOY_WAIT;
    while envoy.stat("cluster_manager.warming_clusters").await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster stuck warming after a CDS change: {}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_body(listen, "/", "from-a").await;

    // An invalid listener is NACKed; Envoy keeps serving the old one.
    g.set_all(LISTENER, set([http_listener(listen, "")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Listener], "bad listener"));
    let st = srv.wait_status(id, |s| s.types[LISTENER].nacks >= 1).await;
    let nack = st.types[LISTENER].last_nack.clone().unwrap();
    assert!(nack.message.contains("StatPrefix"), "{}", nack.message);
    assert_ne!(st.types[LISTENER].acked_version, nack.version);
    assert!(srv.server.metrics().rejects(LISTENER) >= 1);
    wait_body(listen, "/direct", "gen-2").await;

    // EDS-only push moves traffic to the other backend.
    g.set_all(ENDPOINT, set([backend_endpoints(port_b)]));
    srv.pusher.trigger(PushRequest::endpoints("backend moved"));
    wait_body(listen, "/", "from-b").await;

    // A valid listener change replaces the rejected one; the route it
    // names is unchanged and needs no re-send.
    g.set_all(LISTENER, set([http_listener(listen, "ingress2")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Listener], "listener fixed"));
    let lds_version = g.get(id, LISTENER).version();
    srv.wait_status(id, |s| s.types[LISTENER].acked_version == lds_version)
        .await;
    let deadline = tokio::time::Instant::now() + ENVOY_WAIT;
    while envoy.stat("listener_manager.total_listeners_warming").await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener stuck warming: {}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_body(listen, "/direct", "gen-2").await;

    let rejected = envoy.rejected_counters().await;
    assert!(
        rejected.iter().all(|l| l.contains("listener_manager.lds")),
        "only the bad listener may be rejected: {rejected:?}"
    );

    // weftd restarts: Envoy keeps serving, reconnects, tells the new
    // server what it holds, and converges to the new state.
    let addr = srv.addr;
    let held_cds = g.get(id, CLUSTER).version();
    srv.stop().await;
    assert_eq!(get(listen, "/direct").await, Ok((200, "gen-2".to_string())));
    let g = std::sync::Arc::new(TestGenerator::default());
    g.set_all(CLUSTER, set([backend_cluster(2000)]));
    g.set_all(ENDPOINT, set([backend_endpoints(port_b)]));
    g.set_all(LISTENER, set([http_listener(listen, "ingress2")]));
    g.set_all(ROUTE, set([routes("gen-3")]));
    let srv = TestServer::start_at(addr, debounce_ms(10), g).await;
    wait_body(listen, "/direct", "gen-3").await;
    let st = srv.wait_status(id, all_synced).await;
    if !delta {
        assert_eq!(st.types[CLUSTER].initial_version, held_cds);
    }
    wait_body(listen, "/", "from-b").await;

    envoy.child.kill().await.unwrap();
    srv.wait_no_streams().await;
    srv.stop().await;
}

#[tokio::test]
async fn envoy_state_of_the_world() {
    scenario(false).await;
}

#[tokio::test]
async fn envoy_delta() {
    scenario(true).await;
}
