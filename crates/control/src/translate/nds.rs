//! Name Discovery (NDS): the [`NameTable`] a sidecar's DNS proxy answers
//! from, built the way istiod builds it for Istio's agent.
//!
//! For every service the proxy may reach (the same [`ProxyScope`] as its
//! listeners and clusters, so Sidecar egress scoping applies), one entry
//! keyed by hostname with:
//!
//! - the service's VIPs as this proxy sees them ([`vips`]: cluster IPs,
//!   ServiceEntry addresses, or the auto-allocated 240.240.0.0/16 VIP when
//!   the proxy sets `DNS_AUTO_ALLOCATE`, the same address its listeners
//!   use, so resolved names are captured and routed);
//! - for a service without a VIP whose resolution is passthrough (headless
//!   Services, ServiceEntries with `resolution: NONE` and endpoints), the
//!   endpoint IPs of its first port, as Kubernetes DNS answers;
//! - registry `Kubernetes` with `shortname` and `namespace` (the proxy
//!   derives `name`, `name.namespace`, `name.namespace.svc`), or `External`.
//!
//! A ServiceEntry host that decorates a Kubernetes service yields to it;
//! ServiceEntries sharing a host merge their IPs. Entries without a usable
//! IP (CIDR addresses, no endpoints) are left out. Proxies without
//! `DNS_CAPTURE` get no table. Pure: no I/O. weftd serves tables from
//! [`crate::xds_cache::XdsCache::name_table`] (one per Sidecar scope),
//! rebuilt and pushed when a passthrough service's endpoints change.

use std::net::IpAddr;

use weft_api::registry::{Resolution, Service, ServiceSource};
use weft_xds::nds::{
    NAME_TABLE_RESOURCE, NameInfo, NameTable, REGISTRY_EXTERNAL, REGISTRY_KUBERNETES,
};
use weft_xds::{NodeInfo, ResourceSet};

use super::MeshView;
use super::node::ProxyNode;
use super::route::vips;
use super::scope::ProxyScope;

/// The name table for `node`, or `None` when it did not ask for DNS capture.
pub fn build_name_table(view: &MeshView, node: &ProxyNode) -> Option<NameTable> {
    if !node.dns_capture {
        return None;
    }
    let scope = ProxyScope::new(view, node);
    let mut out = NameTable::default();
    for svc in &scope.services {
        let ips = addresses(view, svc, node);
        if ips.is_empty() {
            continue;
        }
        let kube = svc.source == ServiceSource::Kubernetes;
        let info = NameInfo {
            ips,
            registry: if kube {
                REGISTRY_KUBERNETES
            } else {
                REGISTRY_EXTERNAL
            }
            .to_string(),
            shortname: if kube {
                svc.name.clone()
            } else {
                String::new()
            },
            namespace: if kube {
                svc.namespace.clone()
            } else {
                String::new()
            },
            alt_hosts: Vec::new(),
        };
        match out.table.get_mut(&svc.hostname) {
            None => {
                out.table.insert(svc.hostname.clone(), info);
            }
            Some(existing) if existing.registry != REGISTRY_KUBERNETES => {
                if kube {
                    *existing = info;
                } else {
                    for ip in info.ips {
                        if !existing.ips.contains(&ip) {
                            existing.ips.push(ip);
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
    Some(out)
}

/// The IPs DNS should answer for `svc`: its VIPs, else (passthrough
/// services) its endpoints' IPs on the first port.
fn addresses(view: &MeshView, svc: &Service, node: &ProxyNode) -> Vec<String> {
    let valid = |a: &str| a.parse::<IpAddr>().is_ok_and(|ip| !ip.is_unspecified());
    let vips: Vec<String> = vips(svc, node).into_iter().filter(|a| valid(a)).collect();
    if !vips.is_empty() || svc.resolution != Resolution::Passthrough {
        return vips;
    }
    let Some(port) = svc.ports.first() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = view
        .registry
        .endpoints(&svc.hostname, port.port)
        .into_iter()
        .filter(|e| e.healthy && valid(&e.address))
        .map(|e| e.address.clone())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The NDS resource set for an ADS node: one [`NameTable`] for proxies
/// with `DNS_CAPTURE`, nothing otherwise (or when the node is unreadable).
pub fn generate(view: &MeshView, node: &NodeInfo) -> ResourceSet {
    let proxy = match ProxyNode::from_node(&node.node) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(node = %node.id, error = %e, "cannot build a name table for this proxy");
            return ResourceSet::new();
        }
    };
    name_table_set(view, &proxy)
}

/// The NDS resource set of `node`: its [`NameTable`] as the one resource
/// [`NAME_TABLE_RESOURCE`], or nothing without `DNS_CAPTURE`.
pub fn name_table_set(view: &MeshView, node: &ProxyNode) -> ResourceSet {
    build_name_table(view, node)
        .map(|t| std::iter::once((NAME_TABLE_RESOURCE.to_string(), t.to_any())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
