//! Running the proxy: binds every listener once per worker (SO_REUSEPORT),
//! runs one single-threaded tokio runtime per worker (`--concurrency N`),
//! and a separate control thread for the admin API, health and metrics
//! ports, DNS refresh and signals. Config versions are swapped atomically;
//! connections keep the version they started with.

pub mod conn;
pub mod cors;
pub mod forward;
pub mod http;
pub mod mirror;
pub mod tcp;

use crate::config::{ConfigError, LoadedBootstrap};
use crate::model::Snapshot;
use crate::model::cluster::{Discovery, resolve};
use crate::stats::Stats;
use arc_swap::ArcSwap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Process-wide state shared by workers and the control thread.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub stats: Arc<Stats>,
    pub ready: AtomicBool,
    pub drain_tx: watch::Sender<bool>,
    pub drain_rx: watch::Receiver<bool>,
    pub stop_tx: watch::Sender<bool>,
    pub started: SystemTime,
    pub concurrency: usize,
    pub log_levels: std::sync::Mutex<String>,
    /// Listeners with a bound port, by name (grows when xDS adds listeners).
    pub bound: std::sync::Mutex<Vec<(Arc<str>, SocketAddr)>>,
    /// Hands listeners bound after start to each worker.
    add_listener: Vec<tokio::sync::mpsc::UnboundedSender<NewListener>>,
    /// Per bound listener: set to stop accepting when xDS removes it.
    closers: std::sync::Mutex<std::collections::HashMap<Arc<str>, watch::Sender<bool>>>,
}

/// A bound socket handed to a worker, with the flag that closes it.
type NewListener = (Arc<str>, StdListener, watch::Receiver<bool>);

impl Shared {
    /// Binds the listeners of `snap` that are not bound yet (one socket
    /// per worker), swaps `snap` in, then starts accepting on them. A bind
    /// failure leaves the running snapshot in place.
    pub fn swap_in(&self, snap: Snapshot) -> Result<(), StartError> {
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh = Vec::new();
        for l in snap.listeners.iter().filter(|l| l.bind_to_port) {
            if bound.iter().any(|(n, _)| *n == l.name) {
                continue;
            }
            let socks = bind_per_worker(l, self.add_listener.len())?;
            fresh.push((l.name.clone(), socks));
        }
        let mut closers = self.closers.lock().unwrap_or_else(|e| e.into_inner());
        bound.retain(|(name, addr)| {
            let keep = snap
                .listeners
                .iter()
                .any(|l| l.bind_to_port && l.name == *name);
            if !keep {
                tracing::info!(listener = %name, %addr, "listener removed: stopped accepting");
                if let Some(c) = closers.remove(name) {
                    c.send_replace(true);
                }
            }
            keep
        });
        self.snapshot.store(Arc::new(snap));
        for (name, (addr, socks)) in fresh {
            tracing::info!(listener = %name, %addr, "listening");
            let (close, closed) = watch::channel(false);
            for (tx, sock) in self.add_listener.iter().zip(socks) {
                let _ = tx.send((name.clone(), sock, closed.clone()));
            }
            closers.insert(name.clone(), close);
            bound.push((name, addr));
        }
        Ok(())
    }

    /// Stops accepting and asks connections to finish (Envoy's drain).
    pub fn drain(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.drain_tx.send(true);
    }
    /// Ends the process's serving loops.
    pub fn stop(&self) {
        self.drain();
        let _ = self.stop_tx.send(true);
    }
}

/// How the proxy runs (flags of `weft-proxy`).
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    /// Overrides the bootstrap's admin address.
    pub admin_address: Option<SocketAddr>,
    /// Istio's health port (15021); `None` disables it.
    pub health_address: Option<SocketAddr>,
    /// Istio's Prometheus port (15090); `None` disables it.
    pub prometheus_address: Option<SocketAddr>,
    pub drain_timeout: Duration,
    /// Report ready as soon as the listeners are bound. The xDS mode turns
    /// this off and reports ready once routes and endpoints have arrived.
    pub ready_on_start: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 2,
            admin_address: None,
            health_address: None,
            prometheus_address: None,
            drain_timeout: Duration::from_secs(5),
            ready_on_start: true,
        }
    }
}

/// An error starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener {listener:?}: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    pub shared: Arc<Shared>,
    /// Bound address of each listener that binds a port, by name.
    pub listeners: Vec<(Arc<str>, SocketAddr)>,
    pub admin_address: Option<SocketAddr>,
    pub health_address: Option<SocketAddr>,
    pub prometheus_address: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

