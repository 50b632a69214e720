//! The node: the testbed node namespace with its bridge, weftd running in it
//! (restarted with backoff if it dies, keeping its CA directory so proxies'
//! certificates stay valid), the cluster DNS on the bridge's port 53, and
//! the Service NAT rules.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::dns;
use crate::error::{Error, Result};
use crate::runtime::process::{in_netns, terminate};
use crate::sandbox::Sandbox;

/// weftd's ports on the node bridge (Istio's): plaintext xDS (for tools).
pub const XDS_PORT: u16 = 15010;
/// xDS and the CA over mutual TLS: what the pods' sidecars use.
pub const XDS_TLS_PORT: u16 = 15012;
/// Metrics and debug.
pub const MONITORING_PORT: u16 = 15014;

pub(crate) struct NodeRuntime {
    pub node: weft_testbed::Node,
    pub gateway: Ipv4Addr,
    weftd_path: PathBuf,
    pub weftd_log: PathBuf,
    mirror: PathBuf,
    state_dir: PathBuf,
    weftd: Option<(Child, Instant)>,
    weftd_backoff: Duration,
    weftd_restart_at: Option<Instant>,
    pub weftd_restarts: u32,
    nat: String,
    pub dns_table: dns::Table,
}

impl NodeRuntime {
    pub(crate) fn start(
        prefix: &str,
        subnet: Ipv4Addr,
        weftd_path: PathBuf,
        mirror: PathBuf,
        state_dir: &Path,
    ) -> Result<NodeRuntime> {
        let node = weft_testbed::Node::builder()
            .prefix(prefix)
            .subnet(subnet)
            .build()?;
        let gateway = node.gateway();
        // Routing between pods and the NAT for Service VIPs.
        node.netns().enter(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| Error::Io {
                path: "/proc/sys/net/ipv4/ip_forward (node namespace)".into(),
                source,
            })
        })??;
        let dns_table = dns::Table::default();
        let socket = node
            .netns()
            .enter(|| UdpSocket::bind(SocketAddr::from((gateway, 53))))?
            .map_err(|source| Error::Io {
                path: format!("udp {gateway}:53 (node DNS)").into(),
                source,
            })?;
        let table = dns_table.clone();
        std::thread::Builder::new()
            .name("node dns".into())
            .spawn(move || dns::serve(socket, table))
            .map_err(|source| Error::Io {
                path: "node DNS thread".into(),
                source,
            })?;
        let mut rt = NodeRuntime {
            node,
            gateway,
            weftd_path,
            weftd_log: state_dir.join("weftd.log"),
            mirror,
            state_dir: state_dir.to_owned(),
            weftd: None,
            weftd_backoff: Duration::from_millis(500),
            weftd_restart_at: Some(Instant::now()),
            weftd_restarts: 0,
            nat: String::new(),
            dns_table,
        };
        rt.tend_weftd();
        rt.wait_weftd(Duration::from_secs(60))?;
        Ok(rt)
    }

    pub(crate) fn netns_path(&self) -> PathBuf {
        self.node.netns().path().to_owned()
    }

    /// The token store file weftd reads.
    pub(crate) fn tokens_file(&self) -> PathBuf {
        self.state_dir.join("tokens.json")
    }

    /// The mesh root written by weftd.
    pub(crate) fn root_cert(&self) -> PathBuf {
        self.state_dir.join("root-cert.pem")
    }

    fn spawn_weftd(&self) -> Result<Child> {
        let gw = self.gateway;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.weftd_log)
            .map_err(|source| Error::Io {
                path: self.weftd_log.clone(),
                source,
            })?;
        let _ = writeln!(log, "--- weft up: starting weftd ---");
        let err = log.try_clone().map_err(|source| Error::Io {
            path: self.weftd_log.clone(),
            source,
        })?;
        let sandbox = Sandbox {
            netns: self.netns_path(),
            new_session: true,
            ..Sandbox::default()
        };
        let mut cmd = sandbox.command(&self.weftd_path)?;
        cmd.arg("--config")
            .arg(format!("file://{}", self.mirror.display()))
            .arg("--xds-addr")
            .arg(format!("{gw}:{XDS_PORT}"))
            .arg("--xds-tls-addr")
            .arg(format!("{gw}:{XDS_TLS_PORT}"))
            // Pods dial the node IP: weftd's certificate must be valid for it.
            .arg("--tls-san")
            .arg(gw.to_string())
            .arg("--monitoring-addr")
            .arg(format!("{gw}:{MONITORING_PORT}"))
            .arg("--webhook-addr")
            .arg(format!("{gw}:15017"))
            .arg("--ready-addr")
            .arg(format!("{gw}:8080"))
            .arg("--ca-dir")
            .arg(self.state_dir.join("ca"))
            .arg("--bootstrap-tokens")
            .arg(self.tokens_file())
            .arg("--root-cert-out")
            .arg(self.root_cert())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        cmd.spawn().map_err(|e| Error::Spawn {
            what: "weftd".into(),
            message: format!("{}: {e}", self.weftd_path.display()),
        })
    }

    /// Restarts weftd (with backoff) when it is not running. Returns an
    /// event to report, if any.
    pub(crate) fn tend_weftd(&mut self) -> Option<String> {
        let now = Instant::now();
        if let Some((child, started)) = &mut self.weftd
            && let Ok(Some(status)) = child.try_wait()
        {
            if now.duration_since(*started) > Duration::from_secs(10) {
                self.weftd_backoff = Duration::from_millis(500);
            }
            let msg = format!(
                "weftd exited ({status}); restarting in {:?} (proxies keep their last config meanwhile)",
                self.weftd_backoff
            );
            self.weftd = None;
            self.weftd_restart_at = Some(now + self.weftd_backoff);
            self.weftd_backoff = (self.weftd_backoff * 2).min(Duration::from_secs(10));
            return Some(msg);
        }
        if self.weftd.is_none()
            && let Some(at) = self.weftd_restart_at
            && now >= at
        {
            match self.spawn_weftd() {
                Ok(child) => {
                    let first = self.weftd_restarts == 0
                        && self.weftd_backoff == Duration::from_millis(500);
                    self.weftd = Some((child, now));
                    self.weftd_restart_at = None;
                    self.weftd_restarts += 1;
                    if !first {
                        return Some("weftd restarted".into());
                    }
                }
                Err(e) => {
                    self.weftd_restart_at = Some(now + self.weftd_backoff);
                    return Some(e.to_string());
                }
            }
        }
        None
    }

    /// The pid of the running weftd.
    pub(crate) fn weftd_pid(&self) -> Option<u32> {
        self.weftd.as_ref().map(|(c, _)| c.id())
    }

    /// Waits until weftd accepts on its xDS port and wrote the root cert
    /// (probing the plaintext port: weftd binds both ports before serving
    /// either, and a bare connect to 15012 would log a failed handshake).
    pub(crate) fn wait_weftd(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let addr = SocketAddr::from((self.gateway, XDS_PORT));
        let netns = self.netns_path();
        loop {
            if let Some(event) = self.tend_weftd() {
                tracing::warn!("{event}");
            }
            let up = in_netns(&netns, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .unwrap_or(false);
            if up && self.root_cert().exists() {
                return Ok(());
            }
            if start.elapsed() > limit {
                let tail = std::fs::read_to_string(&self.weftd_log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                return Err(Error::Timeout {
                    what: format!("weftd on {addr}"),
                    secs: limit.as_secs(),
                    detail: format!(
                        "last lines of {}:\n{}",
                        self.weftd_log.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Installs the Service NAT rules (when they changed).
    pub(crate) fn set_nat(&mut self, rules: String) -> Result<()> {
        if rules == self.nat {
            return Ok(());
        }
        let sandbox = Sandbox {
            netns: self.netns_path(),
            ..Sandbox::default()
        };
        let mut cmd = sandbox.command("iptables-restore")?;
        cmd.arg("-w")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::Spawn {
            what: "iptables-restore in the node namespace".into(),
            message: e.to_string(),
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(rules.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| Error::Spawn {
            what: "iptables-restore in the node namespace".into(),
            message: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(Error::Spawn {
                what: "iptables-restore in the node namespace".into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        self.nat = rules;
        Ok(())
    }

    /// Stops weftd.
    pub(crate) fn stop_weftd(&mut self) {
        if let Some((child, _)) = self.weftd.take() {
            terminate(&mut [child], Duration::from_secs(2));
        }
        self.weftd_restart_at = None;
    }
}
