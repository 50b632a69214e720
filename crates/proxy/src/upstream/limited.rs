//! HTTP/1.1 connections that serve at most N requests (a cluster's
//! `max_requests_per_connection`): a small per-endpoint pool over hyper's
//! connection API. A connection's last request carries `Connection: close`
//! and the connection leaves the pool once that request is sent, so the
//! next request opens a new one. Clusters with TLS endpoints use it too
//! (without a limit): keep-alive pooling per endpoint over plaintext or TLS.
//! Each worker's idle connections are its own (`PerThread`): no lock is
//! taken on the request path.

use super::per_thread::PerThread;
use super::{Transports, UpstreamError, classify_hyper, error_chain};
use crate::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Idle connections kept per endpoint at most (others close when done).
const MAX_IDLE_PER_ENDPOINT: usize = 256;

struct Conn {
    sender: http1::SendRequest<Body>,
    /// Requests already sent on it.
    used: u32,
}

/// A cluster's pool: each worker's idle connections by endpoint.
pub(super) struct LimitedPool {
    conns: PerThread<RefCell<HashMap<SocketAddr, Vec<Conn>>>>,
    transports: Arc<Transports>,
}

impl std::fmt::Debug for LimitedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedPool").finish_non_exhaustive()
    }
}

impl LimitedPool {
    pub(super) fn new(transports: Arc<Transports>) -> Self {
        LimitedPool {
            conns: PerThread::new(),
            transports,
        }
    }

    /// An idle connection to `addr` that may take another request.
    fn take_idle(&self, addr: SocketAddr) -> Option<Conn> {
        let mut map = self.conns.get().borrow_mut();
        let list = map.get_mut(&addr)?;
        list.retain(|c| !c.sender.is_closed());
        let i = list.iter().position(|c| c.sender.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn put_back(&self, addr: SocketAddr, conn: Conn) {
        let mut map = self.conns.get().borrow_mut();
        let list = map.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(conn);
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let tcp = super::dial(addr, connect_timeout, &self.transports).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {}", error_chain(&e))))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Sends `req` to `addr` on a connection that has served fewer than
    /// `max` requests.
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        max: u32,
        connect_timeout: Duration,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut conn = match self.take_idle(addr) {
            Some(c) => c,
            None => Conn {
                sender: self.connect(addr, connect_timeout).await?,
                used: 0,
            },
        };
        conn.used += 1;
        let last = conn.used >= max;
        if last {
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        // hyper's connection API wants origin-form; Host stays as a header.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = http::Uri::from(pq);
        }
        let resp = conn.sender.send_request(req).await.map_err(classify_hyper);
        if !last && resp.is_ok() {
            // Reused once its response body is done (is_ready then).
            self.put_back(addr, conn);
        }
        resp
    }
}
