//! HTTP/2 upstreams: one multiplexed connection per endpoint and worker, so
//! that `:authority` can carry the request's Host while the TCP connection
//! goes to the chosen endpoint. A connection serves at most the cluster's
//! `max_requests_per_connection` streams, then leaves the pool and closes
//! once its streams finish. Each worker's connections are its own
//! (`PerThread`): no lock is taken on the request path.

use super::per_thread::PerThread;
use super::{Transports, UpstreamError, dial, error_chain};
use crate::Body;
use crate::model::cluster::HttpSettings;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One worker's connections.
#[derive(Default)]
struct Conns {
    /// Each endpoint's connection and the streams opened on it.
    open: HashMap<SocketAddr, (http2::SendRequest<Body>, u32)>,
    /// Held while a connection to the endpoint is being opened, so that
    /// the worker's concurrent requests wait for it and share it (as Envoy
    /// multiplexes them on one connection) instead of each opening their
    /// own. Taken only when no pooled connection can take the stream.
    connecting: HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Debug)]
pub(super) struct H2Pool {
    connect_timeout: Duration,
    transports: Arc<Transports>,
    settings: HttpSettings,
    conns: PerThread<RefCell<Conns>>,
}

impl H2Pool {
    pub(super) fn new(
        connect_timeout: Duration,
        transports: Arc<Transports>,
        settings: HttpSettings,
    ) -> Self {
        H2Pool {
            connect_timeout,
            transports,
            settings,
            conns: PerThread::new(),
        }
    }

    /// A pooled connection to `addr` that may take another stream.
    fn pooled(&self, addr: SocketAddr) -> Option<http2::SendRequest<Body>> {
        let mut conns = self.conns.get().borrow_mut();
        let (s, used) = conns.open.get_mut(&addr).filter(|(s, _)| !s.is_closed())?;
        *used += 1;
        let s = s.clone();
        // At max_requests_per_connection streams the connection leaves the
        // pool; it closes once its streams finish.
        if self
            .settings
            .max_requests_per_connection
            .is_some_and(|m| *used >= m)
        {
            conns.open.remove(&addr);
        }
        Some(s)
    }

    async fn connection(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        if let Some(s) = self.pooled(addr) {
            return Ok(s);
        }
        let gate = self
            .conns
            .get()
            .borrow_mut()
            .connecting
            .entry(addr)
            .or_default()
            .clone();
        let _opening = gate.lock().await;
        if let Some(s) = self.pooled(addr) {
            return Ok(s);
        }
        let tcp = dial(addr, self.connect_timeout, &self.transports).await?;
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        if let Some(w) = self.settings.initial_stream_window {
            b.initial_stream_window_size(w);
        }
        if let Some(w) = self.settings.initial_connection_window {
            b.initial_connection_window_size(w);
        }
        let (sender, conn) = b
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(format!("{addr}: HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        if self
            .settings
            .max_requests_per_connection
            .is_none_or(|m| m > 1)
        {
            self.conns
                .get()
                .borrow_mut()
                .open
                .insert(addr, (sender.clone(), 1));
        }
        Ok(sender)
    }

    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        // :authority comes from the Host header, as Envoy sends it.
        if let Some(host) = req.headers_mut().remove(http::header::HOST)
            && let Some(pq) = req.uri().path_and_query().map(|p| p.as_str().to_owned())
            && let Ok(uri) = format!("http://{}{pq}", host.to_str().unwrap_or_default()).parse()
        {
            *req.uri_mut() = uri;
        }
        let mut sender = self.connection(addr).await?;
        sender
            .ready()
            .await
            .map_err(|e| UpstreamError::Reset(error_chain(&e)))?;
        sender.send_request(req).await.map_err(|e| {
            let text = error_chain(&e);
            let refused = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<h2::Error>())
                .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM));
            if refused {
                UpstreamError::Refused(text)
            } else {
                UpstreamError::Reset(text)
            }
        })
    }
}
