//! Compiled clusters: discovery type, hosts by priority, load-balancing
//! policy, circuit breakers, outlier detection, upstream protocol and the
//! per-cluster connection pool. Runtime state (active requests, ejections)
//! lives in atomics on the host and the cluster; nothing here takes a lock
//! on the request path (`hosts` is swapped whole by DNS refresh).

use super::common::{Ctx, duration, opt_duration};
use super::lb::{LbPolicy, PriorityHosts};
use crate::config::ConfigError;
use crate::stats::ClusterStats;
use crate::upstream::{Bind, Transport, Transports, UpstreamClient};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy as PbLb,
};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use prost::Message;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the process started (a cheap monotonic clock).
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Which addresses of a STRICT_DNS name become hosts (Envoy's dns_lookup_family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    V4,
    V6,
    /// AUTO: IPv6 if the name has any, else IPv4.
    PreferV6,
    PreferV4,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static,
    Eds,
    StrictDns {
        names: Vec<(String, u16, u32, u32)>,
        refresh: Duration,
        family: DnsFamily,
    },
    OriginalDst {
        use_http_header: bool,
    },
}

#[derive(Debug)]
pub struct Host {
    pub address: SocketAddr,
    pub weight: u32,
    pub healthy: bool,
    active: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gw: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// The LbEndpoint's metadata (filter_metadata: informational, kept for
    /// metrics labels).
    metadata: Option<Arc<Metadata>>,
}

impl Host {
    pub fn new(address: SocketAddr, weight: u32, healthy: bool) -> Self {
        Host {
            address,
            weight,
            healthy,
            active: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gw: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            metadata: None,
        }
    }
    /// The same host carrying its endpoint's metadata.
    pub fn with_metadata(mut self, metadata: Option<Arc<Metadata>>) -> Self {
        self.metadata = metadata;
        self
    }
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_deref()
    }
    pub fn available(&self, now_ms: u64) -> bool {
        self.healthy && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }
    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct HostSet {
    pub priorities: Vec<PriorityHosts>,
}

#[derive(Debug, Clone, Copy)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_gw: u32,
    pub enforce_5xx: u32,
    pub enforce_gw: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug)]
pub struct Breakers {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    active_requests: AtomicU32,
    active_retries: AtomicU32,
}

/// Released when the request (or retry) is over.
#[derive(Debug)]
pub struct BreakerGuard<'a>(&'a AtomicU32);
impl Drop for BreakerGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Breakers {
    fn acquire<'a>(counter: &'a AtomicU32, limit: u32) -> Option<BreakerGuard<'a>> {
        let prev = counter.fetch_add(1, Ordering::Relaxed);
        let guard = BreakerGuard(counter);
        (prev < limit).then_some(guard)
    }
    /// A request slot; HTTP/1 clusters also bound it by connections plus pending requests.
    pub fn request(&self, http2: bool) -> Option<BreakerGuard<'_>> {
        let limit = if http2 {
            self.max_requests
        } else {
            self.max_requests
                .min(self.max_connections.saturating_add(self.max_pending))
        };
        Self::acquire(&self.active_requests, limit)
    }
    pub fn retry(&self) -> Option<BreakerGuard<'_>> {
        Self::acquire(&self.active_retries, self.max_retries)
    }
}

/// Upstream HTTP settings of a cluster.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub http2: bool,
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window: Option<u32>,
    pub initial_connection_window: Option<u32>,
    pub idle_timeout: Option<Duration>,
    /// Requests one upstream connection serves before it is closed.
    pub max_requests_per_connection: Option<u32>,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub discovery: Discovery,
    pub lb: LbPolicy,
    pub hosts: ArcSwap<HostSet>,
    pub connect_timeout: Duration,
    pub http: HttpSettings,
    pub breakers: Breakers,
    pub outlier: Option<Outlier>,
    pub stats: ClusterStats,
    pub client: UpstreamClient,
    /// Envoy's healthy_panic_threshold (percent, default 50): below it a
    /// priority level routes to all its hosts.
    pub panic_threshold: f64,
    /// The cluster's metadata (filter_metadata: informational, kept for
    /// metrics labels).
    pub metadata: Option<Arc<Metadata>>,
}

// === impl Cluster ===

