//! The real weft-proxy binary in the sidecar mode before any configuration:
//! its health and admin ports are up at once (as pilot-agent's and Envoy's
//! are) and answer not ready with the reason, here that weftd cannot be
//! reached at the discovery address; `weft-proxy wait` gives up with it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Status and body of `GET path` on `addr`, if anything answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

#[test]
fn health_says_why_there_is_no_configuration_yet() {
    let xds = format!("127.0.0.1:{}", free_port());
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .args(["run", "--xds-address", &xds, "--concurrency", "1"])
            .args(["--admin-address", &admin.to_string()])
            .args(["--health-address", &health.to_string()])
            .args(["--prometheus-address", "off"])
            .env_clear()
            .env("POD_NAME", "reviews-v1-abc")
            .env("POD_NAMESPACE", "bookinfo")
            .env("INSTANCE_IP", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weft-proxy"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some((503, body)) = get(health, "/healthz/ready")
            && body.contains(&xds)
        {
            break body;
        }
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "weft-proxy exited"
        );
        assert!(
            Instant::now() < deadline,
            "no not-ready reason naming {xds}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        body.starts_with(
            "PRE_INITIALIZING\nwaiting for the configuration from weftd: xDS to weftd at "
        ),
        "{body}"
    );
    let (status, admin_body) = get(admin, "/ready").expect("admin /ready");
    assert_eq!(status, 503);
    assert!(admin_body.contains(&xds), "{admin_body}");
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["wait", "--timeoutSeconds", "1", "--periodMillis", "100"])
        .args(["--url", &format!("http://{health}/healthz/ready")])
        .output()
        .expect("weft-proxy wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&xds), "{err}");
}
