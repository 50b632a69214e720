//! Compiled listeners: address, listener filters (original_dst,
//! tls_inspector, http_inspector), filter chains with Envoy's match order,
//! and the network filter each chain runs (http_connection_manager or
//! tcp_proxy).

use super::cluster::Cluster;
use super::common::{Ctx, opt_duration};
use super::http::HttpManager;
use super::route::{Target, WeightedTargets};
use crate::accesslog::AccessLog;
use crate::config::ConfigError;
use crate::stats::{ListenerStats, Stats, TcpStats};
use envoy_types::pb::envoy::config::core::v3::{CidrRange, address, socket_address};
use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::config::listener::v3::{filter, listener_filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy as PbTcpProxy, tcp_proxy::ClusterSpecifier,
};
use prost::Message;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: Arc<str>,
    pub target: Target,
    pub idle_timeout: Option<Duration>,
    pub access_logs: Vec<AccessLog>,
    pub max_connect_attempts: u32,
    pub stats: TcpStats,
    /// Istio metrics scope, set by the listener (crate::istio_metrics).
    pub istio: std::sync::OnceLock<Arc<crate::istio_metrics::Scope>>,
}

#[derive(Debug)]
pub enum ChainKind {
    Http(Arc<HttpManager>),
    Tcp(Arc<TcpProxy>),
}

#[derive(Debug, Clone)]
struct Cidr {
    ip: IpAddr,
    len: u8,
}

impl Cidr {
    fn contains(&self, a: IpAddr) -> bool {
        let a = match (self.ip, a) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
            _ => a,
        };
        match (self.ip, a) {
            (IpAddr::V4(n), IpAddr::V4(x)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len.min(32))
                };
                u32::from(n) & mask == u32::from(x) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(x)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len.min(128) as u32)
                };
                u128::from(n) & mask == u128::from(x) & mask
            }
            _ => false,
        }
    }
}

/// What a connection looks like when its filter chain is chosen.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo<'a> {
    pub destination: Option<SocketAddr>,
    pub source: Option<SocketAddr>,
    pub transport_protocol: &'a str,
    pub server_name: Option<&'a str>,
    pub application_protocols: &'a [String],
}

#[derive(Debug, Default)]
struct ChainMatch {
    destination_port: Option<u16>,
    prefix_ranges: Vec<Cidr>,
    source_prefix_ranges: Vec<Cidr>,
    source_ports: Vec<u16>,
    transport_protocol: Option<String>,
    application_protocols: Vec<String>,
    server_names: Vec<String>,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: Arc<str>,
    matcher: ChainMatch,
    pub kind: ChainKind,
    /// `envoy.filters.network.rbac` filters run before `kind`.
    pub rbac: Vec<Arc<crate::rbac::NetworkRbac>>,
    /// TLS termination (`transport_socket` `envoy.transport_sockets.tls`).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    /// The name its stats go by (stat_prefix, else `ip_port`).
    pub stat_name: Arc<str>,
    pub address: SocketAddr,
    pub bind_to_port: bool,
    pub use_original_dst: bool,
    pub transparent: bool,
    pub original_dst_filter: bool,
    pub tls_inspector: bool,
    pub http_inspector: bool,
    pub filters_timeout: Option<Duration>,
    pub continue_on_timeout: bool,
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
    pub stats: ListenerStats,
    /// The listener's metadata (filter_metadata: informational, kept for
    /// metrics labels).
    pub metadata: Option<Arc<envoy_types::pb::envoy::config::core::v3::Metadata>>,
}

// === impl Listener ===

