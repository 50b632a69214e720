//! The DNS proxy's metrics: Istio's agent DNS metrics (pilot-agent's
//! `dns` package, exported by the agent with its `istio_agent_` prefix),
//! same names and meaning:
//!
//! | metric | counts |
//! |---|---|
//! | `istio_agent_dns_requests_total` | every DNS query answered or forwarded (mesh answers, SERVFAIL before the first table, forwarded queries) |
//! | `istio_agent_dns_upstream_requests_total` | queries forwarded to the upstream resolvers |
//! | `istio_agent_dns_upstream_failures_total` | forwarded queries no upstream answered (answered SERVFAIL) |
//! | `istio_agent_dns_upstream_request_duration_seconds` | time to get the upstream answer (or to give up), Istio's buckets |
//!
//! One instance per process ([`DnsMetrics::process`]) is what
//! [`super::DnsProxy::start`] counts into and what weft-proxy's
//! Prometheus output (15090 and admin `/stats/prometheus`) shows, once a
//! DNS proxy started ([`render_process`]). Tests that want counters of
//! their own start the proxy with [`super::DnsProxy::start_with_metrics`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's buckets for the upstream duration (its list, sorted).
const DURATION_BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.1, 1.0, 5.0];

/// The counters of one DNS proxy.
#[derive(Debug)]
pub struct DnsMetrics {
    requests: Counter,
    upstream_requests: Counter,
    upstream_failures: Counter,
    upstream_duration: Histogram,
    registry: Registry,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

static PROCESS: OnceLock<Arc<DnsMetrics>> = OnceLock::new();

impl DnsMetrics {
    /// Fresh counters at zero.
    pub fn new() -> DnsMetrics {
        let requests = Counter::default();
        let upstream_requests = Counter::default();
        let upstream_failures = Counter::default();
        let upstream_duration = Histogram::new(DURATION_BUCKETS);
        let mut registry = Registry::with_prefix("istio_agent");
        registry.register(
            "dns_requests",
            "Total number of DNS requests.",
            requests.clone(),
        );
        registry.register(
            "dns_upstream_requests",
            "Total number of DNS requests forwarded to upstream.",
            upstream_requests.clone(),
        );
        registry.register(
            "dns_upstream_failures",
            "Total number of DNS requests forwarded to upstream that no upstream answered.",
            upstream_failures.clone(),
        );
        registry.register(
            "dns_upstream_request_duration_seconds",
            "Total time in seconds Istio takes to get DNS response from upstream.",
            upstream_duration.clone(),
        );
        DnsMetrics {
            requests,
            upstream_requests,
            upstream_failures,
            upstream_duration,
            registry,
        }
    }

    /// The process's instance (created on first use).
    pub fn process() -> Arc<DnsMetrics> {
        Arc::clone(PROCESS.get_or_init(|| Arc::new(DnsMetrics::new())))
    }

    pub(super) fn request(&self) {
        self.requests.inc();
    }

    pub(super) fn upstream(&self, took: Duration, answered: bool) {
        self.upstream_requests.inc();
        self.upstream_duration.observe(took.as_secs_f64());
        if !answered {
            self.upstream_failures.inc();
        }
    }

    /// Queries answered or forwarded.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// Queries forwarded upstream.
    pub fn upstream_requests(&self) -> u64 {
        self.upstream_requests.get()
    }

    /// Forwarded queries no upstream answered.
    pub fn upstream_failures(&self) -> u64 {
        self.upstream_failures.get()
    }

    /// Appends the Prometheus text of these metrics (no `# EOF` line).
    pub fn render(&self, out: &mut String) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return;
        }
        let end = text.rfind("# EOF").unwrap_or(text.len());
        out.push_str(&text[..end]);
    }
}

/// Appends the process's DNS metrics to a Prometheus text exposition, if
/// a DNS proxy started in this process (without DNS capture there are
/// none, as in Istio).
pub fn render_process(out: &mut String) {
    if let Some(m) = PROCESS.get() {
        m.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_names_and_meaning() {
        let m = DnsMetrics::new();
        m.request();
        m.request();
        m.upstream(Duration::from_millis(3), true);
        m.upstream(Duration::from_millis(30), false);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "# TYPE istio_agent_dns_requests counter",
            "istio_agent_dns_requests_total 2",
            "istio_agent_dns_upstream_requests_total 2",
            "istio_agent_dns_upstream_failures_total 1",
            "# TYPE istio_agent_dns_upstream_request_duration_seconds histogram",
            "istio_agent_dns_upstream_request_duration_seconds_count 2",
            "istio_agent_dns_upstream_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "istio_agent_dns_upstream_request_duration_seconds_bucket{le=\"0.1\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
        }
        assert!(!out.contains("# EOF"), "{out}");
        assert_eq!(
            (m.requests(), m.upstream_requests(), m.upstream_failures()),
            (2, 2, 1)
        );
    }
}
