//! End-to-end tests of `weft app http|tcp|load` using the real binary on
//! 127.0.0.1 ephemeral ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `weft app` server, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(WEFT)
            .arg("app")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weft app");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read announce line");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!("weft app {args:?} printed {line:?}, expected `listening on ADDR`")
            })
            .parse()
            .expect("announced address parses");
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET with `Connection: close`; returns (status, body).
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("response has a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_owned())
}

fn get_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = get(addr, path, headers);
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("body {body:?}: {e}"));
    (status, json)
}

fn run_weft(args: &[&str]) -> Output {
    let output = Command::new(WEFT).args(args).output().expect("run weft");
    assert!(
        output.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn http_app_reports_name_version_request_and_headers() {
    let app = Server::start(&[
        "http",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "reviews-v2-abc",
        "--version",
        "v2",
    ]);
    let (status, reply) = get_json(app.addr, "/reviews/1?x=y", &[("x-custom", "hello")]);
    assert_eq!(status, 200);
    assert_eq!(reply["name"], "reviews-v2-abc");
    assert_eq!(reply["version"], "v2");
    assert_eq!(reply["method"], "GET");
    assert_eq!(reply["path"], "/reviews/1");
    assert_eq!(reply["host"], "test.local");
    assert_eq!(reply["headers"]["x-custom"], "hello");
    assert_eq!(reply["downstream"], Value::Array(vec![]));

    let (status, text) = get(app.addr, "/?format=text", &[("x-custom", "hello")]);
    assert_eq!(status, 200);
    assert!(
        text.starts_with("name=reviews-v2-abc version=v2 status=200 GET / host=test.local"),
        "{text}"
    );
    assert!(text.contains("x-custom: hello"), "{text}");

    let (status, body) = get(app.addr, "/healthz", &[]);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn http_app_name_and_version_default_from_env() {
    let mut child = Command::new(WEFT)
        .args(["app", "http", "--listen", "127.0.0.1:0"])
        .env("POD_NAME", "ratings-7d9f")
        .env("VERSION", "v3")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("announce");
    let server = Server {
        addr: line["listening on ".len()..]
            .split_whitespace()
            .next()
            .expect("addr")
            .parse()
            .expect("addr parses"),
        child,
    };
    let (_, reply) = get_json(server.addr, "/", &[]);
    assert_eq!(reply["name"], "ratings-7d9f");
    assert_eq!(reply["version"], "v3");
}

#[test]
fn chained_apps_forward_trace_and_user_headers() {
    let ratings = Server::start(&[
        "http",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "ratings",
        "--version",
        "v1",
    ]);
    let reviews = Server::start(&[
        "http",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "reviews",
        "--version",
        "v2",
        "--call",
        &ratings.url("/ratings/7"),
    ]);
    let (status, reply) = get_json(
        reviews.addr,
        "/reviews",
        &[
            ("x-request-id", "req-42"),
            ("end-user", "jason"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-not-forwarded", "secret"),
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(reply["name"], "reviews");
    let calls = reply["downstream"].as_array().expect("downstream array");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["status"], 200);
    let inner = &calls[0]["body"];
    assert_eq!(inner["name"], "ratings");
    assert_eq!(inner["version"], "v1");
    assert_eq!(inner["path"], "/ratings/7");
    assert_eq!(inner["headers"]["x-request-id"], "req-42");
    assert_eq!(inner["headers"]["end-user"], "jason");
    assert_eq!(
        inner["headers"]["x-b3-traceid"],
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
    assert!(inner["headers"].get("x-not-forwarded").is_none(), "{inner}");
}

#[test]
fn failing_downstream_turns_into_bad_gateway() {
    let flaky = Server::start(&["http", "--listen", "127.0.0.1:0", "--fail-every", "1"]);
    let front = Server::start(&["http", "--listen", "127.0.0.1:0", "--call", &flaky.url("/")]);
    let (status, reply) = get_json(front.addr, "/", &[]);
    assert_eq!(status, 502);
    assert_eq!(reply["downstream"][0]["status"], 503);
}

#[test]
fn tcp_app_echoes_bytes() {
    let echo = Server::start(&["tcp", "--listen", "127.0.0.1:0"]);
    let mut stream = TcpStream::connect(echo.addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&payload).expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half close");
    let mut back = Vec::new();
    stream.read_to_end(&mut back).expect("read");
    assert_eq!(back, payload);
}

#[test]
fn load_reports_counts_statuses_and_versions() {
    let ratings = Server::start(&[
        "http",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "ratings",
        "--version",
        "v1",
    ]);
    let app = Server::start(&[
        "http",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "reviews",
        "--version",
        "v2",
        "--fail-every",
        "4",
        "--call",
        &ratings.url("/"),
    ]);
    let output = run_weft(&[
        "app",
        "load",
        "--url",
        &app.url("/"),
        "--requests",
        "40",
        "--concurrency",
        "3",
        "-H",
        "end-user: jason",
        "--json",
    ]);
    let summary: Value = serde_json::from_slice(&output.stdout).expect("summary is JSON");
    assert_eq!(summary["requests"], 40);
    // Every 4th request fails, so 10 of 40 are 503 and 30 are 200.
    assert_eq!(summary["statuses"]["200"], 30);
    assert_eq!(summary["statuses"]["503"], 10);
    assert_eq!(summary["succeeded"], 30);
    assert_eq!(summary["success_rate"], 0.75);
    assert_eq!(summary["versions"]["v2"], 40);
    assert_eq!(summary["names"]["reviews"], 40);
    assert_eq!(summary["downstream"]["ratings v1"], 30);
    // No sidecar in front of the apps here, so no hop has a peer identity.
    assert_eq!(summary["peers"]["reviews <- none"], 40);
    assert_eq!(summary["peers"]["ratings <- none"], 30);
    let p50 = summary["latency_ms"]["p50"].as_f64().expect("p50");
    let p99 = summary["latency_ms"]["p99"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");

    let text = run_weft(&["app", "load", "--url", &app.url("/"), "--requests", "5"]);
    let text = String::from_utf8(text.stdout).expect("utf8");
    assert!(text.contains("requests:     5 in"), "{text}");
    assert!(text.contains("versions:\n  v2"), "{text}");
}

#[test]
fn load_duration_is_bounded_and_unreachable_target_counts_errors() {
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let output = run_weft(&[
        "app",
        "load",
        "--url",
        &format!("http://127.0.0.1:{port}/"),
        "--duration",
        "0.5",
        "--rate",
        "20",
        "--json",
    ]);
    let summary: Value = serde_json::from_slice(&output.stdout).expect("summary is JSON");
    let requests = summary["requests"].as_u64().expect("requests");
    // At 20/s for 0.5s at most 10 requests are scheduled.
    assert!((1..=10).contains(&requests), "requests {requests}");
    assert_eq!(summary["statuses"]["error"], requests);
    assert_eq!(summary["success_rate"], 0.0);
}

#[test]
fn load_rejects_bad_flags_naming_them() {
    for (args, needle) in [
        (vec!["--url", "https://x/"], "--url"),
        (
            vec!["--url", "http://127.0.0.1:1/", "--requests", "0"],
            "--requests 0",
        ),
        (
            vec!["--url", "http://127.0.0.1:1/", "--concurrency", "0"],
            "--concurrency 0",
        ),
        (
            vec!["--url", "http://127.0.0.1:1/", "-H", "nocolon"],
            "nocolon",
        ),
    ] {
        let output = Command::new(WEFT)
            .args(["app", "load"])
            .args(&args)
            .output()
            .expect("run");
        assert!(!output.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn http_app_reports_peer_identity_from_xfcc() {
    let app = Server::start(&["http", "--listen", "127.0.0.1:0", "--name", "reviews"]);
    let (_, reply) = get_json(app.addr, "/", &[]);
    assert_eq!(reply["peer"], Value::Null);
    let xfcc = "By=spiffe://cluster.local/ns/demo/sa/reviews;Hash=ab;URI=spiffe://cluster.local/ns/demo/sa/frontend";
    let (_, reply) = get_json(app.addr, "/", &[("x-forwarded-client-cert", xfcc)]);
    assert_eq!(reply["peer"], "spiffe://cluster.local/ns/demo/sa/frontend");
    let output = run_weft(&[
        "app",
        "load",
        "--url",
        &app.url("/"),
        "--requests",
        "3",
        "-H",
        &format!("x-forwarded-client-cert: {xfcc}"),
        "--json",
    ]);
    let summary: Value = serde_json::from_slice(&output.stdout).expect("summary is JSON");
    assert_eq!(
        summary["peers"]["reviews <- spiffe://cluster.local/ns/demo/sa/frontend"],
        3
    );
}

#[tokio::test]
async fn http_app_speaks_h2c_with_prior_knowledge() {
    use http_body_util::{BodyExt, Empty};
    let app = Server::start(&[
        "http",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "h2app",
        "--version",
        "v9",
    ]);
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get(app.url("/over-h2"))
        .header("end-user", "jason")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(IO_TIMEOUT, sender.send_request(request))
        .await
        .expect("reply in time")
        .expect("h2 reply");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let reply: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(reply["name"], "h2app");
    assert_eq!(reply["version"], "v9");
    assert_eq!(reply["path"], "/over-h2");
    assert_eq!(reply["host"], app.addr.to_string());
    assert_eq!(reply["headers"]["end-user"], "jason");
}
