//! The admin API, the health and Prometheus ports, and the agent commands
//! (`wait`, `request`) against a running proxy.

mod support;
use std::time::Duration;
use support::*;
use weft_proxy::agent;

const ALL: &str = "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: up }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    let up = upstream("up").await;
    let p = proxy(&http_bootstrap(
        ALL,
        "",
        "",
        &[cluster("up", &[up.addr.port()], "")],
    ));
    let addr = p.listener_address("http").expect("bound");
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    let admin = p.admin_address.expect("admin");
    let call = |m: &'static str, path: &'static str| {
        tokio::task::spawn_blocking(move || agent::request(admin, m, path).expect(path))
    };

    let (s, body) = call("GET", "/ready").await.expect("join");
    assert_eq!((s, body.as_str()), (200, "LIVE\n"));
    let (s, body) = call("GET", "/server_info").await.expect("join");
    assert_eq!(s, 200);
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["command_line_options"]["concurrency"], 1);
    let (_, body) = call("GET", "/config_dump").await.expect("join");
    let dump: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        dump["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
    );
    assert_eq!(
        dump["configs"][1]["static_clusters"][0]["cluster"]["name"],
        "up"
    );
    let (_, body) = call("GET", "/clusters").await.expect("join");
    assert!(
        body.contains(&format!("up::{}::health_flags::healthy", up.addr)),
        "{body}"
    );
    let (_, body) = call("GET", "/stats").await.expect("join");
    assert!(body.contains("cluster.up.upstream_rq_total: 1"), "{body}");
    assert!(body.contains("http.ingress.downstream_rq_2xx: 1"), "{body}");
    let (_, body) = call("GET", "/stats/prometheus").await.expect("join");
    assert!(
        body.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"up\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("envoy_http_downstream_rq_time_bucket"),
        "{body}"
    );
    let (s, _) = call("POST", "/logging?level=debug").await.expect("join");
    assert_eq!(s, 200);

    // Istio's ports.
    let health = p.health_address.expect("health");
    let prom = p.prometheus_address.expect("prometheus");
    let url = format!("http://{health}/healthz/ready");
    tokio::task::spawn_blocking(move || {
        agent::wait(&url, Duration::from_secs(5), Duration::from_millis(50))
    })
    .await
    .expect("join")
    .expect("ready");
    let (s, body) =
        tokio::task::spawn_blocking(move || agent::request(prom, "GET", "/stats/prometheus"))
            .await
            .expect("join")
            .expect("prom");
    assert_eq!(s, 200);
    assert!(body.contains("envoy_cluster_upstream_rq_total"), "{body}");

    // Draining flips readiness and stops accepting.
    let (s, _) = call("POST", "/drain_listeners").await.expect("join");
    assert_eq!(s, 200);
    let (s, body) = call("GET", "/ready").await.expect("join");
    assert_eq!((s, body.as_str()), (503, "DRAINING\n"));
    let (s, _) = call("POST", "/quitquitquit").await.expect("join");
    assert_eq!(s, 200);
    tokio::task::spawn_blocking(move || p.join())
        .await
        .expect("proxy stopped after quitquitquit");
}

#[test]
fn wait_times_out_with_the_last_answer() {
    let port = dead_port();
    let err = agent::wait(
        &format!("http://127.0.0.1:{port}/healthz/ready"),
        Duration::from_millis(200),
        Duration::from_millis(50),
    )
    .expect_err("nothing listens");
    let text = err.to_string();
    assert!(
        text.contains("timed out") && text.contains(&port.to_string()),
        "{text}"
    );
}
