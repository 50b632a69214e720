//! The control thread: Envoy's admin API (15000: `/ready`, `/server_info`, `/certs`,
//! `/config_dump`, `/clusters`, `/stats`, `/stats/prometheus`, `/logging`,
//! `/quitquitquit`, `/drain_listeners`), Istio's health port
//! (`/healthz/ready`) and Prometheus port, and STRICT_DNS refresh. It runs on
//! its own runtime so that control traffic never competes with workers.
//! When the proxy counts as ready is [`readiness`]'s.

pub mod certs;
pub mod readiness;

use crate::Body;
use crate::model::cluster::now_ms;
use crate::model::listener::ChainKind;
use crate::server::Shared;
use crate::server::http::{full, local_reply};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use readiness::ReadyGate;
use serde_json::json;
use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

/// The version string reported by `/server_info` and `weft-proxy version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Admin,
    Health,
    Prometheus,
}

pub fn control(
    shared: Arc<Shared>,
    admin: Option<StdListener>,
    health: Option<StdListener>,
    prom: Option<StdListener>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the control runtime: {e}");
            return;
        }
    };
    let gate = Arc::new(ReadyGate::default());
    rt.block_on(async move {
        let mut stop = shared.stop_tx.subscribe();
        let mut tasks = tokio::task::JoinSet::new();
        for (sock, port) in [
            (admin, Port::Admin),
            (health, Port::Health),
            (prom, Port::Prometheus),
        ] {
            if let Some(sock) = sock {
                match tokio::net::TcpListener::from_std(sock) {
                    Ok(l) => {
                        tasks.spawn(serve(shared.clone(), gate.clone(), l, port));
                    }
                    Err(e) => tracing::error!("cannot register the {port:?} port: {e}"),
                }
            }
        }
        tasks.spawn(crate::server::dns_refresh(shared.clone()));
        let _ = stop.wait_for(|s| *s).await;
        tasks.abort_all();
    });
}

async fn serve(
    shared: Arc<Shared>,
    gate: Arc<ReadyGate>,
    listener: tokio::net::TcpListener,
    port: Port,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let gate = gate.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &gate, req, port).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=UTF-8".parse().expect("static"),
    );
    r
}

fn json_reply(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_string_pretty(&v).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    r
}

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

async fn handle(
    shared: &Arc<Shared>,
    gate: &ReadyGate,
    req: Request<Incoming>,
    port: Port,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (port, path.as_str()) {
        (Port::Health, "/healthz/ready") | (Port::Admin, "/ready") => {
            let r = gate.check(shared);
            let status = if r.is_live() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, r.body())
        }
        (Port::Admin | Port::Prometheus, "/stats/prometheus") => {
            let mut r = text(StatusCode::OK, shared.stats.prometheus());
            r.headers_mut().insert(header::CONTENT_TYPE, "text/plain; version=0.0.4".parse().expect("static"));
            r
        }
        (Port::Admin, "/stats") => {
            if query(&req, "format") == Some("prometheus") {
                return text(StatusCode::OK, shared.stats.prometheus());
            }
            text(StatusCode::OK, stats_text(shared, gate))
        }
        (Port::Admin, "/server_info") => server_info(shared, gate),
        (Port::Admin, "/certs") => json_reply(certs::certs()),
        (Port::Admin, "/config_dump") => config_dump(shared),
        (Port::Admin, "/clusters") => {
            if query(&req, "format") == Some("json") {
                clusters_json(shared)
            } else {
                text(StatusCode::OK, clusters_text(shared))
            }
        }
        (Port::Admin, "/logging") => {
            if req.method() != Method::POST && req.uri().query().is_some() {
                return text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n".into());
            }
            if let Some(level) = query(&req, "level") {
                let ok = crate::logging::set_level(level);
                if let Err(e) = ok {
                    return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
                }
                *shared.log_levels.lock().expect("log levels") = level.to_owned();
            }
            let level = shared.log_levels.lock().expect("log levels").clone();
            text(StatusCode::OK, format!("active loggers:\n  weft: {level}\n"))
        }
        (Port::Admin, "/quitquitquit") => {
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n".into());
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                shared.stop();
            });
            text(StatusCode::OK, "OK\n".into())
        }
        (Port::Admin, "/drain_listeners") => {
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n".into());
            }
            shared.drain();
            text(StatusCode::OK, "OK\n".into())
        }
        (Port::Admin, "/") => text(
            StatusCode::OK,
            "admin commands are:\n  /certs\n  /clusters\n  /config_dump\n  /drain_listeners\n  /logging\n  /quitquitquit\n  /ready\n  /server_info\n  /stats\n  /stats/prometheus\n".into(),
        ),
        _ => local_reply(StatusCode::NOT_FOUND, ""),
    }
}

