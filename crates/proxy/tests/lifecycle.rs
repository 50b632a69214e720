//! Lifecycle: a configuration reload swaps routes for new connections
//! without dropping open ones, a bad reload is refused with the field path
//! while the old version keeps serving, and draining stops accepting.

mod support;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use support::*;

fn to(cluster_name: &str) -> String {
    format!(
        "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: {cluster_name} }}\n"
    )
}

/// One keep-alive HTTP/1.1 connection.
async fn connection(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn ask(sender: &mut http1::SendRequest<Full<Bytes>>) -> serde_json::Value {
    sender.ready().await.expect("connection still open");
    let req = http::Request::builder()
        .uri("/")
        .header("host", "svc")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_open_connections_and_refuses_bad_config() {
    let (ua, ub) = (upstream("a").await, upstream("b").await);
    let clusters = vec![
        cluster("a", &[ua.addr.port()], ""),
        cluster("b", &[ub.addr.port()], ""),
    ];
    let p = proxy(&http_bootstrap(&to("a"), "", "", &clusters));
    let addr = p.listener_address("http").expect("bound");
    let mut old = connection(addr).await;
    assert_eq!(ask(&mut old).await["server"], "a");

    // The listener keeps its bound port; only the port in the file changes nothing.
    let next =
        weft_proxy::config::load_str(&http_bootstrap(&to("b"), "", "", &clusters), "v2.yaml")
            .expect("v2");
    p.reload(&next).expect("reload");
    let mut new = connection(addr).await;
    assert_eq!(
        ask(&mut new).await["server"],
        "b",
        "new connections use the new routes"
    );
    assert_eq!(
        ask(&mut old).await["server"],
        "a",
        "the open connection kept working on its version"
    );

    let bad =
        weft_proxy::config::load_str(&http_bootstrap(&to("ghost"), "", "", &clusters), "v3.yaml")
            .expect("parses");
    let err = p
        .reload(&bad)
        .expect_err("unknown cluster is refused")
        .to_string();
    assert!(
        err.contains("route_config.virtual_hosts[0].routes[0].route.cluster"),
        "{err}"
    );
    let mut after = connection(addr).await;
    assert_eq!(
        ask(&mut after).await["server"],
        "b",
        "the last good version keeps serving"
    );
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_stops_accepting_and_flips_readiness() {
    let ua = upstream("a").await;
    let p = proxy(&http_bootstrap(
        &to("a"),
        "",
        "",
        &[cluster("a", &[ua.addr.port()], "")],
    ));
    let addr = p.listener_address("http").expect("bound");
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    p.shared.drain();
    let health = p.health_address.expect("health");
    let (status, _) = tokio::task::spawn_blocking(move || {
        weft_proxy::agent::request(health, "GET", "/healthz/ready")
    })
    .await
    .expect("join")
    .expect("health answers");
    assert_eq!(status, 503);
    // The accept loop closes its socket: new connections are refused.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "listener still accepting after drain");
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_listener() {
    let ua = upstream("a").await;
    let p = proxy_with(
        &http_bootstrap(&to("a"), "", "", &[cluster("a", &[ua.addr.port()], "")]),
        3,
    );
    let addr = p.listener_address("http").expect("bound");
    let mut tasks = Vec::new();
    for _ in 0..30 {
        tasks.push(tokio::spawn(async move {
            // A fresh connection each time, so SO_REUSEPORT spreads them over the workers.
            let mut c = connection(addr).await;
            ask(&mut c).await["server"].as_str().map(str::to_owned)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").as_deref(), Some("a"));
    }
    assert_eq!(ua.hits(), 30);
    let admin = p.admin_address.expect("admin");
    let (_, info) = tokio::task::spawn_blocking(move || {
        weft_proxy::agent::request(admin, "GET", "/server_info")
    })
    .await
    .expect("join")
    .expect("info");
    assert!(info.contains("\"concurrency\": 3"), "{info}");
    p.shutdown();
}
