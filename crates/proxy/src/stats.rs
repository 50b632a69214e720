//! Metrics: one `prometheus-client` registry per process with Envoy's stat
//! names (`envoy_cluster_upstream_rq_total{envoy_cluster_name=..}` and so
//! on). Label sets are resolved when a cluster, listener or connection
//! manager is compiled; the request path only bumps atomics it already holds
//! (durations go to the lock-free [`Histogram`] of `histogram`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

mod histogram;
pub use histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    envoy_cluster_name: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterClassLabel {
    envoy_response_code_class: &'static str,
    envoy_cluster_name: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    envoy_listener_address: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HcmLabel {
    envoy_http_conn_manager_prefix: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HcmClassLabel {
    envoy_response_code_class: &'static str,
    envoy_http_conn_manager_prefix: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabel {
    envoy_tcp_prefix: String,
}

const CLASSES: [&str; 5] = ["1", "2", "3", "4", "5"];

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0,
    ])
}

/// The process's metric families.
#[derive(Debug)]
pub struct Stats {
    registry: Mutex<Registry>,
    cluster_rq_total: Family<ClusterLabel, Counter>,
    cluster_rq_xx: Family<ClusterClassLabel, Counter>,
    cluster_cx_connect_fail: Family<ClusterLabel, Counter>,
    cluster_rq_timeout: Family<ClusterLabel, Counter>,
    cluster_rq_retry: Family<ClusterLabel, Counter>,
    cluster_rq_pending_overflow: Family<ClusterLabel, Counter>,
    cluster_ejections: Family<ClusterLabel, Counter>,
    cluster_rq_time: Family<ClusterLabel, Histogram, fn() -> Histogram>,
    listener_cx_total: Family<ListenerLabel, Counter>,
    listener_cx_active: Family<ListenerLabel, Gauge>,
    http_rq_total: Family<HcmLabel, Counter>,
    http_rq_xx: Family<HcmClassLabel, Counter>,
    http_rq_time: Family<HcmLabel, Histogram, fn() -> Histogram>,
    http_rl: Family<HcmLabel, Counter>,
    tcp_cx_total: Family<TcpLabel, Counter>,
    tcp_rx: Family<TcpLabel, Counter>,
    tcp_tx: Family<TcpLabel, Counter>,
    /// RBAC filter counters by their full names (Envoy shares counters
    /// between filters with the same names).
    rbac: Mutex<Vec<Arc<RbacPair>>>,
    /// Istio's standard metrics (`istio_requests_total`, ...).
    pub istio: crate::istio_metrics::IstioMetrics,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! reg {
    ($r:expr, $name:expr, $help:expr, $f:expr) => {
        $r.register($name, $help, $f.clone())
    };
}

impl Stats {
    pub fn new() -> Self {
        let s = Stats {
            registry: Mutex::new(Registry::with_prefix("envoy")),
            cluster_rq_total: Family::default(),
            cluster_rq_xx: Family::default(),
            cluster_cx_connect_fail: Family::default(),
            cluster_rq_timeout: Family::default(),
            cluster_rq_retry: Family::default(),
            cluster_rq_pending_overflow: Family::default(),
            cluster_ejections: Family::default(),
            cluster_rq_time: Family::new_with_constructor(duration_histogram),
            listener_cx_total: Family::default(),
            listener_cx_active: Family::default(),
            http_rq_total: Family::default(),
            http_rq_xx: Family::default(),
            http_rq_time: Family::new_with_constructor(duration_histogram),
            http_rl: Family::default(),
            tcp_cx_total: Family::default(),
            tcp_rx: Family::default(),
            tcp_tx: Family::default(),
            rbac: Mutex::new(Vec::new()),
            istio: crate::istio_metrics::IstioMetrics::default(),
        };
        {
            let mut r = s.registry.lock().expect("stats registry");
            reg!(
                r,
                "cluster_upstream_rq",
                "Requests sent upstream",
                s.cluster_rq_total
            );
            reg!(
                r,
                "cluster_upstream_rq_xx",
                "Upstream responses by class",
                s.cluster_rq_xx
            );
            reg!(
                r,
                "cluster_upstream_cx_connect_fail",
                "Upstream connect failures",
                s.cluster_cx_connect_fail
            );
            reg!(
                r,
                "cluster_upstream_rq_timeout",
                "Upstream request timeouts",
                s.cluster_rq_timeout
            );
            reg!(
                r,
                "cluster_upstream_rq_retry",
                "Upstream retries",
                s.cluster_rq_retry
            );
            reg!(
                r,
                "cluster_upstream_rq_pending_overflow",
                "Requests refused by circuit breakers",
                s.cluster_rq_pending_overflow
            );
            reg!(
                r,
                "cluster_outlier_detection_ejections_enforced",
                "Outlier ejections",
                s.cluster_ejections
            );
            reg!(
                r,
                "cluster_upstream_rq_time",
                "Upstream request time (ms)",
                s.cluster_rq_time
            );
            reg!(
                r,
                "listener_downstream_cx",
                "Downstream connections accepted",
                s.listener_cx_total
            );
            reg!(
                r,
                "listener_downstream_cx_active",
                "Active downstream connections",
                s.listener_cx_active
            );
            reg!(
                r,
                "http_downstream_rq",
                "Downstream requests",
                s.http_rq_total
            );
            reg!(
                r,
                "http_downstream_rq_xx",
                "Downstream responses by class",
                s.http_rq_xx
            );
            reg!(
                r,
                "http_downstream_rq_time",
                "Downstream request time (ms)",
                s.http_rq_time
            );
            reg!(
                r,
                "http_local_rate_limit_rate_limited",
                "Requests refused by local rate limit",
                s.http_rl
            );
            reg!(
                r,
                "tcp_downstream_cx",
                "TCP proxy connections",
                s.tcp_cx_total
            );
            reg!(
                r,
                "tcp_downstream_cx_rx_bytes",
                "TCP proxy bytes received",
                s.tcp_rx
            );
            reg!(
                r,
                "tcp_downstream_cx_tx_bytes",
                "TCP proxy bytes sent",
                s.tcp_tx
            );
        }
        s
    }

