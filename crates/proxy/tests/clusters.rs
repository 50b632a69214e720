//! Cluster behaviour against real upstreams: outlier ejection, circuit
//! breakers (UO), priorities with endpoint health, STRICT_DNS and EDS-style
//! inline load assignments.

mod support;
use support::*;

fn to(cluster_name: &str, timeout: &str) -> String {
    format!(
        "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: {cluster_name}, timeout: {timeout} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_host() {
    let good = upstream("good").await;
    let od = "    outlier_detection: { consecutive_5xx: 2, base_ejection_time: 300s }\n";
    let p = proxy(&http_bootstrap(
        &to("pool", "5s"),
        "",
        "",
        &[cluster("pool", &[good.addr.port(), dead_port()], od)],
    ));
    let addr = p.listener_address("http").expect("bound");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(addr, "svc", "/").await.status);
    }
    let failures = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(
        failures, 2,
        "the dead host fails twice, then is ejected: {statuses:?}"
    );
    assert!(statuses[6..].iter().all(|s| *s == 200), "{statuses:?}");
    let admin = p.admin_address.expect("admin");
    let (_, clusters) =
        tokio::task::spawn_blocking(move || weft_proxy::agent::request(admin, "GET", "/clusters"))
            .await
            .expect("join")
            .expect("clusters");
    assert!(
        clusters.contains("health_flags::/failed_outlier_check"),
        "{clusters}"
    );
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_refuses_over_max_requests() {
    let up = upstream("up").await;
    let cb = "    circuit_breakers: { thresholds: [{ max_requests: 1, max_pending_requests: 1, max_connections: 1 }] }\n";
    let p = proxy(&http_bootstrap(
        &to("up", "1s"),
        "",
        "",
        &[cluster("up", &[up.addr.port()], cb)],
    ));
    let addr = p.listener_address("http").expect("bound");
    // One request occupies the only slot (the upstream never answers it).
    let hanging = tokio::spawn(async move { get(addr, "svc", "/hang").await.status });
    for _ in 0..100 {
        if up.hits() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(up.hits(), 1, "the first request reached the upstream");
    let g = get(addr, "svc", "/x").await;
    assert_eq!(g.status, 503);
    assert!(g.body.contains("overflow"), "{}", g.body);
    assert_eq!(up.hits(), 1, "the refused request never left the proxy");
    assert_eq!(hanging.await.expect("join"), 504);
    assert_eq!(
        get(addr, "svc", "/x").await.status,
        200,
        "the slot is free again"
    );
    p.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_skip_unhealthy_endpoints_and_strict_dns_resolves() {
    let (p0, p1) = (upstream("p0").await, upstream("p1").await);
    let eds = format!(
        "  - name: eds\n    type: EDS\n    connect_timeout: 1s\n    eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n    load_assignment:\n      cluster_name: eds\n      endpoints:\n      - priority: 0\n        lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          health_status: UNHEALTHY\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          health_status: DRAINING\n      - priority: 1\n        lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
        p0.addr.port(),
        dead_port(),
        p1.addr.port()
    );
    let dns = format!(
        "  - name: dns\n    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: dns\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {} }} }} }}\n",
        p0.addr.port()
    );
    let routes = "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/dns\" }\n                route: { cluster: dns }\n              - match: { prefix: \"/\" }\n                route: { cluster: eds }\n";
    let p = proxy(&http_bootstrap(routes, "", "", &[eds, dns]));
    let addr = p.listener_address("http").expect("bound");
    for _ in 0..5 {
        assert_eq!(
            get(addr, "svc", "/").await.echo()["server"],
            "p1",
            "priority 0 has no healthy host"
        );
    }
    assert_eq!(p0.hits(), 0);
    assert_eq!(
        get(addr, "svc", "/dns").await.echo()["server"],
        "p0",
        "localhost resolved"
    );
    p.shutdown();
}
