//! Istio's standard metrics between two weft-proxies: a client sidecar
//! (outbound listener, `reporter="source"`) calls a server sidecar
//! (inbound listener, `reporter="destination"`) which calls the app. Both
//! take their own workload from the bootstrap's node metadata, exchange
//! peer metadata over `x-envoy-peer-metadata` (never leaked to the apps),
//! and label the series from cluster (`istio.services`) and endpoint
//! (`istio.workload`) metadata. TCP connections are counted too.

mod support;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use support::*;

fn node(name: &str, workload: &str, app: &str, version: &str, sa: &str) -> String {
    format!(
        r#"node:
  id: sidecar~127.0.0.1~{name}.default~default.svc.cluster.local
  metadata:
    NAME: {name}
    NAMESPACE: default
    WORKLOAD_NAME: {workload}
    SERVICE_ACCOUNT: {sa}
    CLUSTER_ID: Kubernetes
    LABELS: {{app: {app}, version: {version}}}
"#
    )
}

const SERVICES: &str = r#"    metadata:
      filter_metadata:
        istio:
          services: [{host: reviews.default.svc.cluster.local, name: reviews, namespace: default}]
"#;

/// A sidecar bootstrap: one HTTP listener and one TCP listener with the
/// given traffic direction, to `http_cluster` / `tcp_cluster`.
fn sidecar(
    node: &str,
    direction: &str,
    stat: &str,
    http_target: (&str, u16, &str),
    tcp_target: (&str, u16),
    external: u16,
) -> String {
    let (hname, hport, endpoint_md) = http_target;
    let (tname, tport) = tcp_target;
    format!(
        r#"{node}static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat}_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/direct" }}
                direct_response: {{ status: 418 }}
              - match: {{ prefix: "/external" }}
                route: {{ cluster: external }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: "{hname}" }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {stat}_tcp
          cluster: "{tname}"
  clusters:
  - name: "{hname}"
    type: STATIC
    connect_timeout: 1s
{SERVICES}    load_assignment:
      cluster_name: "{hname}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {hport} }} }} }}
{endpoint_md}  - name: external
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: external
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {external} }} }} }}
  - name: "{tname}"
    type: STATIC
    connect_timeout: 1s
{SERVICES}    load_assignment:
      cluster_name: "{tname}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {tport} }} }} }}
          metadata:
            filter_metadata:
              istio: {{ workload: "reviews-v2;default;reviews;v2;Kubernetes" }}
"#
    )
}

/// Series of one family: label map -> value.
fn series(text: &str, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("a sample line");
        let mut map = BTreeMap::new();
        for pair in labels.split("\",") {
            let (k, v) = pair.split_once("=\"").expect("label");
            map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
        }
        out.push((map, value.parse().expect("number")));
    }
    out
}

