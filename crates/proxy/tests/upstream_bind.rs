//! `Cluster.upstream_bind_config`: upstream connections leave from the
//! configured source address (Istio's inbound clusters use 127.0.0.6),
//! through the HTTP/1.1 pool, the per-endpoint pool and tcp_proxy alike;
//! a bad source address is refused with the field's path. No root needed:
//! all of 127.0.0.0/8 is local on `lo`.

mod support;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIND: &str =
    "    upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 } }\n";

/// An HTTP/1.1 server on 127.0.0.1 that answers every request with the
/// IP address its connection came from.
async fn peer_reporter() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(peer.ip().to_string()),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP server on 127.0.0.1 that writes the peer's IP address and closes.
async fn tcp_peer_reporter() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, peer)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn route_to(cluster_name: &str) -> String {
    format!(
        "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: {cluster_name}, timeout: 5s }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstreams_leave_from_the_bind_address() {
    let up = peer_reporter().await;
    for (name, extra) in [
        // hyper's keep-alive pool
        ("bound", BIND.to_owned()),
        // the per-endpoint pool (also used for TLS endpoints)
        (
            "bound_limited",
            format!("{BIND}    max_requests_per_connection: 1\n"),
        ),
        // IP_FREEBIND set
        (
            "bound_freebind",
            "    upstream_bind_config: { source_address: { address: 127.0.0.6 }, freebind: true }\n"
                .to_owned(),
        ),
        ("unbound", String::new()),
    ] {
        let p = proxy(&http_bootstrap(
            &route_to(name),
            "",
            "",
            &[cluster(name, &[up.port()], &extra)],
        ));
        let addr = p.listener_address("http").expect("bound");
        for _ in 0..2 {
            let g = get(addr, "svc", "/").await;
            assert_eq!(g.status, 200, "{name}: {}", g.body);
            let want = if name == "unbound" {
                "127.0.0.1"
            } else {
                "127.0.0.6"
            };
            assert_eq!(g.body, want, "cluster {name}: the upstream saw this peer");
        }
        p.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_upstreams_leave_from_the_bind_address() {
    let up = tcp_peer_reporter().await;
    let yaml = format!(
        "static_resources:\n  listeners:\n  - name: tcp\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: up\n          cluster: up\n  clusters:\n{}",
        cluster("up", &[up.port()], BIND)
    );
    let p = proxy(&yaml);
    let addr = p.listener_address("tcp").expect("bound");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(out, "127.0.0.6");
    p.shutdown();
}

#[test]
fn a_bad_bind_address_is_refused_with_its_path() {
    for (bind, want) in [
        (
            "{ source_address: { address: not-an-ip, port_value: 0 } }",
            "upstream_bind_config.source_address.address",
        ),
        (
            "{ source_address: { address: 127.0.0.6, port_value: 4000 } }",
            "upstream_bind_config.source_address.port_value",
        ),
        ("{ freebind: true }", "upstream_bind_config.source_address"),
    ] {
        let yaml = http_bootstrap(
            &route_to("c"),
            "",
            "",
            &[cluster(
                "c",
                &[dead_port()],
                &format!("    upstream_bind_config: {bind}\n"),
            )],
        );
        let err = match weft_proxy::config::load_str(&yaml, "test.yaml") {
            Err(e) => e.to_string(),
            Ok(loaded) => {
                let opts = weft_proxy::Options {
                    concurrency: 1,
                    admin_address: None,
                    health_address: None,
                    prometheus_address: None,
                    drain_timeout: Duration::from_millis(200),
                    ready_on_start: true,
                };
                match weft_proxy::Proxy::start(loaded, opts) {
                    Err(e) => e.to_string(),
                    Ok(p) => {
                        p.shutdown();
                        panic!("{bind} was accepted")
                    }
                }
            }
        };
        assert!(err.contains(want), "{bind}: {err}");
        assert!(err.contains("clusters[0]"), "{bind}: {err}");
    }
}
