//! The downstream side: sends one scenario request to a proxy listener over
//! HTTP/1.1, h2c, a WebSocket upgrade, plain TCP, a TLS ClientHello or raw
//! bytes, and returns what the client saw. Owns no comparison logic.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::Net;
use crate::scenario::{Protocol, RequestSpec};
use crate::upstream::TEST_ID;

/// Upper bound for any single client exchange.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client observed.
#[derive(Debug, Clone, Default)]
pub struct ClientResult {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub trailers: Vec<(String, String)>,
    /// tcp / websocket / tls_hello: bytes read back (lossy UTF-8).
    pub echo: Option<String>,
    /// Transport-level failure (connect refused, reset, timeout).
    pub error: Option<String>,
}

/// Sends `spec` to 127.0.0.1:`port`, tagged with `test_id`.
pub async fn send(net: &Net, spec: &RequestSpec, port: u16, test_id: &str) -> ClientResult {
    let fut = async {
        match spec.protocol {
            Protocol::Http1 | Protocol::H2c => http(net, spec, port, test_id).await,
            Protocol::Websocket => websocket(net, spec, port, test_id).await,
            Protocol::Tcp => {
                let data = spec.data.clone().unwrap_or_default().into_bytes();
                let linger = Duration::from_millis(spec.linger_ms.unwrap_or(0));
                stream_exchange(net, port, &data, linger)
                    .await
                    .map(|bytes| ClientResult {
                        echo: Some(String::from_utf8_lossy(&bytes).into_owned()),
                        ..Default::default()
                    })
            }
            Protocol::TlsHello => {
                let hello = client_hello(spec.sni.as_deref(), &spec.alpn);
                // Envoy's tls_inspector drops a connection whose FIN arrives
                // while it is still inspecting, so the half-close waits a bit.
                let linger = Duration::from_millis(spec.linger_ms.unwrap_or(150));
                stream_exchange(net, port, &hello, linger)
                    .await
                    .map(|bytes| {
                        // Only the upstream's name line is comparable text.
                        let text = String::from_utf8_lossy(&bytes);
                        ClientResult {
                            echo: Some(text.lines().next().unwrap_or("").to_string()),
                            ..Default::default()
                        }
                    })
            }
            Protocol::Raw => raw(net, spec, port).await,
            Protocol::ServerFirst => server_first(net, port).await,
        }
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => ClientResult {
            error: Some(e),
            ..Default::default()
        },
        Err(_) => ClientResult {
            error: Some("client timeout".into()),
            ..Default::default()
        },
    }
}

