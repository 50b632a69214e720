//! The `virtualInbound` listener on 15006, as Istio builds it for a
//! sidecar:
//!
//! - `virtualInbound-blackhole` for connections to 15006 itself;
//! - passthrough chains (no port match; `virtualInbound` for TCP,
//!   `virtualInbound-catchall-http` for HTTP) to `InboundPassthroughCluster`,
//!   plus per-port passthrough chains for `portLevelMtls` ports no service
//!   declares;
//! - per served port (`0.0.0.0_PORT`), chains by PeerAuthentication mode
//!   and protocol: STRICT → only TLS chains (`transport_protocol: tls`,
//!   DownstreamTlsContext requiring a client certificate), PERMISSIVE →
//!   mTLS chains matched on Istio's ALPN plus plaintext (`raw_buffer`)
//!   ones, DISABLE → plaintext only (Istio's filter chain match tables);
//! - HTTP chains: a connection manager with the inline inbound route,
//!   XFCC `APPEND_FORWARD` with subject/DNS/URI of the peer certificate,
//!   AuthorizationPolicy RBAC filters before the router; TCP chains: network
//!   RBAC filters before the TCP proxy.

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::authn::{PeerMode, PeerPolicy};
use super::authz::{AuthzFilters, policies_for};
use super::cluster::{BLACKHOLE, INBOUND_PASSTHROUGH, inbound_name, inbound_ports};
use super::filters::{Routes, hcm_config, hcm_filter, http_filters, tcp_proxy};
use super::http::catch_all;
use super::listener::{HTTP_ALPN, INBOUND_PORT, chain, listener_filter};
use super::node::ProxyNode;
use super::protocol::{ListenerProtocol, listener_protocol};
use super::tls::{ALPN_ALL_ISTIO_MTLS, ALPN_IN_MESH, ALPN_MTLS_HTTP, inbound_mtls, tls_socket};
use super::{MeshView, metadata, pb};

/// What a chain carries once matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainKind {
    Http,
    Tcp,
}

/// One filter chain match option (Istio's `FilterChainMatchOptions`).
struct MatchOption {
    alpn: &'static [&'static str],
    /// `tls` or `raw_buffer`.
    transport: &'static str,
    kind: ChainKind,
    /// Terminate mTLS on this chain.
    mtls: bool,
}

const fn opt(
    alpn: &'static [&'static str],
    transport: &'static str,
    kind: ChainKind,
    mtls: bool,
) -> MatchOption {
    MatchOption {
        alpn,
        transport,
        kind,
        mtls,
    }
}

const TLS: &str = "tls";
const RAW: &str = "raw_buffer";
/// ALPN http_inspector reports for plaintext HTTP.
const PLAIN_HTTP: &[&str] = &HTTP_ALPN;
use ChainKind::{Http, Tcp};

/// Istio's match tables by protocol and mode.
fn options(proto: ListenerProtocol, mode: PeerMode) -> Vec<MatchOption> {
    match (proto, mode) {
        (ListenerProtocol::Http, PeerMode::Strict) => vec![opt(&[], TLS, Http, true)],
        (ListenerProtocol::Http, PeerMode::Permissive) => vec![
            opt(&ALPN_ALL_ISTIO_MTLS, TLS, Http, true),
            opt(&[], RAW, Http, false),
        ],
        (ListenerProtocol::Http, PeerMode::Disable) => vec![opt(&[], RAW, Http, false)],
        (ListenerProtocol::Auto, PeerMode::Strict) => vec![
            opt(&ALPN_MTLS_HTTP, TLS, Http, true),
            opt(&[], TLS, Tcp, true),
        ],
        (ListenerProtocol::Auto, PeerMode::Permissive) => vec![
            opt(&ALPN_MTLS_HTTP, TLS, Http, true),
            opt(PLAIN_HTTP, RAW, Http, false),
            opt(&ALPN_IN_MESH, TLS, Tcp, true),
            opt(&[], RAW, Tcp, false),
            // TLS the application originated itself (no mesh ALPN).
            opt(&[], TLS, Tcp, false),
        ],
        (ListenerProtocol::Auto, PeerMode::Disable) => {
            vec![opt(PLAIN_HTTP, RAW, Http, false), opt(&[], RAW, Tcp, false)]
        }
        (_, PeerMode::Strict) => vec![opt(&[], TLS, Tcp, true)],
        (_, PeerMode::Permissive) => vec![
            opt(&ALPN_ALL_ISTIO_MTLS, TLS, Tcp, true),
            opt(&[], TLS, Tcp, false),
            opt(&[], RAW, Tcp, false),
        ],
        (_, PeerMode::Disable) => vec![opt(&[], RAW, Tcp, false)],
    }
}

/// The inline route of an inbound HTTP chain.
pub fn inbound_route(cluster: &str, service_port: u32) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{service_port}"),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(catch_all()),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(RouteCluster::Cluster(cluster.to_string())),
                    timeout: Some(pb::secs(0)),
                    ..RouteAction::default()
                })),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..RouteConfiguration::default()
    }
}

/// Everything the chains of one listener share.
struct Inbound<'a> {
    logs: &'a [AccessLog],
    authz: AuthzFilters,
    trust_domains: Vec<String>,
}

