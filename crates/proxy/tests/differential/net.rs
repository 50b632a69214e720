//! Where a scenario's sockets live. Most scenarios use the host's loopback;
//! a scenario with `capture` runs in a network namespace the harness creates
//! (and deletes), with an iptables REDIRECT rule that sends the client's
//! connections (from a dedicated source address) to the proxy's virtual
//! listener, as a sidecar's capture does. Owns the namespace and every
//! socket creation; nothing here touches the host's firewall.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};
use tokio::net::TcpStream;

/// A network namespace created for one scenario.
pub struct Netns {
    pub name: String,
    path: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates a namespace with loopback up. Needs root.
    pub fn create() -> Netns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this scenario captures traffic with iptables in a network namespace, which needs root: run the tests as root"
        );
        let name = format!(
            "weftdiff-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that has entered the namespace; sockets created
    /// there stay in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    /// Runs `iptables ARGS` inside the namespace.
    pub fn iptables(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name, "iptables"];
        full.extend_from_slice(args);
        ip(&full);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// How the harness opens sockets for one scenario.
#[derive(Clone, Default)]
pub struct Net {
    pub netns: Option<Arc<Netns>>,
    /// Source address of client connections (the capture rule matches it).
    pub client_source: Option<Ipv4Addr>,
}

impl Net {
    /// A TCP listener on 127.0.0.1 (ephemeral port).
    pub fn listen(&self) -> tokio::net::TcpListener {
        let bind = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
            l.set_nonblocking(true).expect("nonblocking");
            l
        };
        let l = match &self.netns {
            Some(ns) => ns.run(bind),
            None => bind(),
        };
        tokio::net::TcpListener::from_std(l).expect("tokio listener")
    }

    /// A listener on 127.0.0.1 with an accept backlog of 0 that nobody
    /// accepts from, its queue filled by a few held connections, so further
    /// connection attempts hang (Linux drops SYNs to a full accept queue).
    pub async fn blackhole(&self) -> (u16, tokio::net::TcpListener, Vec<TcpStream>) {
        assert!(
            self.netns.is_none(),
            "blackhole upstreams are not supported in capture scenarios"
        );
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind blackhole");
        let port = sock.local_addr().expect("addr").port();
        let listener = sock.listen(0).expect("listen blackhole");
        let mut fillers = Vec::new();
        for _ in 0..3 {
            let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
            if let Ok(Ok(s)) =
                tokio::time::timeout(std::time::Duration::from_millis(300), connect).await
            {
                fillers.push(s);
            }
        }
        (port, listener, fillers)
    }

    /// A client connection to 127.0.0.1:`port` (from the capture source
    /// address when the scenario captures).
    pub async fn dial(&self, port: u16) -> std::io::Result<TcpStream> {
        self.connect(port, self.client_source).await
    }

    /// A connection that is never captured (admin and readiness probes).
    pub async fn dial_uncaptured(&self, port: u16) -> std::io::Result<TcpStream> {
        self.connect(port, None).await
    }

    async fn connect(&self, port: u16, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match &self.netns {
            None => TcpStream::connect(target).await,
            Some(ns) => {
                let ns = ns.clone();
                let std = tokio::task::spawn_blocking(move || {
                    ns.run(move || -> std::io::Result<std::net::TcpStream> {
                        let sock = blocking_connect(target, source)?;
                        sock.set_nonblocking(true)?;
                        Ok(sock)
                    })
                })
                .await
                .map_err(std::io::Error::other)??;
                TcpStream::from_std(std)
            }
        }
    }
}

/// A blocking connect, optionally from a given source address (std has no
/// bind-before-connect, so this goes through tokio's socket on a private
/// current-thread runtime inside the namespace thread).
fn blocking_connect(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
) -> std::io::Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sock = tokio::net::TcpSocket::new_v4()?;
        if let Some(src) = source {
            sock.bind(SocketAddr::from((src, 0)))?;
        }
        let stream = tokio::time::timeout(std::time::Duration::from_secs(5), sock.connect(target))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.into_std()
    })
}
