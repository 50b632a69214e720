//! The end of a request: the headers the connection manager adds to every
//! response (`server`, CORS, the request id), response stats, and the
//! access log entry and Istio metrics, recorded when the response body
//! ends, fails or is dropped (a downstream reset: `DC`), or when an
//! upgraded tunnel closes.

use super::{ConnMeta, Exchange};
use crate::accesslog::{Entry, Flags};
use crate::model::http::HttpManager;
use crate::{Body, BoxError};
use bytes::Bytes;
use http::Response;
use http::header;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

pub(super) fn finish(mut x: Exchange, mut resp: Response<Body>) -> Response<Body> {
    let hcm = x.hcm.clone();
    let status = resp.status().as_u16();
    x.istio.response(resp.headers_mut());
    resp.headers_mut()
        .insert(header::SERVER, hcm.server_name.clone());
    if let Some((origin, p)) = x.cors.take() {
        crate::server::cors::mark_response(resp.headers_mut(), origin, &p);
    }
    if hcm.always_set_request_id_in_response
        && let Some(id) = &x.request_id
    {
        resp.headers_mut().insert("x-request-id", id.clone());
    }
    let ms = x.start.elapsed().as_secs_f64() * 1000.0;
    hcm.stats.response(status, ms);
    let istio = std::mem::take(&mut x.istio);
    if x.entry.is_none() && !istio.active() {
        return resp;
    }
    let mut entry = x.entry.take();
    if let Some(e) = entry.as_mut() {
        e.status = status;
        e.flags = x.flags;
        e.details = x.details;
        if let Some(log) = hcm.access_logs.first() {
            e.capture_response(&log.format.resp_headers, resp.headers());
        }
    }
    let mut fin = Box::new(Finish {
        entry,
        istio,
        meta: x.meta.clone(),
        status,
        flags: x.flags,
        grpc_status: crate::istio_metrics::grpc_status(resp.headers()),
        hcm,
        start: x.start,
        rx: x.rx.take(),
    });
    if let Some(tunnel) = x.tunnel.take() {
        // Envoy logs an upgraded stream when the tunnel ends (the client
        // closing it is a downstream termination: DC).
        tokio::spawn(async move {
            let (rx, tx) = tunnel.await.unwrap_or_default();
            fin.rx = Some(Arc::new(AtomicU64::new(rx)));
            fin.done(tx, true);
        });
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let tracked = Tracked {
        inner: body,
        sent: 0,
        fin: Some(fin),
    };
    Response::from_parts(parts, tracked.boxed_unsync())
}

/// What is recorded when a response ends: the access log entry and the
/// Istio metrics.
struct Finish {
    entry: Option<Entry>,
    istio: crate::istio_metrics::HttpObs,
    meta: Arc<ConnMeta>,
    status: u16,
    flags: Flags,
    grpc_status: Option<u16>,
    hcm: Arc<HttpManager>,
    start: Instant,
    rx: Option<Arc<AtomicU64>>,
}

impl Finish {
    fn done(self: Box<Self>, sent: u64, reset: bool) {
        let f = *self;
        let received = f.rx.map(|r| r.load(Ordering::Relaxed)).unwrap_or(0);
        let mut flags = f.flags;
        if reset {
            flags.set(Flags::DC);
        }
        if let Some(mut e) = f.entry {
            e.bytes_sent = sent;
            e.bytes_received = received;
            e.duration_ms = f.start.elapsed().as_millis() as u64;
            e.flags = flags;
            for log in &f.hcm.access_logs {
                log.log(&e);
            }
        }
        f.istio.finish(crate::istio_metrics::HttpDone {
            meta: &f.meta,
            status: f.status,
            grpc_status: f.grpc_status,
            flags,
            request_bytes: received,
            response_bytes: sent,
            duration_ms: f.start.elapsed().as_secs_f64() * 1000.0,
        });
    }
}

/// Counts response bytes and records the request when the body ends or is dropped.
struct Tracked {
    inner: Body,
    sent: u64,
    fin: Option<Box<Finish>>,
}

impl Tracked {
    fn done(&mut self, reset: bool) {
        if let Some(f) = self.fin.take() {
            f.done(self.sent, reset);
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
                if let (Some(t), Some(fin)) = (f.trailers_ref(), this.fin.as_mut())
                    && let Some(g) = crate::istio_metrics::grpc_status(t)
                {
                    fin.grpc_status = Some(g);
                }
                if this.inner.is_end_stream() {
                    this.done(false);
                }
            }
            Poll::Ready(None) => this.done(false),
            Poll::Ready(Some(Err(_))) => this.done(true),
            Poll::Pending => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let unfinished = !http_body::Body::is_end_stream(&self.inner);
        self.done(unfinished);
    }
}