/// One port's chains: where they go and how they are named.
struct Target<'a> {
    name: &'a str,
    http_name: &'a str,
    port: Option<u32>,
    cluster: &'a str,
    stat: &'a str,
    service_port: u32,
}

impl Inbound<'_> {
    fn http(&self, t: &Target<'_>) -> Filter {
        let mut filters = self.authz.http.clone();
        filters.extend(http_filters(false, false));
        let mut hcm = hcm_config(
            t.stat,
            Routes::Inline(inbound_route(t.cluster, t.service_port)),
            filters,
            self.logs,
        );
        // Peer identity for the application (Istio's sidecar inbound).
        hcm.forward_client_cert_details = ForwardClientCertDetails::AppendForward as i32;
        hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            dns: true,
            uri: true,
            ..SetCurrentClientCertDetails::default()
        });
        hcm_filter(&hcm)
    }

    fn tcp(&self, t: &Target<'_>) -> Vec<Filter> {
        let mut filters = self.authz.tcp.clone();
        filters.push(tcp_proxy(t.stat, &[(t.cluster.to_string(), 1)], self.logs));
        filters
    }

    fn chains(&self, t: &Target<'_>, proto: ListenerProtocol, mode: PeerMode) -> Vec<FilterChain> {
        options(proto, mode)
            .into_iter()
            .map(|o| {
                let m = FilterChainMatch {
                    destination_port: t.port.map(|value| UInt32Value { value }),
                    transport_protocol: o.transport.to_string(),
                    application_protocols: o.alpn.iter().map(|a| (*a).to_string()).collect(),
                    ..FilterChainMatch::default()
                };
                let (name, filters) = match o.kind {
                    Http => (t.http_name, vec![self.http(t)]),
                    Tcp => (t.name, self.tcp(t)),
                };
                let mut c = chain(name, Some(m), filters);
                if o.mtls {
                    c.transport_socket = Some(tls_socket(&inbound_mtls(
                        &self.trust_domains,
                        o.kind == Http,
                    )));
                }
                c
            })
            .collect()
    }
}

/// The trust domains peers may come from: the mesh's and its aliases.
fn trust_domains(view: &MeshView) -> Vec<String> {
    let mut out = vec![view.mesh.trust_domain_or_default().to_string()];
    for a in &view.mesh.trust_domain_aliases {
        if !a.is_empty() && !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// The merged PeerAuthentication of the proxy's workload.
pub fn peer_policy(view: &MeshView, node: &ProxyNode) -> PeerPolicy {
    view.peer_authn.for_workload(&node.namespace, &node.labels)
}

/// `virtualInbound`.
pub fn virtual_inbound(
    view: &MeshView,
    node: &ProxyNode,
    logs: &[AccessLog],
    td: &str,
) -> Listener {
    let peer = peer_policy(view, node);
    let policies = policies_for(
        &view.authorization_policies,
        &view.options.root_namespace,
        node,
    );
    let trust_domains = trust_domains(view);
    let ib = Inbound {
        logs,
        authz: AuthzFilters::new(&policies, &trust_domains),
        trust_domains,
    };
    let mut chains = vec![chain(
        "virtualInbound-blackhole",
        Some(FilterChainMatch {
            destination_port: Some(UInt32Value {
                value: INBOUND_PORT,
            }),
            ..FilterChainMatch::default()
        }),
        vec![tcp_proxy(BLACKHOLE, &[(BLACKHOLE.to_string(), 1)], &[])],
    )];
    let ports = inbound_ports(view, node);
    let passthrough = |port: Option<u32>| Target {
        name: "virtualInbound",
        http_name: "virtualInbound-catchall-http",
        port,
        cluster: INBOUND_PASSTHROUGH,
        stat: INBOUND_PASSTHROUGH,
        service_port: 0,
    };
    chains.extend(ib.chains(&passthrough(None), ListenerProtocol::Auto, peer.mode));
    for (&port, &mode) in &peer.per_port {
        if !ports.iter().any(|p| p.target_port == port) {
            chains.extend(ib.chains(&passthrough(Some(port)), ListenerProtocol::Auto, mode));
        }
    }
    for p in &ports {
        let cluster = inbound_name(p.target_port);
        let name = format!("0.0.0.0_{}", p.target_port);
        let stat = format!("inbound_0.0.0.0_{}", p.target_port);
        let t = Target {
            name: &name,
            http_name: &name,
            port: Some(p.target_port),
            cluster: &cluster,
            stat: &stat,
            service_port: p.service_port,
        };
        let proto = match listener_protocol(p.protocol) {
            ListenerProtocol::None => ListenerProtocol::Tcp,
            other => other,
        };
        chains.extend(ib.chains(&t, proto, peer.for_port(p.target_port)));
    }
    Listener {
        name: "virtualInbound".to_string(),
        address: Some(pb::socket("0.0.0.0", INBOUND_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![
            listener_filter(
                "envoy.filters.listener.original_dst",
                &OriginalDst::default(),
            ),
            listener_filter(
                "envoy.filters.listener.tls_inspector",
                &TlsInspector::default(),
            ),
            listener_filter(
                "envoy.filters.listener.http_inspector",
                &HttpInspector::default(),
            ),
        ],
        filter_chains: chains,
        metadata: Some(metadata::own_workload(node, td)),
        ..Listener::default()
    }
}
