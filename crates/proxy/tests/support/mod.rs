//! Shared pieces of the in-process integration tests: real upstream HTTP
//! servers on 127.0.0.1 (echo, status, hang, trailers, WebSocket echo), a
//! proxy started from a bootstrap string, and a small HTTP client.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running upstream test server.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

type RespBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn respond(name: Arc<str>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if path.starts_with("/hang") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code
            .split('?')
            .next()
            .unwrap_or("500")
            .parse()
            .unwrap_or(500);
        let mut r =
            Response::new(Full::new(Bytes::from(format!("status {code} from {name}"))).boxed());
        *r.status_mut() = StatusCode::from_u16(code).expect("status");
        r.headers_mut()
            .insert("x-upstream", name.parse().expect("name"));
        return r;
    }
    if path.starts_with("/trailers") {
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"grpc-ish payload"))),
            Ok(Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().expect("v"));
                t.insert("grpc-message", "ok".parse().expect("v"));
                t
            })),
        ];
        let mut r = Response::new(StreamBody::new(futures_stream(frames)).boxed());
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("v"));
        return r;
    }
    if path.starts_with("/ws") && req.headers().contains_key("upgrade") {
        let mut req = req;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().expect("v"));
        r.headers_mut()
            .insert("upgrade", "websocket".parse().expect("v"));
        return r;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
            )
        })
        .collect();
    let version = format!("{:?}", req.version());
    let method = req.method().to_string();
    let authority = req.uri().authority().map(|a| a.to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v = serde_json::json!({
        "server": &*name, "method": method, "path": path, "headers": headers,
        "version": version, "authority": authority, "body": String::from_utf8_lossy(&body),
    });
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    r.headers_mut()
        .insert("x-upstream", name.parse().expect("name"));
    r
}

fn futures_stream(
    frames: Vec<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync {
    struct It(std::collections::VecDeque<Result<Frame<Bytes>, Infallible>>);
    impl futures_core::Stream for It {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.pop_front())
        }
    }
    It(frames.into())
}

/// Starts an upstream (HTTP/1.1 and h2c) on an ephemeral port.
pub async fn upstream(name: &str) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let name: Arc<str> = name.into();
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (name, h) = (name.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(respond(name, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

/// A port with nothing listening (bound, then closed).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts weft-proxy (one worker, admin on an ephemeral port) from a bootstrap.
pub fn proxy(yaml: &str) -> weft_proxy::Proxy {
    proxy_with(yaml, 1)
}

/// Starts weft-proxy with `workers` worker threads.
pub fn proxy_with(yaml: &str, workers: usize) -> weft_proxy::Proxy {
    let loaded = weft_proxy::config::load_str(yaml, "test.yaml")
        .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    let opts = weft_proxy::Options {
        concurrency: workers,
        admin_address: Some("127.0.0.1:0".parse().expect("addr")),
        health_address: Some("127.0.0.1:0".parse().expect("addr")),
        prometheus_address: Some("127.0.0.1:0".parse().expect("addr")),
        drain_timeout: Duration::from_millis(200),
        ready_on_start: true,
    };
    weft_proxy::Proxy::start(loaded, opts).unwrap_or_else(|e| panic!("start: {e}"))
}

/// A static cluster with the given endpoints.
pub fn cluster(name: &str, ports: &[u16], extra: &str) -> String {
    let eps: String = ports
        .iter()
        .map(|p| format!("        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}\n"))
        .collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{eps}"
    )
}

/// A bootstrap with one HTTP listener (port 0) whose route_config is `routes`
/// (YAML indented for `route_config:`), extra HCM fields, HTTP filters
/// before the router, and `clusters` (each from `cluster`).
pub fn http_bootstrap(routes: &str, hcm_extra: &str, filters: &str, clusters: &[String]) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
{hcm_extra}          route_config:
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{}"#,
        clusters.concat()
    )
}

/// What a client saw.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    /// The upstream's echo of the request, as JSON.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {} {}", self.status, self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one HTTP/1.1 request (bounded by a 10 s timeout).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Got {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Got {
    send(addr, "GET", host, path, &[], "").await
}