impl Cluster {
    pub fn compile(
        ctx: &Ctx<'_>,
        c: &pb::Cluster,
        stats: &crate::stats::Stats,
        secrets: &crate::tls::Secrets,
    ) -> Result<Self, ConfigError> {
        if c.name.is_empty() {
            return Err(ctx.field("name").invalid("a cluster needs a name"));
        }
        let kind = match &c.cluster_discovery_type {
            None => DiscoveryType::Static,
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
                .map_err(|_| ctx.field("type").invalid(format!("unknown type {t}")))?,
            Some(ClusterDiscoveryType::ClusterType(_)) => {
                return Err(ctx.field("cluster_type").unsupported(""));
            }
        };
        let lb = match c.lb_policy() {
            PbLb::RoundRobin => LbPolicy::RoundRobin,
            PbLb::LeastRequest => LbPolicy::LeastRequest {
                choices: match &c.lb_config {
                    Some(LbConfig::LeastRequestLbConfig(l)) => {
                        l.choice_count.as_ref().map(|v| v.value).unwrap_or(2)
                    }
                    _ => 2,
                },
            },
            PbLb::Random => LbPolicy::Random,
            PbLb::RingHash => {
                let (min_ring, max_ring) = match &c.lb_config {
                    Some(LbConfig::RingHashLbConfig(r)) => (
                        r.minimum_ring_size
                            .as_ref()
                            .map(|v| v.value)
                            .unwrap_or(1024),
                        r.maximum_ring_size
                            .as_ref()
                            .map(|v| v.value)
                            .unwrap_or(8 * 1024 * 1024),
                    ),
                    _ => (1024, 8 * 1024 * 1024),
                };
                LbPolicy::RingHash {
                    min_ring,
                    max_ring: max_ring.min(1 << 20),
                }
            }
            PbLb::Maglev => {
                let table_size = match &c.lb_config {
                    Some(LbConfig::MaglevLbConfig(m)) => {
                        m.table_size.as_ref().map(|v| v.value).unwrap_or(65537)
                    }
                    _ => 65537,
                };
                if table_size < 2
                    || !(2..table_size)
                        .take_while(|d| d * d <= table_size)
                        .all(|d| table_size % d != 0)
                {
                    return Err(ctx
                        .field("maglev_lb_config.table_size")
                        .invalid(format!("{table_size} is not a prime")));
                }
                LbPolicy::Maglev { table_size }
            }
            PbLb::ClusterProvided if kind == DiscoveryType::OriginalDst => LbPolicy::RoundRobin,
            other => return Err(ctx.field("lb_policy").unsupported(format!("{other:?}"))),
        };
        let discovery = match kind {
            DiscoveryType::Static => Discovery::Static,
            DiscoveryType::Eds => Discovery::Eds,
            DiscoveryType::OriginalDst => Discovery::OriginalDst {
                use_http_header: matches!(&c.lb_config, Some(LbConfig::OriginalDstLbConfig(o)) if o.use_http_header),
            },
            #[allow(deprecated)]
            DiscoveryType::StrictDns => Discovery::StrictDns {
                names: dns_names(ctx, c.load_assignment.as_ref())?,
                refresh: opt_duration(&ctx.field("dns_refresh_rate"), c.dns_refresh_rate.as_ref())?
                    .unwrap_or(Duration::from_secs(5)),
                family: match c.dns_lookup_family() {
                    pb::cluster::DnsLookupFamily::Auto => DnsFamily::PreferV6,
                    pb::cluster::DnsLookupFamily::V4Only => DnsFamily::V4,
                    pb::cluster::DnsLookupFamily::V6Only => DnsFamily::V6,
                    pb::cluster::DnsLookupFamily::V4Preferred => DnsFamily::PreferV4,
                    pb::cluster::DnsLookupFamily::All => DnsFamily::All,
                },
            },
            DiscoveryType::LogicalDns => return Err(ctx.field("type").unsupported("LOGICAL_DNS")),
        };
        if matches!(discovery, Discovery::OriginalDst { .. })
            && c.lb_policy() != PbLb::ClusterProvided
            && c.lb_policy() != PbLb::RoundRobin
        {
            return Err(ctx
                .field("lb_policy")
                .invalid("ORIGINAL_DST clusters take CLUSTER_PROVIDED"));
        }
        let locality_weighted = c
            .common_lb_config
            .as_ref()
            .is_some_and(|l| l.locality_config_specifier.is_some());
        let hosts = match &discovery {
            Discovery::Static | Discovery::Eds => {
                static_hosts(ctx, c.load_assignment.as_ref(), lb, locality_weighted)?
            }
            Discovery::StrictDns { names, family, .. } => resolve_blocking(names, *family, lb),
            Discovery::OriginalDst { .. } => HostSet {
                priorities: Vec::new(),
            },
        };
        let connect_timeout =
            opt_duration(&ctx.field("connect_timeout"), c.connect_timeout.as_ref())?
                .unwrap_or(Duration::from_secs(5));
        let http = http_settings(ctx, c)?;
        let transports = transports(ctx, c, secrets, http.http2, &hosts)?;
        let breakers = breakers(c);
        let outlier = c
            .outlier_detection
            .as_ref()
            .map(|o| {
                let c = ctx.field("outlier_detection");
                Ok::<_, ConfigError>(Outlier {
                    consecutive_5xx: o.consecutive_5xx.as_ref().map(|v| v.value).unwrap_or(5),
                    consecutive_gw: o
                        .consecutive_gateway_failure
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(5),
                    enforce_5xx: o
                        .enforcing_consecutive_5xx
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(100),
                    enforce_gw: o
                        .enforcing_consecutive_gateway_failure
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(0),
                    base_ejection: opt_duration(
                        &c.field("base_ejection_time"),
                        o.base_ejection_time.as_ref(),
                    )?
                    .unwrap_or(Duration::from_secs(30)),
                    max_ejection_percent: o
                        .max_ejection_percent
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(10),
                })
            })
            .transpose()?;
        let name: Arc<str> = c.name.as_str().into();
        Ok(Cluster {
            panic_threshold: c
                .common_lb_config
                .as_ref()
                .and_then(|l| l.healthy_panic_threshold.as_ref())
                .map(|p| p.value)
                .unwrap_or(50.0),
            stats: stats.cluster(if c.alt_stat_name.is_empty() {
                &name
            } else {
                &c.alt_stat_name
            }),
            client: UpstreamClient::new(connect_timeout, &http, transports),
            name,
            discovery,
            lb,
            hosts: ArcSwap::from_pointee(hosts),
            connect_timeout,
            http,
            breakers,
            outlier,
            metadata: c.metadata.clone().map(Arc::new),
        })
    }

