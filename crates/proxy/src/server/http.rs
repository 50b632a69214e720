//! The HTTP connection manager at run time: serves HTTP/1.1 (keep-alive),
//! h2c and HTTP/2 with hyper, and takes each request through route
//! selection, the HTTP filters (fault, local rate limit) and the route's
//! action (forward, redirect, direct response). Local replies carry Envoy's
//! status codes and response flags.
//!
//! This file owns serving and the request's way through the filters and
//! routes; request and response headers are in `headers`, and what happens
//! when a response ends (stats, access logs, Istio metrics) in `finish`.

mod finish;
mod headers;

pub use headers::{response_headers, uuid4};

use super::Shared;
use super::conn::ConnMeta;
use super::forward;
use crate::accesslog::{Entry, Flags};
use crate::model::http::{HttpFilter, HttpManager};
use crate::model::route::{Redirect, RequestView, Route, RouteActionKind, RouteTable, Target};
use crate::{Body, BoxError};
use bytes::Bytes;
use finish::finish;
use headers::prepare_headers;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

pub async fn serve(
    shared: Arc<Shared>,
    hcm: Arc<HttpManager>,
    stream: crate::tls::Stream,
    meta: Arc<ConnMeta>,
) {
    use crate::model::cluster::now_ms;
    use std::sync::atomic::AtomicUsize;
    let mut drain = shared.drain_rx.clone();
    let svc_hcm = hcm.clone();
    let meta_log = meta.clone();
    // For the connection idle timeout: requests in flight and the last activity.
    let active = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(AtomicU64::new(now_ms()));
    let (svc_active, svc_last) = (active.clone(), last.clone());
    let svc = hyper::service::service_fn(move |req| {
        let hcm = svc_hcm.clone();
        let meta = meta.clone();
        let (active, last) = (svc_active.clone(), svc_last.clone());
        active.fetch_add(1, Ordering::Relaxed);
        async move {
            let r = handle(req, hcm, meta).await;
            active.fetch_sub(1, Ordering::Relaxed);
            last.store(now_ms(), Ordering::Relaxed);
            Ok::<_, Infallible>(r)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    match hcm.codec {
        crate::model::http::Codec::Http1 => builder = builder.http1_only(),
        crate::model::http::Codec::Http2 => builder = builder.http2_only(),
        crate::model::http::Codec::Auto => {}
    }
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    {
        let mut h2 = builder.http2();
        h2.timer(TokioTimer::new());
        if let Some(n) = hcm.http2.max_concurrent_streams {
            h2.max_concurrent_streams(n);
        }
        if let Some(w) = hcm.http2.initial_stream_window {
            h2.initial_stream_window_size(w);
        }
        if let Some(w) = hcm.http2.initial_connection_window {
            h2.initial_connection_window_size(w);
        }
    }
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    if *drain.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    let idle = async {
        let Some(idle) = hcm.idle_timeout else {
            return std::future::pending().await;
        };
        let idle_ms = idle.as_millis() as u64;
        loop {
            let since = now_ms().saturating_sub(last.load(Ordering::Relaxed));
            if active.load(Ordering::Relaxed) == 0 && since >= idle_ms {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(
                idle_ms.saturating_sub(since).max(10),
            ))
            .await;
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("downstream connection: {e}");
                log_protocol_error(&hcm, &meta_log, &*e);
            }
            return;
        }
        _ = drain.changed() => conn.as_mut().graceful_shutdown(),
        _ = idle => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// hyper answered a malformed request with 400 itself; log it as Envoy does (DPE).
fn log_protocol_error(hcm: &HttpManager, meta: &ConnMeta, e: &(dyn std::error::Error + 'static)) {
    let parse = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(|h| h.is_parse() || h.is_parse_too_large());
    if !parse || hcm.access_logs.is_empty() {
        return;
    }
    hcm.stats.rq_total.inc();
    hcm.stats.response(400, 0.0);
    let mut entry = Entry::new(SystemTime::now());
    entry.status = 400;
    entry.protocol = "HTTP/1.1";
    entry.flags.set(Flags::DPE);
    entry.details = "http1.codec_error";
    entry.downstream_remote = Some(meta.remote);
    entry.downstream_local = Some(meta.destination);
    for log in &hcm.access_logs {
        log.log(&entry);
    }
}

/// Per-request state shared with the forwarding code.
pub struct Exchange {
    pub hcm: Arc<HttpManager>,
    pub meta: Arc<ConnMeta>,
    pub start: Instant,
    pub entry: Option<Entry>,
    pub flags: Flags,
    pub details: &'static str,
    pub request_id: Option<HeaderValue>,
    pub rx: Option<Arc<AtomicU64>>,
    /// Set for an upgraded (WebSocket) stream: resolves with the bytes
    /// (downstream->upstream, upstream->downstream) when the tunnel closes.
    pub tunnel: Option<tokio::sync::oneshot::Receiver<(u64, u64)>>,
    /// An allowed CORS origin and its policy: `finish` adds the headers.
    pub cors: Option<(HeaderValue, Arc<crate::model::cors::CorsPolicy>)>,
    /// Istio's standard metrics for this request (crate::istio_metrics).
    pub istio: crate::istio_metrics::HttpObs,
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new()
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed_unsync()
}

/// A reply generated by the proxy itself (Envoy's local reply).
pub fn local_reply(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(if body.is_empty() { empty() } else { full(body) });
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

async fn handle(
    req: Request<Incoming>,
    hcm: Arc<HttpManager>,
    meta: Arc<ConnMeta>,
) -> Response<Body> {
    hcm.stats.rq_total.inc();
    let (mut parts, body) = req.into_parts();
    let logging = !hcm.access_logs.is_empty();
    let mut x = Exchange {
        hcm: hcm.clone(),
        meta,
        start: Instant::now(),
        entry: None,
        flags: Flags::default(),
        details: "via_upstream",
        request_id: None,
        rx: None,
        tunnel: None,
        cors: None,
        istio: Default::default(),
    };
    // Host: HTTP/2 carries it as :authority.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, a);
    }
    prepare_headers(&hcm, &x.meta, &mut parts.headers);
    hcm.xfcc.apply(x.meta.tls.as_deref(), &mut parts.headers);
    x.request_id = parts.headers.get("x-request-id").cloned();
    x.istio = crate::istio_metrics::HttpObs::start(hcm.istio.get(), &mut parts.headers);
    let body: Body = if logging || x.istio.active() {
        let rx = Arc::new(AtomicU64::new(0));
        x.rx = Some(rx.clone());
        if logging {
            let mut e = Entry::new(SystemTime::now());
            e.method = Some(parts.method.as_str().to_owned());
            e.path = parts.uri.path_and_query().map(|p| p.as_str().to_owned());
            e.authority = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned);
            e.protocol = protocol(parts.version);
            e.downstream_remote = Some(x.meta.remote);
            e.downstream_local = Some(x.meta.destination);
            e.sni = x.meta.server_name.clone();
            e.tls = x.meta.tls.clone();
            if let Some(log) = hcm.access_logs.first() {
                e.capture_request(&log.format.req_headers, &parts.headers);
            }
            x.entry = Some(e);
        }
        body.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                rx.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            f
        })
        .map_err(|e| -> BoxError { Box::new(e) })
        .boxed_unsync()
    } else {
        body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
    };

    let resp = route_and_run(&mut x, parts, body).await;
    finish(x, resp)
}

/// HTTP/1 requests whose body we answer without reading get `connection: close`.
fn body_pending(parts: &http::request::Parts) -> bool {
    parts.version != Version::HTTP_2
        && (parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
            || parts.headers.contains_key(header::TRANSFER_ENCODING))
}

fn local(pending: bool, mut r: Response<Body>) -> Response<Body> {
    if pending {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn route_and_run(
    x: &mut Exchange,
    parts: http::request::Parts,
    body: Body,
) -> Response<Body> {
    let hcm = x.hcm.clone();
    let pending = body_pending(&parts);
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let live = hcm.rds.get().map(|slot| slot.load_full());
    let table: &RouteTable = live.as_deref().unwrap_or(&hcm.routes);
    let Some(vh) = table.virtual_host(host) else {
        return local(pending, no_route(x));
    };
    let view = RequestView {
        method: parts.method.as_str(),
        path_and_query: pq,
        headers: &parts.headers,
    };
    let Some(route) = vh.route(&view) else {
        return local(pending, no_route(x));
    };
    if let Some(e) = x.entry.as_mut() {
        e.route_name = Some(route.name.clone()).filter(|n| !n.is_empty());
        if let RouteActionKind::Forward(a) = &route.action {
            e.upstream_cluster = match &a.target {
                Target::Cluster(c) => Some(c.name.clone()),
                Target::Missing(_) | Target::Weighted(_) => None,
            };
        }
    }
    for nf in &hcm.filters {
        let f = route
            .per_filter
            .iter()
            .find(|(n, _)| *n == nf.name)
            .map(|(_, f)| f)
            .unwrap_or(&nf.filter);
        match f {
            HttpFilter::Fault(fault) => {
                if let Some((d, frac)) = &fault.delay
                    && frac.hit()
                {
                    x.flags.set(Flags::DI);
                    tokio::time::sleep(*d).await;
                }
                if let Some((status, frac)) = &fault.abort
                    && frac.hit()
                {
                    x.flags.set(Flags::FI);
                    x.details = "fault_filter_abort";
                    return local(pending, local_reply(*status, "fault filter abort"));
                }
            }
            HttpFilter::Rbac(r) => {
                let stats = match &nf.filter {
                    HttpFilter::Rbac(own) => own.stats.as_ref(),
                    _ => None,
                };
                let allowed = crate::rbac::check_request(r, stats, &x.meta, &hcm, &parts);
                if let Err(details) = allowed {
                    x.details = details;
                    let denied = local_reply(StatusCode::FORBIDDEN, "RBAC: access denied");
                    return local(pending, denied);
                }
            }
            HttpFilter::Cors(None) => {}
            HttpFilter::Cors(Some(p)) => {
                if let Some(r) = super::cors::check(x, p, &parts) {
                    return local(pending, r);
                }
            }
            HttpFilter::LocalRateLimit(rl) => {
                if rl.bucket.is_some() && rl.enabled.hit() && !rl.take() && rl.enforced.hit() {
                    hcm.stats.rate_limited.inc();
                    x.flags.set(Flags::RL);
                    x.details = "local_rate_limited";
                    let mut r = local_reply(rl.status, "local_rate_limited");
                    rl.response_headers.apply(r.headers_mut());
                    return local(pending, r);
                }
            }
        }
    }
    match &route.action {
        RouteActionKind::Direct { status, body: b } => {
            x.details = "direct_response";
            let mut r = Response::new(b.clone().map(full).unwrap_or_else(empty));
            *r.status_mut() = *status;
            if b.as_ref().is_some_and(|b| !b.is_empty()) {
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            response_headers(&mut r, route, vh, table, None);
            local(pending, r)
        }
        RouteActionKind::Redirect(rd) => {
            x.details = "direct_response";
            let mut r = redirect(rd, route, host, pq);
            response_headers(&mut r, route, vh, table, None);
            local(pending, r)
        }
        RouteActionKind::Forward(action) => {
            forward::forward(x, route, vh, table, action, parts, body).await
        }
    }
}

fn no_route(x: &mut Exchange) -> Response<Body> {
    x.flags.set(Flags::NR);
    x.details = "route_not_found";
    local_reply(StatusCode::NOT_FOUND, "")
}

fn redirect(rd: &Redirect, route: &Route, host: &str, pq: &str) -> Response<Body> {
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let (orig_host, orig_port) = match host.rsplit_once(':') {
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']')
                || host.starts_with('[') && host.contains("]:") =>
        {
            (h, Some(p))
        }
        _ => (host, None),
    };
    let new_host = rd.host.as_deref().unwrap_or(orig_host);
    let port = match (rd.port, orig_port) {
        (Some(p), _) => Some(p.to_string()),
        // A scheme change drops the original port, as Envoy does.
        (None, Some(p)) if rd.scheme.is_none() && rd.host.is_none() => Some(p.to_owned()),
        _ => None,
    };
    let port = port.filter(|p| !(scheme == "http" && p == "80" || scheme == "https" && p == "443"));
    let mut new_path = if let Some(p) = &rd.path {
        p.clone()
    } else if let Some(pr) = &rd.prefix_rewrite {
        let n = route.rewrite_len(path);
        format!("{pr}{}", &path[n..])
    } else if let Some((re, sub)) = &rd.regex_rewrite {
        re.replace_all(path, sub.as_str()).into_owned()
    } else {
        path.to_owned()
    };
    if !rd.strip_query
        && let Some(q) = query
        && !new_path.contains('?')
    {
        new_path.push('?');
        new_path.push_str(q);
    }
    let location = match port {
        Some(p) => format!("{scheme}://{new_host}:{p}{new_path}"),
        None => format!("{scheme}://{new_host}{new_path}"),
    };
    let mut r = Response::new(empty());
    *r.status_mut() = rd.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
