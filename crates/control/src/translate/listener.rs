//! Listeners with Istio's shapes: `virtualOutbound` on 15001
//! (`use_original_dst`, hands connections to the per-port listeners,
//! catch-all to PassthroughCluster or BlackHoleCluster), per-port outbound
//! listeners with `bind_to_port: false` (`0.0.0.0_PORT` for HTTP and
//! sniffed ports, `VIP_PORT` for TCP services); `virtualInbound` on 15006
//! is built by [`super::inbound`].

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as LfConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use weft_api::networking::OutboundTrafficMode;
use weft_api::networking::RouteDestination;
use weft_api::registry::{Service, host_matches, labels_match, resolve_config_host};
use weft_api::validate::Protocol;

use super::cluster::{BLACKHOLE, PASSTHROUGH, outbound_name};
use super::filters::{Routes, access_logs, hcm, http_filters, tcp_proxy};
use super::node::ProxyNode;
use super::protocol::{ListenerProtocol, listener_protocol};
use super::route::vips;
use super::scope::ProxyScope;
use super::{MeshView, inbound, metadata, pb};

/// Outbound capture port.
pub const OUTBOUND_PORT: u32 = 15001;
/// Inbound capture port.
pub const INBOUND_PORT: u32 = 15006;
/// ALPN values http_inspector reports for plaintext HTTP.
pub const HTTP_ALPN: [&str; 3] = ["http/1.0", "http/1.1", "h2c"];

pub(super) fn listener_filter<M: prost::Name>(name: &str, m: &M) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(LfConfig::TypedConfig(pb::any(m))),
        ..ListenerFilter::default()
    }
}

pub(super) fn chain(name: &str, m: Option<FilterChainMatch>, filters: Vec<Filter>) -> FilterChain {
    FilterChain {
        name: name.to_string(),
        filter_chain_match: m,
        filters,
        ..FilterChain::default()
    }
}

fn cidr(ip: &str) -> CidrRange {
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value {
            value: if ip.contains(':') { 128 } else { 32 },
        }),
    }
}

/// A CIDR address (`203.0.113.0/24`) as a prefix range.
fn cidr_range(a: &str) -> Option<CidrRange> {
    let (ip, len) = a.split_once('/')?;
    Some(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value {
            value: len.parse().ok()?,
        }),
    })
}

fn http_alpn() -> Vec<String> {
    HTTP_ALPN.iter().map(|s| (*s).to_string()).collect()
}

/// Every listener of the proxy.
pub fn build_listeners(view: &MeshView, scope: &ProxyScope<'_>, node: &ProxyNode) -> Vec<Listener> {
    let logs = access_logs(&view.mesh);
    let fallback = if scope.outbound_mode == OutboundTrafficMode::RegistryOnly {
        BLACKHOLE
    } else {
        PASSTHROUGH
    };
    let cors = scope.virtual_services.iter().any(|o| {
        o.as_virtual_service()
            .is_some_and(|vs| vs.http.iter().any(|r| r.cors_policy.is_some()))
    });
    let trust_domain = view.mesh.trust_domain_or_default();
    let mut out = vec![virtual_outbound(fallback, &logs, node, trust_domain)];
    out.extend(outbound_listeners(scope, node, fallback, cors, &logs));
    out.push(inbound::virtual_inbound(view, node, &logs, trust_domain));
    out
}

fn virtual_outbound(fallback: &str, logs: &[AccessLog], node: &ProxyNode, td: &str) -> Listener {
    Listener {
        name: "virtualOutbound".to_string(),
        address: Some(pb::socket("0.0.0.0", OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![
            chain(
                "virtualOutbound-blackhole",
                Some(FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: OUTBOUND_PORT,
                    }),
                    ..FilterChainMatch::default()
                }),
                vec![tcp_proxy(BLACKHOLE, &[(BLACKHOLE.to_string(), 1)], &[])],
            ),
            chain(
                "virtualOutbound-catchall-tcp",
                None,
                vec![tcp_proxy(fallback, &[(fallback.to_string(), 1)], logs)],
            ),
        ],
        metadata: Some(metadata::own_workload(node, td)),
        ..Listener::default()
    }
}

fn port_listener(name: String, address: &str, port: u32) -> Listener {
    Listener {
        name,
        address: Some(pb::socket(address, port)),
        bind_to_port: Some(BoolValue { value: false }),
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Listener::default()
    }
}