    /// Chooses a host from the highest-priority level that has an available one.
    /// With no available host at all, Envoy's panic mode routes to every
    /// host of the first priority regardless of health.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Host>> {
        let now = now_ms();
        let set = self.hosts.load();
        match set.priorities.iter().find(|p| p.any_available(now)) {
            Some(level) => {
                if self.panic_threshold > 0.0
                    && (self.outlier.is_some() || level.hosts.iter().any(|h| !h.healthy))
                {
                    let avail = level.hosts.iter().filter(|h| h.available(now)).count();
                    if (avail as f64) * 100.0 < self.panic_threshold * level.hosts.len() as f64 {
                        return level.pick_panic().cloned();
                    }
                }
                level.pick(self.lb, hash, now).cloned()
            }
            None if self.panic_threshold > 0.0 => set.priorities.first()?.pick_panic().cloned(),
            None => None,
        }
    }

    /// A pick for a retry that avoids `avoid` (hosts already tried): from
    /// the highest priority with an available host not in `avoid`. None
    /// when there is no such host.
    pub fn pick_avoiding(&self, hash: Option<u64>, avoid: &[SocketAddr]) -> Option<Arc<Host>> {
        let now = now_ms();
        let set = self.hosts.load();
        set.priorities
            .iter()
            .find_map(|p| p.pick_avoiding(self.lb, hash, now, avoid))
            .cloned()
    }

    /// Feeds outlier detection with a result: an HTTP status, or `None` for a
    /// connection failure or reset.
    pub fn report(&self, host: &Host, status: Option<u16>) {
        let Some(o) = &self.outlier else { return };
        let is_5xx = status.is_none_or(|s| s >= 500);
        let is_gw = status.is_none_or(|s| matches!(s, 502..=504));
        if !is_5xx {
            host.consecutive_5xx.store(0, Ordering::Relaxed);
            host.consecutive_gw.store(0, Ordering::Relaxed);
            return;
        }
        let n5 = host.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let ngw = if is_gw {
            host.consecutive_gw.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let trip = (n5 >= o.consecutive_5xx && fastrand::u32(0..100) < o.enforce_5xx)
            || (is_gw && ngw >= o.consecutive_gw && fastrand::u32(0..100) < o.enforce_gw);
        if trip {
            self.eject(host, o);
        }
    }

    fn eject(&self, host: &Host, o: &Outlier) {
        let now = now_ms();
        let set = self.hosts.load();
        let total: usize = set.priorities.iter().map(|p| p.hosts.len()).sum();
        let ejected: usize = set
            .priorities
            .iter()
            .flat_map(|p| p.hosts.iter())
            .filter(|h| h.ejected(now))
            .count();
        if host.ejected(now)
            || (ejected > 0 && (ejected + 1) * 100 > total * o.max_ejection_percent as usize)
        {
            return;
        }
        let times = host.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let until = now + (o.base_ejection.as_millis() as u64).saturating_mul(times as u64);
        host.ejected_until_ms.store(until, Ordering::Relaxed);
        host.consecutive_5xx.store(0, Ordering::Relaxed);
        host.consecutive_gw.store(0, Ordering::Relaxed);
        self.stats.outlier_ejections.inc();
    }

    /// Replaces the hosts (DNS refresh), keeping the state of hosts that stay.
    pub fn set_resolved(&self, addrs: Vec<(SocketAddr, u32, u32)>) {
        let old = self.hosts.load();
        let existing: Vec<&Arc<Host>> =
            old.priorities.iter().flat_map(|p| p.hosts.iter()).collect();
        let hosts = addrs
            .into_iter()
            .map(|(a, w, p)| {
                let h = existing
                    .iter()
                    .find(|h| h.address == a && h.weight == w)
                    .map(|h| (*h).clone());
                (h.unwrap_or_else(|| Arc::new(Host::new(a, w, true))), p)
            })
            .collect();
        self.hosts.store(Arc::new(group(hosts, self.lb)));
    }
}

