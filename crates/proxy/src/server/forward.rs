//! Forwarding a routed request upstream: cluster and host choice (hash
//! policies, ORIGINAL_DST), path and host rewrites, header mutations,
//! circuit breakers, per-try and overall timeouts, retries with back-off,
//! outlier reporting, WebSocket upgrades, and Envoy's local replies and
//! response flags when no upstream response arrives.

use super::http::{Exchange, empty, full, local_reply, response_headers};
use crate::accesslog::Flags;
use crate::model::cluster::{Cluster, Discovery, Host};
use crate::model::lb::hash_bytes;
use crate::model::route::{
    ForwardAction, HashPolicy, RetryPolicy, Route, RouteTable, Target, VirtualHost,
};
use crate::upstream::UpstreamError;
use crate::{Body, BoxError};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

enum Failure {
    /// No activity within the stream idle timeout (flag SI).
    Idle,
    NoHost,
    Connect(String),
    Reset(String),
    Refused(String),
    PerTryTimeout,
}

fn hash_of(policies: &[HashPolicy], headers: &HeaderMap, pq: &str, x: &Exchange) -> Option<u64> {
    let mut acc: Option<u64> = None;
    for p in policies {
        let (h, terminal) = match p {
            HashPolicy::Header { name, terminal } => (
                headers.get(name).map(|v| hash_bytes(v.as_bytes())),
                *terminal,
            ),
            HashPolicy::Cookie { name, terminal } => {
                let v = headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == name).then_some(v)
                    });
                (v.map(|v| hash_bytes(v.as_bytes())), *terminal)
            }
            HashPolicy::SourceIp { terminal } => (
                Some(hash_bytes(x.meta.remote.ip().to_string().as_bytes())),
                *terminal,
            ),
            HashPolicy::Query { name, terminal } => {
                let q = pq.split_once('?').map(|(_, q)| q).unwrap_or("");
                let v = q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                });
                (v.map(|v| hash_bytes(v.as_bytes())), *terminal)
            }
        };
        if let Some(h) = h {
            acc = Some(match acc {
                Some(a) => a.rotate_left(1) ^ h,
                None => h,
            });
            if terminal {
                break;
            }
        }
    }
    acc
}

fn pick_host(
    cluster: &Cluster,
    x: &Exchange,
    headers: &HeaderMap,
    hash: Option<u64>,
) -> Option<Arc<Host>> {
    match cluster.discovery {
        Discovery::OriginalDst { use_http_header } => {
            let from_header = use_http_header
                .then(|| {
                    headers
                        .get("x-envoy-original-dst-host")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                })
                .flatten();
            Some(Arc::new(Host::new(
                from_header.unwrap_or(x.meta.destination),
                1,
                true,
            )))
        }
        _ => cluster.pick(hash),
    }
}

/// Picks the host of one attempt. With the previous_hosts predicate a
/// retry whose pick is a host already tried reselects (host_selection
/// attempts, at least one): the reselection skips tried hosts directly
/// (hash policies walk on along their ring or table), so one reselection
/// finds an untried host whenever the cluster has an available one; with
/// none left the first pick stands, as Envoy keeps its last pick.
fn pick_attempt_host(
    cluster: &Cluster,
    x: &Exchange,
    headers: &HeaderMap,
    hash: Option<u64>,
    policy: Option<&RetryPolicy>,
    tried: &[std::net::SocketAddr],
) -> Option<Arc<Host>> {
    let host = pick_host(cluster, x, headers, hash)?;
    let reselect = policy.is_some_and(|p| p.previous_hosts && p.host_selection_attempts > 0)
        && tried.contains(&host.address)
        && !matches!(cluster.discovery, Discovery::OriginalDst { .. });
    if reselect && let Some(other) = cluster.pick_avoiding(hash, tried) {
        return Some(other);
    }
    Some(host)
}

fn retriable_status(p: &RetryPolicy, status: u16) -> bool {
    (p.on.five_xx && status >= 500)
        || (p.on.gateway_error && matches!(status, 502..=504))
        || (p.on.retriable_status_codes && p.status_codes.contains(&status))
}

/// Envoy's gRPC retry conditions: the response (trailers-only, as gRPC
/// servers answer errors) carries one of the policy's `grpc-status` codes.
fn retriable_grpc(p: &RetryPolicy, headers: &http::HeaderMap) -> bool {
    !p.on.grpc_status.is_empty()
        && headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u8>().ok())
            .is_some_and(|code| p.on.grpc_status.contains(&code))
}

