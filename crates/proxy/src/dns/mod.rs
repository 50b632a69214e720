//! The sidecar DNS proxy (Istio's agent DNS proxy, port 15053): answers A
//! and AAAA queries for mesh names from the [`NameTable`] weftd pushes over
//! NDS, and forwards every other query to the pod's resolvers.
//!
//! - [`table`]: the pure name expansion and lookup (FQDN, `name.namespace`,
//!   bare `name` in the proxy's namespace, search-suffixed forms, wildcards);
//! - [`answer`]: the pure per-query decision and DNS wire encoding;
//! - `server`: UDP and TCP sockets and upstream forwarding;
//! - [`metrics`]: Istio's `istio_agent_dns_*` metrics, on weft-proxy's
//!   Prometheus output once the DNS proxy runs.
//!
//! Enabled in sidecar mode when `ISTIO_META_DNS_CAPTURE=true` (the same
//! variable that makes weftd send the table). Environment, as the agent's:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DNS_PROXY_ADDR` | listen address; `localhost:PORT` means 127.0.0.1 and ::1 (when the pod has it) | `localhost:15053` |
//! | `POD_NAMESPACE` | namespace bare names resolve in | `default` |
//! | `ISTIO_META_DNS_DOMAIN` | `NS.svc.DOMAIN` or `DOMAIN` | `cluster.local` |
//! | `WEFT_DNS_RESOLV_CONF` | resolv.conf with the upstream nameservers and search domains | `/etc/resolv.conf` |
//! | `WEFT_DNS_UPSTREAMS` | comma-separated `IP` or `IP:PORT` upstreams, replacing resolv.conf's nameservers (tests) | — |
//!
//! Traffic reaches 15053 through `weft-proxy iptables --redirect-dns`. The
//! proxy keeps answering from its last table while weftd is away.

pub mod answer;
pub mod metrics;
mod server;
pub mod table;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use weft_xds::nds::NameTable;

pub use self::metrics::DnsMetrics;
use self::server::State;
pub use self::table::{LookupTable, TableContext};

/// Istio's DNS proxy port.
pub const DNS_PORT: u16 = 15053;

/// Why the DNS proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "DNS proxy: cannot read {path}: {source} (set WEFT_DNS_RESOLV_CONF or WEFT_DNS_UPSTREAMS)"
    )]
    ResolvConf {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "DNS proxy: cannot listen on {proto} {addr}: {source} (is another DNS proxy running? set DNS_PROXY_ADDR)"
    )]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS proxy: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// Where to listen, where to forward, and what names are relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Listen addresses (UDP and TCP each).
    pub listen: Vec<SocketAddr>,
    /// Whether `[::1]` is tried in addition (from `localhost`); skipped
    /// silently when the pod has no IPv6 loopback.
    pub try_ipv6_loopback: bool,
    /// Upstream resolvers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// The proxy's namespace.
    pub namespace: String,
    /// Cluster domain (`cluster.local`).
    pub domain: String,
    /// resolv.conf search domains.
    pub search: Vec<String>,
}

/// The nameservers and search domains of a resolv.conf text.
pub fn parse_resolv_conf(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut domain = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // Scoped IPv6 (`fe80::1%eth0`) cannot be a SocketAddr; skip.
                if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                    servers.push(ip);
                }
            }
            Some("search") => search = words.map(str::to_owned).collect(),
            Some("domain") => domain = words.next().map(str::to_owned),
            _ => {}
        }
    }
    if search.is_empty()
        && let Some(d) = domain
    {
        search.push(d);
    }
    (servers, search)
}

impl DnsConfig {
    /// The configuration from the proxy's environment, or `None` when DNS
    /// capture is off (`ISTIO_META_DNS_CAPTURE` not `true`).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Option<DnsConfig>, DnsError> {
        let on = env
            .get("ISTIO_META_DNS_CAPTURE")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !on {
            return Ok(None);
        }
        let namespace = env
            .get("POD_NAMESPACE")
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "default".to_owned());
        let domain = env
            .get("ISTIO_META_DNS_DOMAIN")
            .filter(|v| !v.is_empty())
            .map(|d| cluster_domain(d, &namespace))
            .unwrap_or_else(|| "cluster.local".to_owned());
        let (listen, try_ipv6_loopback) = listen_addrs(
            env.get("DNS_PROXY_ADDR")
                .map(String::as_str)
                .unwrap_or("localhost:15053"),
        )?;
        let resolv = env
            .get("WEFT_DNS_RESOLV_CONF")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
        let (servers, search) = read_resolv_conf(&resolv)?;
        let upstreams = match env.get("WEFT_DNS_UPSTREAMS").filter(|v| !v.is_empty()) {
            Some(list) => parse_upstreams(list)?,
            None => servers
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .collect(),
        };
        Ok(Some(DnsConfig {
            listen,
            try_ipv6_loopback,
            upstreams,
            namespace,
            domain,
            search,
        }))
    }
}

