//! Clusters with Istio's names: `outbound|PORT|SUBSET|FQDN` for every
//! reachable service port (and each DestinationRule subset),
//! `inbound|PORT||` for each port the proxy's workload serves, and the
//! fixed `PassthroughCluster`, `BlackHoleCluster` and
//! `InboundPassthroughCluster`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use weft_api::networking::SimpleLb;
use weft_api::registry::{Resolution, Service, labels_match};

use super::node::ProxyNode;
use super::protocol::{ListenerProtocol, is_http2, listener_protocol};
use super::scope::ProxyScope;
use super::tls::UpstreamAlpn;
use super::{MeshView, metadata, pb, policy, upstream};

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

/// `outbound|PORT|SUBSET|HOST`.
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|PORT||`.
pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// Parses `outbound|PORT|SUBSET|HOST` into its parts.
pub fn parse_outbound(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    Some((port, parts.next()?, parts.next()?))
}

fn connect_timeout(view: &MeshView) -> envoy_types::pb::google::protobuf::Duration {
    view.mesh
        .connect_timeout
        .as_ref()
        .and_then(pb::api_duration)
        .unwrap_or_else(|| pb::secs(10))
}

fn base(view: &MeshView, name: String, kind: DiscoveryType) -> Cluster {
    Cluster {
        name,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(connect_timeout(view)),
        ..Cluster::default()
    }
}

/// Every cluster the proxy needs.
pub fn build_clusters(view: &MeshView, scope: &ProxyScope<'_>, node: &ProxyNode) -> Vec<Cluster> {
    let mut out = Vec::new();
    for svc in &scope.services {
        let dr = scope.destination_rule_for(&svc.hostname, &svc.namespace);
        for port in &svc.ports {
            let proto = listener_protocol(port.protocol);
            if proto == ListenerProtocol::None
                || !scope.imports_port(&svc.namespace, &svc.hostname, port.port)
            {
                continue;
            }
            let mut subsets = vec![(String::new(), None)];
            if let (true, Some((_, dr))) = (svc.resolution != Resolution::Passthrough, dr) {
                subsets.extend(dr.subsets.iter().map(|s| (s.name.clone(), Some(&s.labels))));
            }
            for (subset, labels) in subsets {
                let mut c = outbound_cluster(view, svc, port.port, &subset, labels);
                let eff = policy::effective(dr.map(|(_, d)| d), port.port, &subset);
                let http = proto == ListenerProtocol::Http;
                let h2 = policy::apply(&mut c, &eff, http, is_http2(port.protocol));
                let alpn = match (http, h2) {
                    (true, true) => UpstreamAlpn::Http2,
                    (true, false) => UpstreamAlpn::Http1,
                    _ => UpstreamAlpn::Tcp,
                };
                let lb_passthrough = eff
                    .load_balancer
                    .as_ref()
                    .is_some_and(|lb| lb.simple == Some(SimpleLb::Passthrough));
                upstream::apply_upstream_tls(
                    view,
                    &mut c,
                    eff.tls.as_ref(),
                    &upstream::UpstreamCluster {
                        service: svc,
                        port: port.port,
                        subset: &subset,
                        alpn,
                        lb_passthrough,
                    },
                );
                if svc.resolution == Resolution::Passthrough {
                    c.lb_policy = LbPolicy::ClusterProvided as i32;
                    c.lb_config = None;
                }
                let mut md =
                    metadata::outbound_cluster(svc, port.port, &subset, port.protocol.as_str());
                if let Some((obj, _)) = dr {
                    metadata::add_istio_config(&mut md, obj, &subset);
                }
                c.metadata = Some(md);
                out.push(c);
            }
        }
    }
    out.extend(inbound_clusters(view, node));
    let mut passthrough = base(view, PASSTHROUGH.into(), DiscoveryType::OriginalDst);
    passthrough.lb_policy = LbPolicy::ClusterProvided as i32;
    out.push(passthrough);
    out.push(base(view, BLACKHOLE.into(), DiscoveryType::Static));
    let mut inbound_pt = base(view, INBOUND_PASSTHROUGH.into(), DiscoveryType::OriginalDst);
    inbound_pt.lb_policy = LbPolicy::ClusterProvided as i32;
    inbound_pt.upstream_bind_config = Some(inbound_bind(node));
    out.push(inbound_pt);
    out
}

fn outbound_cluster(
    view: &MeshView,
    svc: &Service,
    port: u32,
    subset: &str,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Cluster {
    let name = outbound_name(port, subset, &svc.hostname);
    match svc.resolution {
        Resolution::ClientSideLb => {
            let mut c = base(view, name.clone(), DiscoveryType::Eds);
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(pb::ads()),
                service_name: name,
            });
            c
        }
        Resolution::DnsLb | Resolution::DnsRoundRobin => {
            let kind = if svc.resolution == Resolution::DnsLb {
                DiscoveryType::StrictDns
            } else {
                DiscoveryType::LogicalDns
            };
            let mut c = base(view, name.clone(), kind);
            let mut eps: Vec<LbEndpoint> = view
                .registry
                .endpoints(&svc.hostname, port)
                .into_iter()
                .filter(|e| e.healthy && labels.is_none_or(|l| labels_match(l, &e.labels)))
                .map(|e| {
                    let mut lb = lb_endpoint(&e.address, e.port);
                    lb.metadata =
                        metadata::endpoint(e, "Kubernetes", view.mesh.trust_domain_or_default());
                    lb
                })
                .collect();
            if eps.is_empty() && labels.is_none() && !svc.hostname.starts_with('*') {
                eps.push(lb_endpoint(&svc.hostname, port));
            }
            if kind == DiscoveryType::LogicalDns {
                eps.truncate(1);
            }
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: eps,
                    ..LocalityLbEndpoints::default()
                }],
                ..ClusterLoadAssignment::default()
            });
            c
        }
        Resolution::Passthrough | Resolution::DynamicDns => {
            base(view, name, DiscoveryType::OriginalDst)
        }
    }
}

/// An endpoint at `address:port`.
pub fn lb_endpoint(address: &str, port: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(pb::socket(address, port)),
            ..EnvoyEndpoint::default()
        })),
        ..LbEndpoint::default()
    }
}

/// One port the proxy's workload serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPort<'a> {
    /// The port the application listens on (the cluster's port).
    pub target_port: u32,
    pub service_port: u32,
    pub protocol: weft_api::validate::Protocol,
    pub service: &'a Service,
    /// Every service served on this target port (first: `service`).
    pub services: Vec<&'a Service>,
}

/// The ports the proxy's workload serves (services selecting its labels in
/// its namespace), one per target port (the first service by hostname
/// wins a port two services share).
pub fn inbound_ports<'a>(view: &'a MeshView, node: &ProxyNode) -> Vec<InboundPort<'a>> {
    let mut out: Vec<InboundPort<'a>> = Vec::new();
    for svc in view
        .registry
        .services_for_workload(&node.namespace, &node.labels)
    {
        for port in &svc.ports {
            if listener_protocol(port.protocol) == ListenerProtocol::None {
                continue;
            }
            let target_port = view
                .registry
                .endpoints(&svc.hostname, port.port)
                .into_iter()
                .find(|e| node.ips.contains(&e.address))
                .map_or(port.port, |e| e.port);
            if let Some(p) = out.iter_mut().find(|p| p.target_port == target_port) {
                if !p.services.iter().any(|s| s.hostname == svc.hostname) {
                    p.services.push(svc);
                }
                continue;
            }
            out.push(InboundPort {
                target_port,
                service_port: port.port,
                protocol: port.protocol,
                service: svc,
                services: vec![svc],
            });
        }
    }
    out.sort_by_key(|p| p.target_port);
    out
}

/// Istio's `upstream_bind_config` of inbound clusters: connections to the
/// app come from 127.0.0.6 (`::6` for an IPv6 pod), which the capture
/// rules let through instead of redirecting them back to the proxy.
fn inbound_bind(node: &ProxyNode) -> envoy_types::pb::envoy::config::core::v3::BindConfig {
    use envoy_types::pb::envoy::config::core::v3::{BindConfig, SocketAddress, socket_address};
    let v6 = node
        .ip()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_ipv6());
    BindConfig {
        source_address: Some(SocketAddress {
            address: if v6 { "::6" } else { "127.0.0.6" }.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..SocketAddress::default()
        }),
        ..BindConfig::default()
    }
}

fn inbound_clusters(view: &MeshView, node: &ProxyNode) -> Vec<Cluster> {
    let trust_domain = view.mesh.trust_domain_or_default();
    inbound_ports(view, node)
        .into_iter()
        .map(|p| {
            let name = inbound_name(p.target_port);
            let mut c = base(view, name.clone(), DiscoveryType::Static);
            // Like Istio since 1.10: forward to the pod IP, so applications
            // bound to localhost only are not exposed.
            let address = node.ip().unwrap_or("127.0.0.1");
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![lb_endpoint(address, p.target_port)],
                    ..LocalityLbEndpoints::default()
                }],
                ..ClusterLoadAssignment::default()
            });
            c.upstream_bind_config = Some(inbound_bind(node));
            c.circuit_breakers = Some(
                envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
                    thresholds: vec![policy::default_thresholds()],
                    ..Default::default()
                },
            );
            c.metadata = Some(metadata::inbound_cluster(
                &p.services,
                p.service_port,
                node,
                trust_domain,
            ));
            c
        })
        .collect()
}