fn bind(addr: SocketAddr, transparent: bool) -> std::io::Result<StdListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if transparent {
        if addr.is_ipv4() {
            s.set_ip_transparent_v4(true)?;
        } else {
            s.set_ip_transparent_v6(true)?;
        }
    }
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Binds `l` once per worker; port 0 is resolved by the first bind.
fn bind_per_worker(
    l: &crate::model::listener::Listener,
    workers: usize,
) -> Result<(SocketAddr, Vec<StdListener>), StartError> {
    let mut addr = l.address;
    let mut socks = Vec::new();
    for _ in 0..workers {
        let sock = bind(addr, l.transparent).map_err(|source| StartError::Bind {
            listener: l.name.to_string(),
            address: addr,
            source,
        })?;
        addr = sock.local_addr().map_err(|source| StartError::Io {
            what: "local_addr".into(),
            source,
        })?;
        socks.push(sock);
    }
    Ok((addr, socks))
}

impl Proxy {
    /// Compiles the bootstrap, binds listeners and starts the workers.
    pub fn start(loaded: LoadedBootstrap, opts: Options) -> Result<Proxy, StartError> {
        let workers = opts.concurrency.max(1);
        let stats = Arc::new(Stats::new());
        let snapshot = Snapshot::compile(&loaded, &stats)?;
        // Bind every listener once per worker; port 0 is resolved by the first bind.
        let mut closers = std::collections::HashMap::new();
        let mut per_worker: Vec<Vec<NewListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for l in snapshot.listeners.iter().filter(|l| l.bind_to_port) {
            let (addr, socks) = bind_per_worker(l, workers)?;
            let (close, closed) = watch::channel(false);
            for (w, sock) in per_worker.iter_mut().zip(socks) {
                w.push((l.name.clone(), sock, closed.clone()));
            }
            closers.insert(l.name.clone(), close);
            bound.push((l.name.clone(), addr));
        }
        let (add_listener, mut add_rx): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let admin_addr = opts.admin_address.or(snapshot.admin);
        let bind_plain = |a: SocketAddr, what: &str| {
            StdListener::bind(a)
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .map_err(|source| StartError::Io {
                    what: format!("binding the {what} port {a}"),
                    source,
                })
        };
        let admin_sock = admin_addr.map(|a| bind_plain(a, "admin")).transpose()?;
        let health_sock = opts
            .health_address
            .map(|a| bind_plain(a, "health"))
            .transpose()?;
        let prom_sock = opts
            .prometheus_address
            .map(|a| bind_plain(a, "prometheus"))
            .transpose()?;
        let local = |s: &Option<StdListener>| s.as_ref().and_then(|s| s.local_addr().ok());
        let (admin_address, health_address, prometheus_address) =
            (local(&admin_sock), local(&health_sock), local(&prom_sock));

        let (drain_tx, drain_rx) = watch::channel(false);
        let (stop_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            stats,
            ready: AtomicBool::new(false),
            drain_tx,
            drain_rx,
            stop_tx,
            started: SystemTime::now(),
            concurrency: workers,
            log_levels: std::sync::Mutex::new("info".into()),
            bound: std::sync::Mutex::new(bound.clone()),
            add_listener,
            closers: std::sync::Mutex::new(closers),
        });
        let mut threads = Vec::new();
        for (i, socks) in per_worker.into_iter().enumerate() {
            let shared = shared.clone();
            let added = add_rx.remove(0);
            let drain_timeout = opts.drain_timeout;
            let t = std::thread::Builder::new()
                .name(format!("wrk:worker_{i}"))
                .spawn(move || worker(shared, socks, added, drain_timeout))
                .map_err(|source| StartError::Io {
                    what: "spawning a worker".into(),
                    source,
                })?;
            threads.push(t);
        }
        {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name("weft:control".into())
                .spawn(move || crate::admin::control(shared, admin_sock, health_sock, prom_sock))
                .map_err(|source| StartError::Io {
                    what: "spawning the control thread".into(),
                    source,
                })?;
            threads.push(t);
        }
        if opts.ready_on_start {
            shared.ready.store(true, Ordering::SeqCst);
        }
        release_startup_memory();
        tracing::info!(listeners = ?bound, admin = ?admin_address, workers, "weft-proxy started");
        Ok(Proxy {
            shared,
            listeners: bound,
            admin_address,
            health_address,
            prometheus_address,
            threads,
        })
    }

    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    /// Replaces the configuration; listeners bound at start keep serving
    /// (new or moved listener addresses need a restart).
    pub fn reload(&self, loaded: &LoadedBootstrap) -> Result<(), ConfigError> {
        let snap = Snapshot::compile(loaded, &self.shared.stats)?;
        self.shared.snapshot.store(Arc::new(snap));
        Ok(())
    }

    /// Drains and stops, then waits for the threads.
    pub fn shutdown(self) {
        self.shared.stop();
        self.join();
    }

    /// Waits until the proxy stops (SIGTERM, /quitquitquit).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Hands the heap pages freed after parsing and compiling back to the
