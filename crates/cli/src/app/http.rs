//! `weft app http`: an HTTP/1.1 and h2c server that answers with its pod
//! name, version, the request line and headers it received, and (with
//! `--call`) the replies of the downstream services it called, forwarding
//! the trace and user headers so the mesh can correlate and route the hops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use super::client::{self, HttpClient};

/// Headers copied from the incoming request onto every downstream call
/// (Envoy request id, W3C trace context, Zipkin B3, and the user header the
/// demo's VirtualService matches on).
pub const FORWARDED_HEADERS: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "end-user",
];

/// Arguments of `weft app http`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "0.0.0.0:9080")]
    listen: SocketAddr,
    /// Name reported in replies (default: $POD_NAME, else the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Version reported in replies.
    #[arg(long, env = "VERSION", default_value = "v1")]
    version: String,
    /// Downstream URL called for every request (repeatable); replies are embedded.
    #[arg(long = "call", value_parser = parse_call)]
    calls: Vec<Uri>,
    /// Answer every Nth request (counting from 1) with 503 instead (0 = never).
    #[arg(long, default_value_t = 0)]
    fail_every: u64,
    /// Wait this many milliseconds before answering.
    #[arg(long, default_value_t = 0)]
    delay: u64,
}

fn parse_call(url: &str) -> Result<Uri, String> {
    client::parse_url("--call", url)
}

struct App {
    name: String,
    version: String,
    calls: Vec<Uri>,
    fail_every: u64,
    delay: Duration,
    served: AtomicU64,
    client: HttpClient,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let name = match args.name {
        Some(name) => name,
        None => default_name(),
    };
    let app = Arc::new(App {
        name,
        version: args.version,
        calls: args.calls,
        fail_every: args.fail_every,
        delay: Duration::from_millis(args.delay),
        served: AtomicU64::new(0),
        client: client::new_client(),
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    super::announce("http", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, std::convert::Infallible>(app.handle(request).await) }
            });
            // A client hanging up mid-request is not an error worth reporting.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// $POD_NAME, else the kernel hostname, else "unknown".
fn default_name() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl App {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/healthz" {
            return text(StatusCode::OK, "ok\n".to_owned());
        }
        let count = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let as_text = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "format=text"));

        let mut headers = Map::new();
        for (name, value) in request.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), Value::String(value));
                }
            }
        }
        let host = request
            .headers()
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();

        let mut status = StatusCode::OK;
        if self.fail_every > 0 && count.is_multiple_of(self.fail_every) {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }

        let forwarded: Vec<(String, String)> = FORWARDED_HEADERS
            .iter()
            .filter_map(|name| {
                let value = request.headers().get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect();
        let mut downstream = Vec::new();
        if status == StatusCode::OK {
            for uri in &self.calls {
                let entry = match client::get(
                    &self.client,
                    uri,
                    &forwarded,
                    Duration::from_secs(15),
                )
                .await
                {
                    Ok(reply) => {
                        if reply.status.is_server_error() {
                            status = StatusCode::BAD_GATEWAY;
                        }
                        let body =
                            serde_json::from_slice::<Value>(&reply.body).unwrap_or_else(|_| {
                                Value::String(String::from_utf8_lossy(&reply.body).into_owned())
                            });
                        json!({"url": uri.to_string(), "status": reply.status.as_u16(), "body": body})
                    }
                    Err(error) => {
                        status = StatusCode::BAD_GATEWAY;
                        json!({"url": uri.to_string(), "status": 0, "error": error})
                    }
                };
                downstream.push(entry);
            }
        }

        // The caller's verified mesh identity, if the sidecar told us.
        let peer = request
            .headers()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .and_then(super::peer::peer_uri);
        let reply = json!({
            "name": self.name,
            "version": self.version,
            "status": status.as_u16(),
            "method": request.method().as_str(),
            "path": request.uri().path(),
            "host": host,
            "peer": peer,
            "headers": headers,
            "downstream": downstream,
        });
        if as_text {
            text(status, render_text(&reply, 0))
        } else {
            let mut body = serde_json::to_vec_pretty(&reply).unwrap_or_default();
            body.push(b'\n');
            Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Plain-text rendering of a reply, downstream replies indented below it.
fn render_text(reply: &Value, depth: usize) -> String {
    let pad = "  ".repeat(depth);
    let field = |k: &str| reply.get(k).and_then(Value::as_str).unwrap_or("");
    let mut out = format!(
        "{pad}name={} version={} status={} {} {} host={} peer={}\n",
        field("name"),
        field("version"),
        reply.get("status").and_then(Value::as_u64).unwrap_or(0),
        field("method"),
        field("path"),
        field("host"),
        reply.get("peer").and_then(Value::as_str).unwrap_or("none"),
    );
    if let Some(headers) = reply.get("headers").and_then(Value::as_object) {
        for (name, value) in headers {
            out.push_str(&format!(
                "{pad}  {name}: {}\n",
                value.as_str().unwrap_or("")
            ));
        }
    }
    for call in reply
        .get("downstream")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let url = call.get("url").and_then(Value::as_str).unwrap_or("");
        let status = call.get("status").and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!("{pad}-> {url} status={status}\n"));
        match call.get("body") {
            Some(body @ Value::Object(_)) => out.push_str(&render_text(body, depth + 1)),
            Some(Value::String(s)) => out.push_str(&format!("{pad}  {}\n", s.trim_end())),
            _ => {}
        }
        if let Some(error) = call.get("error").and_then(Value::as_str) {
            out.push_str(&format!("{pad}  error: {error}\n"));
        }
    }
    out
}