/// An HTTP connection to the proxy.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(net: &Net, spec: &RequestSpec, port: u16) -> Result<Sender, String> {
    let stream = net.dial(port).await.map_err(|e| format!("connect: {e}"))?;
    let io = TokioIo::new(stream);
    if spec.protocol == Protocol::H2c {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

async fn http(
    net: &Net,
    spec: &RequestSpec,
    port: u16,
    test_id: &str,
) -> Result<ClientResult, String> {
    let mut sender = connect(net, spec, port).await?;
    exchange(&mut sender, spec, test_id).await
}

/// Sends one request per id, one after the other, on a single connection
/// (HTTP/1.1 keep-alive, or streams of one h2c connection).
pub async fn send_keepalive(
    net: &Net,
    spec: &RequestSpec,
    port: u16,
    ids: &[String],
) -> Vec<ClientResult> {
    let failed = |e: String| -> Vec<ClientResult> {
        ids.iter()
            .map(|_| ClientResult {
                error: Some(e.clone()),
                ..Default::default()
            })
            .collect()
    };
    let mut sender = match tokio::time::timeout(CLIENT_TIMEOUT, connect(net, spec, port)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(e),
        Err(_) => return failed("client timeout".into()),
    };
    let mut out = Vec::new();
    for id in ids {
        let r = match tokio::time::timeout(CLIENT_TIMEOUT, exchange(&mut sender, spec, id)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => ClientResult {
                error: Some(e),
                ..Default::default()
            },
            Err(_) => ClientResult {
                error: Some("client timeout".into()),
                ..Default::default()
            },
        };
        out.push(r);
    }
    out
}

async fn exchange(
    sender: &mut Sender,
    spec: &RequestSpec,
    test_id: &str,
) -> Result<ClientResult, String> {
    let body = Full::new(Bytes::from(spec.body.clone().unwrap_or_default()));
    let h2 = matches!(sender, Sender::H2(_));
    let uri = if h2 {
        format!("http://{}{}", spec.host, spec.path)
    } else {
        spec.path.clone()
    };
    let mut builder = Request::builder().method(spec.method.as_str()).uri(uri);
    if !h2 {
        builder = builder.header("host", spec.host.as_str());
    }
    builder = builder.header(TEST_ID, test_id);
    for (k, v) in &spec.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = builder
        .body(body)
        .map_err(|e| format!("building request: {e}"))?;
    let resp = match sender {
        Sender::H2(s) => s
            .send_request(req)
            .await
            .map_err(|e| format!("h2 request: {e}"))?,
        Sender::H1(s) => {
            s.ready()
                .await
                .map_err(|e| format!("h1 connection not reusable: {e}"))?;
            s.send_request(req)
                .await
                .map_err(|e| format!("h1 request: {e}"))?
        }
    };
    let status = resp.status().as_u16();
    let headers = pairs(resp.headers());
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?;
    let trailers = collected.trailers().map(pairs).unwrap_or_default();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Ok(ClientResult {
        status: Some(status),
        headers,
        body,
        trailers,
        ..Default::default()
    })
}

fn pairs(map: &hyper::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn websocket(
    net: &Net,
    spec: &RequestSpec,
    port: u16,
    test_id: &str,
) -> Result<ClientResult, String> {
    let mut s = net.dial(port).await.map_err(|e| format!("connect: {e}"))?;
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{TEST_ID}: {test_id}\r\n",
        spec.path, spec.host
    );
    for (k, v) in &spec.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before response head: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut result = ClientResult {
        status,
        headers,
        ..Default::default()
    };
    if status == Some(101) {
        let data = spec.data.clone().unwrap_or_default().into_bytes();
        s.write_all(&data)
            .await
            .map_err(|e| format!("write data: {e}"))?;
        let mut echoed = buf[end..].to_vec();
        while echoed.len() < data.len() {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read data: {e}"))?;
            if n == 0 {
                break;
            }
            echoed.extend_from_slice(&chunk[..n]);
        }
        result.echo = Some(String::from_utf8_lossy(&echoed).into_owned());
    }
    Ok(result)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes `data`, waits `linger`, half-closes, reads until the peer closes.
async fn stream_exchange(
    net: &Net,
    port: u16,
    data: &[u8],
    linger: Duration,
) -> Result<Vec<u8>, String> {
    let mut s = net.dial(port).await.map_err(|e| format!("connect: {e}"))?;
    s.write_all(data).await.map_err(|e| format!("write: {e}"))?;
    if !linger.is_zero() {
        tokio::time::sleep(linger).await;
    }
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(out)
}

async fn raw(net: &Net, spec: &RequestSpec, port: u16) -> Result<ClientResult, String> {
    let mut s = net.dial(port).await.map_err(|e| format!("connect: {e}"))?;
    s.write_all(spec.raw.clone().unwrap_or_default().as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    // The proxy must answer and close; a proxy that keeps the connection
    // open is caught by the client timeout.
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok());
    Ok(ClientResult {
        status,
        echo: Some("closed".into()),
        ..Default::default()
    })
}

/// Connects, sends nothing, reads the first line the server sends (through
/// a proxy whose protocol sniffing must give up and pass the connection on).
async fn server_first(net: &Net, port: u16) -> Result<ClientResult, String> {
    let mut s = net.dial(port).await.map_err(|e| format!("connect: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => line.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    Ok(ClientResult {
        echo: Some(text),
        ..Default::default()
    })
}

/// A minimal TLS 1.2/1.3 ClientHello carrying SNI and ALPN, enough for a
/// `tls_inspector` to classify the connection (no handshake follows).
pub fn client_hello(sni: Option<&str>, alpn: &[String]) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let mut list = vec![0u8];
        list.extend_from_slice(&(n.len() as u16).to_be_bytes());
        list.extend_from_slice(n);
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&list);
        push_ext(&mut ext, 0x0000, &body);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&list);
        push_ext(&mut ext, 0x0010, &body);
    }
    // supported_versions: TLS 1.3, 1.2
    push_ext(&mut ext, 0x002b, &[4, 0x03, 0x04, 0x03, 0x03]);
    // supported_groups: x25519
    push_ext(&mut ext, 0x000a, &[0, 2, 0x00, 0x1d]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    push_ext(&mut ext, 0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]);
    // key_share: x25519 with a fixed 32-byte key
    let mut ks = vec![0, 36, 0x00, 0x1d, 0, 32];
    ks.extend_from_slice(&[7u8; 32]);
    push_ext(&mut ext, 0x0033, &ks);

    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[1u8; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]); // cipher suites
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&hello);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn push_ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}
