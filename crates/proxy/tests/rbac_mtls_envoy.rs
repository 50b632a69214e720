//! RBAC on mTLS peer identities, weft-proxy against Envoy 1.40: the same
//! Istio-shaped server-sidecar bootstrap (a TLS chain requiring client
//! certificates, an HTTP RBAC DENY filter then an ALLOW filter on
//! `authenticated.principal_name`, as weftd translates `principals` and
//! `namespaces`; a TCP chain with a network RBAC filter) runs under Envoy
//! and under weft-proxy. A weft-proxy client sidecar calls it with several
//! SPIFFE identities (one upstream cluster per client certificate), and
//! both servers must give the same status and denial details for every
//! request of the table.

mod support;
mod tls_common;

use serde_json::json;
use std::io::{Read, Write};
use std::net::SocketAddr;
use tls_common::*;

const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";
/// Client identities by name.
const CLIENTS: &[(&str, &str)] = &[
    ("foo", "spiffe://cluster.local/ns/foo/sa/web"),
    ("foobar", "spiffe://cluster.local/ns/foobar/sa/web"),
    ("admin", "spiffe://cluster.local/ns/default/sa/admin"),
    ("bar", "spiffe://cluster.local/ns/bar/sa/web"),
    ("blocked", "spiffe://cluster.local/ns/default/sa/blocked"),
];

fn rbac(rules: serde_json::Value) -> serde_json::Value {
    json!({"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": rules}})
}

fn principal_regex(re: &str) -> serde_json::Value {
    json!({"authenticated": {"principal_name": {"safe_regex": {"regex": re}}}})
}

fn principal_exact(id: &str) -> serde_json::Value {
    json!({"authenticated": {"principal_name": {"exact": id}}})
}

fn server_config(
    pki: &Pki,
    tag: &str,
    http: SocketAddr,
    tcp_addr: SocketAddr,
    app: SocketAddr,
    echo: SocketAddr,
    log: &std::path::Path,
) -> String {
    let cert = pki.issue(&format!("server-{tag}"), SERVER_ID);
    let tls = || {
        ts(downstream(
            common(
                "server-cert",
                "mesh-root",
                false,
                Some(json!({"prefix": "spiffe://cluster.local/"})),
                &["http/1.1"],
            ),
            true,
        ))
    };
    let mut hcm = hcm("inbound", "app", json!({}), log);
    hcm["typed_config"]["access_log"][0]["typed_config"]["log_format"] = json!({"text_format_source": {
        "inline_string": "%REQ(X-CASE)%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%|%DOWNSTREAM_PEER_URI_SAN%\n"}});
    hcm["typed_config"]["http_filters"] = json!([
        rbac(json!({"action": "DENY", "policies": {
            "ns[default]-policy[deny-blocked]-rule[0]": {
                "permissions": [{"any": true}],
                "principals": [principal_exact("spiffe://cluster.local/ns/default/sa/blocked")]}}})),
        rbac(json!({"action": "ALLOW", "policies": {
            "ns[default]-policy[from-foo]-rule[0]": {
                "permissions": [{"any": true}],
                "principals": [principal_regex(".*/ns/foo/.*")]},
            "ns[default]-policy[admin]-rule[0]": {
                "permissions": [{"any": true}],
                "principals": [{"or_ids": {"ids": [principal_exact("spiffe://cluster.local/ns/default/sa/admin")]}}]},
            "ns[default]-policy[public]-rule[0]": {
                "permissions": [{"and_rules": {"rules": [
                    {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                    {"url_path": {"path": {"prefix": "/public"}}}]}}],
                "principals": [{"authenticated": {}}]}}})),
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    ]);
    let tcp_rbac = json!({"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "stat_prefix": "tcp.",
        "rules": {"action": "ALLOW", "policies": {"ns[default]-policy[tcp-from-foo]-rule[0]": {
            "permissions": [{"any": true}],
            "principals": [principal_regex(".*/ns/foo/.*")]}}}}});
    bootstrap(
        vec![
            listener(
                "inbound",
                http,
                vec![json!({"filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": tls(), "filters": [hcm]})],
            ),
            listener(
                "inbound_tcp",
                tcp_addr,
                vec![json!({"filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": tls(), "filters": [tcp_rbac, tcp("inbound_tcp", "echo", &log.with_extension("tcp"))]})],
            ),
        ],
        vec![
            cluster("app", &[(app, None)], json!({})),
            cluster("echo", &[(echo, None)], json!({})),
        ],
        vec![
            cert_secret("server-cert", &cert),
            root_secret("mesh-root", &pki.root()),
        ],
    )
}

