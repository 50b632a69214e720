//! Failure handling against real sockets: unreachable upstreams (503 UF),
//! timeouts (504 UT), retries counted at the upstream, fault injection,
//! local rate limiting, malformed requests, and the access log lines with
//! Envoy's response flags.

mod support;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn access_log(path: &str) -> String {
    format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %ROUTE_NAME% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %BYTES_SENT%\n"
"#
    )
}

const ROUTES: &str = r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: dead
                match: { prefix: "/dead" }
                route: { cluster: dead }
              - name: per-try
                match: { prefix: "/hang-retry" }
                route:
                  cluster: live
                  timeout: 5s
                  retry_policy: { retry_on: "5xx", num_retries: 1, per_try_timeout: 0.1s }
              - name: slow
                match: { prefix: "/hang" }
                route: { cluster: live, timeout: 0.2s }
              - name: retry
                match: { prefix: "/status/503" }
                route:
                  cluster: live
                  retry_policy: { retry_on: "5xx", num_retries: 2, retry_back_off: { base_interval: 0.001s } }
              - name: retry-codes
                match: { prefix: "/status/409" }
                route:
                  cluster: live
                  retry_policy: { retry_on: "retriable-status-codes", retriable_status_codes: [409], num_retries: 3 }
              - name: live
                match: { prefix: "/" }
                route: { cluster: live }
"#;

async fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
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
async fn upstream_failures_get_envoy_codes_and_flags() {
    let live = upstream("live").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let c = vec![
        cluster("live", &[live.addr.port()], ""),
        cluster("dead", &[dead_port()], ""),
    ];
    let p = proxy(&http_bootstrap(
        ROUTES,
        &access_log(log.to_str().expect("utf-8")),
        "",
        &c,
    ));
    let addr = p.listener_address("http").expect("bound");

    let g = get(addr, "svc", "/dead").await;
    assert_eq!(g.status, 503);
    assert!(g.body.contains("connection failure"), "{}", g.body);
    let g = get(addr, "svc", "/hang").await;
    assert_eq!(
        (g.status, g.body.as_str()),
        (504, "upstream request timeout")
    );
    let g = get(addr, "svc", "/ok").await;
    assert_eq!(g.status, 200);

    let lines = wait_for_lines(&log, 3).await;
    assert!(
        lines[0].starts_with("503 UF dead dead GET /dead HTTP/1.1 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("504 UT live slow GET /hang HTTP/1.1 24"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("200 - live live GET /ok HTTP/1.1 "),
        "{}",
        lines[2]
    );
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_seen_by_the_upstream() {
    let live = upstream("live").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let c = vec![
        cluster("live", &[live.addr.port()], ""),
        cluster("dead", &[dead_port()], ""),
    ];
    let p = proxy(&http_bootstrap(
        ROUTES,
        &access_log(log.to_str().expect("utf-8")),
        "",
        &c,
    ));
    let addr = p.listener_address("http").expect("bound");

    let g = send(addr, "POST", "svc", "/status/503", &[], "replayed body").await;
    assert_eq!(g.status, 503);
    assert_eq!(live.hits(), 3, "1 try + 2 retries");
    let g = get(addr, "svc", "/status/409").await;
    assert_eq!(g.status, 409);
    assert_eq!(
        live.hits(),
        3 + 4,
        "1 try + 3 retries on a retriable status code"
    );
    let g = get(addr, "svc", "/hang-retry").await;
    assert_eq!(g.status, 504);
    assert_eq!(live.hits(), 7 + 2, "per-try timeout retried once");
    let lines = wait_for_lines(&log, 3).await;
    assert!(
        lines[0].starts_with("503 URX live retry POST"),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].starts_with("504 URX,UT live per-try GET /hang-retry"),
        "{}",
        lines[2]
    );
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_and_local_rate_limit() {
    let live = upstream("live").await;
    let filters = r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: { max_tokens: 3, tokens_per_fill: 1, fill_interval: 3600s }
              filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { default_value: { numerator: 100, denominator: HUNDRED } }
"#;
    let c = vec![cluster("live", &[live.addr.port()], "")];
    let p = proxy(&http_bootstrap(
        "            virtual_hosts:\n            - { name: all, domains: [\"*\"], routes: [{ match: { prefix: \"/\" }, route: { cluster: live } }] }\n",
        "",
        filters,
        &c,
    ));
    let addr = p.listener_address("http").expect("bound");
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(get(addr, "svc", "/").await.status);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(live.hits(), 3);
    p.shutdown();

    let fault = r#"          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { http_status: 418, percentage: { numerator: 100, denominator: HUNDRED } }
"#;
    let p = proxy(&http_bootstrap(
        "            virtual_hosts:\n            - { name: all, domains: [\"*\"], routes: [{ match: { prefix: \"/\" }, route: { cluster: live } }] }\n",
        "",
        fault,
        &c,
    ));
    let addr = p.listener_address("http").expect("bound");
    let g = get(addr, "svc", "/").await;
    assert_eq!((g.status, g.body.as_str()), (418, "fault filter abort"));
    assert_eq!(live.hits(), 3, "aborted requests never reach the upstream");
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_and_close() {
    let live = upstream("live").await;
    let c = vec![cluster("live", &[live.addr.port()], "")];
    let p = proxy(&http_bootstrap(
        "            virtual_hosts:\n            - { name: all, domains: [\"*\"], routes: [{ match: { prefix: \"/\" }, route: { cluster: live } }] }\n",
        "",
        "",
        &c,
    ));
    let addr = p.listener_address("http").expect("bound");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Without Colon\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(live.hits(), 0);
    p.shutdown();
}