/// Compiles one `transport_socket` (raw_buffer or an UpstreamTlsContext).
fn transport(
    ctx: &Ctx<'_>,
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    secrets: &crate::tls::Secrets,
    http2: bool,
) -> Result<Transport, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let c = ctx.field("typed_config");
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(c.invalid("typed_config is required"));
    };
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" => Ok(Transport::Plain),
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => {
            let u = UpstreamTlsContext::decode(any.value.as_slice())
                .map_err(|e| c.invalid(e.to_string()))?;
            Ok(Transport::Tls(Arc::new(crate::tls::ClientTls::compile(
                &c, &u, secrets, http2,
            )?)))
        }
        other => Err(c.unsupported(format!("transport socket {other}"))),
    }
}

/// Key of the endpoint metadata that `transport_socket_matches` look at.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// The cluster's transport and, with `transport_socket_matches`, each
/// endpoint's: the first match whose every field equals the endpoint's
/// `envoy.transport_socket_match` metadata (an empty match takes all);
/// no match falls back to the cluster's `transport_socket`.
fn transports(
    ctx: &Ctx<'_>,
    c: &pb::Cluster,
    secrets: &crate::tls::Secrets,
    http2: bool,
    hosts: &HostSet,
) -> Result<Transports, ConfigError> {
    let default = match &c.transport_socket {
        Some(ts) => transport(&ctx.field("transport_socket"), ts, secrets, http2)?,
        None => Transport::Plain,
    };
    let mut matches = Vec::new();
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let mc = ctx.index("transport_socket_matches", i);
        let t = match &m.transport_socket {
            Some(ts) => transport(&mc.field("transport_socket"), ts, secrets, http2)?,
            None => Transport::Plain,
        };
        matches.push((m.r#match.clone().unwrap_or_default(), t));
    }
    let mut by_endpoint = std::collections::HashMap::new();
    if !matches.is_empty() {
        for h in hosts.priorities.iter().flat_map(|p| p.hosts.iter()) {
            let md = h
                .metadata()
                .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH));
            let chosen = matches.iter().find(|(want, _)| {
                want.fields
                    .iter()
                    .all(|(k, v)| md.and_then(|m| m.fields.get(k)) == Some(v))
            });
            if let Some((_, t)) = chosen {
                by_endpoint.insert(h.address, t.clone());
            }
        }
    }
    Ok(Transports {
        default,
        by_endpoint,
        bind: bind(ctx, c)?,
    })
}