fn server_info(shared: &Shared, gate: &ReadyGate) -> Response<Body> {
    let snap = shared.snapshot.load();
    let uptime = shared.started.elapsed().unwrap_or_default().as_secs();
    let state = gate.check(shared).state();
    json_reply(json!({
        "version": format!("weft-proxy/{VERSION}"),
        "state": state,
        "hot_restart_version": "disabled",
        "command_line_options": { "concurrency": shared.concurrency },
        "node": { "id": snap.node_id, "cluster": snap.node_cluster },
        "uptime_current_epoch": format!("{uptime}s"),
        "uptime_all_epochs": format!("{uptime}s"),
    }))
}

fn config_dump(shared: &Shared) -> Response<Body> {
    let snap = shared.snapshot.load();
    let bootstrap: serde_json::Value = serde_json::from_str(&snap.config_json).unwrap_or_default();
    let sr = &bootstrap["staticResources"];
    let listeners: Vec<_> = sr["listeners"]
        .as_array()
        .map(|a| a.iter().map(|l| json!({ "listener": l })).collect())
        .unwrap_or_default();
    let clusters: Vec<_> = sr["clusters"]
        .as_array()
        .map(|a| a.iter().map(|c| json!({ "cluster": c })).collect())
        .unwrap_or_default();
    json_reply(json!({
        "configs": [
            { "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": bootstrap },
            { "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "static_clusters": clusters },
            { "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "static_listeners": listeners },
        ]
    }))
}

fn clusters_text(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let now = now_ms();
    let mut out = String::new();
    for name in &snap.cluster_order {
        let Some(c) = snap.clusters.get(name) else {
            continue;
        };
        let b = &c.breakers;
        let _ = writeln!(
            out,
            "{name}::default_priority::max_connections::{}",
            b.max_connections
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_pending_requests::{}",
            b.max_pending
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_requests::{}",
            b.max_requests
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_retries::{}",
            b.max_retries
        );
        let hosts = c.hosts.load();
        for (prio, level) in hosts.priorities.iter().enumerate() {
            for h in &level.hosts {
                let a = h.address;
                let health = if !h.healthy {
                    "/failed_eds_health"
                } else if h.ejected(now) {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                let _ = writeln!(out, "{name}::{a}::rq_active::{}", h.active_requests());
                let _ = writeln!(out, "{name}::{a}::health_flags::{health}");
                let _ = writeln!(out, "{name}::{a}::weight::{}", h.weight);
                let _ = writeln!(out, "{name}::{a}::priority::{prio}");
            }
        }
    }
    out
}

fn clusters_json(shared: &Shared) -> Response<Body> {
    let snap = shared.snapshot.load();
    let now = now_ms();
    let statuses: Vec<_> = snap
        .cluster_order
        .iter()
        .filter_map(|n| snap.clusters.get(n))
        .map(|c| {
            let hosts = c.hosts.load();
            let hs: Vec<_> = hosts
                .priorities
                .iter()
                .enumerate()
                .flat_map(|(p, l)| l.hosts.iter().map(move |h| (p, h)))
                .map(|(p, h)| {
                    json!({
                        "address": { "socket_address": { "address": h.address.ip().to_string(), "port_value": h.address.port() } },
                        "weight": h.weight,
                        "priority": p,
                        "health_status": { "eds_health_status": if h.healthy { "HEALTHY" } else { "UNHEALTHY" }, "failed_outlier_check": h.ejected(now) },
                    })
                })
                .collect();
            json!({ "name": &*c.name, "host_statuses": hs })
        })
        .collect();
    json_reply(json!({ "cluster_statuses": statuses }))
}

fn stats_text(shared: &Shared, gate: &ReadyGate) -> String {
    let snap = shared.snapshot.load();
    let mut out = String::new();
    for name in &snap.cluster_order {
        if let Some(c) = snap.clusters.get(name) {
            c.stats.render(name, &mut out);
        }
    }
    let mut seen = HashSet::new();
    for l in &snap.listeners {
        let _ = writeln!(
            out,
            "listener.{}.downstream_cx_total: {}",
            l.stat_name,
            l.stats.cx_total.get()
        );
        let _ = writeln!(
            out,
            "listener.{}.downstream_cx_active: {}",
            l.stat_name,
            l.stats.cx_active.get()
        );
        for chain in l.chains.iter().chain(l.default_chain.iter()) {
            match &chain.kind {
                ChainKind::Http(h) if seen.insert(format!("http.{}", h.stat_prefix)) => {
                    h.stats.render(&h.stat_prefix, &mut out)
                }
                ChainKind::Tcp(t) if seen.insert(format!("tcp.{}", t.stat_prefix)) => {
                    t.stats.render(&t.stat_prefix, &mut out)
                }
                _ => {}
            }
        }
    }
    shared.stats.render_rbac(&mut out);
    let _ = writeln!(out, "server.concurrency: {}", shared.concurrency);
    let _ = writeln!(
        out,
        "server.live: {}",
        u8::from(gate.check(shared).is_live())
    );
    let _ = writeln!(
        out,
        "server.uptime: {}",
        shared.started.elapsed().unwrap_or_default().as_secs()
    );
    out
}