/// The client sidecar: `x-as: NAME` picks the cluster that presents NAME's
/// certificate; TCP listener `tcp-NAME` does the same for TCP.
fn client_config(
    pki: &Pki,
    tag: &str,
    out: SocketAddr,
    tcp_out: &[(String, SocketAddr)],
    server: SocketAddr,
    server_tcp: SocketAddr,
    log: &std::path::Path,
) -> String {
    let routes: Vec<serde_json::Value> = CLIENTS
        .iter()
        .map(|(n, _)| json!({"match": {"prefix": "/", "headers": [{"name": "x-as", "string_match": {"exact": n}}]},
            "route": {"cluster": format!("as-{n}"), "timeout": "10s"}}))
        .collect();
    let mut h = hcm("outbound", "unused", json!({}), log);
    h["typed_config"]["route_config"] =
        json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]});
    let mut listeners = vec![json!({"name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": out.port()}},
        "filter_chains": [{"filters": [h]}]})];
    let mut clusters = Vec::new();
    let mut secrets = vec![root_secret("mesh-root", &pki.root())];
    for (n, id) in CLIENTS {
        let c = pki.issue(&format!("client-{n}-{tag}"), id);
        secrets.push(cert_secret(&format!("{n}-cert"), &c));
        let up = |alpn: &[&str]| {
            json!({"transport_socket": ts(upstream(
                common(&format!("{n}-cert"), "mesh-root", false, Some(json!({"exact": SERVER_ID})), alpn),
                "outbound_.9080_._.reviews.default.svc.cluster.local"))})
        };
        clusters.push(cluster(
            &format!("as-{n}"),
            &[(server, None)],
            up(&["http/1.1"]),
        ));
        clusters.push(cluster(
            &format!("tcp-as-{n}"),
            &[(server_tcp, None)],
            up(&[]),
        ));
    }
    for (n, addr) in tcp_out {
        listeners.push(json!({"name": format!("tcp-{n}"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": addr.port()}},
            "filter_chains": [{"filters": [tcp(&format!("tcp-{n}"), &format!("tcp-as-{n}"), &log.with_extension("tcp"))]}]}));
    }
    bootstrap(listeners, clusters, secrets)
}

/// A TCP echo server (answers what it read once the client half-closes).
fn tcp_echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().take(32) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let _ = s.write_all(&buf);
            });
        }
    });
    addr
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Envoy,
    Weft,
}

/// (identity, method, path) -> expected status.
const TABLE: &[(&str, &str, &str, u16)] = &[
    ("foo", "GET", "/private", 200),
    ("foo", "POST", "/private", 200),
    ("foobar", "GET", "/private", 403),
    ("admin", "DELETE", "/anything", 200),
    ("bar", "GET", "/public/x", 200),
    ("bar", "POST", "/public/x", 403),
    ("bar", "GET", "/private", 403),
    ("blocked", "GET", "/public/x", 403),
];

/// Runs the table against one server; returns the statuses, the server's
/// log lines (sorted) and the TCP outcomes per identity.
async fn run(side: Side) -> (Vec<u16>, Vec<String>, Vec<(String, String)>) {
    let pki = Pki::new();
    let tag = format!("{side:?}");
    let app = support::upstream("app").await;
    let echo = tcp_echo();
    let (in_port, tcp_port, out_port) = (free_port(), free_port(), free_port());
    let server_http: SocketAddr = ([127, 0, 0, 1], in_port).into();
    let server_tcp: SocketAddr = ([127, 0, 0, 1], tcp_port).into();
    let out: SocketAddr = ([127, 0, 0, 1], out_port).into();
    let log = pki.dir.path().join("server.log");
    let cfg = server_config(&pki, &tag, server_http, server_tcp, app.addr, echo, &log);
    let _server = match side {
        Side::Envoy => envoy(&cfg, &[in_port, tcp_port]).await,
        Side::Weft => weft(&cfg, &[], &[in_port, tcp_port]).await,
    };
    let tcp_out: Vec<(String, SocketAddr)> = ["foo", "bar"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                SocketAddr::from(([127, 0, 0, 1], free_port())),
            )
        })
        .collect();
    let mut ports = vec![out_port];
    ports.extend(tcp_out.iter().map(|(_, a)| a.port()));
    let client_cfg = client_config(
        &pki,
        &tag,
        out,
        &tcp_out,
        server_http,
        server_tcp,
        &pki.dir.path().join("client.log"),
    );
    let _client = weft(&client_cfg, &[], &ports).await;

    let mut statuses = Vec::new();
    for (i, (who, method, path, _)) in TABLE.iter().enumerate() {
        let case = i.to_string();
        let got = support::send(
            out,
            method,
            "reviews.default",
            path,
            &[("x-as", who), ("x-case", &case)],
            "",
        )
        .await;
        statuses.push(got.status);
    }
    let mut tcp_results = Vec::new();
    for (n, addr) in &tcp_out {
        let addr = *addr;
        let back = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(b"ping").expect("write");
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back);
            String::from_utf8_lossy(&back).into_owned()
        })
        .await
        .expect("tcp client");
        tcp_results.push((n.clone(), back));
    }
    let text = wait_for_log(&log, |t| t.lines().count() >= TABLE.len()).await;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    (statuses, lines, tcp_results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_on_mtls_principals_matches_envoy() {
    let (envoy_status, envoy_log, envoy_tcp) = run(Side::Envoy).await;
    let want: Vec<u16> = TABLE.iter().map(|t| t.3).collect();
    assert_eq!(
        envoy_status, want,
        "Envoy does not meet the table (fix the test)"
    );
    assert_eq!(
        envoy_tcp,
        vec![
            ("foo".to_string(), "ping".to_string()),
            ("bar".to_string(), String::new())
        ],
        "Envoy's network RBAC"
    );
    let (weft_status, weft_log, weft_tcp) = run(Side::Weft).await;
    assert_eq!(weft_status, envoy_status, "statuses differ from Envoy's");
    assert_eq!(
        weft_log, envoy_log,
        "server access logs differ from Envoy's"
    );
    assert_eq!(weft_tcp, envoy_tcp, "TCP outcomes differ from Envoy's");
    assert!(
        weft_log.iter().any(|l| l.contains(
            "rbac_access_denied_matched_policy[ns[default]-policy[deny-blocked]-rule[0]]"
        )),
        "{weft_log:#?}"
    );
}