/// The TCP destinations of `svc` on `port` for this proxy: the first
/// applicable `tcp` rule of its VirtualService, else the first `tls` rule
/// whose `sniHosts` cover the service host, else the service itself.
fn tcp_destinations(
    scope: &ProxyScope<'_>,
    node: &ProxyNode,
    svc: &Service,
    port: u32,
) -> Vec<(String, u32)> {
    let l4_applies = |p: Option<u32>,
                      labels: &std::collections::BTreeMap<String, String>,
                      ns: &Option<String>| {
        p.is_none_or(|p| p == port)
            && (labels.is_empty() || labels_match(labels, &node.labels))
            && ns.as_ref().is_none_or(|ns| *ns == node.namespace)
    };
    if let Some((obj, vs)) = scope.virtual_service_for(&svc.hostname) {
        let to_dests = |route: &[RouteDestination]| -> Vec<(String, u32)> {
            route
                .iter()
                .filter_map(|rd| {
                    let d = rd.destination.as_ref()?;
                    let target = scope.service(&d.host, obj.namespace());
                    let p = d
                        .port
                        .as_ref()
                        .map(|p| p.number)
                        .unwrap_or_else(|| match target {
                            Some(s) if s.ports.len() == 1 => s.ports[0].port,
                            _ => port,
                        });
                    let name = outbound_name(
                        p,
                        d.subset.as_deref().unwrap_or(""),
                        &scope.fqdn(&d.host, obj.namespace()),
                    );
                    let w = u32::try_from(rd.weight.unwrap_or(0)).unwrap_or(0);
                    Some((name, w))
                })
                .filter(|(_, w)| route.len() == 1 || *w > 0)
                .collect()
        };
        for rule in &vs.tcp {
            let applies = rule.matches.is_empty()
                || rule
                    .matches
                    .iter()
                    .any(|m| l4_applies(m.port, &m.source_labels, &m.source_namespace));
            let dests = if applies {
                to_dests(&rule.route)
            } else {
                Vec::new()
            };
            if !dests.is_empty() {
                return dests;
            }
        }
        for rule in &vs.tls {
            let applies = rule.matches.iter().any(|m| {
                l4_applies(m.port, &m.source_labels, &m.source_namespace)
                    && m.sni_hosts.iter().any(|h| {
                        host_matches(
                            &resolve_config_host(h, obj.namespace(), scope.domain()),
                            &svc.hostname,
                        ) || host_matches(&svc.hostname, h)
                    })
            });
            let dests = if applies {
                to_dests(&rule.route)
            } else {
                Vec::new()
            };
            if !dests.is_empty() {
                return dests;
            }
        }
    }
    vec![(outbound_name(port, "", &svc.hostname), 1)]
}