/// kernel, so idle RSS reflects what the proxy keeps, not what it parsed.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks glibc's own allocator state and takes its
    // locks; it has no preconditions and does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn worker(
    shared: Arc<Shared>,
    socks: Vec<NewListener>,
    mut added: tokio::sync::mpsc::UnboundedReceiver<NewListener>,
    drain_timeout: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start a worker runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut stop = shared.stop_tx.subscribe();
        let mut accepts = tokio::task::JoinSet::new();
        let mut start =
            |(name, sock, closed): NewListener| match tokio::net::TcpListener::from_std(sock) {
                Ok(l) => {
                    accepts.spawn(accept_loop(shared.clone(), name, l, closed));
                }
                Err(e) => tracing::error!(listener = %name, "cannot register listener: {e}"),
            };
        for new in socks {
            start(new);
        }
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                Some(new) = added.recv() => start(new),
            }
        }
        accepts.abort_all();
        // Let in-flight requests finish, up to the drain timeout.
        tokio::time::sleep(drain_timeout.min(Duration::from_millis(200))).await;
    });
    rt.shutdown_timeout(drain_timeout);
}

async fn accept_loop(
    shared: Arc<Shared>,
    name: Arc<str>,
    listener: tokio::net::TcpListener,
    mut closed: watch::Receiver<bool>,
) {
    let mut drain = shared.drain_rx.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let snap = shared.snapshot.load();
                    let Some(l) = snap.listener(&name).cloned() else { continue };
                    tokio::spawn(conn::handle(shared.clone(), l, stream, peer));
                }
                Err(e) => {
                    tracing::warn!(listener = %name, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = drained(&mut drain) => {
                tracing::info!(listener = %name, "draining: stopped accepting");
                return;
            }
            _ = drained(&mut closed) => return,
        }
    }
}

/// Resolves once the drain flag is set.
pub async fn drained(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// Re-resolves STRICT_DNS clusters on their refresh interval (control thread).
pub async fn dns_refresh(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: std::collections::HashMap<String, std::time::Instant> = Default::default();
    loop {
        tick.tick().await;
        let snap = shared.snapshot.load_full();
        for (name, c) in &snap.clusters {
            if let Discovery::StrictDns {
                names,
                refresh,
                family,
            } = &c.discovery
            {
                let due = last.get(name).is_none_or(|t| t.elapsed() >= *refresh);
                if due {
                    last.insert(name.clone(), std::time::Instant::now());
                    let (names, v4) = (names.clone(), *family);
                    if let Ok(addrs) =
                        tokio::task::spawn_blocking(move || resolve(&names, v4)).await
                        && !addrs.is_empty()
                    {
                        c.set_resolved(addrs);
                    }
                }
            }
        }
    }
}

/// Blocks until SIGTERM/SIGINT or a stop request (`/quitquitquit`); on a
/// signal, drains (stops accepting, lets requests finish) for up to
/// `drain_timeout`, then stops. SIGHUP re-reads `config` and swaps it in
/// (open connections keep the version they started with; a bad file is
/// refused and the running version keeps serving).
pub fn run_until_signal(
    proxy: &Proxy,
    drain_timeout: Duration,
    config: Option<&std::path::Path>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = proxy.shared.clone();
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut stop = shared.stop_tx.subscribe();
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
                _ = hup.recv() => {
                    let Some(path) = config else { continue };
                    match crate::config::load_file(path).and_then(|l| proxy.reload(&l)) {
                        Ok(()) => tracing::info!(config = %path.display(), "SIGHUP: configuration reloaded"),
                        Err(e) => tracing::error!("SIGHUP: reload refused, the running configuration stays: {e}"),
                    }
                }
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        shared.drain();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        // Finish early once no downstream connection is left.
        while tokio::time::Instant::now() < deadline {
            let active: i64 = shared
                .snapshot
                .load()
                .listeners
                .iter()
                .map(|l| l.stats.cx_active.get())
                .sum();
            if active <= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shared.stop();
        Ok(())
    })
}
