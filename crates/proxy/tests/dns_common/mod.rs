//! Shared by the DNS proxy tests (`dns_proxy.rs`, `dns_metrics.rs`): an
//! upstream resolver on loopback, the proxy's configuration and name table,
//! and a UDP query helper.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use weft_proxy::dns::DnsConfig;
use weft_xds::nds::{NameInfo, NameTable};

/// An upstream resolver: `outside.test` A 192.0.2.55, NXDOMAIN otherwise;
/// counts the queries it saw.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let (seen, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                s.fetch_add(1, Ordering::Relaxed);
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
            seen,
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

pub fn config(upstreams: Vec<SocketAddr>) -> DnsConfig {
    DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        try_ipv6_loopback: false,
        upstreams,
        namespace: "demo".into(),
        domain: "cluster.local".into(),
        search: vec!["demo.svc.cluster.local".into(), "svc.cluster.local".into()],
    }
}

pub fn table() -> NameTable {
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

pub fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), t));
    m.to_vec().unwrap()
}

pub fn udp(server: SocketAddr, q: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send_to(q, server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, from) = s.recv_from(&mut buf).expect("a DNS reply");
    assert_eq!(from, server);
    Message::from_vec(&buf[..n]).unwrap()
}
