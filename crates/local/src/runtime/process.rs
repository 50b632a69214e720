//! Process and probe helpers shared by the node and the pods: running a
//! closure inside a network namespace, an HTTP readiness probe on the
//! pod's localhost, and SIGTERM-then-SIGKILL termination.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Runs `f` on a thread inside the network namespace at `netns`.
pub(crate) fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> T + Send,
) -> std::result::Result<T, String> {
    let file = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {}: {e}", netns.display()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err("probe thread panicked".into()))
    })
}

/// `GET path` on localhost:`port`; 200..400 passes.
pub(crate) fn http_probe(
    port: u16,
    path: &str,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("GET :{port}{path}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.32\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET :{port}{path}: {e}"))?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .map_err(|e| format!("GET :{port}{path}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET :{port}{path}: no HTTP status in {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("GET :{port}{path}: HTTP {code}"))
    }
}

/// SIGTERM, wait up to `grace`, SIGKILL, reap.
pub(crate) fn terminate(children: &mut [Child], grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for c in children.iter() {
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
