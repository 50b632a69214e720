//! Two pods (network namespaces of the testbed) with weft-proxy sidecars in
//! STRICT mTLS, certificates from a CA in the node namespace (the sidecar
//! certificate source of contract 3: CA_ADDR, WEFT_TOKEN_FILE,
//! WEFT_ROOT_CERT_FILE, SECRET_TTL; SDS names `default`/`ROOTCA`):
//!
//! client app -> client sidecar (127.0.0.1:15001) -> mTLS -> server pod
//! :15006 (tls-only chain, require_client_certificate) -> server app.
//!
//! Checks: the mesh call succeeds and the server app sees the client's
//! SPIFFE ID in XFCC; plaintext into the server pod is refused; requests on
//! a long-lived keep-alive connection keep working across certificate
//! rotations (6 s TTL) while fresh connections present new certificates.
//! Needs root (network namespaces); fails loudly without it.

mod tls_common;

use serde_json::json;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tls_common::*;
use weft_testbed::{Node, Pod, require_root};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

/// The server app inside `pod` on 127.0.0.1:8080: answers with the XFCC
/// header it received.
async fn app_in(pod: &Pod) {
    let std = pod
        .enter(|| std::net::TcpListener::bind("127.0.0.1:8080"))
        .expect("enter pod")
        .expect("bind app");
    std.set_nonblocking(true).expect("nonblocking");
    let l = tokio::net::TcpListener::from_std(std).expect("listener");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let xfcc = req
                            .headers()
                            .get("x-forwarded-client-cert")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!("xfcc={xfcc}"))),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// One HTTP/1.1 request on `s`; returns (status, body).
fn request(s: &mut TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: server.shop\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed after {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if body.len() >= len {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return Ok((status, body[..len].to_owned()));
        }
    }
}

/// A connection from inside `pod` to `addr`.
fn connect_in(pod: &Pod, addr: SocketAddr) -> std::io::Result<TcpStream> {
    pod.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .map_err(std::io::Error::other)?
}

fn client_config(server: SocketAddr, log: &std::path::Path) -> String {
    let mtls = |extra: serde_json::Value| {
        let mut t = ts(upstream(
            common(
                "default",
                "ROOTCA",
                true,
                Some(json!({"exact": SERVER_ID})),
                &["istio-peer-exchange", "istio", "http/1.1"],
            ),
            "outbound_.8080_._.server.shop.svc.cluster.local",
        ));
        t["typed_config"]["max_session_keys"] = json!(0);
        let mut c = json!({"transport_socket": t});
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let outbound = |name: &str, port: u16, cluster: &str| {
        json!({"name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm(name, cluster, json!({}), log)]}]})
    };
    bootstrap(
        vec![
            outbound("outbound", 15001, "server"),
            outbound("fresh", 15002, "server-fresh"),
        ],
        vec![
            cluster("server", &[(server, None)], mtls(json!({}))),
            // A new upstream connection (and handshake) per request.
            cluster(
                "server-fresh",
                &[(server, None)],
                mtls(json!({"max_requests_per_connection": 1})),
            ),
        ],
        vec![],
    )
}

fn server_config(log: &std::path::Path) -> String {
    bootstrap(
        vec![listener(
            "virtualInbound",
            ([0, 0, 0, 0], 15006).into(),
            vec![json!({
                "name": "inbound-mtls",
                "filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": ts(downstream(common("default", "ROOTCA", true,
                    Some(json!({"prefix": "spiffe://cluster.local/"})), &["h2", "http/1.1"]), true)),
                "filters": [hcm("inbound_8080", "inbound|8080||", json!({
                    "forward_client_cert_details": "APPEND_FORWARD",
                    "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true}
                }), log)]
            })],
        )],
        vec![cluster(
            "inbound|8080||",
            &[(([127, 0, 0, 1], 8080).into(), None)],
            json!({}),
        )],
        vec![],
    )
}

fn fingerprints(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains(&format!("peer={CLIENT_ID}")))
        .filter_map(|l| l.split(" fp=").nth(1))
        .map(|f| f.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_between_two_pods() {
    require_root();
    let node = Node::new().expect("node");
    let client = node.add_pod("client").expect("client pod");
    let server = node.add_pod("server").expect("server pod");
    let dir = tempfile::tempdir().expect("tempdir");

    // weftd's CA in the node namespace, reachable from the pods via the bridge.
    let gw = node.gateway();
    let ca_sock = node
        .netns()
        .enter(move || std::net::TcpListener::bind((gw, 0)))
        .expect("enter node")
        .expect("bind CA");
    let ca = TestCa::start_on(ca_sock).await;

    app_in(&server).await;
    let server_addr: SocketAddr = (server.addr(), 15006).into();
    let (server_log, client_log) = (dir.path().join("server.log"), dir.path().join("client.log"));
    let server_env = ca.sidecar_env(dir.path(), "shop", "server", "6s");
    let client_env = ca.sidecar_env(dir.path(), "shop", "client", "6s");
    let bin = env!("CARGO_BIN_EXE_weft-proxy");
    let _server_sidecar = weft_cmd(
        server.command(bin).expect("command"),
        &server_config(&server_log),
        &server_env,
        &[15006],
    )
    .await;
    let _client_sidecar = weft_cmd(
        client.command(bin).expect("command"),
        &client_config(server_addr, &client_log),
        &client_env,
        &[15001, 15002],
    )
    .await;
    let outbound: SocketAddr = ([127, 0, 0, 1], 15001).into();
    let fresh: SocketAddr = ([127, 0, 0, 1], 15002).into();

    // The mesh call (once the sidecars have their certificates).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let r = tokio::task::block_in_place(|| {
            let mut s = connect_in(&client, outbound)?;
            request(&mut s, "/hello")
        });
        match r {
            Ok((200, body)) => break (200, body),
            other if Instant::now() > deadline => {
                panic!(
                    "no mesh call: {other:?}\nclient log: {}",
                    std::fs::read_to_string(&client_log).unwrap_or_default()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!("xfcc=By={SERVER_ID};Hash=")),
        "{body}"
    );
    assert!(body.ends_with(&format!(";URI={CLIENT_ID}")), "{body}");

    // STRICT: plaintext HTTP from the client pod straight to the server
    // pod's inbound port gets no answer.
    let plain = tokio::task::block_in_place(|| {
        let mut s = connect_in(&client, server_addr)?;
        request(&mut s, "/plaintext")
    });
    assert!(plain.is_err(), "plaintext was served: {plain:?}");

    // A long-lived keep-alive connection across rotations, with fresh
    // connections beside it.
    let mut long = tokio::task::block_in_place(|| connect_in(&client, outbound)).expect("long");
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let r = tokio::task::block_in_place(|| request(&mut long, &format!("/long/{i}")));
        let (status, body) = r.unwrap_or_else(|e| panic!("keep-alive request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        let f = tokio::task::block_in_place(|| {
            let mut s = connect_in(&client, fresh)?;
            request(&mut s, "/fresh")
        });
        assert_eq!(f.map(|r| r.0).ok(), Some(200), "fresh connection {i}");
        i += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let log = wait_for_log(&server_log, |t| fingerprints(t).len() >= 3).await;
    assert!(
        fingerprints(&log).len() >= 3,
        "expected rotated client certificates over 10 s with a 6 s TTL:\n{log}"
    );
}
