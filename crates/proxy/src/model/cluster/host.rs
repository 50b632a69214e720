//! A cluster's hosts and their runtime state: active requests and outlier
//! detection (consecutive failures, ejections with a growing backoff,
//! Envoy's max_ejection_percent). The state lives in atomics on each
//! host; nothing here takes a lock.

use super::{Cluster, pb};
use crate::config::ConfigError;
use crate::model::common::{Ctx, opt_duration};
use crate::model::lb::PriorityHosts;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the process started (a cheap monotonic clock).
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
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

/// Compiles `outlier_detection` (Envoy's defaults for unset fields).
pub(super) fn outlier(ctx: &Ctx<'_>, c: &pb::Cluster) -> Result<Option<Outlier>, ConfigError> {
    c.outlier_detection
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
        .transpose()
}

// === impl Cluster: outlier detection ===

impl Cluster {
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
}
