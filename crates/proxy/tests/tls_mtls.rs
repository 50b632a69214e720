//! mTLS between two weft-proxies on loopback, from static bootstraps in
//! Istio's shapes (static secrets instead of SDS): a client sidecar
//! originating TLS (UpstreamTlsContext, SNI, ALPN, SAN verification,
//! transport_socket_matches) and a server sidecar terminating it on a
//! tls-only filter chain with require_client_certificate (STRICT).
//! Checks XFCC, the TLS access-log operators, HTTP/2 over TLS, TCP over
//! TLS, plaintext refused, and handshake failures (expired, wrong trust
//! domain, no client certificate) with their reasons in the access log.

mod support;
mod tls_common;

use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tls_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

struct Mesh {
    _pki: Pki,
    client: weft_proxy::Proxy,
    server: weft_proxy::Proxy,
    client_log: std::path::PathBuf,
    server_log: std::path::PathBuf,
    app: support::Upstream,
    plain: support::Upstream,
    inbound: SocketAddr,
}

impl Mesh {
    fn client_addr(&self, name: &str) -> SocketAddr {
        self.client.listener_address(name).expect("client listener")
    }
}

/// The server sidecar: listener `inbound` (mTLS only: HTTP with XFCC on
/// ALPN h2/http/1.1, or TCP when the client offers only `istio`), plus
/// listeners presenting an expired and a wrong-trust-domain certificate.
async fn mesh() -> Mesh {
    let pki = Pki::new();
    let dir = pki.dir.path().to_owned();
    let server_cert = pki.issue("server", SERVER_ID);
    let client_cert = pki.issue("client", CLIENT_ID);
    let client_foreign = pki.issue(
        "client-foreign",
        "spiffe://evil.example/ns/default/sa/client",
    );
    let client_expired = pki.issue_expired("client-expired", CLIENT_ID);
    let expired = pki.issue_expired("expired", SERVER_ID);
    let foreign = pki.issue("foreign", "spiffe://evil.example/ns/default/sa/server");
    let app = support::upstream("app").await;
    let plain = support::upstream("plain").await;
    let (server_log, client_log) = (dir.join("server.log"), dir.join("client.log"));

    let mesh_san = json!({"prefix": "spiffe://cluster.local/"});
    let inbound_http = json!({
        "name": "inbound-mtls-http",
        "filter_chain_match": {"transport_protocol": "tls", "application_protocols": ["h2", "http/1.1", "istio-http/1.1", "istio-h2"]},
        "transport_socket": ts(downstream(common("server-cert", "mesh-root", false, Some(mesh_san.clone()), &["h2", "http/1.1"]), true)),
        "filters": [hcm("inbound", "app", json!({
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true}
        }), &server_log)]
    });
    let inbound_tcp = json!({
        "name": "inbound-mtls-tcp",
        "filter_chain_match": {"transport_protocol": "tls"},
        "transport_socket": ts(downstream(common("server-cert", "mesh-root", false, Some(mesh_san.clone()), &[]), true)),
        "filters": [tcp("inbound-tcp", "app", &server_log)]
    });
    let bad = |cert: &str| {
        json!({"filter_chain_match": {"transport_protocol": "tls"},
            "transport_socket": ts(downstream(common(cert, "mesh-root", false, None, &["http/1.1"]), false)),
            "filters": [hcm("bad", "app", json!({}), &server_log)]})
    };
    let server_yaml = bootstrap(
        vec![
            listener("inbound", free_addr(), vec![inbound_http, inbound_tcp]),
            listener("expired", free_addr(), vec![bad("expired-cert")]),
            listener("foreign", free_addr(), vec![bad("foreign-cert")]),
        ],
        vec![cluster("app", &[(app.addr, None)], json!({}))],
        vec![
            cert_secret("server-cert", &server_cert),
            cert_secret("expired-cert", &expired),
            cert_secret("foreign-cert", &foreign),
            root_secret("mesh-root", &pki.root()),
        ],
    );
    let server = support::proxy(&server_yaml);
    let inbound = server.listener_address("inbound").expect("inbound");
    let expired_addr = server.listener_address("expired").expect("expired");
    let foreign_addr = server.listener_address("foreign").expect("foreign");

    let sni = "outbound_.80_._.server.default.svc.cluster.local";
    let to_server = |alpn: &[&str], san: serde_json::Value| {
        ts(upstream(
            common("client-cert", "mesh-root", false, Some(san), alpn),
            sni,
        ))
    };
    let exact = json!({"exact": SERVER_ID});
    let h1_tls = json!({"transport_socket": to_server(&["istio-peer-exchange", "istio", "h2", "http/1.1"], exact.clone())});
    let h2_tls = json!({
        "transport_socket": to_server(&["istio-peer-exchange", "istio", "h2", "http/1.1"], exact.clone()),
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    });
    let auto = json!({"transport_socket_matches": [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
         "transport_socket": to_server(&["istio-peer-exchange", "istio", "http/1.1"], exact.clone())},
        {"name": "tlsMode-disabled", "match": {},
         "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}
    ]});
    let no_cert = json!({"transport_socket": ts(json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {"alpn_protocols": ["http/1.1"],
            "validation_context_sds_secret_config": {"name": "mesh-root"}},
        "sni": sni}}).to_string())});
    let tcp_tls =
        json!({"transport_socket": to_server(&["istio-peer-exchange", "istio"], exact.clone())});
    let client_listener = |name: &str, filter: serde_json::Value| {
        json!({"name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [filter]}]})
    };
    let client_yaml = bootstrap(
        vec![
            client_listener("h1", hcm("out-h1", "server-h1", json!({}), &client_log)),
            client_listener("h2", hcm("out-h2", "server-h2", json!({}), &client_log)),
            client_listener("auto", hcm("out-auto", "auto", json!({}), &client_log)),
            client_listener(
                "expired",
                hcm("out-expired", "expired", json!({}), &client_log),
            ),
            client_listener(
                "foreign",
                hcm("out-foreign", "foreign", json!({}), &client_log),
            ),
            client_listener(
                "nocert",
                hcm("out-nocert", "nocert", json!({}), &client_log),
            ),
            client_listener("tcp", tcp("out-tcp", "server-tcp", &client_log)),
            client_listener(
                "as-foreign",
                hcm("out-as-foreign", "as-foreign", json!({}), &client_log),
            ),
            client_listener(
                "as-expired",
                hcm("out-as-expired", "as-expired", json!({}), &client_log),
            ),
        ],
        vec![
            cluster("server-h1", &[(inbound, None)], h1_tls),
            cluster("server-h2", &[(inbound, None)], h2_tls),
            cluster(
                "auto",
                &[(inbound, Some("istio")), (plain.addr, None)],
                auto,
            ),
            cluster(
                "expired",
                &[(expired_addr, None)],
                to_tls(&to_server, &exact),
            ),
            cluster(
                "foreign",
                &[(foreign_addr, None)],
                json!({"transport_socket": to_server(&["http/1.1"], json!({"prefix": "spiffe://cluster.local/"}))}),
            ),
            cluster("nocert", &[(inbound, None)], no_cert),
            cluster("server-tcp", &[(inbound, None)], tcp_tls),
            cluster(
                "as-foreign",
                &[(inbound, None)],
                json!({"transport_socket": ts(upstream(
                    common("client-foreign", "mesh-root", false, Some(exact.clone()), &["http/1.1"]),
                    sni))}),
            ),
            cluster(
                "as-expired",
                &[(inbound, None)],
                json!({"transport_socket": ts(upstream(
                    common("client-expired", "mesh-root", false, Some(exact.clone()), &["http/1.1"]),
                    sni))}),
            ),
        ],
        vec![
            cert_secret("client-foreign", &client_foreign),
            cert_secret("client-expired", &client_expired),
            cert_secret("client-cert", &client_cert),
            root_secret("mesh-root", &pki.root()),
        ],
    );
    let client = support::proxy(&client_yaml);
    Mesh {
        _pki: pki,
        client,
        server,
        client_log,
        server_log,
        app,
        plain,
        inbound,
    }
}

fn to_tls(
    to_server: &dyn Fn(&[&str], serde_json::Value) -> serde_json::Value,
    san: &serde_json::Value,
) -> serde_json::Value {
    json!({"transport_socket": to_server(&["http/1.1"], san.clone())})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_call_carries_the_client_identity() {
    let m = mesh().await;
    let got = support::get(m.client_addr("h1"), "server.default", "/hello").await;
    assert_eq!(got.status, 200, "{}", got.body);
    let echo = got.echo();
    let xfcc = echo["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC at the app: {echo}"));
    assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
    assert!(
        xfcc.ends_with(&format!(";Subject=\"\";URI={CLIENT_ID}")),
        "{xfcc}"
    );
    let log = wait_for_log(&m.server_log, |t| t.contains("peer=spiffe")).await;
    let line = log
        .lines()
        .find(|l| l.contains("peer=spiffe"))
        .unwrap_or_else(|| panic!("server access log: {log}"));
    assert!(line.contains(&format!("peer={CLIENT_ID}")), "{line}");
    assert!(line.contains(&format!("local={SERVER_ID}")), "{line}");
    assert!(line.contains("tls=TLSv1_3"), "{line}");
    assert!(
        line.contains("sni=outbound_.80_._.server.default.svc.cluster.local"),
        "{line}"
    );
    // A forged XFCC from the client app is not trusted by the client
    // sidecar's (default SANITIZE) outbound HCM; the server appends its hop.
    let got = support::send(
        m.client_addr("h1"),
        "GET",
        "server.default",
        "/",
        &[("x-forwarded-client-cert", "By=forged")],
        "",
    )
    .await;
    let xfcc = got.echo()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(!xfcc.contains("forged"), "{xfcc}");
    m.client.shutdown();
    m.server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_and_tcp_over_tls() {
    let m = mesh().await;
    for _ in 0..3 {
        let got = support::get(m.client_addr("h2"), "server.default", "/h2").await;
        assert_eq!(got.status, 200, "{}", got.body);
    }
    let log = wait_for_log(&m.server_log, |t| t.contains("[HTTP/2] 200")).await;
    assert!(
        log.contains("[HTTP/2] 200"),
        "server saw no HTTP/2 over TLS:\n{log}"
    );
    // TCP: the client offers only istio ALPN values, so the server takes
    // the TCP chain; HTTP/1.1 bytes pass through to the app.
    let got = support::get(m.client_addr("tcp"), "server.default", "/via-tcp").await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.echo()["path"], "/via-tcp");
    assert!(
        got.echo()["headers"]
            .get("x-forwarded-client-cert")
            .is_none(),
        "TCP passes bytes unchanged"
    );
    let log = wait_for_log(&m.server_log, |t| {
        t.contains("cluster=app reason=- peer=spiffe") && t.contains("[-]")
    })
    .await;
    assert!(
        log.lines()
            .any(|l| l.starts_with("[-]") && l.contains(&format!("peer={CLIENT_ID}"))),
        "TCP chain log: {log}"
    );
    m.client.shutdown();
    m.server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_socket_matches_choose_tls_per_endpoint() {
    let m = mesh().await;
    for _ in 0..4 {
        let got = support::get(m.client_addr("auto"), "server.default", "/auto").await;
        assert_eq!(got.status, 200, "{}", got.body);
    }
    // Round robin over the istio endpoint (mTLS to the sidecar) and the
    // plaintext one.
    assert_eq!(m.plain.hits(), 2, "plaintext endpoint");
    assert_eq!(
        m.app.hits(),
        2,
        "mTLS endpoint (through the server sidecar)"
    );
    m.client.shutdown();
    m.server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_certificateless_clients_are_refused() {
    let m = mesh().await;
    // Plaintext HTTP straight into the STRICT inbound listener.
    let mut s = tokio::net::TcpStream::connect(m.inbound)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "plaintext got an answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(m.app.hits(), 0);
    // TLS without a client certificate: the handshake fails; UF upstream.
    let got = support::get(m.client_addr("nocert"), "server.default", "/").await;
    assert_eq!(got.status, 503, "{}", got.body);
    let log = wait_for_log(&m.client_log, |t| t.contains("cluster=nocert")).await;
    let line = log
        .lines()
        .find(|l| l.contains("cluster=nocert"))
        .unwrap_or_else(|| panic!("client log: {log}"));
    // Under TLS 1.3 the client finishes its handshake before the server
    // checks the (missing) certificate; the server's alert then resets the
    // first request (UC, as Envoy reports it), with the alert as the reason.
    assert!(
        line.contains(" 503 UF ") || line.contains(" 503 UC "),
        "{line}"
    );
    assert!(line.contains("CertificateRequired"), "{line}");
    assert_eq!(m.app.hits(), 0);
    m.client.shutdown();
    m.server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_foreign_certificates_fail_with_the_reason() {
    let m = mesh().await;
    let got = support::get(m.client_addr("expired"), "server.default", "/").await;
    assert_eq!(got.status, 503, "{}", got.body);
    let got = support::get(m.client_addr("foreign"), "server.default", "/").await;
    assert_eq!(got.status, 503, "{}", got.body);
    let log = wait_for_log(&m.client_log, |t| {
        t.contains("cluster=expired") && t.contains("cluster=foreign")
    })
    .await;
    let line = |c: &str| {
        log.lines()
            .find(|l| l.contains(&format!("cluster={c} ")))
            .unwrap_or_else(|| panic!("no {c} line in {log}"))
            .to_owned()
    };
    let expired = line("expired");
    assert!(expired.contains(" 503 UF "), "{expired}");
    assert!(
        expired.contains("reason=TLS_error:|CERTIFICATE_VERIFY_FAILED:certificate expired"),
        "{expired}"
    );
    let foreign = line("foreign");
    assert!(foreign.contains(" 503 UF "), "{foreign}");
    assert!(
        foreign.contains("spiffe://evil.example/ns/default/sa/server")
            && foreign.contains("match none of match_typed_subject_alt_names"),
        "{foreign}"
    );
    assert_eq!(m.app.hits(), 0);
    m.client.shutdown();
    m.server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sds_secret_weft_cannot_serve_fails_connections_not_the_config() {
    let pki = Pki::new();
    let app = support::upstream("app").await;
    let log = pki.dir.path().join("client.log");
    // A DestinationRule credentialName becomes an SDS name Envoy would
    // fetch from its agent; weft-proxy accepts the config and fails the
    // connections with the reason (as Envoy does while a secret is missing).
    let ctx = json!({"common_tls_context": {
        "tls_certificate_sds_secret_configs": [{"name": "kubernetes://my-credential",
            "sds_config": {"ads": {}, "resource_api_version": "V3"}}]}});
    let mut transport = ts(upstream(json!({}), "app.example"));
    transport["typed_config"]["common_tls_context"] = ctx["common_tls_context"].clone();
    let yaml = bootstrap(
        vec![json!({"name": "out",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [hcm("out", "app", json!({}), &log)]}]})],
        vec![cluster(
            "app",
            &[(app.addr, None)],
            json!({"transport_socket": transport}),
        )],
        vec![],
    );
    let p = support::proxy(&yaml);
    let got = support::get(p.listener_address("out").expect("out"), "app", "/").await;
    assert_eq!(got.status, 503, "{}", got.body);
    let text = wait_for_log(&log, |t| t.contains("UF")).await;
    assert!(
        text.contains("SDS secret \"kubernetes://my-credential\" is not available"),
        "{text}"
    );
    assert_eq!(app.hits(), 0);
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_server_refuses_foreign_and_expired_client_certificates() {
    let m = mesh().await;
    for (listener, alert) in [
        ("as-foreign", "CertificateUnknown"),
        ("as-expired", "CertificateExpired"),
    ] {
        let got = support::get(m.client_addr(listener), "server.default", "/").await;
        assert_eq!(got.status, 503, "{listener}: {}", got.body);
        let log = wait_for_log(&m.client_log, |t| {
            t.contains(&format!("cluster={listener} "))
        })
        .await;
        let line = log
            .lines()
            .find(|l| l.contains(&format!("cluster={listener} ")))
            .unwrap_or_else(|| panic!("no {listener} line: {log}"));
        // The server's verdict reaches the client as a TLS alert.
        assert!(line.contains(alert), "{listener}: {line}");
    }
    assert_eq!(m.app.hits(), 0);
    m.client.shutdown();
    m.server.shutdown();
}
