//! Envoy fields Istio's translation sets on every proxy: metadata kept on
//! listeners, clusters and endpoints; retries that avoid hosts already
//! tried (previous_hosts + host_selection_retry_max_attempts); JSON access
//! logs; max_requests_per_connection on upstream HTTP/1.1 connections.

mod support;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

fn route(name: &str, prefix: &str, cluster: &str, extra: &str) -> String {
    format!(
        r#"              - name: {name}
                match: {{ prefix: "{prefix}" }}
                route:
                  cluster: {cluster}
{extra}"#
    )
}

fn routes(list: &[String]) -> String {
    format!(
        r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{}"#,
        list.concat()
    )
}

#[test]
fn metadata_is_accepted_and_kept_on_listener_cluster_and_endpoint() {
    let yaml = r#"static_resources:
  listeners:
  - name: tcp
    metadata: { filter_metadata: { istio: { config: "/apis/v1/ns/default/sidecar/x" } } }
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
  - name: c
    type: STATIC
    connect_timeout: 1s
    metadata: { filter_metadata: { istio: { services: [ { host: "r.default.svc.cluster.local", name: r, namespace: default } ] } } }
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } }
          metadata: { filter_metadata: { istio: { workload: "r-v1;default;r;v1;Kubernetes" } } }
"#;
    let loaded = weft_proxy::config::load_str(yaml, "meta.yaml").unwrap_or_else(|e| panic!("{e}"));
    let snap = weft_proxy::model::Snapshot::compile(&loaded, &weft_proxy::stats::Stats::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let l = snap.listener("tcp").expect("listener");
    let lm = l.metadata.as_ref().expect("listener metadata kept");
    assert!(lm.filter_metadata.contains_key("istio"), "{lm:?}");
    let c = &snap.clusters["c"];
    let cm = c.metadata.as_ref().expect("cluster metadata kept");
    assert!(
        cm.filter_metadata["istio"].fields.contains_key("services"),
        "{cm:?}"
    );
    let hosts = c.hosts.load();
    let h = &hosts.priorities[0].hosts[0];
    let hm = h.metadata().expect("endpoint metadata kept");
    assert!(
        hm.filter_metadata["istio"].fields.contains_key("workload"),
        "{hm:?}"
    );
}

