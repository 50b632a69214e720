//! Upstream HTTP connections: one keep-alive pool per cluster (keyed by
//! endpoint inside), HTTP/1.1 or HTTP/2 as the cluster says, plaintext or
//! TLS per endpoint ([`Transports`]: the cluster's `transport_socket`, or
//! the first of Istio's `transport_socket_matches` that the endpoint's
//! `envoy.transport_socket_match` metadata satisfies). A failed TLS
//! handshake is a connect failure whose text is Envoy's transport failure
//! reason. A cluster's `upstream_bind_config` ([`Bind`]) binds every
//! upstream socket to its source address before connecting.
//!
//! Pools are per worker thread (`per_thread`): a worker runs one
//! current-thread runtime, so its connections are only ever driven by it,
//! and reaching them takes no lock. HTTP/2 pools live in `h2_pool`, the
//! HTTP/1.1 pools over hyper's connection API (request limits, TLS) in
//! `limited`; plain HTTP/1.1 uses hyper-util's pooling client, one per
//! worker.

use crate::Body;
use crate::model::cluster::HttpSettings;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

mod h2_pool;
mod limited;
mod per_thread;
use h2_pool::H2Pool;
use limited::LimitedPool;
use per_thread::PerThread;

/// How bytes reach an upstream endpoint.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<crate::tls::ClientTls>),
}

/// The transport of each endpoint of a cluster.
#[derive(Debug, Clone, Default)]
pub struct Transports {
    /// The cluster's `transport_socket` (and endpoints no match selects).
    pub default: Transport,
    /// Endpoints whose `transport_socket_matches` entry differs from `default`.
    pub by_endpoint: HashMap<SocketAddr, Transport>,
    /// The cluster's `upstream_bind_config`: the source of every connection.
    pub bind: Option<Bind>,
}

/// A cluster's `upstream_bind_config`: the local address (port 0: any
/// port) upstream sockets are bound to, and `IP_FREEBIND` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The cluster, named in bind errors.
    pub cluster: Arc<str>,
    pub source: std::net::IpAddr,
    /// `freebind`: None leaves the socket option alone.
    pub freebind: Option<bool>,
}

impl Bind {
    /// A socket for `addr`, bound to the source address.
    fn socket(&self, addr: SocketAddr) -> Result<tokio::net::TcpSocket, UpstreamError> {
        let fail = |what: &str, e: std::io::Error| {
            UpstreamError::Connect(format!(
                "cluster {} upstream_bind_config source {}: {what}: {e}",
                self.cluster, self.source
            ))
        };
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
            .map_err(|e| fail("socket", e))?;
        if let Some(on) = self.freebind {
            let r = if addr.is_ipv4() {
                s.set_freebind_v4(on)
            } else {
                s.set_freebind_v6(on)
            };
            r.map_err(|e| fail("IP_FREEBIND", e))?;
        }
        s.set_nonblocking(true)
            .map_err(|e| fail("nonblocking", e))?;
        s.bind(&SocketAddr::new(self.source, 0).into())
            .map_err(|e| fail("bind", e))?;
        Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
    }
}

impl Transports {
    pub fn for_endpoint(&self, addr: SocketAddr) -> &Transport {
        if self.by_endpoint.is_empty() {
            return &self.default;
        }
        self.by_endpoint.get(&addr).unwrap_or(&self.default)
    }
    /// Whether any endpoint is reached over TLS.
    pub fn any_tls(&self) -> bool {
        matches!(self.default, Transport::Tls(_))
            || self
                .by_endpoint
                .values()
                .any(|t| matches!(t, Transport::Tls(_)))
    }
}

/// Connects to `addr` (from the cluster's bind address, if any) and runs
/// the endpoint's transport (TLS handshake).
pub async fn dial(
    addr: SocketAddr,
    connect_timeout: Duration,
    transports: &Transports,
) -> Result<crate::tls::Stream, UpstreamError> {
    let transport = transports.for_endpoint(addr);
    let connect = async {
        match &transports.bind {
            Some(b) => b.socket(addr)?.connect(addr).await,
            None => TcpStream::connect(addr).await,
        }
        .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))
    };
    let tcp = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| UpstreamError::Connect(format!("connect to {addr} timed out")))??;
    let _ = tcp.set_nodelay(true);
    match transport {
        Transport::Plain => Ok(crate::tls::Stream::Plain(tcp)),
        Transport::Tls(tls) => {
            let tls = tokio::time::timeout(connect_timeout, tls.connect(tcp))
                .await
                .map_err(|_| {
                    UpstreamError::Connect(format!(
                        "TLS_error:|handshake with {addr} timed out:TLS_error_end"
                    ))
                })?
                .map_err(UpstreamError::Connect)?;
            Ok(crate::tls::Stream::Client(Box::new(tls)))
        }
    }
}

