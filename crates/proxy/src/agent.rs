//! pilot-agent's helper commands: `wait` (block until the proxy is ready,
//! for `holdApplicationUntilProxyStarts`), `request` (call the admin API)
//! and `version`. Plain HTTP/1.1 over a loopback TCP connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad URL {0:?}: expected http://HOST:PORT/PATH")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: malformed HTTP response")]
    Response { url: String },
    #[error("timed out after {secs}s waiting for {url} to return 200 (last: {last})")]
    Timeout {
        url: String,
        secs: u64,
        last: String,
    },
}

/// One HTTP exchange; returns the status and body.
pub fn http_call(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), AgentError> {
    let url = format!("http://{host}{path}");
    let io = |source| AgentError::Io {
        url: url.clone(),
        source,
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| AgentError::Response { url: url.clone() })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AgentError::Response { url: url.clone() })?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The URL's addresses (every one its host resolves to), `HOST:PORT` and path.
fn parse_url(url: &str) -> Result<(Vec<SocketAddr>, String, String), AgentError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| AgentError::Url(url.to_owned()))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    if addrs.is_empty() {
        return Err(AgentError::Url(url.to_owned()));
    }
    Ok((addrs, hostport.to_owned(), path.to_owned()))
}

/// Polls `url` until it answers 200 or the timeout passes. Each attempt
/// tries every address the host resolves to (`localhost` may be `::1`
/// first while the health port listens on IPv4 only).
pub fn wait(url: &str, timeout: Duration, period: Duration) -> Result<(), AgentError> {
    let (addrs, host, path) = parse_url(url)?;
    let start = Instant::now();
    let mut last = String::new();
    loop {
        for addr in &addrs {
            match http_call("GET", *addr, &host, &path, Duration::from_secs(1)) {
                Ok((200, _)) => return Ok(()),
                Ok((s, b)) => {
                    last = format!("{s} {}", b.trim());
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        if start.elapsed() >= timeout {
            return Err(AgentError::Timeout {
                url: url.to_owned(),
                secs: timeout.as_secs(),
                last,
            });
        }
        std::thread::sleep(period);
    }
}

/// Calls the admin API: `request GET /stats` against `admin`.
pub fn request(admin: SocketAddr, method: &str, path: &str) -> Result<(u16, String), AgentError> {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    http_call(
        &method.to_ascii_uppercase(),
        admin,
        &admin.to_string(),
        &path,
        Duration::from_secs(10),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// Answers every request on `l` with `status` and `body`.
    fn serve(l: TcpListener, status: &'static str, body: &'static str) {
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = r.get_mut().write_all(reply.as_bytes());
            }
        });
    }

    #[test]
    fn wait_tries_every_address_of_localhost() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        serve(l, "200 OK", "LIVE\n");
        let url = format!("http://localhost:{port}/healthz/ready");
        wait(&url, Duration::from_secs(5), Duration::from_millis(50)).expect("ready");
    }

    #[test]
    fn wait_gives_up_with_the_last_reason() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        serve(
            l,
            "503 Service Unavailable",
            "PRE_INITIALIZING\nwaiting for secret default: no CA\n",
        );
        let url = format!("http://127.0.0.1:{port}/healthz/ready");
        let e = wait(&url, Duration::from_millis(300), Duration::from_millis(50)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("waiting for secret default: no CA"), "{text}");
    }
}
