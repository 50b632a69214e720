//! Outbound RDS route configurations, one per HTTP (or sniffed) port and
//! named by it (`"80"`): a virtual host per reachable service on that port
//! (`HOST:PORT`, domains = every alias a client may use plus the VIPs, each
//! also with `:PORT`), routes from the service's VirtualService or Istio's
//! default route, and the catch-all `allow_any` (PassthroughCluster) or
//! `block_all` (502) host per outbound traffic policy.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::google::protobuf::BoolValue;
use weft_api::networking::{
    Destination, HttpRoute, HttpRouteDestination, OutboundTrafficMode, PortSelector,
};
use weft_api::registry::{Service, ServiceSource, service_aliases};

use super::cluster::PASSTHROUGH;
use super::http::{RouteContext, catch_all, http_routes};
use super::node::ProxyNode;
use super::protocol::{ListenerProtocol, listener_protocol};
use super::scope::ProxyScope;
use super::{MeshView, pb};

/// The VIPs of a service as this proxy sees them: its addresses, or the
/// auto-allocated one when the proxy asked for DNS auto-allocation.
pub fn vips(svc: &Service, node: &ProxyNode) -> Vec<String> {
    if !svc.addresses.is_empty() {
        return svc
            .addresses
            .iter()
            .filter(|a| !a.contains('/') && a.as_str() != "0.0.0.0")
            .cloned()
            .collect();
    }
    match (&svc.auto_allocated_address, node.dns_auto_allocate) {
        (Some(a), true) => vec![a.clone()],
        _ => Vec::new(),
    }
}

/// HTTP-ish ports (HTTP or sniffed) of the reachable services.
pub fn http_ports(scope: &ProxyScope<'_>) -> BTreeSet<u32> {
    scope
        .services
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
        .filter(|(s, p)| scope.imports_port(&s.namespace, &s.hostname, p.port))
        .map(|(_, p)| p)
        .filter(|p| {
            matches!(
                listener_protocol(p.protocol),
                ListenerProtocol::Http | ListenerProtocol::Auto
            )
        })
        .map(|p| p.port)
        .collect()
}

/// Every outbound route configuration of the proxy.
pub fn build_routes(
    view: &MeshView,
    scope: &ProxyScope<'_>,
    node: &ProxyNode,
) -> Vec<RouteConfiguration> {
    http_ports(scope)
        .into_iter()
        .map(|port| route_config(view, scope, node, port))
        .collect()
}

fn domains(view: &MeshView, svc: &Service, node: &ProxyNode, port: u32) -> Vec<String> {
    let mut names = match svc.source {
        ServiceSource::Kubernetes => service_aliases(
            &svc.name,
            &svc.namespace,
            view.registry.domain(),
            &node.namespace,
        ),
        ServiceSource::ServiceEntry => vec![svc.hostname.clone()],
    };
    names.extend(vips(svc, node));
    names
        .into_iter()
        .flat_map(|n| {
            let with_port = format!("{n}:{port}");
            [n, with_port]
        })
        .collect()
}

fn route_config(
    view: &MeshView,
    scope: &ProxyScope<'_>,
    node: &ProxyNode,
    port: u32,
) -> RouteConfiguration {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut hosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for svc in &scope.services {
        let Some(sp) = svc.port(port) else { continue };
        if !scope.imports_port(&svc.namespace, &svc.hostname, port) {
            continue;
        }
        if !matches!(
            listener_protocol(sp.protocol),
            ListenerProtocol::Http | ListenerProtocol::Auto
        ) {
            continue;
        }
        // Envoy refuses a domain twice in one route configuration.
        let domains: Vec<String> = domains(view, svc, node, port)
            .into_iter()
            .filter(|d| seen.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            continue;
        }
        let name = format!("{}:{port}", svc.hostname);
        let routes = service_routes(view, scope, node, svc, port);
        hosts.insert(
            name.clone(),
            VirtualHost {
                name,
                domains,
                routes,
                ..VirtualHost::default()
            },
        );
    }
    let mut virtual_hosts: Vec<VirtualHost> = hosts.into_values().collect();
    virtual_hosts.push(catch_all_host(scope.outbound_mode));
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..RouteConfiguration::default()
    }
}

fn service_routes(
    view: &MeshView,
    scope: &ProxyScope<'_>,
    node: &ProxyNode,
    svc: &Service,
    port: u32,
) -> Vec<Route> {
    let default_retry = view.mesh.default_http_retry_policy.as_ref();
    if let Some((obj, vs)) = scope.virtual_service_for(&svc.hostname) {
        let cx = RouteContext {
            scope,
            node,
            namespace: obj.namespace(),
            port,
            default_retry,
        };
        let routes: Vec<Route> = vs.http.iter().flat_map(|r| http_routes(r, &cx)).collect();
        if !routes.is_empty() {
            return routes;
        }
    }
    let cx = RouteContext {
        scope,
        node,
        namespace: &svc.namespace,
        port,
        default_retry,
    };
    let rule = HttpRoute {
        name: Some("default".to_string()),
        route: vec![HttpRouteDestination {
            destination: Some(Destination {
                host: svc.hostname.clone(),
                subset: None,
                port: Some(PortSelector { number: port }),
            }),
            ..HttpRouteDestination::default()
        }],
        ..HttpRoute::default()
    };
    http_routes(&rule, &cx)
}

/// `allow_any` (to PassthroughCluster) or `block_all` (502).
fn catch_all_host(mode: OutboundTrafficMode) -> VirtualHost {
    let (name, action) = if mode == OutboundTrafficMode::RegistryOnly {
        (
            "block_all",
            Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..DirectResponseAction::default()
            }),
        )
    } else {
        (
            "allow_any",
            Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH.to_string())),
                timeout: Some(pb::secs(0)),
                ..RouteAction::default()
            }),
        )
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(catch_all()),
            action: Some(action),
            ..Route::default()
        }],
        ..VirtualHost::default()
    }
}