fn retriable_failure(p: &RetryPolicy, f: &Failure) -> bool {
    match f {
        Failure::Connect(_) => p.on.connect_failure || p.on.five_xx || p.on.gateway_error,
        Failure::Reset(_) => p.on.reset || p.on.five_xx || p.on.gateway_error,
        Failure::Refused(_) => p.on.refused_stream || p.on.five_xx || p.on.reset,
        Failure::PerTryTimeout => p.on.five_xx || p.on.gateway_error,
        Failure::NoHost | Failure::Idle => false,
    }
}

/// Rewrites the path per the route; returns the new path-and-query if it changed.
fn rewrite_path(action: &ForwardAction, route: &Route, pq: &str) -> Option<String> {
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let new_path = if let Some(pr) = &action.prefix_rewrite {
        let n = route.rewrite_len(path);
        let rest = &path[n..];
        format!("{pr}{rest}")
    } else if let Some((re, sub)) = &action.regex_rewrite {
        re.replace_all(path, sub.as_str()).into_owned()
    } else {
        return None;
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

pub async fn forward(
    x: &mut Exchange,
    route: &Route,
    vh: &VirtualHost,
    table: &RouteTable,
    action: &ForwardAction,
    mut parts: http::request::Parts,
    body: Body,
) -> Response<Body> {
    let (cluster, weighted) = match &action.target {
        Target::Missing(_) => {
            x.flags.set(Flags::NC);
            x.details = "cluster_not_found";
            return local_reply(action.not_found_status, "");
        }
        Target::Cluster(c) => (c.clone(), None),
        Target::Weighted(w) => {
            let e = w.pick();
            (e.cluster.clone(), Some(e))
        }
    };
    if let Some(e) = x.entry.as_mut() {
        e.upstream_cluster = Some(cluster.name.clone());
    }
    if x.istio.active() {
        x.istio.upstream(&cluster, &mut parts.headers);
    }
    let original_pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let pq = match rewrite_path(action, route, &original_pq) {
        Some(new) => {
            if let Ok(v) = HeaderValue::from_str(&original_pq) {
                parts.headers.insert("x-envoy-original-path", v);
            }
            new
        }
        None => original_pq.clone(),
    };
    if let Some(h) = &action.host_rewrite
        && let Some(orig) = parts.headers.insert(header::HOST, h.clone())
    {
        parts.headers.insert("x-envoy-original-host", orig);
    }
    let vctx = crate::model::common::ValueCtx {
        remote: x.meta.remote,
        local: x.meta.destination,
    };
    if let Some(w) = weighted {
        w.request_headers.apply_ctx(&mut parts.headers, Some(&vctx));
    }
    route
        .request_headers
        .apply_ctx(&mut parts.headers, Some(&vctx));
    vh.request_headers
        .apply_ctx(&mut parts.headers, Some(&vctx));
    table
        .request_headers
        .apply_ctx(&mut parts.headers, Some(&vctx));

    let is_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let upgrade_ok =
        is_upgrade && (action.websocket || x.hcm.websocket) && parts.version == Version::HTTP_11;
    if is_upgrade && !upgrade_ok {
        x.details = "upgrade_failed";
        let mut r = local_reply(StatusCode::FORBIDDEN, "");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    let connection_value = parts.headers.get(header::CONNECTION).cloned();
    for h in HOP_BY_HOP {
        if h == "te"
            && parts
                .headers
                .get(h)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        parts.headers.remove(h);
    }
    if upgrade_ok {
        parts.headers.insert(
            header::CONNECTION,
            connection_value.unwrap_or(HeaderValue::from_static("upgrade")),
        );
        if let Some(u) = upgrade_value {
            parts.headers.insert(header::UPGRADE, u);
        }
    }
    let per_try = action.retry.as_ref().and_then(|r| r.per_try_timeout);
    let expected = match (action.timeout, per_try) {
        (Some(t), Some(p)) => Some(t.min(p)),
        (t, p) => t.or(p),
    };
    if let Some(t) = expected
        && !parts.headers.contains_key("x-envoy-expected-rq-timeout-ms")
    {
        parts.headers.insert(
            "x-envoy-expected-rq-timeout-ms",
            HeaderValue::from(t.as_millis() as u64),
        );
    }

    let Some(_guard) = cluster.breakers.request(cluster.http.http2) else {
        cluster.stats.rq_overflow.inc();
        x.flags.set(Flags::UO);
        x.details = "overflow";
        return local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        );
    };
    let hash = if action.hash_policy.is_empty() {
        None
    } else {
        hash_of(&action.hash_policy, &parts.headers, &pq, x)
    };
    let downstream_upgrade = if upgrade_ok {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };

    // Buffer the body only when a retry might need to replay it or a
    // mirror sends a copy.
    let retry = action.retry.as_deref().filter(|r| r.num_retries > 0);
    let mirror = !action.mirrors.is_empty() && !upgrade_ok;
    let (mut streaming, buffered): (Option<Body>, Option<Bytes>) = if retry.is_some() || mirror {
        match body.collect().await {
            Ok(c) => (None, Some(c.to_bytes())),
            Err(_) => {
                x.flags.set(Flags::DC);
                x.details = "downstream_remote_disconnect";
                return local_reply(StatusCode::BAD_REQUEST, "");
            }
        }
    } else {
        (Some(body), None)
    };
    if mirror && let Some(b) = &buffered {
        super::mirror::send(
            &action.mirrors,
            &parts.method,
            &pq,
            &parts.headers,
            b,
            hash,
            action.timeout,
        );
    }

    let deadline = action.timeout.map(|t| Instant::now() + t);
    let version = if cluster.http.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let mut attempt = 0u32;
    let mut retry_guard = None;
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let upstream_start = Instant::now();
    let outcome: Result<Response<hyper::body::Incoming>, Failure> = loop {
        attempt += 1;
        let Some(host) = pick_attempt_host(&cluster, x, &parts.headers, hash, retry, &tried) else {
            break Err(Failure::NoHost);
        };
        if retry.is_some_and(|p| p.previous_hosts) {
            tried.push(host.address);
        }
        if let Some(e) = x.entry.as_mut() {
            e.upstream_host = Some(host.address);
        }
        if x.istio.active() {
            x.istio.host = Some(host.clone());
        }
        let uri: Uri = match format!("http://{}{}", host.address, pq).parse() {
            Ok(u) => u,
            Err(_) => return local_reply(StatusCode::BAD_REQUEST, ""),
        };
        let b = match (&buffered, streaming.take()) {
            (Some(bytes), _) => full(bytes.clone()),
            (None, Some(s)) => s,
            (None, None) => empty(),
        };
        let mut req = Request::new(b);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        // Without retries there is exactly one attempt: move the headers.
        *req.headers_mut() = if retry.is_some() {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        cluster.stats.rq_total.inc();
        host.begin();
        let try_timeout = match (per_try, deadline) {
            (Some(p), Some(d)) => Some(p.min(d.saturating_duration_since(Instant::now()))),
            (Some(p), None) => Some(p),
            (None, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            (None, None) => None,
        };
        let idle = action.idle_timeout.or(x.hcm.stream_idle_timeout);
        let (try_timeout, idle_bound) = match (try_timeout, idle) {
            (Some(t), Some(i)) if i < t => (Some(i), true),
            (None, Some(i)) => (Some(i), true),
            (t, _) => (t, false),
        };
        let send = cluster.client.send(host.address, req);
        let result = match try_timeout {
            Some(t) if idle_bound => match tokio::time::timeout(t, send).await {
                Ok(r) => r.map_err(|e| match e {
                    UpstreamError::Connect(m) => Failure::Connect(m),
                    UpstreamError::Reset(m) => Failure::Reset(m),
                    UpstreamError::Refused(m) => Failure::Refused(m),
                }),
                Err(_) => Err(Failure::Idle),
            },
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r.map_err(|e| match e {
                    UpstreamError::Connect(m) => Failure::Connect(m),
                    UpstreamError::Reset(m) => Failure::Reset(m),
                    UpstreamError::Refused(m) => Failure::Refused(m),
                }),
                Err(_) => Err(Failure::PerTryTimeout),
            },
            None => send.await.map_err(|e| match e {
                UpstreamError::Connect(m) => Failure::Connect(m),
                UpstreamError::Reset(m) => Failure::Reset(m),
                UpstreamError::Refused(m) => Failure::Refused(m),
            }),
        };
        host.end();
        let retriable = match &result {
            Ok(r) => {
                cluster.report(&host, Some(r.status().as_u16()));
                retry.is_some_and(|p| {
                    retriable_status(p, r.status().as_u16()) || retriable_grpc(p, r.headers())
                })
            }
            Err(f) => {
                cluster.report(&host, None);
                if matches!(f, Failure::Connect(_)) {
                    cluster.stats.cx_connect_fail.inc();
                }
                retry.is_some_and(|p| retriable_failure(p, f))
            }
        };
        let overall_left = deadline.is_none_or(|d| Instant::now() < d);
        let Some(policy) = retry.filter(|p| retriable && attempt <= p.num_retries && overall_left)
        else {
            if retriable && retry.is_some_and(|p| attempt > p.num_retries) {
                x.flags.set(Flags::URX);
            }
            if matches!(result, Err(Failure::PerTryTimeout)) && !overall_left {
                break Err(Failure::PerTryTimeout);
            }
            break result;
        };
        if retry_guard.is_none() {
            retry_guard = cluster.breakers.retry();
            if retry_guard.is_none() {
                cluster.stats.rq_overflow.inc();
                x.flags.set(Flags::UO);
                break result;
            }
        }
        cluster.stats.rq_retry.inc();
        if buffered.is_none() {
            break result;
        }
        let pause = policy.backoff(attempt);
        match deadline {
            Some(d) if Instant::now() + pause >= d => break result,
            _ => tokio::time::sleep(pause).await,
        }
    };
    drop(retry_guard);

    match outcome {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ms = upstream_start.elapsed().as_secs_f64() * 1000.0;
            cluster.stats.response(status, ms);
            let (mut rparts, rbody) = resp.into_parts();
            let upstream_upgrade = if status == 101 {
                rparts.extensions.remove::<hyper::upgrade::OnUpgrade>()
            } else {
                None
            };
            for h in HOP_BY_HOP {
                if status == 101 && (h == "connection" || h == "upgrade") {
                    continue;
                }
                rparts.headers.remove(h);
            }
            if status != 101 {
                rparts.headers.insert(
                    "x-envoy-upstream-service-time",
                    HeaderValue::from(ms as u64),
                );
            }
            let mut r = Response::from_parts(
                rparts,
                rbody
                    .map_err(|e| -> BoxError { Box::new(e) })
                    .boxed_unsync(),
            );
            *r.version_mut() = Version::HTTP_11;
            response_headers(
                &mut r,
                route,
                vh,
                table,
                weighted.map(|w| &w.response_headers),
            );
            if let (Some(down), Some(up)) = (downstream_upgrade, upstream_upgrade) {
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                x.tunnel = Some(done_rx);
                tokio::spawn(async move {
                    let mut counts = (0, 0);
                    if let (Ok(d), Ok(u)) = (down.await, up.await) {
                        let mut d = hyper_util::rt::TokioIo::new(d);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        counts = tokio::io::copy_bidirectional(&mut d, &mut u)
                            .await
                            .unwrap_or_default();
                    }
                    let _ = done_tx.send(counts);
                });
            }
            r
        }
        Err(f) => failure_reply(x, &cluster, f, deadline),
    }
}

fn failure_reply(
    x: &mut Exchange,
    cluster: &Cluster,
    f: Failure,
    deadline: Option<Instant>,
) -> Response<Body> {
    let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
    let upstream_failure = |x: &mut Exchange, m: String| {
        if let Some(e) = x.entry.as_mut() {
            e.upstream_failure = Some(m);
        }
    };
    match f {
        Failure::Idle => {
            x.flags.set(Flags::SI);
            x.details = "stream_idle_timeout";
            local_reply(StatusCode::GATEWAY_TIMEOUT, "stream timeout")
        }
        Failure::PerTryTimeout => {
            cluster.stats.rq_timeout.inc();
            x.flags.set(Flags::UT);
            x.details = if timed_out {
                "upstream_response_timeout"
            } else {
                "upstream_per_try_timeout"
            };
            local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
        }
        Failure::NoHost => {
            x.flags.set(Flags::UH);
            x.details = "no_healthy_upstream";
            local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
        }
        Failure::Connect(m) => {
            x.flags.set(Flags::UF);
            x.details = "upstream_reset_before_response_started{connection_failure}";
            upstream_failure(x, m);
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            )
        }
        Failure::Reset(m) => {
            x.flags.set(Flags::UC);
            x.details = "upstream_reset_before_response_started{connection_termination}";
            upstream_failure(x, m);
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            )
        }
        Failure::Refused(m) => {
            x.flags.set(Flags::UR);
            x.details = "upstream_reset_before_response_started{remote_refused_stream_reset}";
            upstream_failure(x, m);
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset",
            )
        }
    }
}