fn outbound_listeners(
    scope: &ProxyScope<'_>,
    node: &ProxyNode,
    fallback: &str,
    cors: bool,
    logs: &[AccessLog],
) -> Vec<Listener> {
    // port -> protocol -> services, in hostname order.
    let mut ports: BTreeMap<u32, BTreeMap<ListenerProtocol, Vec<&Service>>> = BTreeMap::new();
    for svc in &scope.services {
        for p in &svc.ports {
            let proto = listener_protocol(p.protocol);
            if proto != ListenerProtocol::None
                && scope.imports_port(&svc.namespace, &svc.hostname, p.port)
            {
                ports
                    .entry(p.port)
                    .or_default()
                    .entry(proto)
                    .or_default()
                    .push(svc);
            }
        }
    }
    let passthrough = || {
        chain(
            "PassthroughFilterChain",
            None,
            vec![tcp_proxy(fallback, &[(fallback.to_string(), 1)], logs)],
        )
    };
    let mut out = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (port, by_proto) in ports {
        let http = by_proto.get(&ListenerProtocol::Http);
        let auto = by_proto.get(&ListenerProtocol::Auto);
        let tcp = by_proto.get(&ListenerProtocol::Tcp);
        let wildcard = format!("0.0.0.0_{port}");
        // TCP services: a `VIP_PORT` listener each, or, without a VIP, a
        // chain on `0.0.0.0_PORT` matched by CIDR address or TLS SNI.
        let mut wild_tcp: Vec<FilterChain> = Vec::new();
        let mut sni = false;
        for svc in tcp.into_iter().flatten() {
            let stat = outbound_name(port, "", &svc.hostname);
            let dests = tcp_destinations(scope, node, svc, port);
            let addresses = vips(svc, node);
            for a in &addresses {
                let name = format!("{a}_{port}");
                if !taken.insert(name.clone()) {
                    continue;
                }
                let mut l = port_listener(name.clone(), a, port);
                l.filter_chains = vec![chain(&name, None, vec![tcp_proxy(&stat, &dests, logs)])];
                out.push(l);
            }
            if !addresses.is_empty() {
                continue;
            }
            let cidrs: Vec<CidrRange> =
                svc.addresses.iter().filter_map(|a| cidr_range(a)).collect();
            let tls = svc
                .port(port)
                .is_some_and(|p| matches!(p.protocol, Protocol::Tls | Protocol::Https));
            let m = if !cidrs.is_empty() {
                Some(FilterChainMatch {
                    prefix_ranges: cidrs,
                    ..FilterChainMatch::default()
                })
            } else if tls {
                sni = true;
                Some(FilterChainMatch {
                    server_names: vec![svc.hostname.clone()],
                    ..FilterChainMatch::default()
                })
            } else {
                None
            };
            // Envoy refuses two chains with the same match; like Istio,
            // the first service (by hostname) wins.
            if wild_tcp.iter().any(|c| c.filter_chain_match == m) {
                continue;
            }
            wild_tcp.push(chain(
                &format!("{wildcard}-{}", svc.hostname),
                m,
                vec![tcp_proxy(&stat, &dests, logs)],
            ));
        }
        if http.is_some() || auto.is_some() {
            let mut l = port_listener(wildcard.clone(), "0.0.0.0", port);
            let http_chain = |name: &str, m: Option<FilterChainMatch>| {
                chain(
                    name,
                    m,
                    vec![hcm(
                        &format!("outbound_0.0.0.0_{port}"),
                        Routes::Rds(port.to_string()),
                        http_filters(true, cors),
                        logs,
                    )],
                )
            };
            if let Some(auto) = auto {
                // Sniffing: HTTP by ALPN from http_inspector, else TCP to
                // the service whose VIP was dialled.
                l.listener_filters = vec![
                    listener_filter(
                        "envoy.filters.listener.tls_inspector",
                        &TlsInspector::default(),
                    ),
                    listener_filter(
                        "envoy.filters.listener.http_inspector",
                        &HttpInspector::default(),
                    ),
                ];
                for svc in auto {
                    for vip in vips(svc, node) {
                        let vip_match = |alpn: Vec<String>| FilterChainMatch {
                            prefix_ranges: vec![cidr(&vip)],
                            application_protocols: alpn,
                            ..FilterChainMatch::default()
                        };
                        l.filter_chains.push(http_chain(
                            &format!("{vip}_{port}-http"),
                            Some(vip_match(http_alpn())),
                        ));
                        let stat = outbound_name(port, "", &svc.hostname);
                        let dests = tcp_destinations(scope, node, svc, port);
                        l.filter_chains.push(chain(
                            &format!("{vip}_{port}-tcp"),
                            Some(vip_match(Vec::new())),
                            vec![tcp_proxy(&stat, &dests, logs)],
                        ));
                    }
                }
                l.filter_chains.push(http_chain(
                    &wildcard,
                    Some(FilterChainMatch {
                        application_protocols: http_alpn(),
                        ..FilterChainMatch::default()
                    }),
                ));
                l.filter_chains.extend(wild_tcp);
            } else {
                l.filter_chains.push(http_chain(&wildcard, None));
                // A TCP catch-all would collide with the HTTP one: HTTP wins.
                l.filter_chains.extend(
                    wild_tcp
                        .into_iter()
                        .filter(|c| c.filter_chain_match.is_some()),
                );
                if sni {
                    l.listener_filters = vec![listener_filter(
                        "envoy.filters.listener.tls_inspector",
                        &TlsInspector::default(),
                    )];
                }
            }
            l.default_filter_chain = Some(passthrough());
            taken.insert(wildcard.clone());
            out.push(l);
        } else if !wild_tcp.is_empty() && taken.insert(wildcard.clone()) {
            let mut l = port_listener(wildcard.clone(), "0.0.0.0", port);
            if sni {
                l.listener_filters = vec![listener_filter(
                    "envoy.filters.listener.tls_inspector",
                    &TlsInspector::default(),
                )];
            }
            l.filter_chains = wild_tcp;
            l.default_filter_chain = Some(passthrough());
            out.push(l);
        }
    }
    out
}
