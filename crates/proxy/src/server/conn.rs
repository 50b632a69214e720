//! One accepted connection: recover the original destination, hand off to
//! the listener that owns it (the virtual listener's job), sniff TLS/HTTP
//! with a detection timeout, choose the filter chain, terminate TLS when
//! the chain has a `DownstreamTlsContext`, and run the chain's filter.

use super::Shared;
use crate::model::Snapshot;
use crate::model::listener::{ChainKind, ConnInfo, Listener};
use crate::sniff::{Sniffed, sniff};
use crate::tls::{Stream, TlsInfo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What is known about a downstream connection.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub remote: SocketAddr,
    /// The destination: the local address, or the original one before REDIRECT.
    pub destination: SocketAddr,
    pub server_name: Option<Arc<str>>,
    pub listener: Arc<str>,
    /// Set when the chain terminated TLS: version, ALPN and the peer's
    /// certificate identity (see [`ConnMeta::peer_principal`]).
    pub tls: Option<Arc<TlsInfo>>,
}

impl ConnMeta {
    /// The downstream peer's identity for policy and telemetry: the URI
    /// SAN of its client certificate (`spiffe://td/ns/NS/sa/SA`), as
    /// Envoy's RBAC `principal_name`/`authenticated` and Istio's
    /// `source_principal` use it. `None` for plaintext or server-only TLS.
    pub fn peer_principal(&self) -> Option<&str> {
        self.tls.as_deref().and_then(TlsInfo::peer_principal)
    }

    /// Whether the connection is mutual TLS (Istio's
    /// `connection_security_policy="mutual_tls"`, else `none`).
    pub fn is_mutual_tls(&self) -> bool {
        self.tls.as_deref().is_some_and(TlsInfo::is_mutual)
    }
}

/// The destination before iptables REDIRECT (SO_ORIGINAL_DST), if any.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr().ok()?;
    if local.is_ipv4() {
        let sa = getsockopt(stream, sockopt::OriginalDst).ok()?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Some(SocketAddr::new(ip.into(), u16::from_be(sa.sin_port)))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
        let ip = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Some(SocketAddr::new(ip.into(), u16::from_be(sa.sin6_port)))
    }
}

/// The listener that owns `dest` (exact address, then wildcard on the port).
fn owner<'a>(snap: &'a Snapshot, dest: SocketAddr, except: &str) -> Option<&'a Arc<Listener>> {
    let candidates = || snap.listeners.iter().filter(|l| &*l.name != except);
    candidates().find(|l| l.address == dest).or_else(|| {
        candidates().find(|l| l.address.port() == dest.port() && l.address.ip().is_unspecified())
    })
}

struct Detected {
    transport: &'static str,
    server_name: Option<String>,
    alpn: Vec<String>,
}

async fn detect(stream: &TcpStream, l: &Listener) -> Option<Detected> {
    let mut d = Detected {
        transport: "raw_buffer",
        server_name: None,
        alpn: Vec::new(),
    };
    if !l.needs_sniffing() {
        return Some(d);
    }
    let deadline = l.filters_timeout.map(|t| Instant::now() + t);
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let mut seen = 0;
    let mut pause = Duration::from_millis(1);
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            return l.continue_on_timeout.then_some(d);
        }
        let peek = stream.peek(&mut buf);
        let n = match remaining {
            Some(r) => match tokio::time::timeout(r, peek).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return None,
                Err(_) => return l.continue_on_timeout.then_some(d),
            },
            None => peek.await.ok()?,
        };
        if n == 0 {
            // The client closed before saying anything; let the chain see it.
            return Some(d);
        }
        match sniff(&buf[..n], l.tls_inspector, l.http_inspector) {
            Sniffed::NeedMore if n < buf.len() => {
                if n == seen {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                seen = n;
            }
            Sniffed::Tls { server_name, alpn } => {
                d.transport = "tls";
                d.server_name = server_name;
                d.alpn = alpn;
                return Some(d);
            }
            Sniffed::Http(p) => {
                d.alpn = vec![p.to_owned()];
                return Some(d);
            }
            Sniffed::NeedMore | Sniffed::Other => return Some(d),
        }
    }
}

/// Runs one downstream connection to completion.
pub async fn handle(
    shared: Arc<Shared>,
    accepted_on: Arc<Listener>,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let snap = shared.snapshot.load_full();
    let mut listener = accepted_on;
    let mut destination = local;
    if (listener.use_original_dst || listener.original_dst_filter)
        && let Some(orig) = original_dst(&stream)
    {
        destination = orig;
    }
    if listener.use_original_dst
        && let Some(l) = owner(&snap, destination, &listener.name)
    {
        listener = l.clone();
    }
    let Some(det) = detect(&stream, &listener).await else {
        return;
    };
    let info = ConnInfo {
        destination: Some(destination),
        source: Some(remote),
        transport_protocol: det.transport,
        server_name: det.server_name.as_deref(),
        application_protocols: &det.alpn,
    };
    let Some(chain) = listener.select(&info) else {
        tracing::debug!(listener = %listener.name, %destination, "no filter chain matched; closing");
        return;
    };
    listener.stats.cx_total.inc();
    listener.stats.cx_active.inc();
    let (stream, tls) = match &chain.tls {
        None => (Stream::Plain(stream), None),
        Some(ctx) => {
            // Envoy bounds the handshake by the transport socket connect
            // timeout; the listener filter timeout plays that role here.
            let limit = listener.filters_timeout.unwrap_or(Duration::from_secs(15));
            match tokio::time::timeout(limit, crate::tls::accept(ctx, stream)).await {
                Ok(Ok((s, info))) => (Stream::Server(Box::new(s)), Some(Arc::new(info))),
                Ok(Err(reason)) => {
                    tracing::debug!(listener = %listener.name, chain = %chain.name, %remote, %reason, "downstream TLS handshake failed");
                    listener.stats.cx_active.dec();
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = %listener.name, %remote, "downstream TLS handshake timed out");
                    listener.stats.cx_active.dec();
                    return;
                }
            }
        }
    };
    let meta = Arc::new(ConnMeta {
        remote,
        destination,
        server_name: det.server_name.map(Into::into),
        listener: listener.name.clone(),
        tls,
    });
    if let Err(details) = crate::rbac::check_connection(&chain.rbac, &meta) {
        crate::rbac::deny_connection(stream, &chain.kind, &meta, details).await;
        listener.stats.cx_active.dec();
        return;
    }
    match &chain.kind {
        ChainKind::Http(hcm) => super::http::serve(shared.clone(), hcm.clone(), stream, meta).await,
        ChainKind::Tcp(tp) => super::tcp::proxy(tp.clone(), stream, meta).await,
    }
    listener.stats.cx_active.dec();
}
