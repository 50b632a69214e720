//! The DNS proxy's Istio agent metrics on weft-proxy's Prometheus output
//! (what 15090 and admin `/stats/prometheus` serve: `Stats::prometheus`):
//! queries answered from the name table count as requests only, forwarded
//! ones also as upstream requests with their duration, and forwarded ones
//! no upstream answers as upstream failures. Real sockets on loopback, a
//! resolver this test runs, no root. One test in its own binary: the
//! counters are the process's.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use weft_proxy::dns::{DnsConfig, DnsMetrics, DnsProxy};
use weft_proxy::stats::Stats;
use weft_xds::nds::{NameInfo, NameTable};

/// A resolver answering `outside.test` A 192.0.2.55, NXDOMAIN otherwise.
struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Upstream {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = Message::from_vec(&buf[..n]).unwrap();
                let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
                resp.add_queries(req.queries.clone());
                let q = &req.queries[0];
                if q.name().to_ascii() == "outside.test." {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 55))),
                    ));
                } else {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = sock.send_to(&resp.to_vec().unwrap(), peer);
            }
        });
        Upstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(upstreams: Vec<SocketAddr>) -> DnsConfig {
    DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        try_ipv6_loopback: false,
        upstreams,
        namespace: "demo".into(),
        domain: "cluster.local".into(),
        search: vec!["demo.svc.cluster.local".into()],
    }
}

fn table() -> NameTable {
    let mut t = NameTable::default();
    t.table.insert(
        "reviews.demo.svc.cluster.local".into(),
        NameInfo {
            ips: vec!["10.96.0.20".into()],
            registry: "Kubernetes".into(),
            shortname: "reviews".into(),
            namespace: "demo".into(),
            alt_hosts: vec![],
        },
    );
    t
}

fn udp(server: SocketAddr, id: u16, name: &str) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).expect("a DNS reply");
    Message::from_vec(&buf[..n]).unwrap()
}

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
    let m = udp(server, 1, "reviews.");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(counts(), [1.0, 0.0, 0.0, 0.0]);

    // A mesh name answered from the table: a request, nothing upstream.
    dns.update(&table());
    let m = udp(server, 2, "reviews.demo.svc.cluster.local.");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(counts(), [2.0, 0.0, 0.0, 0.0]);

    // Forwarded and answered (an NXDOMAIN is an answer too).
    let m = udp(server, 3, "outside.test.");
    assert_eq!(m.answers.len(), 1);
    let m = udp(server, 4, "nowhere.test.");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(counts(), [4.0, 2.0, 0.0, 2.0]);

    // Forwarded where no upstream answers: SERVFAIL and a failure.
    failing.update(&table());
    let m = udp(failing_server, 5, "outside.test.");
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
