//! Routing through a real weft-proxy to real upstream servers: virtual
//! hosts, path/header/query matching, rewrites, header mutations, direct
//! responses, redirects, weighted splits and Envoy's request headers.

mod support;
use support::*;

fn routes(a: u16, b: u16) -> (String, Vec<String>) {
    let routes = r#"            virtual_hosts:
            - name: api
              domains: ["api.example.com", "api.example.com:*"]
              routes:
              - name: exact
                match: { path: "/exact" }
                route: { cluster: b }
              - name: hdr
                match:
                  prefix: "/"
                  headers:
                  - name: x-canary
                    string_match: { exact: "yes" }
                route: { cluster: b }
              - name: query
                match:
                  prefix: "/q"
                  query_parameters:
                  - name: v
                    string_match: { exact: "2" }
                route: { cluster: b }
              - name: regex
                match: { safe_regex: { regex: "/items/[0-9]+" } }
                route:
                  cluster: a
                  regex_rewrite: { pattern: { regex: "^/items/([0-9]+)$" }, substitution: "/v2/item/\\1" }
              - name: sep
                match: { path_separated_prefix: "/sep" }
                route: { cluster: b }
              - name: nocase
                match: { prefix: "/CaSe", case_sensitive: false }
                route: { cluster: b }
              - name: rewrite
                match: { prefix: "/old/" }
                route: { cluster: a, prefix_rewrite: "/new/", host_rewrite_literal: "rewritten.internal" }
                request_headers_to_add:
                - header: { key: x-added, value: route }
                request_headers_to_remove: ["x-secret"]
                response_headers_to_add:
                - header: { key: x-resp, value: added }
                response_headers_to_remove: ["x-upstream"]
              - name: default
                match: { prefix: "/" }
                route: { cluster: a }
            - name: wild
              domains: ["*.wild.test"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 201, body: { inline_string: "from suffix wildcard" } }
            - name: pre
              domains: ["prefix.*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 202 }
            - name: redirects
              domains: ["redirect.test"]
              routes:
              - match: { prefix: "/https" }
                redirect: { https_redirect: true }
              - match: { prefix: "/moved" }
                redirect: { path_redirect: "/elsewhere", response_code: PERMANENT_REDIRECT }
"#
    .to_owned();
    (routes, vec![cluster("a", &[a], ""), cluster("b", &[b], "")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_domain_path_header_and_query() {
    let (ua, ub) = (upstream("a").await, upstream("b").await);
    let (r, c) = routes(ua.addr.port(), ub.addr.port());
    let p = proxy(&http_bootstrap(&r, "", "", &c));
    let addr = p.listener_address("http").expect("bound");
    let host = "api.example.com";

    assert_eq!(get(addr, host, "/anything").await.echo()["server"], "a");
    assert_eq!(get(addr, host, "/exact").await.echo()["server"], "b");
    assert_eq!(get(addr, host, "/exact/more").await.echo()["server"], "a");
    let g = send(addr, "GET", host, "/x", &[("x-canary", "yes")], "").await;
    assert_eq!(g.echo()["server"], "b");
    assert_eq!(get(addr, host, "/q?a=1&v=2").await.echo()["server"], "b");
    assert_eq!(get(addr, host, "/q?v=3").await.echo()["server"], "a");
    assert_eq!(get(addr, host, "/sep").await.echo()["server"], "b");
    assert_eq!(get(addr, host, "/sep/x").await.echo()["server"], "b");
    assert_eq!(get(addr, host, "/separate").await.echo()["server"], "a");
    assert_eq!(get(addr, host, "/case/x").await.echo()["server"], "b");
    // The Host header with a port matches the "host:*" form only by the wildcard vhost rule.
    assert_eq!(
        get(addr, "API.EXAMPLE.COM", "/exact").await.echo()["server"],
        "b"
    );

    let g = get(addr, "x.wild.test", "/").await;
    assert_eq!((g.status, g.body.as_str()), (201, "from suffix wildcard"));
    assert_eq!(get(addr, "prefix.anything", "/").await.status, 202);

    let g = get(addr, "unknown.host", "/").await;
    assert_eq!(g.status, 404, "no virtual host: NR");
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_and_header_mutations() {
    let (ua, ub) = (upstream("a").await, upstream("b").await);
    let (r, c) = routes(ua.addr.port(), ub.addr.port());
    let p = proxy(&http_bootstrap(&r, "", "", &c));
    let addr = p.listener_address("http").expect("bound");

    let g = send(
        addr,
        "GET",
        "api.example.com",
        "/old/thing?x=1",
        &[("x-secret", "s")],
        "",
    )
    .await;
    assert_eq!(g.status, 200);
    let e = g.echo();
    assert_eq!(e["path"], "/new/thing?x=1");
    assert_eq!(e["headers"]["host"], "rewritten.internal");
    assert_eq!(e["headers"]["x-added"], "route");
    assert_eq!(e["headers"]["x-envoy-original-path"], "/old/thing?x=1");
    assert!(
        e["headers"].get("x-secret").is_none(),
        "removed header reached upstream: {e}"
    );
    assert_eq!(g.header("x-resp"), Some("added"));
    assert_eq!(g.header("x-upstream"), None, "response header not removed");

    let e = get(addr, "api.example.com", "/items/42").await.echo();
    assert_eq!(e["path"], "/v2/item/42");

    // Envoy's sidecar request headers.
    let e = get(addr, "api.example.com", "/plain").await.echo();
    let rid = e["headers"]["x-request-id"]
        .as_str()
        .expect("x-request-id generated");
    assert_eq!(rid.len(), 36, "uuid: {rid}");
    assert_eq!(e["headers"]["x-forwarded-proto"], "http");
    assert_eq!(e["headers"]["x-envoy-expected-rq-timeout-ms"], "15000");
    let e = send(
        addr,
        "GET",
        "api.example.com",
        "/plain",
        &[("x-request-id", "keep-me")],
        "",
    )
    .await
    .echo();
    assert_eq!(e["headers"]["x-request-id"], "keep-me");
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_direct_responses() {
    let (ua, ub) = (upstream("a").await, upstream("b").await);
    let (r, c) = routes(ua.addr.port(), ub.addr.port());
    let p = proxy(&http_bootstrap(&r, "", "", &c));
    let addr = p.listener_address("http").expect("bound");
    let g = get(addr, "redirect.test", "/https/x?y=1").await;
    assert_eq!(
        (g.status, g.header("location")),
        (301, Some("https://redirect.test/https/x?y=1"))
    );
    let g = get(addr, "redirect.test", "/moved").await;
    assert_eq!(
        (g.status, g.header("location")),
        (308, Some("http://redirect.test/elsewhere"))
    );
    assert_eq!(ua.hits() + ub.hits(), 0, "redirects never reach upstreams");
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_split_traffic() {
    let (ua, ub) = (upstream("a").await, upstream("b").await);
    let routes = r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  weighted_clusters:
                    clusters:
                    - { name: a, weight: 80 }
                    - name: b
                      weight: 20
                      request_headers_to_add: [{ header: { key: x-split, value: b } }]
"#;
    let c = vec![
        cluster("a", &[ua.addr.port()], ""),
        cluster("b", &[ub.addr.port()], ""),
    ];
    let p = proxy(&http_bootstrap(routes, "", "", &c));
    let addr = p.listener_address("http").expect("bound");
    let n = 400;
    let mut to_b = 0;
    for _ in 0..n {
        let e = get(addr, "svc", "/").await.echo();
        if e["server"] == "b" {
            to_b += 1;
            assert_eq!(e["headers"]["x-split"], "b");
        } else {
            assert!(e["headers"].get("x-split").is_none());
        }
    }
    // 20% of 400 = 80; a binomial's 5-sigma band is about ±40.
    assert!((40..=120).contains(&to_b), "b got {to_b} of {n}");
    assert_eq!(ua.hits() + ub.hits(), n);
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_ring_hash_balance_endpoints() {
    let (u1, u2, u3) = (
        upstream("e1").await,
        upstream("e2").await,
        upstream("e3").await,
    );
    let ports = [u1.addr.port(), u2.addr.port(), u3.addr.port()];
    let routes = r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/rr" }
                route: { cluster: rr }
              - match: { prefix: "/hash" }
                route:
                  cluster: hash
                  hash_policy: [{ header: { header_name: x-user } }]
"#;
    let c = vec![
        cluster("rr", &ports, ""),
        cluster("hash", &ports, "    lb_policy: RING_HASH\n"),
    ];
    let p = proxy(&http_bootstrap(routes, "", "", &c));
    let addr = p.listener_address("http").expect("bound");
    for _ in 0..30 {
        get(addr, "svc", "/rr").await;
    }
    assert_eq!(
        (u1.hits(), u2.hits(), u3.hits()),
        (10, 10, 10),
        "round robin spreads evenly"
    );
    let mut servers = std::collections::HashSet::new();
    for user in [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ] {
        let first = send(addr, "GET", "svc", "/hash", &[("x-user", user)], "")
            .await
            .echo()["server"]
            .clone();
        for _ in 0..4 {
            let again = send(addr, "GET", "svc", "/hash", &[("x-user", user)], "")
                .await
                .echo()["server"]
                .clone();
            assert_eq!(first, again, "user {user} moved between hosts");
        }
        servers.insert(first.to_string());
    }
    assert!(
        servers.len() >= 2,
        "ring hash put every user on one host: {servers:?}"
    );
    p.shutdown();
}