#[test]
fn other_retry_host_predicates_are_refused() {
    let r = routes(&[route(
        "r",
        "/",
        "a",
        r#"                  retry_policy:
                    retry_on: 5xx
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.omit_canary_hosts
"#,
    )]);
    let yaml = http_bootstrap(&r, "", "", &[cluster("a", &[9], "")]);
    let err = weft_proxy::config::load_str(&yaml, "p.yaml")
        .and_then(|l| {
            weft_proxy::model::Snapshot::compile(&l, &weft_proxy::stats::Stats::new()).map(|_| ())
        })
        .expect_err("omit_canary_hosts is not implemented");
    assert!(err.to_string().contains("retry_host_predicate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_previous_hosts_land_on_a_different_endpoint() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    // Ring hash on a fixed header: every pick without the predicate is the
    // same host, so the retry would hit it again.
    let hash = r#"                  prefix_rewrite: "/"
                  hash_policy: [ { header: { header_name: x-key } } ]
"#;
    let r = routes(&[
        route(
            "avoid",
            "/avoid/",
            "ring",
            &format!(
                r#"{hash}                  retry_policy:
                    retry_on: 5xx
                    num_retries: 1
                    retry_back_off: {{ base_interval: 0.001s }}
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 5
"#
            ),
        ),
        route(
            "same",
            "/same/",
            "ring",
            &format!(
                r#"{hash}                  retry_policy:
                    retry_on: 5xx
                    num_retries: 1
                    retry_back_off: {{ base_interval: 0.001s }}
"#
            ),
        ),
    ]);
    let c = vec![cluster(
        "ring",
        &[a.addr.port(), b.addr.port()],
        "    lb_policy: RING_HASH\n",
    )];
    let p = proxy(&http_bootstrap(&r, "", "", &c));
    let addr = p.listener_address("http").expect("bound");

    // Without the predicate: both tries on the one host the hash names.
    for i in 0..5 {
        let key = format!("k{i}");
        let (ha, hb) = (a.hits(), b.hits());
        let g = send(
            addr,
            "GET",
            "svc",
            "/same/status/503",
            &[("x-key", &key)],
            "",
        )
        .await;
        assert_eq!(g.status, 503);
        let (da, db) = (a.hits() - ha, b.hits() - hb);
        assert!(
            (da, db) == (2, 0) || (da, db) == (0, 2),
            "key {key}: retry without previous_hosts went to a={da} b={db}"
        );
    }
    // With it: the retry goes to the other host, every time.
    for i in 0..10 {
        let key = format!("k{i}");
        let (ha, hb) = (a.hits(), b.hits());
        let g = send(
            addr,
            "GET",
            "svc",
            "/avoid/status/503",
            &[("x-key", &key)],
            "",
        )
        .await;
        assert_eq!(g.status, 503);
        let (da, db) = (a.hits() - ha, b.hits() - hb);
        assert_eq!(
            (da, db),
            (1, 1),
            "key {key}: previous_hosts should send the retry to the other endpoint"
        );
    }
    p.shutdown();
}

async fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..250 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("access log {} has fewer than {n} lines", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_lines_parse_with_typed_values() {
    let up = upstream("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.json");
    let hcm = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format:
                json_format:
                  start_time: "%START_TIME%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  response_code: "%RESPONSE_CODE%"
                  response_flags: "%RESPONSE_FLAGS%"
                  bytes_sent: "%BYTES_SENT%"
                  duration: "%DURATION%"
                  upstream_cluster: "%UPSTREAM_CLUSTER%"
                  user_agent: "%REQ(USER-AGENT)%"
                  summary: "%REQ(:METHOD)% %RESPONSE_CODE%"
                  literal: 7
                  nested: {{ route: "%ROUTE_NAME%" }}
"#,
        log.display()
    );
    let r = routes(&[route("echo", "/", "up", "")]);
    let p = proxy(&http_bootstrap(
        &r,
        &hcm,
        "",
        &[cluster("up", &[up.addr.port()], "")],
    ));
    let addr = p.listener_address("http").expect("bound");
    let g = get(addr, "svc", "/status/201").await;
    assert_eq!(g.status, 201);
    let lines = wait_for_lines(&log, 1).await;
    let v: serde_json::Value =
        serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]));
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/status/201");
    assert_eq!(
        v["response_code"], 201,
        "a lone numeric operator is a number"
    );
    assert_eq!(v["response_flags"], "-");
    assert!(v["bytes_sent"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["duration"].is_u64(), "{v}");
    assert_eq!(v["upstream_cluster"], "up");
    assert!(v["user_agent"].is_null(), "a missing header is null: {v}");
    assert_eq!(v["summary"], "GET 201", "mixed text stays a string");
    assert_eq!(v["literal"], 7.0);
    assert_eq!(v["nested"]["route"], "echo");
    assert!(
        v["start_time"].as_str().is_some_and(|s| s.contains('T')),
        "{v}"
    );
    p.shutdown();
}

/// An HTTP/1.1 upstream that counts the TCP connections it accepts.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_opens_a_new_upstream_connection_after_n() {
    let (limited, limited_conns) = counting_upstream().await;
    let (plain, plain_conns) = counting_upstream().await;
    let r = routes(&[
        route("limited", "/limited", "limited", ""),
        route("plain", "/plain", "plain", ""),
    ]);
    let c = vec![
        cluster(
            "limited",
            &[limited.port()],
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { max_requests_per_connection: 2 }
        explicit_http_config: { http_protocol_options: {} }
"#,
        ),
        cluster("plain", &[plain.port()], ""),
    ];
    let p = proxy(&http_bootstrap(&r, "", "", &c));
    let addr = p.listener_address("http").expect("bound");
    for _ in 0..6 {
        assert_eq!(get(addr, "svc", "/limited").await.status, 200);
        assert_eq!(get(addr, "svc", "/plain").await.status, 200);
    }
    assert_eq!(
        limited_conns.load(Ordering::SeqCst),
        3,
        "6 sequential requests at 2 per connection"
    );
    assert_eq!(
        plain_conns.load(Ordering::SeqCst),
        1,
        "without the limit one keep-alive connection serves all"
    );
    p.shutdown();
}