fn read_resolv_conf(path: &Path) -> Result<(Vec<IpAddr>, Vec<String>), DnsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_resolv_conf(&text)),
        Err(source) => Err(DnsError::ResolvConf {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `cluster.local` from `NS.svc.cluster.local`, `svc.cluster.local` or `cluster.local`.
fn cluster_domain(d: &str, namespace: &str) -> String {
    let d = d.trim_matches('.');
    let d = d
        .strip_prefix(&format!("{namespace}."))
        .filter(|rest| rest.starts_with("svc."))
        .unwrap_or(d);
    d.strip_prefix("svc.").unwrap_or(d).to_owned()
}

fn listen_addrs(value: &str) -> Result<(Vec<SocketAddr>, bool), DnsError> {
    let bad = |reason: &str| DnsError::Env {
        var: "DNS_PROXY_ADDR",
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(port) = value.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        return Ok((vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))], true));
    }
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| bad("expected IP:PORT or localhost:PORT"))?;
    Ok((vec![addr], false))
}

fn parse_upstreams(list: &str) -> Result<Vec<SocketAddr>, DnsError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| DnsError::Env {
                    var: "WEFT_DNS_UPSTREAMS",
                    value: list.to_owned(),
                    reason: format!("{s:?} is not IP or IP:PORT"),
                })
        })
        .collect()
}

/// A running DNS proxy. Dropping it stops serving.
pub struct DnsProxy {
    state: Arc<State>,
    ctx: TableContext,
    addrs: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for DnsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsProxy")
            .field("addrs", &self.addrs)
            .field("upstreams", &self.state.upstreams)
            .finish()
    }
}

impl DnsProxy {
    /// Binds every listen address (UDP and TCP; an address with port 0
    /// gets the same port for both) and serves on a thread of its own.
    /// Queries fail with SERVFAIL until the first [`DnsProxy::update`].
    /// Counts into the process's [`DnsMetrics`] (weft-proxy's Prometheus
    /// output).
    pub fn start(config: DnsConfig) -> Result<DnsProxy, DnsError> {
        Self::start_with_metrics(config, DnsMetrics::process())
    }