impl Listener {
    pub fn compile(
        ctx: &Ctx<'_>,
        l: &pb::Listener,
        clusters: &HashMap<String, Arc<Cluster>>,
        stats: &Stats,
        secrets: &crate::tls::Secrets,
    ) -> Result<Self, ConfigError> {
        let address = socket_addr(&ctx.field("address"), l.address.as_ref())?;
        let (mut original_dst_filter, mut tls_inspector, mut http_inspector) =
            (false, false, false);
        for (i, f) in l.listener_filters.iter().enumerate() {
            let c = ctx.index("listener_filters", i);
            let Some(listener_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(c
                    .field("typed_config")
                    .invalid(format!("listener filter {:?} needs a typed_config", f.name)));
            };
            match any.type_url.rsplit('/').next().unwrap_or_default() {
                "envoy.extensions.filters.listener.original_dst.v3.OriginalDst" => {
                    original_dst_filter = true
                }
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => {
                    tls_inspector = true
                }
                "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => {
                    http_inspector = true
                }
                other => {
                    return Err(c
                        .field("typed_config")
                        .unsupported(format!("listener filter {other}")));
                }
            }
        }
        let mut chains = Vec::new();
        for (i, fc) in l.filter_chains.iter().enumerate() {
            chains.push(FilterChain::compile(
                &ctx.index("filter_chains", i),
                fc,
                clusters,
                stats,
                secrets,
            )?);
        }
        let default_chain = l
            .default_filter_chain
            .as_ref()
            .map(|fc| {
                FilterChain::compile(
                    &ctx.field("default_filter_chain"),
                    fc,
                    clusters,
                    stats,
                    secrets,
                )
            })
            .transpose()?;
        crate::istio_metrics::bind_chains(stats, l, chains.iter().chain(default_chain.iter()));
        let name: Arc<str> = if l.name.is_empty() {
            address.to_string().into()
        } else {
            l.name.as_str().into()
        };
        // Envoy names listener stats by stat_prefix, else by address.
        let stat_addr = if l.stat_prefix.is_empty() {
            format!("{}_{}", address.ip(), address.port())
        } else {
            l.stat_prefix.clone()
        };
        Ok(Listener {
            metadata: l.metadata.clone().map(Arc::new),
            stats: stats.listener(&stat_addr),
            stat_name: stat_addr.as_str().into(),
            name,
            address,
            bind_to_port: l.bind_to_port.as_ref().map(|b| b.value).unwrap_or(true),
            use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
            transparent: l.transparent.as_ref().is_some_and(|b| b.value),
            original_dst_filter,
            tls_inspector,
            http_inspector,
            filters_timeout: opt_duration(
                &ctx.field("listener_filters_timeout"),
                l.listener_filters_timeout.as_ref(),
            )?
            .or(Some(Duration::from_secs(15)))
            .filter(|d| !d.is_zero()),
            continue_on_timeout: l.continue_on_listener_filters_timeout,
            chains,
            default_chain,
        })
    }

    /// Whether any chain needs the TLS ClientHello or HTTP sniffing.
    pub fn needs_sniffing(&self) -> bool {
        self.tls_inspector || self.http_inspector
    }

    /// Envoy's filter chain selection: narrow level by level, most specific first.
    pub fn select(&self, info: &ConnInfo<'_>) -> Option<&FilterChain> {
        let mut cands: Vec<&FilterChain> = self.chains.iter().collect();
        let levels: [&Level<'_>; 7] = [
            &|m| port_score(m.destination_port, info.destination.map(|d| d.port())),
            &|m| cidr_score(&m.prefix_ranges, info.destination.map(|d| d.ip())),
            &|m| sni_score(&m.server_names, info.server_name),
            &|m| match &m.transport_protocol {
                None => Some(0),
                Some(t) => (t == info.transport_protocol).then_some(1),
            },
            &|m| {
                if m.application_protocols.is_empty() {
                    Some(0)
                } else {
                    m.application_protocols
                        .iter()
                        .any(|a| info.application_protocols.contains(a))
                        .then_some(1)
                }
            },
            &|m| cidr_score(&m.source_prefix_ranges, info.source.map(|d| d.ip())),
            &|m| {
                if m.source_ports.is_empty() {
                    Some(0)
                } else {
                    info.source
                        .filter(|s| m.source_ports.contains(&s.port()))
                        .map(|_| 1)
                }
            },
        ];
        for level in levels {
            let scored: Vec<(u32, &FilterChain)> = cands
                .iter()
                .filter_map(|c| level(&c.matcher).map(|s| (s, *c)))
                .collect();
            let Some(best) = scored.iter().map(|(s, _)| *s).max() else {
                return self.default_chain.as_ref();
            };
            cands = scored
                .into_iter()
                .filter(|(s, _)| *s == best)
                .map(|(_, c)| c)
                .collect();
        }
        cands.first().copied().or(self.default_chain.as_ref())
    }
}