/// An upstream that records (Host, body) of every request.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let host = req
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            s.lock()
                                .expect("seen")
                                .push((host, String::from_utf8_lossy(&body).into_owned()));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"shadow"),
                            )))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_shadow_copy_and_answers_from_the_main_cluster() {
    let main = upstream("main").await;
    let (shadow, seen) = recording_upstream().await;
    let r = routes(&[
        route(
            "mirrored",
            "/m",
            "main",
            r#"                  request_mirror_policies:
                  - cluster: shadow
                    runtime_fraction: { default_value: { numerator: 100 } }
"#,
        ),
        route(
            "never",
            "/n",
            "main",
            r#"                  request_mirror_policies:
                  - cluster: shadow
                    runtime_fraction: { default_value: { numerator: 0 } }
"#,
        ),
    ]);
    let c = vec![
        cluster("main", &[main.addr.port()], ""),
        cluster("shadow", &[shadow.port()], ""),
    ];
    let p = proxy(&http_bootstrap(&r, "", "", &c));
    let addr = p.listener_address("http").expect("bound");
    for _ in 0..3 {
        let g = send(addr, "GET", "svc", "/n", &[], "").await;
        assert_eq!(g.header("x-upstream"), Some("main"));
    }
    let g = send(addr, "POST", "svc.ns:8080", "/m", &[], "payload").await;
    assert_eq!(g.status, 200);
    assert_eq!(
        g.header("x-upstream"),
        Some("main"),
        "the client gets the main answer"
    );
    assert_eq!(g.echo()["body"], "payload");
    let mut got = Vec::new();
    for _ in 0..250 {
        got = seen.lock().expect("seen").clone();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        got,
        vec![("svc.ns-shadow:8080".to_owned(), "payload".to_owned())],
        "exactly one shadow copy (the 0% route mirrors nothing), Host with -shadow"
    );
    assert_eq!(main.hits(), 4);
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_allowed_preflights_and_marks_allowed_responses() {
    let up = upstream("up").await;
    let r = routes(&[String::from(
        r#"              - name: api
                match: { prefix: "/" }
                route: { cluster: up }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [ { exact: "https://a.example" } ]
                    allow_methods: "GET,POST"
                    allow_headers: "x-token"
                    expose_headers: "x-upstream"
                    max_age: "600"
                    allow_credentials: true
"#,
    )]);
    let filters = r#"          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
"#;
    let p = proxy(&http_bootstrap(
        &r,
        "",
        filters,
        &[cluster("up", &[up.addr.port()], "")],
    ));
    let addr = p.listener_address("http").expect("bound");

    let pre = [
        ("origin", "https://a.example"),
        ("access-control-request-method", "POST"),
    ];
    let g = send(addr, "OPTIONS", "svc", "/x", &pre, "").await;
    assert_eq!(g.status, 200);
    assert_eq!(
        g.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(g.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(g.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(g.header("access-control-max-age"), Some("600"));
    assert_eq!(g.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        up.hits(),
        0,
        "an allowed preflight is answered by the proxy"
    );

    let other = [
        ("origin", "https://evil.example"),
        ("access-control-request-method", "POST"),
    ];
    let g = send(addr, "OPTIONS", "svc", "/x", &other, "").await;
    assert_eq!(g.header("x-upstream"), Some("up"), "not allowed: forwarded");
    assert_eq!(g.header("access-control-allow-origin"), None);
    assert_eq!(up.hits(), 1);

    let g = send(
        addr,
        "GET",
        "svc",
        "/x",
        &[("origin", "https://a.example")],
        "",
    )
    .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.header("x-upstream"), Some("up"));
    assert_eq!(
        g.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(
        g.header("access-control-expose-headers"),
        Some("x-upstream")
    );
    assert_eq!(g.header("access-control-allow-credentials"), Some("true"));

    let g = get(addr, "svc", "/x").await;
    assert_eq!(
        g.header("access-control-allow-origin"),
        None,
        "no Origin, no CORS"
    );
    p.shutdown();
}
