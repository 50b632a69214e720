//! A cluster's endpoints: `load_assignment` rows (addresses, weights,
//! priorities, health, locality weights, metadata) turned into hosts
//! grouped by priority, and STRICT_DNS names resolved into hosts.

use super::{DnsFamily, Host, HostSet};
use crate::config::ConfigError;
use crate::model::common::Ctx;
use crate::model::lb::{LbPolicy, PriorityHosts};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

pub(super) fn group(hosts: Vec<(Arc<Host>, u32)>, lb: LbPolicy) -> HostSet {
    let max = hosts.iter().map(|(_, p)| *p).max().unwrap_or(0);
    let mut levels: Vec<Vec<Arc<Host>>> = (0..=max).map(|_| Vec::new()).collect();
    for (h, p) in hosts {
        levels[p as usize].push(h);
    }
    HostSet {
        priorities: levels
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|l| PriorityHosts::new(l, lb))
            .collect(),
    }
}

/// (path, address, weight, priority, healthy, locality index, locality
/// weight, metadata) of each endpoint.
type EndpointRow<'a> = (
    String,
    &'a envoy_types::pb::envoy::config::core::v3::SocketAddress,
    u32,
    u32,
    bool,
    usize,
    u32,
    Option<&'a Metadata>,
);

fn endpoints<'a>(
    ctx: &Ctx<'_>,
    la: Option<&'a ClusterLoadAssignment>,
) -> Result<Vec<EndpointRow<'a>>, ConfigError> {
    let mut out = Vec::new();
    let Some(la) = la else { return Ok(out) };
    for (i, l) in la.endpoints.iter().enumerate() {
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let c = ctx
                .field("load_assignment")
                .index("endpoints", i)
                .index("lb_endpoints", j);
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return Err(c.invalid("endpoint is required"));
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(c
                    .field("endpoint.address")
                    .invalid("socket_address is required"));
            };
            let weight = e
                .load_balancing_weight
                .as_ref()
                .map(|w| w.value)
                .unwrap_or(1);
            let healthy = !matches!(
                e.health_status(),
                HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout
            );
            out.push((
                c.path,
                sa,
                weight,
                l.priority,
                healthy,
                i,
                l.load_balancing_weight
                    .as_ref()
                    .map(|w| w.value)
                    .unwrap_or(0),
                e.metadata.as_ref(),
            ));
        }
    }
    Ok(out)
}

fn port_of(
    ctx: &Ctx<'_>,
    sa: &envoy_types::pb::envoy::config::core::v3::SocketAddress,
) -> Result<u16, ConfigError> {
    match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| ctx.invalid(format!("bad port {p}")))
        }
        _ => Err(ctx.field("port_value").invalid("port_value is required")),
    }
}

pub(super) fn static_hosts(
    ctx: &Ctx<'_>,
    la: Option<&ClusterLoadAssignment>,
    lb: LbPolicy,
    locality_weighted: bool,
) -> Result<HostSet, ConfigError> {
    let mut hosts = Vec::new();
    let rows = endpoints(ctx, la)?;
    let mut locality_sum: std::collections::HashMap<usize, u64> = Default::default();
    for r in &rows {
        *locality_sum.entry(r.5).or_default() += r.2 as u64;
    }
    for (path, sa, weight, priority, healthy, loc, loc_weight, metadata) in rows {
        // Locality weighting: a locality's share split by endpoint weight.
        let weight = if locality_weighted {
            if loc_weight == 0 {
                continue;
            }
            ((loc_weight as u64 * weight as u64 * 1000) / locality_sum[&loc].max(1)).max(1) as u32
        } else {
            weight
        };
        let c = Ctx::new(ctx.origin, path).field("endpoint.address.socket_address");
        let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
            c.field("address").invalid(format!(
                "{:?} is not an IP address (use STRICT_DNS for names)",
                sa.address
            ))
        })?;
        let addr = SocketAddr::new(ip, port_of(&c, sa)?);
        let host = Host::new(addr, weight, healthy).with_metadata(metadata.cloned().map(Arc::new));
        hosts.push((Arc::new(host), priority));
    }
    Ok(group(hosts, lb))
}

pub(super) fn dns_names(
    ctx: &Ctx<'_>,
    la: Option<&ClusterLoadAssignment>,
) -> Result<Vec<(String, u16, u32, u32)>, ConfigError> {
    let mut names = Vec::new();
    for (path, sa, weight, priority, _, _, _, _) in endpoints(ctx, la)? {
        let c = Ctx::new(ctx.origin, path).field("endpoint.address.socket_address");
        names.push((sa.address.clone(), port_of(&c, sa)?, weight, priority));
    }
    Ok(names)
}

/// Resolves STRICT_DNS names (every address of every name becomes a host).
pub fn resolve(
    names: &[(String, u16, u32, u32)],
    family: DnsFamily,
) -> Vec<(SocketAddr, u32, u32)> {
    let mut out = Vec::new();
    for (name, port, w, p) in names {
        if let Ok(addrs) = (name.as_str(), *port).to_socket_addrs() {
            let addrs: Vec<SocketAddr> = addrs.collect();
            let has = |v4: bool| addrs.iter().any(|a| a.is_ipv4() == v4);
            let keep = |a: &SocketAddr| match family {
                DnsFamily::V4 => a.is_ipv4(),
                DnsFamily::V6 => a.is_ipv6(),
                DnsFamily::PreferV4 => a.is_ipv4() || !has(true),
                DnsFamily::PreferV6 => a.is_ipv6() || !has(false),
                DnsFamily::All => true,
            };
            for a in addrs.iter().copied().filter(keep) {
                if !out.iter().any(|(x, _, _)| *x == a) {
                    out.push((a, *w, *p));
                }
            }
        }
    }
    out
}

pub(super) fn resolve_blocking(
    names: &[(String, u16, u32, u32)],
    family: DnsFamily,
    lb: LbPolicy,
) -> HostSet {
    let hosts = resolve(names, family)
        .into_iter()
        .map(|(a, w, p)| (Arc::new(Host::new(a, w, true)), p))
        .collect();
    group(hosts, lb)
}
