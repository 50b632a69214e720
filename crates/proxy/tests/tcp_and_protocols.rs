//! TCP proxying with half-close and byte counters, filter-chain selection
//! by sniffed SNI (tls_inspector), HTTP/2 end to end with gRPC-style
//! trailers, h2c downstream to an HTTP/1.1 upstream, and WebSocket upgrades.

mod support;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP server that reads until EOF, then answers "<name>:" + what it read.
async fn tcp_upstream(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&got);
                let _ = s.write_all(&out).await;
            });
        }
    });
    addr
}

fn tcp_bootstrap(chains: &str, listener_filters: &str, clusters: &[String]) -> String {
    format!(
        "static_resources:\n  listeners:\n  - name: tcp\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n{listener_filters}    filter_chains:\n{chains}  clusters:\n{}",
        clusters.concat()
    )
}

fn tcp_chain(cluster: &str, chain_match: &str) -> String {
    format!(
        "    - {chain_match}filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {cluster}\n          cluster: {cluster}\n"
    )
}

async fn exchange(addr: SocketAddr, payload: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(payload).await.expect("write");
    // Half-close: the upstream only answers after it sees our FIN.
    s.shutdown().await.expect("shutdown write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_passes_half_close_and_counts_bytes() {
    let t = tcp_upstream("t").await;
    let p = proxy(&tcp_bootstrap(
        &tcp_chain("t", ""),
        "",
        &[cluster("t", &[t.port()], "")],
    ));
    let addr = p.listener_address("tcp").expect("bound");
    assert_eq!(exchange(addr, b"hello over tcp").await, "t:hello over tcp");
    let admin = p.admin_address.expect("admin");
    let (status, stats) = weft_proxy::agent::request(admin, "GET", "/stats").expect("stats");
    assert_eq!(status, 200);
    assert!(
        stats.contains("tcp.t.downstream_cx_rx_bytes_total: 14"),
        "{stats}"
    );
    assert!(
        stats.contains("tcp.t.downstream_cx_tx_bytes_total: 16"),
        "{stats}"
    );
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_inspector_selects_the_chain_by_sni() {
    let (a, b, plain) = (
        tcp_upstream("a").await,
        tcp_upstream("b").await,
        tcp_upstream("plain").await,
    );
    let chains = [
        tcp_chain("a", "filter_chain_match: { server_names: [\"a.example.com\"], transport_protocol: tls }\n      "),
        tcp_chain("b", "filter_chain_match: { server_names: [\"*.example.com\"], transport_protocol: tls }\n      "),
        tcp_chain("plain", ""),
    ]
    .concat();
    let lf = "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }\n";
    let c = [
        cluster("a", &[a.port()], ""),
        cluster("b", &[b.port()], ""),
        cluster("plain", &[plain.port()], ""),
    ];
    let p = proxy(&tcp_bootstrap(&chains, lf, &c));
    let addr = p.listener_address("tcp").expect("bound");
    let ha = client_hello("a.example.com");
    let hb = client_hello("other.example.com");
    assert!(
        exchange(addr, &ha).await.starts_with("a:"),
        "exact SNI wins"
    );
    assert!(exchange(addr, &hb).await.starts_with("b:"), "wildcard SNI");
    assert_eq!(exchange(addr, b"not tls").await, "plain:not tls");
    p.shutdown();
}

/// A minimal TLS 1.2 ClientHello with an SNI extension.
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    let mut hs = vec![3, 3];
    hs.extend_from_slice(&[1; 32]);
    hs.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    hs.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hs.extend_from_slice(&ext);
    let mut msg = vec![1];
    msg.extend_from_slice(&(hs.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&hs);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

const ALL: &str = "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: up }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_end_to_end_keeps_trailers() {
    let up = upstream("h2").await;
    let h2 = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";
    let p = proxy(&http_bootstrap(
        ALL,
        "",
        "",
        &[cluster("up", &[up.addr.port()], h2)],
    ));
    let addr = p.listener_address("http").expect("bound");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/trailers"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers survive the proxy");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"grpc-ish payload")
    );

    // The upstream saw HTTP/2 too.
    let req = http::Request::builder()
        .uri(format!("http://{addr}/echo"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let e: serde_json::Value = serde_json::from_slice(&body).expect("echo");
    assert_eq!(e["version"], "HTTP/2.0");
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_to_http1_upstream() {
    let up = upstream("h1").await;
    let p = proxy(&http_bootstrap(
        ALL,
        "",
        "",
        &[cluster("up", &[up.addr.port()], "")],
    ));
    let addr = p.listener_address("http").expect("bound");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .uri(format!("http://{addr}/via-h2c"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let e: serde_json::Value = serde_json::from_slice(&body).expect("echo");
    assert_eq!(e["version"], "HTTP/1.1");
    assert_eq!(e["path"], "/via-h2c");
    assert_eq!(e["headers"]["host"], addr.to_string());
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_relayed() {
    let up = upstream("ws").await;
    let p = proxy(&http_bootstrap(
        ALL,
        "          upgrade_configs: [{ upgrade_type: websocket }]\n",
        "",
        &[cluster("up", &[up.addr.port()], "")],
    ));
    let addr = p.listener_address("http").expect("bound");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping-frame-bytes").await.expect("write");
    let mut buf = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&buf, b"ping-frame-bytes");
    p.shutdown();
}
