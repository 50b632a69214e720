//! Upstream test servers shared by both proxy runs of a scenario: an HTTP/1.1
//! and h2c echo server that records every request it receives, a TCP echo,
//! and dead ports. Owns nothing about proxies or comparisons.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::net::Net;
use crate::scenario::{Behavior, UpstreamSpec, free_port};

/// Header carrying the harness's per-request id through the proxy.
pub const TEST_ID: &str = "x-weft-test-id";

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub upstream: String,
    pub test_id: String,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// Which of this upstream's connections carried it (0, 1, ... in
    /// accept order; TCP upstreams count connections the same way).
    pub conn: u64,
}

/// Everything the upstreams saw, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn push(&self, seen: Seen) {
        self.0.lock().expect("recorder lock").push(seen);
    }

    /// Requests received for one test id.
    pub fn for_test(&self, test_id: &str) -> Vec<Seen> {
        self.0
            .lock()
            .expect("recorder lock")
            .iter()
            .filter(|s| s.test_id == test_id)
            .cloned()
            .collect()
    }
}

/// The running upstreams of one scenario.
pub struct Upstreams {
    pub ports: BTreeMap<String, u16>,
    pub recorder: Recorder,
    tasks: Vec<JoinHandle<()>>,
    /// Blackhole listeners and the connections that fill their queues.
    _held: Vec<(TcpListener, Vec<tokio::net::TcpStream>)>,
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts every upstream of a scenario on 127.0.0.1 (in the scenario's
/// namespace when it has one).
pub async fn start(specs: &BTreeMap<String, UpstreamSpec>, net: &Net) -> Upstreams {
    let recorder = Recorder::default();
    let mut ports = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut held = Vec::new();
    for (name, spec) in specs {
        match spec {
            UpstreamSpec::Dead => {
                ports.insert(name.clone(), free_port());
            }
            UpstreamSpec::Blackhole => {
                let (port, listener, fillers) = net.blackhole().await;
                ports.insert(name.clone(), port);
                held.push((listener, fillers));
            }
            UpstreamSpec::Greeter => {
                let l = net.listen();
                ports.insert(name.clone(), l.local_addr().expect("addr").port());
                tasks.push(tokio::spawn(greeter(l, name.clone(), recorder.clone())));
            }
            UpstreamSpec::Tcp => {
                let l = net.listen();
                ports.insert(name.clone(), l.local_addr().expect("addr").port());
                tasks.push(tokio::spawn(tcp_echo(l, name.clone(), recorder.clone())));
            }
            UpstreamSpec::Http { behavior } => {
                let l = net.listen();
                ports.insert(name.clone(), l.local_addr().expect("addr").port());
                let ctx = Arc::new(HttpCtx {
                    name: name.clone(),
                    behavior: behavior.clone(),
                    recorder: recorder.clone(),
                    counts: Mutex::new(HashMap::new()),
                });
                tasks.push(tokio::spawn(http_echo(l, ctx)));
            }
        }
    }
    Upstreams {
        ports,
        recorder,
        tasks,
        _held: held,
    }
}

async fn tcp_echo(l: TcpListener, name: String, rec: Recorder) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let name = name.clone();
        let rec = rec.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
            rec.push(Seen {
                upstream: name.clone(),
                test_id: "tcp".into(),
                method: "TCP".into(),
                path: String::new(),
                authority: String::new(),
                version: "tcp".into(),
                headers: Vec::new(),
                conn: 0,
            });
            if read.is_err() {
                return;
            }
            let mut out = format!("{name}\n").into_bytes();
            out.extend_from_slice(&buf);
            let _ = s.write_all(&out).await;
            let _ = s.shutdown().await;
        });
    }
}

async fn greeter(l: TcpListener, name: String, rec: Recorder) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        rec.push(Seen {
            upstream: name.clone(),
            test_id: "tcp".into(),
            method: "TCP".into(),
            path: String::new(),
            authority: String::new(),
            version: "tcp".into(),
            headers: Vec::new(),
            conn: 0,
        });
        let greeting = format!("{name} hello\n");
        tokio::spawn(async move {
            if s.write_all(greeting.as_bytes()).await.is_ok() {
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
            }
        });
    }
}

struct HttpCtx {
    name: String,
    behavior: Behavior,
    recorder: Recorder,
    counts: Mutex<HashMap<String, u32>>,
}

async fn http_echo(l: TcpListener, ctx: Arc<HttpCtx>) {
    for conn in 0u64.. {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, conn, ctx.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn num<T: std::str::FromStr>(req: &Request<Incoming>, name: &str) -> Option<T> {
    header(req, name).and_then(|v| v.parse().ok())
}

async fn handle(
    mut req: Request<Incoming>,
    conn: u64,
    ctx: Arc<HttpCtx>,
) -> Result<Response<Body>, std::io::Error> {
    let test_id = header(&req, TEST_ID).unwrap_or("").to_string();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| header(&req, "host").map(str::to_string))
        .unwrap_or_default();
    ctx.recorder.push(Seen {
        upstream: ctx.name.clone(),
        test_id: test_id.clone(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authority,
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        conn,
    });
    let n = {
        let mut counts = ctx.counts.lock().expect("counts lock");
        let c = counts.entry(test_id).or_insert(0);
        *c += 1;
        *c
    };
    let b = &ctx.behavior;
    let delay = num::<u64>(&req, "x-echo-delay-ms").unwrap_or(b.delay_ms);
    let hang = header(&req, "x-echo-hang").is_some() || b.hang;
    let reset = header(&req, "x-echo-reset").is_some() || b.reset;
    let fail_first = num::<u32>(&req, "x-echo-fail-first").unwrap_or(b.fail_first);
    let fail_status = num::<u16>(&req, "x-echo-fail-status")
        .or(b.fail_status)
        .unwrap_or(503);
    let ok_status = num::<u16>(&req, "x-echo-status")
        .or(b.status)
        .unwrap_or(200);
    let trailers = header(&req, "x-echo-trailers").map(str::to_string);
    let upgrade = header(&req, "upgrade")
        .map(|v| v.eq_ignore_ascii_case("websocket"))
        .unwrap_or(false);

    if hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if reset {
        return Err(std::io::Error::other("upstream told to reset"));
    }
    if upgrade {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert("x-echo-upstream", hv(&ctx.name));
        return Ok(resp);
    }
    // Drain the request body so HTTP/1 keep-alive stays usable.
    let _ = req.into_body().collect().await;
    let status = if n <= fail_first {
        fail_status
    } else {
        ok_status
    };
    let text = Bytes::from(format!("upstream {}\n", ctx.name));
    let body: Body = match trailers {
        Some(spec) => {
            let mut map = HeaderMap::new();
            for pair in spec.split(',') {
                if let Some((k, v)) = pair.split_once('=')
                    && let Ok(k) = hyper::header::HeaderName::from_bytes(k.trim().as_bytes())
                {
                    map.insert(k, hv(v.trim()));
                }
            }
            Full::new(text)
                .with_trailers(async move { Some(Ok(map)) })
                .boxed()
        }
        None => Full::new(text).boxed(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert("x-echo-upstream", hv(&ctx.name));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    resp.headers_mut()
        .insert("server", HeaderValue::from_static("weft-echo"));
    Ok(resp)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