/// One level of filter chain matching: a score, or no match.
type Level<'a> = dyn Fn(&ChainMatch) -> Option<u32> + 'a;

fn port_score(want: Option<u16>, have: Option<u16>) -> Option<u32> {
    match want {
        None => Some(0),
        Some(p) => (Some(p) == have).then_some(1),
    }
}

fn cidr_score(ranges: &[Cidr], ip: Option<IpAddr>) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    let ip = ip?;
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| r.len as u32 + 1)
        .max()
}

fn sni_score(names: &[String], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    names
        .iter()
        .filter_map(|n| {
            if n.eq_ignore_ascii_case(sni) {
                Some(u32::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                (sni.len() > suffix.len()
                    && sni[sni.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
                .then_some(suffix.len() as u32)
            } else {
                None
            }
        })
        .max()
}

// === impl FilterChain ===

impl FilterChain {
    fn compile(
        ctx: &Ctx<'_>,
        fc: &pb::FilterChain,
        clusters: &HashMap<String, Arc<Cluster>>,
        stats: &Stats,
        secrets: &crate::tls::Secrets,
    ) -> Result<Self, ConfigError> {
        let tls = match &fc.transport_socket {
            Some(ts) => downstream_tls(&ctx.field("transport_socket"), ts, secrets)?,
            None => None,
        };
        let matcher = match &fc.filter_chain_match {
            Some(m) => compile_match(&ctx.field("filter_chain_match"), m)?,
            None => ChainMatch::default(),
        };
        // Network RBAC filters, then one terminal filter.
        let (rbac, last) = crate::rbac::network_filters(ctx, &fc.filters, stats)?;
        let f = &fc.filters[last];
        let c = ctx.index("filters", last).field("typed_config");
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(c.invalid(format!("filter {:?} needs a typed_config", f.name)));
        };
        let kind = match any.type_url.rsplit('/').next().unwrap_or_default() {
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
                let m = HttpConnectionManager::decode(any.value.as_slice())
                    .map_err(|e| c.invalid(e.to_string()))?;
                ChainKind::Http(Arc::new(HttpManager::compile(&c, &m, clusters, stats)?))
            }
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
                let t = PbTcpProxy::decode(any.value.as_slice())
                    .map_err(|e| c.invalid(e.to_string()))?;
                ChainKind::Tcp(Arc::new(compile_tcp(&c, &t, clusters, stats)?))
            }
            other => return Err(c.unsupported(format!("network filter {other}"))),
        };
        Ok(FilterChain {
            rbac,
            name: fc.name.as_str().into(),
            matcher,
            kind,
            tls,
        })
    }
}

/// A filter chain's `transport_socket`: raw_buffer (None) or TLS.
fn downstream_tls(
    ctx: &Ctx<'_>,
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    secrets: &crate::tls::Secrets,
) -> Result<Option<Arc<crate::tls::ServerTls>>, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    let c = ctx.field("typed_config");
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(c.invalid("typed_config is required"));
    };
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" => Ok(None),
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" => {
            let d = DownstreamTlsContext::decode(any.value.as_slice())
                .map_err(|e| c.invalid(e.to_string()))?;
            Ok(Some(Arc::new(crate::tls::ServerTls::compile(
                &c, &d, secrets,
            )?)))
        }
        other => Err(c.unsupported(format!("transport socket {other}"))),
    }
}