    /// [`DnsProxy::start`] counting into `metrics` instead.
    pub fn start_with_metrics(
        config: DnsConfig,
        metrics: Arc<DnsMetrics>,
    ) -> Result<DnsProxy, DnsError> {
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        for addr in &config.listen {
            let (udp, tcp) = bind_pair(*addr)?;
            addrs.push(udp.local_addr().map_err(|source| DnsError::Bind {
                proto: "udp",
                addr: *addr,
                source,
            })?);
            sockets.push((udp, tcp));
        }
        if config.try_ipv6_loopback
            && let Some(port) = addrs.first().map(SocketAddr::port)
        {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            match bind_pair(v6) {
                Ok(pair) => {
                    addrs.push(v6);
                    sockets.push(pair);
                }
                Err(e) => tracing::debug!(error = %e, "no IPv6 loopback; DNS proxy on IPv4 only"),
            }
        }
        if config.upstreams.is_empty() {
            tracing::warn!("DNS proxy has no upstream nameserver: non-mesh names will fail");
        }
        let state = Arc::new(State {
            table: ArcSwapOption::empty(),
            upstreams: config.upstreams.clone(),
            metrics,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&state);
        std::thread::Builder::new()
            .name("weft:dns".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "DNS proxy runtime did not start");
                        return;
                    }
                };
                rt.block_on(async move {
                    for (udp, tcp) in sockets {
                        match (
                            tokio::net::UdpSocket::from_std(udp),
                            tokio::net::TcpListener::from_std(tcp),
                        ) {
                            (Ok(u), Ok(t)) => {
                                tokio::spawn(server::serve_udp(u, Arc::clone(&serving)));
                                tokio::spawn(server::serve_tcp(t, Arc::clone(&serving)));
                            }
                            (Err(e), _) | (_, Err(e)) => {
                                tracing::error!(error = %e, "DNS proxy socket unusable");
                            }
                        }
                    }
                    let _ = stopped.await;
                });
            })
            .map_err(DnsError::Thread)?;
        tracing::info!(listen = ?addrs, upstreams = ?config.upstreams, search = ?config.search, "DNS proxy started");
        Ok(DnsProxy {
            state,
            ctx: TableContext::new(&config.namespace, &config.domain, &config.search),
            addrs,
            stop: Some(stop),
        })
    }

    /// Where it listens (the actual ports, also for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Answers from `table` from now on.
    pub fn update(&self, table: &NameTable) {
        let t = LookupTable::build(table, &self.ctx);
        tracing::info!(
            hosts = table.table.len(),
            names = t.len(),
            "DNS name table updated"
        );
        self.state.table.store(Some(Arc::new(t)));
    }

    /// Whether a name table arrived.
    pub fn has_table(&self) -> bool {
        self.state.table.load().is_some()
    }

    /// The metrics this proxy counts into.
    pub fn metrics(&self) -> &Arc<DnsMetrics> {
        &self.state.metrics
    }
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// UDP and TCP sockets on `addr` (non-blocking, for tokio); port 0 gets
/// one port for both.
fn bind_pair(addr: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let bind_err = |proto, addr, source| DnsError::Bind {
        proto,
        addr,
        source,
    };
    let mut attempts = 0;
    loop {
        let udp = std::net::UdpSocket::bind(addr).map_err(|e| bind_err("udp", addr, e))?;
        let port = udp
            .local_addr()
            .map_err(|e| bind_err("udp", addr, e))?
            .port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match std::net::TcpListener::bind(tcp_addr) {
            Ok(tcp) => {
                udp.set_nonblocking(true)
                    .map_err(|e| bind_err("udp", addr, e))?;
                tcp.set_nonblocking(true)
                    .map_err(|e| bind_err("tcp", tcp_addr, e))?;
                return Ok((udp, tcp));
            }
            // With port 0 the UDP port may be taken for TCP: try another.
            Err(_) if addr.port() == 0 && attempts < 10 => attempts += 1,
            Err(e) => return Err(bind_err("tcp", tcp_addr, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resolv_conf_servers_and_search() {
        let (servers, search) = parse_resolv_conf(
            "# comment\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver ::1\nsearch demo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(
            servers,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            search,
            [
                "demo.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        let (_, search) = parse_resolv_conf("domain example.org\n");
        assert_eq!(search, ["example.org"]);
    }

    #[test]
    fn config_from_env() {
        assert_eq!(DnsConfig::from_env(&env(&[])).unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join("resolv.conf");
        std::fs::write(
            &rc,
            "nameserver 10.96.0.10\nsearch demo.svc.cluster.local\n",
        )
        .unwrap();
        let rc = rc.to_str().unwrap();
        let c = DnsConfig::from_env(&env(&[
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("POD_NAMESPACE", "demo"),
            ("ISTIO_META_DNS_DOMAIN", "demo.svc.example.org"),
            ("WEFT_DNS_RESOLV_CONF", rc),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.listen, ["127.0.0.1:15053".parse().unwrap()]);
        assert!(c.try_ipv6_loopback);
        assert_eq!(c.upstreams, ["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(c.namespace, "demo");
        assert_eq!(c.domain, "example.org");
        assert_eq!(c.search, ["demo.svc.cluster.local"]);
        let c = DnsConfig::from_env(&env(&[
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("DNS_PROXY_ADDR", "127.0.0.1:0"),
            ("WEFT_DNS_RESOLV_CONF", rc),
            ("WEFT_DNS_UPSTREAMS", "127.0.0.1:5353, 10.0.0.1"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!c.try_ipv6_loopback);
        assert_eq!(
            c.upstreams,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
        let e = DnsConfig::from_env(&env(&[
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("DNS_PROXY_ADDR", "nope"),
            ("WEFT_DNS_RESOLV_CONF", rc),
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("DNS_PROXY_ADDR=\"nope\""), "{e}");
        let e = DnsConfig::from_env(&env(&[
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("WEFT_DNS_RESOLV_CONF", "/nonexistent/resolv.conf"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/resolv.conf"), "{e}");
    }

    #[test]
    fn cluster_domain_forms() {
        assert_eq!(
            cluster_domain("demo.svc.cluster.local", "demo"),
            "cluster.local"
        );
        assert_eq!(cluster_domain("svc.cluster.local", "demo"), "cluster.local");
        assert_eq!(cluster_domain("cluster.local", "demo"), "cluster.local");
    }
}
