//! The DNS proxy's sockets: UDP and TCP listeners on each address, one
//! task per query, and forwarding of non-mesh queries to the upstream
//! resolvers (UDP queries over UDP, TCP ones over TCP; upstreams tried in
//! order, each with a timeout; SERVFAIL when none answers), counted in
//! [`DnsMetrics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::answer::{Decision, Transport, answer, servfail};
use super::metrics::DnsMetrics;
use super::table::LookupTable;

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may take to send a query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest UDP datagram read.
const MAX_UDP: usize = 4096;

/// What the serving tasks share.
pub(super) struct State {
    pub(super) table: ArcSwapOption<LookupTable>,
    pub(super) upstreams: Vec<SocketAddr>,
    pub(super) metrics: Arc<DnsMetrics>,
}

impl State {
    async fn handle(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let table = self.table.load();
        match answer(query, table.as_deref(), transport) {
            Decision::Reply(b) => {
                self.metrics.request();
                Some(b)
            }
            Decision::Drop => None,
            Decision::Forward => {
                self.metrics.request();
                let start = tokio::time::Instant::now();
                let reply = self.forward(query, transport).await;
                self.metrics.upstream(start.elapsed(), reply.is_some());
                Some(match reply {
                    Some(b) => b,
                    None => servfail(query)?,
                })
            }
        }
    }

    async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        for up in &self.upstreams {
            let r = match transport {
                Transport::Udp => {
                    tokio::time::timeout(UPSTREAM_TIMEOUT, forward_udp(*up, query)).await
                }
                Transport::Tcp => {
                    tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(*up, query)).await
                }
            };
            match r {
                Ok(Ok(b)) => return Some(b),
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "DNS upstream failed"),
                Err(_) => tracing::debug!(upstream = %up, "DNS upstream timed out"),
            }
        }
        tracing::debug!("no DNS upstream answered; SERVFAIL");
        None
    }
}

async fn forward_udp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0; MAX_UDP];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Only the reply to this query (same id) counts.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too large"))?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await?;
    read_framed(&mut s).await
}

/// One length-prefixed DNS message from a TCP stream.
async fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Serves queries on `sock` until the runtime stops.
pub(super) async fn serve_udp(sock: UdpSocket, state: Arc<State>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (sock, state) = (Arc::clone(&sock), Arc::clone(&state));
        tokio::spawn(async move {
            if let Some(reply) = state.handle(&query, Transport::Udp).await
                && let Err(e) = sock.send_to(&reply, peer).await
            {
                tracing::debug!(%peer, error = %e, "DNS UDP reply failed");
            }
        });
    }
}

/// Serves DNS-over-TCP connections on `listener` until the runtime stops.
pub(super) async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            // Several queries may share a connection.
            while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await
            {
                let Some(reply) = state.handle(&query, Transport::Tcp).await else {
                    break;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    break;
                };
                let mut out = Vec::with_capacity(reply.len() + 2);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&reply);
                if let Err(e) = stream.write_all(&out).await {
                    tracing::debug!(%peer, error = %e, "DNS TCP reply failed");
                    break;
                }
            }
        });
    }
}