fn cidrs(ctx: &Ctx<'_>, field: &str, ranges: &[CidrRange]) -> Result<Vec<Cidr>, ConfigError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ip: IpAddr = r.address_prefix.parse().map_err(|_| {
                ctx.index(field, i)
                    .invalid(format!("bad address_prefix {:?}", r.address_prefix))
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = r.prefix_len.as_ref().map(|v| v.value).unwrap_or(max);
            if len > max {
                return Err(ctx.index(field, i).invalid(format!("bad prefix_len {len}")));
            }
            Ok(Cidr { ip, len: len as u8 })
        })
        .collect()
}

fn compile_match(ctx: &Ctx<'_>, m: &pb::FilterChainMatch) -> Result<ChainMatch, ConfigError> {
    let destination_port = match &m.destination_port {
        Some(p) => Some(u16::try_from(p.value).map_err(|_| {
            ctx.field("destination_port")
                .invalid(format!("bad port {}", p.value))
        })?),
        None => None,
    };
    Ok(ChainMatch {
        destination_port,
        prefix_ranges: cidrs(ctx, "prefix_ranges", &m.prefix_ranges)?,
        source_prefix_ranges: cidrs(ctx, "source_prefix_ranges", &m.source_prefix_ranges)?,
        source_ports: m.source_ports.iter().map(|&p| p as u16).collect(),
        transport_protocol: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
        application_protocols: m.application_protocols.clone(),
        server_names: m
            .server_names
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
    })
}

fn compile_tcp(
    ctx: &Ctx<'_>,
    t: &PbTcpProxy,
    clusters: &HashMap<String, Arc<Cluster>>,
    stats: &Stats,
) -> Result<TcpProxy, ConfigError> {
    let lookup = |c: &Ctx<'_>, name: &str| {
        clusters
            .get(name)
            .cloned()
            .ok_or_else(|| c.invalid(format!("unknown cluster {name:?}")))
    };
    let target = match &t.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => {
            Target::Cluster(lookup(&ctx.field("cluster"), name)?)
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut entries = Vec::new();
            for (i, cw) in w.clusters.iter().enumerate() {
                entries.push((
                    lookup(
                        &ctx.field("weighted_clusters")
                            .index("clusters", i)
                            .field("name"),
                        &cw.name,
                    )?,
                    cw.weight,
                ));
            }
            Target::Weighted(WeightedTargets::plain(entries).ok_or_else(|| {
                ctx.field("weighted_clusters")
                    .invalid("the weights add up to 0")
            })?)
        }
        None => return Err(ctx.invalid("cluster or weighted_clusters is required")),
    };
    let stat_prefix: Arc<str> = t.stat_prefix.as_str().into();
    Ok(TcpProxy {
        istio: Default::default(),
        stats: stats.tcp(&stat_prefix),
        stat_prefix,
        target,
        idle_timeout: opt_duration(&ctx.field("idle_timeout"), t.idle_timeout.as_ref())?
            .or(Some(Duration::from_secs(3600)))
            .filter(|d| !d.is_zero()),
        access_logs: super::access_logs(ctx, &t.access_log)?,
        max_connect_attempts: t
            .max_connect_attempts
            .as_ref()
            .map(|v| v.value)
            .unwrap_or(1)
            .max(1),
    })
}

/// Converts a `SocketAddress` into a `SocketAddr` (IP literals only).
pub fn socket_addr(
    ctx: &Ctx<'_>,
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Result<SocketAddr, ConfigError> {
    let Some(address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(ctx.invalid("socket_address is required"));
    };
    let c = ctx.field("socket_address");
    if sa.protocol != 0 {
        return Err(c.field("protocol").unsupported("UDP"));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        c.field("address")
            .invalid(format!("{:?} is not an IP address", sa.address))
    })?;
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| c.field("port_value").invalid(format!("bad port {p}")))?
        }
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(c.field("named_port").unsupported(""));
        }
        None => 0,
    };
    Ok(SocketAddr::new(ip, port))
}
