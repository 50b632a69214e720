//! Starting and stopping the proxy under test (Envoy 1.40 or weft-proxy) on
//! a rendered bootstrap, waiting until it is ready, and reading its access
//! log. Owns the child processes; they die with the `Running` handle.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::Net;
use crate::scenario::Bindings;

/// Which proxy runs the bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Envoy,
    Weft,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Envoy => "envoy",
            Kind::Weft => "weft",
        }
    }
}

/// How long a proxy may take to become ready (the machine is shared with
/// compiles, so this is generous; it bounds a hang, it is not asserted).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running proxy process.
pub struct Running {
    child: Child,
    kind: Kind,
    pub stderr: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

/// Starts `kind` on `config` and waits until every listener port is bound
/// and the admin `/ready` answers 200.
pub async fn start(
    kind: Kind,
    config: &Path,
    dir: &Path,
    b: &Bindings,
    net: &Net,
) -> Result<Running, String> {
    let stderr = dir.join(format!("{}.stderr", kind.label()));
    let stdout = dir.join(format!("{}.stdout", kind.label()));
    let (program, args) = command(kind, config);
    let mut cmd = match &net.netns {
        None => Command::new(&program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(&program);
            c
        }
    };
    cmd.args(&args);
    if kind == Kind::Weft {
        // The error message, not a backtrace, belongs in the stderr tail.
        cmd.env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0");
    }
    cmd.stdin(Stdio::null())
        .stdout(
            std::fs::File::create(&stdout)
                .map_err(|e| format!("creating {}: {e}", stdout.display()))?,
        )
        .stderr(
            std::fs::File::create(&stderr)
                .map_err(|e| format!("creating {}: {e}", stderr.display()))?,
        );
    let child = cmd
        .spawn()
        .map_err(|e| format!("spawning {}: {e} (is it installed?)", kind.label()))?;
    let mut running = Running {
        child,
        kind,
        stderr,
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(format!(
                "{} exited before ready ({status}):\n{}",
                kind.label(),
                running.stderr_tail()
            ));
        }
        let pid = running.child.id();
        let listening = b.listener_ports.values().all(|p| port_listening(pid, *p));
        if listening && admin_ready(net, b.admin_port).await {
            return Ok(running);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not ready within {READY_TIMEOUT:?} (listeners bound: {listening}, admin port {}):\n{}",
                kind.label(),
                b.admin_port,
                running.stderr_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Running {
    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Which proxy this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// The program and arguments that run `kind` on `config`.
fn command(kind: Kind, config: &Path) -> (String, Vec<String>) {
    let config = config.display().to_string();
    match kind {
        Kind::Envoy => {
            let base_id =
                (std::process::id() % 100_000) * 40 + BASE_ID.fetch_add(1, Ordering::Relaxed) % 40;
            let args = [
                "-c",
                &config,
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ]
            .into_iter()
            .map(str::to_string)
            .chain(["--file-flush-interval-msec".into(), "50".into()])
            .chain(["--base-id".into(), base_id.to_string()])
            .collect();
            ("envoy".into(), args)
        }
        Kind::Weft => (
            env!("CARGO_BIN_EXE_weft-proxy").into(),
            // Istio's fixed health (15021) and Prometheus (15090) ports would
            // collide between scenarios running in parallel.
            [
                "--config",
                &config,
                "--concurrency",
                "1",
                "--health-address",
                "off",
                "--prometheus-address",
                "off",
            ]
            .into_iter()
            .map(str::to_string)
            .collect(),
        ),
    }
}

/// True when `port` is in LISTEN state in the network namespace of process
/// `pid`. Reading /proc avoids probe connections that would show up in
/// access logs.
fn port_listening(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X} ");
    [
        format!("/proc/{pid}/net/tcp"),
        format!("/proc/{pid}/net/tcp6"),
    ]
    .iter()
    .any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&want) && cols[3] == "0A"
            })
    })
}

/// GET /ready on the admin port answers 200.
async fn admin_ready(net: &Net, port: u16) -> bool {
    matches!(admin_get(net, port, "/ready").await, Some((200, _)))
}

/// A bare HTTP/1.1 GET (Connection: close) against the admin port.
pub async fn admin_get(net: &Net, port: u16, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut s = net.dial_uncaptured(port).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text.lines().next()?.split(' ').nth(1)?.parse().ok()?;
        Some((code, text))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// One parsed access-log line (see `scenario::ACCESS_LOG_FORMAT`).
#[derive(Debug, Clone, Default)]
pub struct LogLine {
    pub test_id: String,
    pub code: String,
    pub flags: String,
    pub cluster: String,
    pub route: String,
    pub upstream_host: String,
    pub bytes_received: String,
    pub bytes_sent: String,
    pub protocol: String,
}

/// Parses the access log; lines that do not have the fixed format are
/// returned as errors so a wrong format is visible.
pub fn read_log(path: &Path) -> (Vec<LogLine>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split('|').collect();
        if f.len() != 9 {
            bad.push(l.to_string());
            continue;
        }
        lines.push(LogLine {
            test_id: f[0].into(),
            code: f[1].into(),
            flags: f[2].into(),
            cluster: f[3].into(),
            route: f[4].into(),
            upstream_host: f[5].into(),
            bytes_received: f[6].into(),
            bytes_sent: f[7].into(),
            protocol: f[8].into(),
        });
    }
    (lines, bad)
}

/// Waits (bounded) until the log holds every id in `ids` and at least
/// `anonymous` lines without a test id.
pub async fn wait_log(
    path: &Path,
    ids: &[String],
    anonymous: usize,
) -> (Vec<LogLine>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (lines, bad) = read_log(path);
        let have_ids = ids.iter().all(|id| lines.iter().any(|l| &l.test_id == id));
        let anon = lines.iter().filter(|l| l.test_id == "-").count();
        if (have_ids && anon >= anonymous) || Instant::now() > deadline {
            return (lines, bad);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `path` holds at least `n` lines; returns them.
pub async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