/// `upstream_bind_config`: an IP literal source address with port 0.
fn bind(ctx: &Ctx<'_>, c: &pb::Cluster) -> Result<Option<Bind>, ConfigError> {
    let Some(b) = &c.upstream_bind_config else {
        return Ok(None);
    };
    let bc = ctx.field("upstream_bind_config");
    let Some(sa) = &b.source_address else {
        return Err(bc.field("source_address").invalid("is required"));
    };
    let sc = bc.field("source_address");
    if sa.protocol != 0 {
        return Err(sc.field("protocol").unsupported("UDP"));
    }
    let source: std::net::IpAddr = sa.address.parse().map_err(|_| {
        sc.field("address")
            .invalid(format!("{:?} is not an IP address", sa.address))
    })?;
    match sa.port_specifier {
        None | Some(socket_address::PortSpecifier::PortValue(0)) => {}
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            return Err(sc
                .field("port_value")
                .unsupported(format!("{p} (only 0, any port)")));
        }
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(sc.field("named_port").unsupported(""));
        }
    }
    Ok(Some(Bind {
        cluster: c.name.as_str().into(),
        source,
        freebind: b.freebind.map(|f| f.value),
    }))
}

fn group(hosts: Vec<(Arc<Host>, u32)>, lb: LbPolicy) -> HostSet {
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

fn static_hosts(
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

fn dns_names(
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

fn resolve_blocking(names: &[(String, u16, u32, u32)], family: DnsFamily, lb: LbPolicy) -> HostSet {
    let hosts = resolve(names, family)
        .into_iter()
        .map(|(a, w, p)| (Arc::new(Host::new(a, w, true)), p))
        .collect();
    group(hosts, lb)
}

fn breakers(c: &pb::Cluster) -> Breakers {
    let t = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0));
    let get = |f: Option<&envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
        f.map(|v| v.value).unwrap_or(d)
    };
    Breakers {
        max_connections: get(t.and_then(|t| t.max_connections.as_ref()), 1024),
        max_pending: get(t.and_then(|t| t.max_pending_requests.as_ref()), 1024),
        max_requests: get(t.and_then(|t| t.max_requests.as_ref()), 1024),
        max_retries: get(t.and_then(|t| t.max_retries.as_ref()), 3),
        active_requests: AtomicU32::new(0),
        active_retries: AtomicU32::new(0),
    }
}

#[allow(deprecated)]
fn http_settings(ctx: &Ctx<'_>, c: &pb::Cluster) -> Result<HttpSettings, ConfigError> {
    let mut s = HttpSettings::default();
    let mut h2 = c.http2_protocol_options.clone();
    let mut common = c.common_http_protocol_options;
    for (key, any) in &c.typed_extension_protocol_options {
        let kc = ctx.field("typed_extension_protocol_options").field(key);
        if key != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
            return Err(kc.unsupported(""));
        }
        let opts = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| kc.invalid(e.to_string()))?;
        if opts.common_http_protocol_options.is_some() {
            common = opts.common_http_protocol_options;
        }
        match opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(o)) => h2 = Some(o),
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => {}
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(kc.unsupported("HTTP/3"));
                }
            },
            Some(_) => return Err(kc.unsupported("only explicit_http_config is implemented")),
            None => {}
        }
    }
    if let Some(o) = h2 {
        if o.max_concurrent_streams.is_some() {
            return Err(ctx
                .field("http2_protocol_options.max_concurrent_streams")
                .unsupported(
                    "upstream stream limits are not implemented; the server's SETTINGS apply",
                ));
        }
        s.http2 = true;
        s.max_concurrent_streams = o.max_concurrent_streams.map(|v| v.value);
        s.initial_stream_window = o.initial_stream_window_size.map(|v| v.value);
        s.initial_connection_window = o.initial_connection_window_size.map(|v| v.value);
    }
    s.max_requests_per_connection = c.max_requests_per_connection.map(|v| v.value);
    if let Some(cm) = common {
        if let Some(m) = cm.max_requests_per_connection {
            s.max_requests_per_connection = Some(m.value);
        }
        s.idle_timeout = cm
            .idle_timeout
            .as_ref()
            .map(|d| duration(&ctx.field("common_http_protocol_options.idle_timeout"), d))
            .transpose()?;
    }
    if s.max_requests_per_connection == Some(0) {
        s.max_requests_per_connection = None;
    }
    Ok(s)
}
