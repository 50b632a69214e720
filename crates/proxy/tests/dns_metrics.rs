//! The DNS proxy's Istio agent metrics on weft-proxy's Prometheus output
//! (what 15090 and admin `/stats/prometheus` serve: `Stats::prometheus`):
//! queries answered from the name table count as requests only, forwarded
//! ones also as upstream requests with their duration, and forwarded ones
//! no upstream answers as upstream failures. Real sockets on loopback, a
//! resolver this test runs, no root. One test in its own binary: the
//! counters are the process's.

use std::net::UdpSocket;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use weft_proxy::dns::{DnsMetrics, DnsProxy};
use weft_proxy::stats::Stats;

#[allow(dead_code)]
mod dns_common;
use dns_common::{Upstream, config, query, table, udp};

/// The sample `name` (no labels) in weft-proxy's Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[test]
fn queries_move_istio_agent_dns_counters_on_the_prometheus_output() {
    let names = [
        "istio_agent_dns_requests_total",
        "istio_agent_dns_upstream_requests_total",
        "istio_agent_dns_upstream_failures_total",
        "istio_agent_dns_upstream_request_duration_seconds_count",
    ];
    let before = Stats::new().prometheus();
    assert!(
        !before.contains("istio_agent_dns"),
        "no DNS metrics without a DNS proxy:\n{before}"
    );
    let upstream = Upstream::start();
    // An upstream port nothing listens on: refused at once.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dns = DnsProxy::start(config(vec![upstream.addr])).unwrap();
    let failing = DnsProxy::start(config(vec![dead])).unwrap();
    let (server, failing_server) = (dns.local_addrs()[0], failing.local_addrs()[0]);
    assert!(Arc::ptr_eq(dns.metrics(), &DnsMetrics::process()));
    let counts = || {
        let text = Stats::new().prometheus();
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        names.map(|n| sample(&text, n))
    };
    assert_eq!(counts(), [0.0; 4]);

    // Before the first table: SERVFAIL, a request, nothing upstream.
    let m = udp(server, &query(1, "reviews.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(counts(), [1.0, 0.0, 0.0, 0.0]);

    // A mesh name answered from the table: a request, nothing upstream.
    dns.update(&table());
    let m = udp(
        server,
        &query(2, "reviews.demo.svc.cluster.local.", RecordType::A),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(counts(), [2.0, 0.0, 0.0, 0.0]);

    // Forwarded and answered (an NXDOMAIN is an answer too).
    let m = udp(server, &query(3, "outside.test.", RecordType::A));
    assert_eq!(m.answers.len(), 1);
    let m = udp(server, &query(4, "nowhere.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(counts(), [4.0, 2.0, 0.0, 2.0]);

    // Forwarded where no upstream answers: SERVFAIL and a failure.
    failing.update(&table());
    let m = udp(failing_server, &query(5, "outside.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(counts(), [5.0, 3.0, 1.0, 3.0]);
    let text = Stats::new().prometheus();
    assert!(
        text.contains("# TYPE istio_agent_dns_upstream_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("istio_agent_dns_upstream_request_duration_seconds_bucket{le=\"5.0\"} 3"),
        "{text}"
    );
    let m = dns.metrics();
    assert_eq!(
        (m.requests(), m.upstream_requests(), m.upstream_failures()),
        (5, 3, 1)
    );
}
