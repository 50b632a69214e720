//! TCP probes for capture tests: a [`Responder`] that answers every
//! connection with who it is and what it saw (local address, the original
//! destination from `SO_ORIGINAL_DST`, the peer), and clients that connect
//! from inside a pod, either in-process ([`probe`]) or as a process with a
//! chosen uid ([`probe_as`]), so iptables owner matches apply. The UDP
//! pair ([`UdpResponder`], [`udp_probe`]) creates its sockets as a chosen
//! user, as DNS capture tests need.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, sockopt,
};

use crate::error::{Error, Result};
use crate::pod::Pod;
use crate::process::RunAs;

/// Connect and read timeout of every probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`Responder`]'s listening socket is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenMode {
    /// A plain listener.
    Plain,
    /// `IP_TRANSPARENT` set before bind, as a TPROXY listener needs.
    Transparent,
}

/// What a [`Responder`] reported about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The responder's name.
    pub name: String,
    /// The accepted socket's local address (under TPROXY: the original
    /// destination).
    pub local: SocketAddr,
    /// `SO_ORIGINAL_DST` of the accepted socket (REDIRECT: the original
    /// destination; `None` without a conntrack NAT entry).
    pub original_dst: Option<SocketAddr>,
    /// The client's address as seen by the responder.
    pub peer: SocketAddr,
}

impl Answer {
    /// Parses the line a responder writes:
    /// `NAME local=ADDR orig=ADDR|- peer=ADDR`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let name = words.next()?.to_owned();
        let mut field = |key: &str| words.next()?.strip_prefix(key).map(str::to_owned);
        let local = field("local=")?.parse().ok()?;
        let orig = field("orig=")?;
        let peer = field("peer=")?.parse().ok()?;
        let original_dst = if orig == "-" {
            None
        } else {
            Some(orig.parse().ok()?)
        };
        Some(Self {
            name,
            local,
            original_dst,
            peer,
        })
    }

    fn line(&self) -> String {
        let orig = self
            .original_dst
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        format!(
            "{} local={} orig={orig} peer={}\n",
            self.name, self.local, self.peer
        )
    }
}

/// A TCP listener in a pod that answers each connection with one
/// [`Answer`] line and closes it. Stops when dropped.
#[derive(Debug)]
pub struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Listens on `addr` inside `pod`; answers carry `name`.
    pub fn start(pod: &Pod, name: &str, addr: SocketAddr, mode: ListenMode) -> Result<Self> {
        let listener = pod
            .enter(|| listen(addr, mode))?
            .map_err(|source| Error::Io {
                path: format!("listener {addr} ({name}) in pod {}", pod.name()).into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            path: format!("listener {name}").into(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_owned();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(&listener, &name, &stop))
        };
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn listen(addr: SocketAddr, mode: ListenMode) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if mode == ListenMode::Transparent {
        socket::setsockopt(&fd, sockopt::IpTransparent, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(64)?)?;
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn serve(listener: &TcpListener, name: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, peer)) => {
                if let Err(err) = answer(conn, name, peer) {
                    eprintln!("weft-testbed: responder {name}: {err}");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            // A signal (e.g. glibc's set*id broadcast) interrupted us: retry.
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("weft-testbed: responder {name}: accept: {err}");
                return;
            }
        }
    }
}

fn answer(mut conn: TcpStream, name: &str, peer: SocketAddr) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let reply = Answer {
        name: name.to_owned(),
        local: conn.local_addr()?,
        original_dst: original_dst(&conn).ok(),
        peer,
    };
    conn.write_all(reply.line().as_bytes())
}

/// The destination a connection had before iptables NAT redirected it
/// (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for IPv6).
pub fn original_dst(conn: &TcpStream) -> io::Result<SocketAddr> {
    if conn.local_addr()?.is_ipv4() {
        let raw = socket::getsockopt(conn, sockopt::OriginalDst)?;
        Ok(socket::SockaddrIn::from(raw).into())
    } else {
        let raw = socket::getsockopt(conn, sockopt::Ip6tOriginalDst)?;
        Ok(socket::SockaddrIn6::from(raw).into())
    }
}

/// Connects to `target` from inside `pod` (as this process's user, root)
/// and returns the answer line, or the I/O error as text.
pub fn probe(pod: &Pod, target: SocketAddr) -> Result<Result<Answer, String>> {
    probe_within(pod, target, PROBE_TIMEOUT)
}