/// Why an upstream request produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failure: {0}")]
    Connect(String),
    #[error("connection reset before the response: {0}")]
    Reset(String),
    #[error("refused stream: {0}")]
    Refused(String),
}

#[derive(Clone, Debug)]
pub struct UpstreamClient {
    /// HTTP/1.1 keep-alive pools, one per worker thread, built on first use.
    h1: Arc<PerThread<H1Client>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// HTTP/2 pools (None: an HTTP/1.1 cluster).
    h2: Option<Arc<H2Pool>>,
    /// HTTP/1.1 pools when connections serve at most N requests
    /// (max_requests_per_connection); `h1` is unused then.
    limited: Option<(u32, Arc<LimitedPool>)>,
    /// Plaintext or TLS, per endpoint.
    pub transports: Arc<Transports>,
}

/// An HTTP/1.1 keep-alive client (pool keyed by endpoint).
type H1Client = Client<HttpConnector, Body>;

impl UpstreamClient {
    pub fn new(connect_timeout: Duration, http: &HttpSettings, transports: Transports) -> Self {
        let transports = Arc::new(transports);
        let h2 = http.http2.then(|| {
            Arc::new(H2Pool::new(
                connect_timeout,
                transports.clone(),
                http.clone(),
            ))
        });
        // TLS endpoints use the per-endpoint pool (unlimited without
        // max_requests_per_connection): hyper's legacy client knows no TLS
        // (nor IP_FREEBIND).
        let freebind = transports
            .bind
            .as_ref()
            .is_some_and(|b| b.freebind.is_some());
        let limit = match http.max_requests_per_connection {
            Some(m) => Some(m),
            None if transports.any_tls() || freebind => Some(u32::MAX),
            None => None,
        };
        let limited = match (http.http2, limit) {
            (false, Some(m)) => Some((m, Arc::new(LimitedPool::new(transports.clone())))),
            _ => None,
        };
        UpstreamClient {
            limited,
            h1: Arc::new(PerThread::new()),
            connect_timeout,
            idle_timeout: http.idle_timeout.unwrap_or(Duration::from_secs(3600)),
            h2,
            transports,
        }
    }

    fn h1_client(&self) -> &H1Client {
        self.h1.get_or(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(self.connect_timeout));
            connector.set_nodelay(true);
            connector.enforce_http(true);
            if let Some(b) = &self.transports.bind {
                connector.set_local_address(Some(b.source));
            }
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(self.idle_timeout)
                .pool_max_idle_per_host(usize::MAX);
            b.build(connector)
        })
    }

    /// Sends `req` (whose URI names `addr`) to the endpoint `addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        match &self.h2 {
            Some(pool) => pool.send(addr, req).await,
            None => match &self.limited {
                Some((max, pool)) => pool.send(addr, *max, self.connect_timeout, req).await,
                None => self.h1_client().request(req).await.map_err(|e| {
                    match (classify(e), &self.transports.bind) {
                        // hyper's connector bound the socket: name the bind.
                        (UpstreamError::Connect(t), Some(b)) => UpstreamError::Connect(format!(
                            "cluster {} upstream_bind_config source {}: {t}",
                            b.cluster, b.source
                        )),
                        (e, _) => e,
                    }
                }),
            },
        }
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    let text = error_chain(&e);
    if e.is_connect() {
        return UpstreamError::Connect(text);
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return UpstreamError::Refused(text);
        }
        src = s.source();
    }
    UpstreamError::Reset(text)
}

/// Classifies an error of hyper's connection API (the request was sent
/// on an established connection, so it is a reset unless refused).
fn classify_hyper(e: hyper::Error) -> UpstreamError {
    UpstreamError::Reset(error_chain(&e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
