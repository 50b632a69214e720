//! weft-proxy's DNS proxy over real sockets on loopback (no root): UDP
//! and TCP queries for mesh names answered from the name table, NODATA for
//! AAAA of IPv4-only names, SERVFAIL before the first table, and everything
//! else forwarded to an upstream resolver this test runs on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use weft_proxy::dns::DnsProxy;

mod dns_common;
use dns_common::{Upstream, config, query, table, udp};

fn tcp(server: SocketAddr, q: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn answers_mesh_names_over_udp_and_tcp_and_forwards_the_rest() {
    let upstream = Upstream::start();
    let dns = DnsProxy::start(config(vec![upstream.addr])).unwrap();
    // UDP and TCP share the port (port 0 picked one for both).
    let server = dns.local_addrs()[0];

    // Before the first table: SERVFAIL, nothing forwarded.
    let m = udp(server, &query(1, "reviews.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(!dns.has_table());

    dns.update(&table());
    for (transport, send) in [
        ("udp", udp as fn(SocketAddr, &[u8]) -> Message),
        ("tcp", tcp),
    ] {
        for name in [
            "reviews.",
            "reviews.demo.",
            "reviews.demo.svc.cluster.local.",
        ] {
            let m = send(server, &query(7, name, RecordType::A));
            assert_eq!(m.metadata.id, 7);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{transport} {name}"
            );
            assert!(m.metadata.authoritative, "{transport} {name}");
            assert_eq!(
                a_records(&m),
                [Ipv4Addr::new(10, 96, 0, 20)],
                "{transport} {name}"
            );
        }
        // IPv4-only: AAAA is NODATA (NOERROR, no records), not NXDOMAIN.
        let m = send(server, &query(8, "reviews.", RecordType::AAAA));
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{transport}"
        );
        assert!(m.answers.is_empty(), "{transport}: {m:?}");
    }
    assert_eq!(
        upstream.seen.load(Ordering::Relaxed),
        0,
        "mesh names never go upstream"
    );

    // Other names: the upstream's answer, for the client's id.
    let m = udp(server, &query(9, "outside.test.", RecordType::A));
    assert_eq!(m.metadata.id, 9);
    assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 55)]);
    let m = udp(server, &query(10, "nowhere.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // A name from another namespace has no bare form: forwarded too.
    let m = udp(server, &query(11, "ratings.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream.seen.load(Ordering::Relaxed), 3);

    // A new table replaces the old one.
    let mut t = table();
    t.table
        .get_mut("reviews.demo.svc.cluster.local")
        .unwrap()
        .ips = vec!["10.96.0.21".into()];
    dns.update(&t);
    let m = udp(server, &query(12, "reviews.", RecordType::A));
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 96, 0, 21)]);
}

#[test]
fn unreachable_upstreams_give_servfail() {
    // A port nothing listens on (bound, then closed).
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dns = DnsProxy::start(config(vec![dead])).unwrap();
    dns.update(&table());
    let server = dns.local_addrs()[0];
    let m = udp(server, &query(3, "outside.test.", RecordType::A));
    assert_eq!(m.metadata.id, 3);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = tcp(server, &query(4, "outside.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // Mesh names still answer.
    let m = udp(server, &query(5, "reviews.", RecordType::A));
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 96, 0, 20)]);
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = config(vec![]);
    c.listen = vec![taken.local_addr().unwrap()];
    let e = DnsProxy::start(c).unwrap_err().to_string();
    assert!(e.contains("cannot listen on udp 127.0.0.1:"), "{e}");
}
