//! Compiled clusters: discovery type, load-balancing policy, circuit
//! breakers, host picking with Envoy's panic threshold, and the
//! per-cluster connection pool. Runtime state (active requests, ejections)
//! lives in atomics on the host and the cluster; nothing here takes a lock
//! on the request path (`hosts` is swapped whole by DNS refresh).
//!
//! This file owns the cluster and its compile; hosts and outlier
//! detection are in `host`, endpoints and DNS in `endpoints`, upstream
//! protocol, transport sockets and bind config in `transport`.

mod endpoints;
mod host;
mod transport;

pub use endpoints::resolve;
pub use host::{Host, HostSet, Outlier, now_ms};
pub use transport::{HttpSettings, TRANSPORT_SOCKET_MATCH};

use super::common::{Ctx, opt_duration};
use super::lb::LbPolicy;
use crate::config::ConfigError;
use crate::stats::ClusterStats;
use crate::upstream::UpstreamClient;
use arc_swap::ArcSwap;
use endpoints::{dns_names, group, resolve_blocking, static_hosts};
use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy as PbLb,
};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use transport::{http_settings, transports};

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
        let outlier = host::outlier(ctx, c)?;
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
