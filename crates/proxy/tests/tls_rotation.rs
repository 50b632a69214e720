//! Sidecar certificates from the CA (contract 3): two weft-proxy processes
//! get their workload certificates from a CA serving Istio's
//! CreateCertificate over TLS (CA_ADDR, WEFT_TOKEN_FILE,
//! WEFT_ROOT_CERT_FILE; key generated in memory), with a short TTL
//! (SECRET_TTL=6s, rotation at half life). TLS contexts name Istio's SDS
//! secrets `default` and `ROOTCA`. A long-lived TCP stream over mTLS keeps
//! flowing across several rotations; new connections present the new
//! certificates; with the CA gone the proxies keep serving. A sidecar
//! without a certificate source fails its mTLS connections with a reason.

mod support;
mod tls_common;

use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tls_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

/// A TCP echo server on loopback.
async fn tcp_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Server sidecar config: mTLS-only TCP chain to `app`, SDS secrets.
fn server_config(inbound: SocketAddr, app: SocketAddr, log: &std::path::Path) -> String {
    bootstrap(
        vec![listener(
            "inbound",
            inbound,
            vec![json!({
                "filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": ts(downstream(common("default", "ROOTCA", true,
                    Some(json!({"prefix": "spiffe://cluster.local/"})), &[]), true)),
                "filters": [tcp("inbound", "app", log)]
            })],
        )],
        vec![cluster("app", &[(app, None)], json!({}))],
        vec![],
    )
}

/// Client sidecar config: plaintext TCP listener to the server over mTLS.
fn client_config(out: SocketAddr, inbound: SocketAddr, log: &std::path::Path) -> String {
    bootstrap(
        vec![json!({"name": "outbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": out.port()}},
            "filter_chains": [{"filters": [tcp("outbound", "server", log)]}]})],
        vec![cluster(
            "server",
            &[(inbound, None)],
            json!({"transport_socket": no_resumption(ts(upstream(
                common("default", "ROOTCA", true, Some(json!({"exact": SERVER_ID})),
                    &["istio-peer-exchange", "istio"]),
                "outbound_.9000_._.server.shop.svc.cluster.local")))}),
        )],
        vec![],
    )
}

/// Turns session resumption off (`max_session_keys: 0`), so every new
/// connection presents the client's current certificate.
fn no_resumption(mut ts: serde_json::Value) -> serde_json::Value {
    ts["typed_config"]["max_session_keys"] = json!(0);
    ts
}

/// One short echo exchange through the client sidecar.
async fn probe(out: SocketAddr) -> Result<(), String> {
    let io = async {
        let mut s = TcpStream::connect(out).await.map_err(|e| e.to_string())?;
        s.write_all(b"probe\n").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        (&buf == b"probe\n")
            .then_some(())
            .ok_or_else(|| "wrong echo".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timeout".to_owned())?
}

fn fingerprints(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains(&format!("peer={CLIENT_ID}")))
        .filter_map(|l| l.split(" fp=").nth(1))
        .map(|f| f.trim().to_owned())
        .filter(|f| f != "-")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_long_streams_and_new_connections_use_new_certificates() {
    let ca = TestCa::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = tcp_echo().await;
    let (in_port, out_port) = (free_port(), free_port());
    let inbound: SocketAddr = ([127, 0, 0, 1], in_port).into();
    let out: SocketAddr = ([127, 0, 0, 1], out_port).into();
    let (server_log, client_log) = (dir.path().join("server.log"), dir.path().join("client.log"));
    let server_env = ca.sidecar_env(dir.path(), "shop", "server", "6s");
    let client_env = ca.sidecar_env(dir.path(), "shop", "client", "6s");
    let _server = weft(
        &server_config(inbound, app, &server_log),
        &server_env,
        &[in_port],
    )
    .await;
    let _client = weft(
        &client_config(out, inbound, &client_log),
        &client_env,
        &[out_port],
    )
    .await;

    // The first certificates arrive shortly after start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = probe(out).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last.unwrap_or_else(|e| panic!("no mesh connection after start: {e}"));

    // A long-lived stream across rotations (TTL 6 s, rotation every ~3 s),
    // while short connections keep opening beside it.
    let mut long = TcpStream::connect(out).await.expect("long stream");
    let started = Instant::now();
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(10) {
        let msg = format!("message {i:06}\n");
        long.write_all(msg.as_bytes())
            .await
            .expect("long stream write");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), long.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("long stream stalled at message {i}"))
            .unwrap_or_else(|e| panic!("long stream broke at message {i}: {e}"));
        assert_eq!(buf, msg.as_bytes());
        if i.is_multiple_of(5) {
            probe(out)
                .await
                .unwrap_or_else(|e| panic!("new connection at {:?}: {e}", started.elapsed()));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(long);
    let log = wait_for_log(&server_log, |t| fingerprints(t).len() >= 3).await;
    let seen = fingerprints(&log);
    assert!(
        seen.len() >= 3,
        "expected new client certificates over 10 s with a 6 s TTL, saw {seen:?}:\n{log}"
    );
    let client_text = std::fs::read_to_string(&client_log).unwrap_or_default();
    assert!(
        !client_text.contains(" UF "),
        "no connect failure expected:\n{client_text}"
    );

    // weftd down: the current certificates keep serving.
    drop(ca);
    probe(out).await.expect("serving with the CA gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_source_mesh_connections_fail_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = tcp_echo().await;
    let (in_port, out_port) = (free_port(), free_port());
    let inbound: SocketAddr = ([127, 0, 0, 1], in_port).into();
    let out: SocketAddr = ([127, 0, 0, 1], out_port).into();
    let log = dir.path().join("client.log");
    // The upstream is a plain TCP echo: the TLS step fails before any byte.
    let _ = inbound;
    let _client = weft(&client_config(out, app, &log), &[], &[out_port]).await;
    assert!(probe(out).await.is_err());
    let text = wait_for_log(&log, |t| t.contains("UF")).await;
    assert!(
        text.contains("reason=TLS_error:|secret default is not available")
            || text.contains("reason=TLS_error:|secret ROOTCA is not available"),
        "{text}"
    );
}
