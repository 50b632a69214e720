//! Istio's pilot xDS metrics, registered in a registry the caller owns:
//! `pilot_xds_pushes{type}`, `pilot_xds` (connected proxies),
//! `pilot_total_xds_rejects{type}` and `pilot_proxy_convergence_time`.
//!
//! Istio exports its counters without the OpenMetrics `_total` suffix, and
//! dashboards query those exact names, so the two counters here are
//! exposed as untyped samples under their Istio names.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::types::short_name;

/// The `type` label: Istio's short type name (`cds`, `eds`, `lds`, `rds`).
pub type TypeLabel = [(&'static str, String); 1];

fn type_label(type_url: &str) -> TypeLabel {
    [("type", short_name(type_url).to_string())]
}

/// A monotonic counter exported without the `_total` suffix.
#[derive(Debug, Default)]
pub struct IstioCounter(AtomicU64);

impl IstioCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for IstioCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for IstioCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// The xDS server's metrics.
#[derive(Debug)]
pub struct XdsMetrics {
    pushes: Family<TypeLabel, IstioCounter>,
    rejects: Family<TypeLabel, IstioCounter>,
    connected: Gauge,
    convergence: Histogram,
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds.",
            metrics.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of xDS responses from pilot rejected by proxy.",
            metrics.rejects.clone(),
        );
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS.",
            metrics.connected.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration.",
            metrics.convergence.clone(),
        );
        metrics
    }

    /// Metrics not exported anywhere (tests, embedded use).
    pub fn unregistered() -> Self {
        XdsMetrics {
            pushes: Family::default(),
            rejects: Family::default(),
            connected: Gauge::default(),
            convergence: Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]),
        }
    }

    pub(crate) fn push_sent(&self, type_url: &str) {
        self.pushes.get_or_create(&type_label(type_url)).inc();
    }

    pub(crate) fn rejected(&self, type_url: &str) {
        self.rejects.get_or_create(&type_label(type_url)).inc();
    }

    pub(crate) fn connected(&self) {
        self.connected.inc();
    }

    pub(crate) fn disconnected(&self) {
        self.connected.dec();
    }

    pub(crate) fn converged(&self, seconds: f64) {
        self.convergence.observe(seconds);
    }

    /// Responses sent for `type_url` so far.
    pub fn pushes(&self, type_url: &str) -> u64 {
        self.pushes.get_or_create(&type_label(type_url)).get()
    }

    /// NACKs received for `type_url` so far.
    pub fn rejects(&self, type_url: &str) -> u64 {
        self.rejects.get_or_create(&type_label(type_url)).get()
    }

    /// Proxies connected now.
    pub fn connected_proxies(&self) -> i64 {
        self.connected.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CLUSTER, ENDPOINT};

    #[test]
    fn exposes_istio_names() {
        let mut registry = Registry::default();
        let m = XdsMetrics::new(&mut registry);
        m.push_sent(CLUSTER);
        m.push_sent(CLUSTER);
        m.rejected(ENDPOINT);
        m.connected();
        m.converged(0.2);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("pilot_xds_pushes{type=\"cds\"} 2\n"), "{out}");
        assert!(
            out.contains("pilot_total_xds_rejects{type=\"eds\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("pilot_xds 1\n"), "{out}");
        assert!(
            out.contains("pilot_proxy_convergence_time_count 1\n"),
            "{out}"
        );
        assert_eq!(m.pushes(CLUSTER), 2);
    }
}
