//! `tcp_proxy`: connect to a host of the chosen cluster (retrying up to
//! `max_connect_attempts`), then relay bytes both ways with half-close
//! (a FIN from one side is passed on while the other direction keeps
//! flowing), an idle timeout and byte counters. Either side may be TLS
//! (a terminating filter chain downstream, an UpstreamTlsContext upstream);
//! a failed upstream handshake is a connect failure (UF) whose reason goes
//! to `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.

use super::conn::ConnMeta;
use crate::accesslog::{Entry, Flags};
use crate::model::cluster::{Cluster, Discovery, Host, now_ms};
use crate::model::listener::TcpProxy;
use crate::model::route::Target;
use crate::tls::Stream;
use crate::upstream::UpstreamError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Picks an upstream host: the original destination for ORIGINAL_DST clusters.
pub fn pick_host(cluster: &Cluster, meta: &ConnMeta, hash: Option<u64>) -> Option<Arc<Host>> {
    match cluster.discovery {
        Discovery::OriginalDst { .. } => Some(Arc::new(Host::new(meta.destination, 1, true))),
        _ => cluster.pick(hash),
    }
}

pub async fn proxy(tp: Arc<TcpProxy>, mut down: Stream, meta: Arc<ConnMeta>) {
    let start = Instant::now();
    let mut entry = Entry::new(SystemTime::now());
    entry.downstream_remote = Some(meta.remote);
    entry.downstream_local = Some(meta.destination);
    entry.sni = meta.server_name.clone();
    entry.tls = meta.tls.clone();
    tp.stats.cx_total.inc();
    let cluster = match &tp.target {
        Target::Missing(name) => {
            tracing::debug!(cluster = %name, "tcp_proxy: cluster not found");
            return;
        }
        Target::Cluster(c) => c.clone(),
        Target::Weighted(w) => w.pick().cluster.clone(),
    };
    entry.upstream_cluster = Some(cluster.name.clone());
    let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = connect(&tp, &cluster, &meta, &mut entry).await;
    let host = result.as_ref().map(|r| &r.1);
    let istio = crate::istio_metrics::TcpObs::open(tp.istio.get(), &meta, &cluster, host);
    if let Some((up, host, _guard)) = result {
        cluster.stats.rq_total.inc();
        host.begin();
        relay(&mut down, up, tp.idle_timeout, &rx, &tx, &tp).await;
        host.end();
    }
    // Closing without a FIN of our own: unread client bytes make the kernel
    // reset the connection, as Envoy's close does after a failed connect.
    drop(down);
    entry.bytes_received = rx.load(Ordering::Relaxed);
    entry.bytes_sent = tx.load(Ordering::Relaxed);
    entry.duration_ms = start.elapsed().as_millis() as u64;
    if let Some(o) = istio {
        o.close(entry.bytes_received, entry.bytes_sent, entry.flags);
    }
    for log in &tp.access_logs {
        log.log(&entry);
    }
}

async fn connect<'c>(
    tp: &TcpProxy,
    cluster: &'c Cluster,
    meta: &ConnMeta,
    entry: &mut Entry,
) -> Option<(Stream, Arc<Host>, crate::model::cluster::BreakerGuard<'c>)> {
    let Some(guard) = cluster.breakers.request(false) else {
        cluster.stats.rq_overflow.inc();
        entry.flags.set(Flags::UO);
        return None;
    };
    for _ in 0..tp.max_connect_attempts {
        let Some(host) = pick_host(cluster, meta, None) else {
            entry.flags.set(Flags::UH);
            return None;
        };
        entry.upstream_host = Some(host.address);
        let transports = &cluster.client.transports;
        match crate::upstream::dial(host.address, cluster.connect_timeout, transports).await {
            Ok(s) => {
                entry.upstream_local = s.tcp().local_addr().ok();
                cluster.report(&host, Some(200));
                return Some((s, host, guard));
            }
            Err(
                UpstreamError::Connect(e) | UpstreamError::Reset(e) | UpstreamError::Refused(e),
            ) => {
                entry.upstream_failure = Some(e);
                cluster.report(&host, None);
            }
        }
        cluster.stats.cx_connect_fail.inc();
    }
    entry.flags.set(Flags::UF);
    entry.flags.set(Flags::URX);
    None
}

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    counter: &AtomicU64,
    stat: &prometheus_client::metrics::counter::Counter,
    last: &AtomicU64,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        stat.inc_by(n as u64);
        last.store(now_ms(), Ordering::Relaxed);
    }
    // Pass the half-close on; the other direction keeps going.
    let _ = w.shutdown().await;
}

async fn relay(
    down: &mut Stream,
    mut up: Stream,
    idle: Option<Duration>,
    rx: &AtomicU64,
    tx: &AtomicU64,
    tp: &TcpProxy,
) {
    let last = AtomicU64::new(now_ms());
    let both = async {
        match (down, &mut up) {
            // Plain sockets split without a lock.
            (Stream::Plain(d), Stream::Plain(u)) => {
                let (dr, dw) = d.split();
                let (ur, uw) = u.split();
                tokio::join!(
                    pump(dr, uw, rx, &tp.stats.rx_bytes, &last),
                    pump(ur, dw, tx, &tp.stats.tx_bytes, &last)
                );
            }
            (d, u) => {
                let (dr, dw) = tokio::io::split(d);
                let (ur, uw) = tokio::io::split(u);
                tokio::join!(
                    pump(dr, uw, rx, &tp.stats.rx_bytes, &last),
                    pump(ur, dw, tx, &tp.stats.tx_bytes, &last)
                );
            }
        }
    };
    let Some(idle) = idle else {
        both.await;
        return;
    };
    let watchdog = async {
        loop {
            let since = now_ms().saturating_sub(last.load(Ordering::Relaxed));
            let idle_ms = idle.as_millis() as u64;
            if since >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
        }
    };
    tokio::select! {
        _ = both => {}
        _ = watchdog => {}
    }
}