    pub fn cluster(&self, name: &str) -> ClusterStats {
        let l = ClusterLabel {
            envoy_cluster_name: name.to_owned(),
        };
        ClusterStats {
            rq_total: self.cluster_rq_total.get_or_create(&l).clone(),
            rq_xx: CLASSES.map(|c| {
                self.cluster_rq_xx
                    .get_or_create(&ClusterClassLabel {
                        envoy_response_code_class: c,
                        envoy_cluster_name: name.to_owned(),
                    })
                    .clone()
            }),
            cx_connect_fail: self.cluster_cx_connect_fail.get_or_create(&l).clone(),
            rq_timeout: self.cluster_rq_timeout.get_or_create(&l).clone(),
            rq_retry: self.cluster_rq_retry.get_or_create(&l).clone(),
            rq_overflow: self.cluster_rq_pending_overflow.get_or_create(&l).clone(),
            outlier_ejections: self.cluster_ejections.get_or_create(&l).clone(),
            rq_time: self.cluster_rq_time.get_or_create(&l).clone(),
        }
    }

    pub fn listener(&self, address: &str) -> ListenerStats {
        let l = ListenerLabel {
            envoy_listener_address: address.to_owned(),
        };
        ListenerStats {
            cx_total: self.listener_cx_total.get_or_create(&l).clone(),
            cx_active: self.listener_cx_active.get_or_create(&l).clone(),
        }
    }

    pub fn http(&self, prefix: &str) -> HttpStats {
        let l = HcmLabel {
            envoy_http_conn_manager_prefix: prefix.to_owned(),
        };
        HttpStats {
            rq_total: self.http_rq_total.get_or_create(&l).clone(),
            rq_xx: CLASSES.map(|c| {
                self.http_rq_xx
                    .get_or_create(&HcmClassLabel {
                        envoy_response_code_class: c,
                        envoy_http_conn_manager_prefix: prefix.to_owned(),
                    })
                    .clone()
            }),
            rq_time: self.http_rq_time.get_or_create(&l).clone(),
            rate_limited: self.http_rl.get_or_create(&l).clone(),
        }
    }

    pub fn tcp(&self, prefix: &str) -> TcpStats {
        let l = TcpLabel {
            envoy_tcp_prefix: prefix.to_owned(),
        };
        TcpStats {
            cx_total: self.tcp_cx_total.get_or_create(&l).clone(),
            rx_bytes: self.tcp_rx.get_or_create(&l).clone(),
            tx_bytes: self.tcp_tx.get_or_create(&l).clone(),
        }
    }

    /// Counters of an `envoy.filters.http.rbac` filter of the connection
    /// manager `hcm_prefix`.
    pub fn rbac_http(&self, hcm_prefix: &str, rules: &str, shadow: &str) -> RbacStats {
        self.rbac_stats(RbacScope::Http(hcm_prefix.to_owned()), rules, shadow)
    }