/// [`probe`] with its own connect and read timeout, for probes that are
/// expected to go unanswered.
pub fn probe_within(
    pod: &Pod,
    target: SocketAddr,
    timeout: Duration,
) -> Result<Result<Answer, String>> {
    pod.enter(|| {
        let read = || -> io::Result<String> {
            let mut conn = TcpStream::connect_timeout(&target, timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            Ok(reply)
        };
        match read() {
            Ok(reply) => Answer::parse(&reply).ok_or(format!("unexpected reply {reply:?}")),
            Err(err) => Err(format!("connecting to {target}: {err}")),
        }
    })
}

/// Connects to `target` from `source` (any port), with a socket created
/// inside `pod` as `run_as` (see [`Pod::enter_as`]); for example as the
/// proxy (1337) from 127.0.0.6, the address Istio's inbound passthrough
/// uses. Returns the answer, or what went wrong as text.
pub fn probe_from(
    pod: &Pod,
    run_as: RunAs,
    source: IpAddr,
    target: SocketAddr,
) -> Result<Result<Answer, String>> {
    pod.enter_as(run_as, || {
        let read = || -> io::Result<String> {
            let family = match target {
                SocketAddr::V4(_) => AddressFamily::Inet,
                SocketAddr::V6(_) => AddressFamily::Inet6,
            };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            let timeout =
                nix::sys::time::TimeVal::new(PROBE_TIMEOUT.as_secs().try_into().unwrap_or(5), 0);
            // Linux bounds a blocking connect by the send timeout.
            socket::setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
            socket::bind(
                fd.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(source, 0)),
            )?;
            socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(target))?;
            let mut conn = TcpStream::from(fd);
            conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            Ok(reply)
        };
        match read() {
            Ok(reply) => Answer::parse(&reply).ok_or(format!("unexpected reply {reply:?}")),
            Err(err) => Err(format!(
                "connecting {source} -> {target} as {run_as:?}: {err}"
            )),
        }
    })
}

/// Connects to `target` from a process running inside `pod` as `run_as`
/// (bash's `/dev/tcp`, bounded by `timeout`), so that iptables sees a socket
/// owned by that uid/gid. Returns the answer, or what went wrong as text.
pub fn probe_as(pod: &Pod, run_as: RunAs, target: SocketAddr) -> Result<Result<Answer, String>> {
    let secs = PROBE_TIMEOUT.as_secs().to_string();
    let mut cmd = pod.command_as("timeout", run_as)?;
    cmd.args([
        &secs,
        "bash",
        "-c",
        "exec 3<>\"/dev/tcp/$0/$1\" && cat <&3",
        &target.ip().to_string(),
        &target.port().to_string(),
    ]);
    let command = crate::ip::describe(&cmd);
    let output = cmd
        .output()
        .map_err(|source| Error::Spawn { command, source })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Ok(Err(format!(
            "connecting to {target} as {run_as:?}: {} {}",
            output.status,
            stderr.trim()
        )));
    }
    Ok(Answer::parse(&stdout).ok_or(format!("unexpected reply {stdout:?}")))
}

// === UDP ===

/// A UDP socket in a pod, owned (for netfilter) by a chosen user, that
/// answers every datagram with one [`Answer`] line. Stops when dropped.
#[derive(Debug)]
pub struct UdpResponder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpResponder {
    /// Binds `addr` inside `pod` with a socket owned by `run_as`.
    pub fn start(pod: &Pod, run_as: RunAs, name: &str, addr: SocketAddr) -> Result<Self> {
        let io_err = |source| Error::Io {
            path: format!("UDP socket {addr} ({name}) in pod {}", pod.name()).into(),
            source,
        };
        let socket = pod
            .enter_as(run_as, || UdpSocket::bind(addr))?
            .map_err(io_err)?;
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(io_err)?;
        let addr = socket.local_addr().map_err(io_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_owned();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve_udp(&socket, &name, &stop))
        };
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_udp(socket: &UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let reply = socket.local_addr().map(|local| Answer {
                    name: name.to_owned(),
                    local,
                    original_dst: None,
                    peer,
                });
                if let Err(err) = reply.and_then(|r| socket.send_to(r.line().as_bytes(), peer)) {
                    eprintln!("weft-testbed: UDP responder {name}: {err}");
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                eprintln!("weft-testbed: UDP responder {name}: {err}");
                return;
            }
        }
    }
}

/// Sends one datagram to `target` from a socket created in `pod` as
/// `run_as` and waits up to `timeout` for the answer; returns it, or what
/// went wrong as text.
pub fn udp_probe(
    pod: &Pod,
    run_as: RunAs,
    target: SocketAddr,
    timeout: Duration,
) -> Result<Result<Answer, String>> {
    pod.enter_as(run_as, || {
        let exchange = || -> io::Result<String> {
            let any: IpAddr = match target {
                SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            let socket = UdpSocket::bind((any, 0))?;
            socket.connect(target)?;
            socket.send(b"probe")?;
            let deadline = std::time::Instant::now() + timeout;
            let mut buf = [0u8; 512];
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv(&mut buf) {
                    Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
        };
        match exchange() {
            Ok(reply) => Answer::parse(&reply).ok_or(format!("unexpected reply {reply:?}")),
            Err(err) => Err(format!("UDP to {target} as {run_as:?}: {err}")),
        }
    })
}