fn find<'a>(
    s: &'a [(BTreeMap<String, String>, f64)],
    want: &[(&str, &str)],
) -> Vec<&'a (BTreeMap<String, String>, f64)> {
    s.iter()
        .filter(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

async fn scrape(p: &weft_proxy::Proxy) -> String {
    let addr = p.prometheus_address.expect("prometheus port");
    let got = get(addr, "localhost", "/stats/prometheus").await;
    assert_eq!(got.status, 200);
    got.body
}

/// A TCP echo server: answers what it reads until EOF.
fn tcp_echo() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let _ = s.write_all(&buf);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_report_istio_standard_metrics() {
    let app = upstream("reviews-app").await;
    let echo = tcp_echo();
    let server = proxy(&sidecar(
        &node("reviews-v2-abc", "reviews-v2", "reviews", "v2", "reviews"),
        "INBOUND",
        "inbound_0.0.0.0_9080",
        ("inbound|9080||", app.addr.port(), ""),
        ("inbound|9000||", echo),
        app.addr.port(),
    ));
    let server_http = server.listener_address("http").expect("bound");
    let server_tcp = server.listener_address("tcp").expect("bound");
    let client = proxy(&sidecar(
        &node(
            "productpage-v1-xyz",
            "productpage-v1",
            "productpage",
            "v1",
            "bookinfo-productpage",
        ),
        "OUTBOUND",
        "outbound_0.0.0.0_9080",
        (
            "outbound|9080||reviews.default.svc.cluster.local",
            server_http.port(),
            "",
        ),
        (
            "outbound|9000||reviews.default.svc.cluster.local",
            server_tcp.port(),
        ),
        app.addr.port(),
    ));
    let client_http = client.listener_address("http").expect("bound");

    for _ in 0..3 {
        let got = send(
            client_http,
            "POST",
            "reviews:9080",
            "/reviews/1",
            &[],
            "hello",
        )
        .await;
        assert_eq!(got.status, 200);
        let echo = got.echo();
        assert!(
            echo["headers"].get("x-envoy-peer-metadata").is_none()
                && echo["headers"].get("x-envoy-peer-metadata-id").is_none(),
            "the server sidecar strips the exchange headers: {echo}"
        );
        assert!(
            got.header("x-envoy-peer-metadata").is_none(),
            "the client sidecar strips the server's exchange headers"
        );
    }
    assert_eq!(
        get(client_http, "reviews:9080", "/direct").await.status,
        418
    );
    // Outside the mesh (a cluster without Istio metadata): no exchange headers.
    let external = get(client_http, "example.org", "/external").await.echo();
    assert!(
        external["headers"].get("x-envoy-peer-metadata").is_none(),
        "{external}"
    );
    // One TCP connection through both sidecars.
    let client_tcp = client.listener_address("tcp").expect("bound");
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(client_tcp).expect("connect");
        s.write_all(b"ping over tcp").expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut back = Vec::new();
        s.read_to_end(&mut back).expect("read");
        assert_eq!(back, b"ping over tcp");
    })
    .await
    .expect("tcp client");
    // Metrics are recorded when the streams end; give the sides a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let c = scrape(&client).await;
    let requests = series(&c, "istio_requests_total");
    let ok = find(
        &requests,
        &[
            ("reporter", "source"),
            ("source_workload", "productpage-v1"),
            ("source_workload_namespace", "default"),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("source_canonical_service", "productpage"),
            ("source_canonical_revision", "v1"),
            ("source_cluster", "Kubernetes"),
            ("destination_workload", "reviews-v2"),
            ("destination_workload_namespace", "default"),
            ("destination_app", "reviews"),
            ("destination_version", "v2"),
            ("destination_service", "reviews.default.svc.cluster.local"),
            ("destination_service_name", "reviews"),
            ("destination_service_namespace", "default"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("response_flags", "-"),
            ("connection_security_policy", "unknown"),
        ],
    );
    assert_eq!(ok.len(), 1, "one source series for the 200s:\n{c}");
    assert_eq!(ok[0].1, 3.0);
    let direct = find(
        &requests,
        &[("reporter", "source"), ("response_code", "418")],
    );
    assert_eq!(direct.len(), 1, "{c}");
    assert_eq!(direct[0].0["destination_workload"], "unknown");
    assert_eq!(direct[0].0["destination_service"], "unknown");
    let count = series(&c, "istio_request_duration_milliseconds_count");
    let hist = find(
        &count,
        &[
            ("response_code", "200"),
            ("destination_service_name", "reviews"),
        ],
    );
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].1, 3.0);
    let req_bytes = series(&c, "istio_request_bytes_sum");
    assert_eq!(
        find(
            &req_bytes,
            &[
                ("response_code", "200"),
                ("destination_service_name", "reviews")
            ]
        )[0]
        .1,
        15.0
    );
    let resp_bytes = series(&c, "istio_response_bytes_bucket");
    assert!(
        find(
            &resp_bytes,
            &[
                ("response_code", "200"),
                ("le", "+Inf"),
                ("destination_service_name", "reviews")
            ]
        )[0]
        .1 == 3.0,
        "{c}"
    );

    let s = scrape(&server).await;
    let requests = series(&s, "istio_requests_total");
    let inbound = find(
        &requests,
        &[
            ("reporter", "destination"),
            ("source_workload", "productpage-v1"),
            ("source_app", "productpage"),
            ("source_workload_namespace", "default"),
            ("destination_workload", "reviews-v2"),
            ("destination_canonical_service", "reviews"),
            ("destination_canonical_revision", "v2"),
            ("destination_service", "reviews.default.svc.cluster.local"),
            ("response_code", "200"),
            ("connection_security_policy", "none"),
            ("source_principal", "unknown"),
        ],
    );
    assert_eq!(inbound.len(), 1, "one destination series:\n{s}");
    assert_eq!(inbound[0].1, 3.0);

    // TCP: the client labels the destination from the endpoint's
    // istio.workload metadata; the server knows no source workload.
    let opened = series(&c, "istio_tcp_connections_opened_total");
    let out = find(
        &opened,
        &[
            ("reporter", "source"),
            ("destination_workload", "reviews-v2"),
            ("destination_canonical_service", "reviews"),
            ("request_protocol", "tcp"),
        ],
    );
    assert_eq!(out.len(), 1, "{c}");
    assert_eq!(out[0].1, 1.0);
    let sent = series(&c, "istio_tcp_sent_bytes_total");
    let received = series(&c, "istio_tcp_received_bytes_total");
    let closed = series(&c, "istio_tcp_connections_closed_total");
    assert_eq!(find(&received, &[("reporter", "source")])[0].1 + 0.0, 13.0);
    assert_eq!(find(&sent, &[("reporter", "source")])[0].1 + 0.0, 13.0);
    assert_eq!(closed.iter().map(|(_, v)| v).sum::<f64>(), 1.0);
    let srv_opened = series(&s, "istio_tcp_connections_opened_total");
    assert_eq!(
        find(
            &srv_opened,
            &[("reporter", "destination"), ("source_workload", "unknown")]
        )
        .len(),
        1,
        "{s}"
    );
    // The admin port serves the same families.
    let admin = client.admin_address.expect("admin");
    let body = get(admin, "localhost", "/stats/prometheus").await.body;
    assert!(
        body.contains("# TYPE istio_requests_total counter"),
        "{body}"
    );
    client.shutdown();
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_exchange_headers_without_a_traffic_direction() {
    let app = upstream("app").await;
    let p = proxy(&http_bootstrap(
        "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: up }\n",
        "",
        "",
        &[cluster("up", &[app.addr.port()], "")],
    ));
    let addr = p.listener_address("http").expect("bound");
    let got = get(addr, "svc", "/x").await;
    let echo = got.echo();
    assert!(
        echo["headers"].get("x-envoy-peer-metadata").is_none(),
        "{echo}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let body = scrape(&p).await;
    let requests = series(&body, "istio_requests_total");
    let s = find(
        &requests,
        &[("reporter", "source"), ("response_code", "200")],
    );
    assert_eq!(s.len(), 1, "{body}");
    assert_eq!(s[0].0["source_workload"], "unknown");
    p.shutdown();
}

mod tls_common;

/// Over mutual TLS the inbound side reports the client's certificate
/// identity and `connection_security_policy="mutual_tls"`; the outbound
/// side reports its own identity and the server workload's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_principals_and_security_policy() {
    use serde_json::json;
    use tls_common::*;
    const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";
    const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";
    let pki = Pki::new();
    let app = support::upstream("reviews-app").await;
    let server_cert = pki.issue("server", SERVER_ID);
    let client_cert = pki.issue("client", CLIENT_ID);
    let in_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let log = pki.dir.path().join("unused.log");
    let with_node = |cfg: String, node: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&cfg).expect("json");
        let n: serde_json::Value =
            serde_yaml::from_str::<serde_json::Value>(node).expect("node yaml");
        v["node"] = n["node"].clone();
        let mut l = v["static_resources"]["listeners"][0].take();
        l["traffic_direction"] = json!(if node.contains("reviews-v2") {
            "INBOUND"
        } else {
            "OUTBOUND"
        });
        v["static_resources"]["listeners"][0] = l;
        v.to_string()
    };
    let server_cfg = with_node(
        bootstrap(
            vec![listener(
                "inbound",
                in_addr,
                vec![json!({"filter_chain_match": {"transport_protocol": "tls"},
                    "transport_socket": ts(downstream(common("server-cert", "mesh-root", false,
                        Some(json!({"prefix": "spiffe://cluster.local/"})), &["http/1.1"]), true)),
                    "filters": [hcm("inbound_0.0.0.0_9080", "inbound|9080||", json!({}), &log)]})],
            )],
            vec![cluster("inbound|9080||", &[(app.addr, None)], json!({}))],
            vec![
                cert_secret("server-cert", &server_cert),
                root_secret("mesh-root", &pki.root()),
            ],
        ),
        &node("reviews-v2-abc", "reviews-v2", "reviews", "v2", "reviews"),
    );
    let server = proxy(&server_cfg);
    let out_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let client_cfg = with_node(
        bootstrap(
            vec![json!({"name": "outbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": out_addr.port()}},
                "filter_chains": [{"filters": [hcm("outbound_0.0.0.0_9080", "outbound|9080||reviews.default.svc.cluster.local", json!({}), &log)]}]})],
            vec![cluster(
                "outbound|9080||reviews.default.svc.cluster.local",
                &[(in_addr, None)],
                json!({"transport_socket": ts(tls_common::upstream(
                    common("client-cert", "mesh-root", false, Some(json!({"exact": SERVER_ID})), &["istio", "http/1.1"]),
                    "outbound_.9080_._.reviews.default.svc.cluster.local")),
                    "metadata": {"filter_metadata": {"istio": {"services": [
                        {"host": "reviews.default.svc.cluster.local", "name": "reviews", "namespace": "default"}]}}}}),
            )],
            vec![
                cert_secret("client-cert", &client_cert),
                root_secret("mesh-root", &pki.root()),
            ],
        ),
        &node(
            "productpage-v1-xyz",
            "productpage-v1",
            "productpage",
            "v1",
            "productpage",
        ),
    );
    let client = proxy(&client_cfg);
    for _ in 0..2 {
        let got = get(out_addr, "reviews:9080", "/r").await;
        assert_eq!(got.status, 200, "{}", got.body);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let s = scrape(&server).await;
    let inbound = series(&s, "istio_requests_total");
    let m = find(
        &inbound,
        &[
            ("reporter", "destination"),
            ("source_principal", CLIENT_ID),
            ("source_workload", "productpage-v1"),
            ("destination_principal", SERVER_ID),
            ("connection_security_policy", "mutual_tls"),
            ("response_code", "200"),
        ],
    );
    assert_eq!(m.len(), 1, "{s}");
    assert_eq!(m[0].1, 2.0);
    let c = scrape(&client).await;
    let outbound = series(&c, "istio_requests_total");
    let m = find(
        &outbound,
        &[
            ("reporter", "source"),
            ("source_principal", CLIENT_ID),
            ("destination_principal", SERVER_ID),
            ("destination_workload", "reviews-v2"),
            ("connection_security_policy", "unknown"),
        ],
    );
    assert_eq!(m.len(), 1, "{c}");
    client.shutdown();
    server.shutdown();
}