    /// Counters of an `envoy.filters.network.rbac` filter.
    pub fn rbac_network(&self, stat_prefix: &str, shadow: &str) -> RbacStats {
        let prefix = stat_prefix.strip_suffix('.').unwrap_or(stat_prefix);
        self.rbac_stats(RbacScope::Network(prefix.to_owned()), "", shadow)
    }

    fn rbac_stats(&self, scope: RbacScope, rules: &str, shadow: &str) -> RbacStats {
        let mut all = self.rbac.lock().unwrap_or_else(|e| e.into_inner());
        // Counters are shared by name, as Envoy's are: the enforced pair by
        // the rules prefix, the shadow pair by the shadow prefix.
        let mut pair = |shadow_pair: bool, prefix: &str| {
            if let Some(p) = all
                .iter()
                .find(|p| p.scope == scope && p.shadow == shadow_pair && p.prefix == prefix)
            {
                return p.clone();
            }
            let p = Arc::new(RbacPair {
                scope: scope.clone(),
                shadow: shadow_pair,
                prefix: prefix.to_owned(),
                counts: Default::default(),
            });
            all.push(p.clone());
            p
        };
        RbacStats {
            enforced: pair(false, rules),
            shadow: pair(true, shadow),
        }
    }

    /// Envoy's `/stats` lines of every RBAC filter.
    pub fn render_rbac(&self, out: &mut String) {
        let all = self.rbac.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines: Vec<String> = Vec::new();
        for p in all.iter() {
            let base = match &p.scope {
                RbacScope::Http(x) => format!("http.{x}.rbac."),
                RbacScope::Network(x) => format!("{x}.rbac."),
            };
            let sep = if p.prefix.is_empty() { "" } else { "." };
            for (i, name) in p.names().iter().enumerate() {
                lines.push(format!("{base}{}{sep}{name}: {}", p.prefix, p.get(i)));
            }
        }
        lines.sort();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }

    fn prometheus_rbac(&self, out: &mut String) {
        let all = self.rbac.lock().unwrap_or_else(|e| e.into_inner());
        for name in RBAC_NAMES {
            for http in [true, false] {
                let metric = if http {
                    format!("envoy_http_rbac_{name}")
                } else {
                    format!("envoy_rbac_{name}")
                };
                let mut samples = Vec::new();
                for p in all.iter() {
                    let Some(i) = p.names().iter().position(|n| *n == name) else {
                        continue;
                    };
                    let sub = &p.prefix;
                    let labels = match (&p.scope, http) {
                        (RbacScope::Http(x), true) if sub.is_empty() => {
                            format!("envoy_http_conn_manager_prefix=\"{x}\"")
                        }
                        (RbacScope::Http(x), true) => format!(
                            "envoy_rbac_http_prefix=\"{sub}\",envoy_http_conn_manager_prefix=\"{x}\""
                        ),
                        (RbacScope::Network(x), false) if sub.is_empty() => {
                            format!("envoy_rbac_prefix=\"{x}\"")
                        }
                        (RbacScope::Network(x), false) => {
                            format!("envoy_rbac_prefix=\"{x}\",envoy_rbac_shadow_prefix=\"{sub}\"")
                        }
                        _ => continue,
                    };
                    samples.push(format!("{metric}{{{labels}}} {}", p.get(i)));
                }
                if samples.is_empty() {
                    continue;
                }
                samples.sort();
                let _ = writeln!(out, "# TYPE {metric} counter");
                for line in samples {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().expect("stats registry");
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        drop(r);
        // Our own families go before the OpenMetrics terminator.
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        let tail = out.split_off(eof);
        self.prometheus_rbac(&mut out);
        self.istio.render(&mut out);
        crate::dns::metrics::render_process(&mut out);
        out.push_str(&tail);
        out
    }
}

fn class_index(status: u16) -> usize {
    ((status / 100).clamp(1, 5) - 1) as usize
}

#[derive(Debug, Clone)]
pub struct ClusterStats {
    pub rq_total: Counter,
    pub rq_xx: [Counter; 5],
    pub cx_connect_fail: Counter,
    pub rq_timeout: Counter,
    pub rq_retry: Counter,
    pub rq_overflow: Counter,
    pub outlier_ejections: Counter,
    pub rq_time: Histogram,
}

impl ClusterStats {
    pub fn response(&self, status: u16, ms: f64) {
        self.rq_xx[class_index(status)].inc();
        self.rq_time.observe(ms);
    }
    /// Envoy's `/stats` text lines for this cluster.
    pub fn render(&self, name: &str, out: &mut String) {
        let lines: [(&str, u64); 7] = [
            ("upstream_cx_connect_fail", self.cx_connect_fail.get()),
            ("upstream_rq_pending_overflow", self.rq_overflow.get()),
            ("upstream_rq_retry", self.rq_retry.get()),
            ("upstream_rq_timeout", self.rq_timeout.get()),
            ("upstream_rq_total", self.rq_total.get()),
            (
                "outlier_detection.ejections_enforced_total",
                self.outlier_ejections.get(),
            ),
            ("upstream_rq_2xx", self.rq_xx[1].get()),
        ];
        for (k, v) in lines {
            let _ = writeln!(out, "cluster.{name}.{k}: {v}");
        }
        for (i, c) in [
            "upstream_rq_1xx",
            "",
            "upstream_rq_3xx",
            "upstream_rq_4xx",
            "upstream_rq_5xx",
        ]
        .iter()
        .enumerate()
        {
            if !c.is_empty() {
                let _ = writeln!(out, "cluster.{name}.{c}: {}", self.rq_xx[i].get());
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerStats {
    pub cx_total: Counter,
    pub cx_active: Gauge,
}

#[derive(Debug, Clone)]
pub struct HttpStats {
    pub rq_total: Counter,
    pub rq_xx: [Counter; 5],
    pub rq_time: Histogram,
    pub rate_limited: Counter,
}

impl HttpStats {
    pub fn response(&self, status: u16, ms: f64) {
        self.rq_xx[class_index(status)].inc();
        self.rq_time.observe(ms);
    }
    pub fn render(&self, prefix: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "http.{prefix}.downstream_rq_total: {}",
            self.rq_total.get()
        );
        for (i, c) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                out,
                "http.{prefix}.downstream_rq_{c}: {}",
                self.rq_xx[i].get()
            );
        }
        let _ = writeln!(
            out,
            "http.{prefix}.local_rate_limit.rate_limited: {}",
            self.rate_limited.get()
        );
    }
}

#[derive(Debug, Clone)]
pub struct TcpStats {
    pub cx_total: Counter,
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
}

impl TcpStats {
    pub fn render(&self, prefix: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "tcp.{prefix}.downstream_cx_total: {}",
            self.cx_total.get()
        );
        let _ = writeln!(
            out,
            "tcp.{prefix}.downstream_cx_rx_bytes_total: {}",
            self.rx_bytes.get()
        );
        let _ = writeln!(
            out,
            "tcp.{prefix}.downstream_cx_tx_bytes_total: {}",
            self.tx_bytes.get()
        );
    }
}

// === RBAC counters ===

const RBAC_NAMES: [&str; 4] = ["allowed", "denied", "shadow_allowed", "shadow_denied"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum RbacScope {
    /// An HTTP filter under this connection manager prefix.
    Http(String),
    /// A network filter with this stat prefix.
    Network(String),
}

/// One named pair of RBAC counters (`allowed`/`denied`, or the shadow pair).
#[derive(Debug)]
struct RbacPair {
    scope: RbacScope,
    shadow: bool,
    prefix: String,
    counts: [std::sync::atomic::AtomicU64; 2],
}

impl RbacPair {
    fn names(&self) -> [&'static str; 2] {
        if self.shadow {
            [RBAC_NAMES[2], RBAC_NAMES[3]]
        } else {
            [RBAC_NAMES[0], RBAC_NAMES[1]]
        }
    }
    fn get(&self, i: usize) -> u64 {
        self.counts[i].load(std::sync::atomic::Ordering::Relaxed)
    }
    fn bump(&self, allowed: bool) {
        self.counts[usize::from(!allowed)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The counters of one RBAC filter: `allowed`/`denied` under its rules
/// prefix, `shadow_allowed`/`shadow_denied` under its shadow prefix.
#[derive(Debug, Clone)]
pub struct RbacStats {
    enforced: Arc<RbacPair>,
    shadow: Arc<RbacPair>,
}

impl RbacStats {
    /// Counts an enforced decision.
    pub fn enforced(&self, allowed: bool) {
        self.enforced.bump(allowed);
    }
    /// Counts a shadow decision.
    pub fn shadow(&self, allowed: bool) {
        self.shadow.bump(allowed);
    }
    /// `allowed`, `denied`, `shadow_allowed`, `shadow_denied` by index.
    pub fn get(&self, i: usize) -> u64 {
        if i < 2 {
            self.enforced.get(i)
        } else {
            self.shadow.get(i - 2)
        }
    }
}

/// Shared handle.
pub type SharedStats = Arc<Stats>;
