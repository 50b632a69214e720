//! Answering one DNS query from the lookup table: parse, decide (mesh
//! answer, or forward upstream), encode. Pure: bytes in, bytes or a
//! decision out; sockets live in `server`.
//!
//! As Istio's agent: mesh names get an authoritative NOERROR answer with
//! their A or AAAA records (NOERROR without records, "NODATA", when the
//! family has none, so a resolver asking A and AAAA in parallel does not
//! give up on the name); a name reached through a search domain gets a
//! CNAME to the mesh name first; before the first table arrives every
//! query fails with SERVFAIL; everything else is forwarded untouched.
//! Records carry a 30 s TTL; A/AAAA records are shuffled per answer.

use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::table::LookupTable;

/// TTL of mesh answers, as Istio's agent uses.
pub const TTL: u32 = 30;
/// The classic UDP payload limit without EDNS.
const UDP_MIN: usize = 512;

/// Transport the query came over (shapes the size limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a mesh name: forward the query as received.
    Forward,
    /// Not a DNS query worth an answer (too short to carry an id).
    Drop,
}

/// Decides on `query`; `table` is `None` until the first name table.
pub fn answer(query: &[u8], table: Option<&LookupTable>, transport: Transport) -> Decision {
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) if query.len() >= 2 => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return reply(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
        }
        Err(_) => return Decision::Drop,
    };
    if req.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    let Some(question) = req.queries.first() else {
        return reply(error(&req, ResponseCode::ServFail));
    };
    if req.metadata.op_code != OpCode::Query {
        return Decision::Forward;
    }
    let Some(table) = table else {
        return reply(error(&req, ResponseCode::ServFail));
    };
    let qtype = question.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return Decision::Forward;
    }
    let qname = question.name().to_ascii();
    let Some(found) = table.lookup(&qname) else {
        return Decision::Forward;
    };
    let mut resp = response(&req);
    resp.metadata.authoritative = true;
    let mut owner = question.name().clone();
    if let Some(target) = &found.cname {
        let Ok(target) = Name::from_str(target) else {
            return Decision::Forward;
        };
        resp.add_answer(Record::from_rdata(
            owner.clone(),
            TTL,
            RData::CNAME(CNAME(target.clone())),
        ));
        owner = target;
    }
    let mut records: Vec<Record> = if qtype == RecordType::A {
        found
            .addrs
            .v4
            .iter()
            .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(*ip))))
            .collect()
    } else {
        found
            .addrs
            .v6
            .iter()
            .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::AAAA(AAAA(*ip))))
            .collect()
    };
    fastrand::shuffle(&mut records);
    if found.cname.is_none() || !records.is_empty() {
        resp.add_answers(records);
    } else {
        // NODATA for the alias: no records of that family, so no CNAME either.
        resp.answers.clear();
    }
    encode(resp, limit(&req, transport))
}

/// The SERVFAIL reply for `query` (upstreams unreachable), if it parses.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    error(&req, ResponseCode::ServFail).to_vec().ok()
}

/// A response skeleton for `req`: same id, opcode, RD and question.
fn response(req: &Message) -> Message {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries.iter().cloned());
    if let Some(edns) = &req.edns {
        let mut e = Edns::new();
        e.set_max_payload(edns.max_payload().max(UDP_MIN as u16));
        resp.set_edns(e);
    }
    resp
}

fn error(req: &Message, code: ResponseCode) -> Message {
    let mut resp = response(req);
    resp.metadata.response_code = code;
    resp
}

/// The largest reply the client accepts over `transport`.
fn limit(req: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => req
            .edns
            .as_ref()
            .map_or(UDP_MIN, |e| usize::from(e.max_payload()).max(UDP_MIN)),
    }
}

fn reply(msg: Message) -> Decision {
    match msg.to_vec() {
        Ok(b) => Decision::Reply(b),
        Err(_) => Decision::Drop,
    }
}

/// Encodes `resp`, truncated (TC set, answers dropped) when over `limit`.
fn encode(resp: Message, limit: usize) -> Decision {
    match resp.to_vec() {
        Ok(b) if b.len() <= limit => Decision::Reply(b),
        Ok(_) => reply(resp.truncate()),
        Err(_) => Decision::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::table::TableContext;
    use hickory_proto::op::Query;
    use std::net::Ipv4Addr;
    use weft_xds::nds::{NameInfo, NameTable};

    fn table() -> LookupTable {
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
        t.table.insert(
            "many.example.com".into(),
            NameInfo {
                ips: (1..=60).map(|i| format!("192.0.2.{i}")).collect(),
                registry: "External".into(),
                ..NameInfo::default()
            },
        );
        LookupTable::build(
            &t,
            &TableContext::new("demo", "cluster.local", &["demo.svc.cluster.local".into()]),
        )
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn decode(d: Decision) -> Message {
        match d {
            Decision::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_record_for_a_mesh_name() {
        let t = table();
        let m = decode(answer(
            &query("reviews.", RecordType::A),
            Some(&t),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, TTL);
        assert_eq!(m.answers[0].name.to_ascii(), "reviews.");
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 96, 0, 20))));
    }

    #[test]
    fn nodata_for_aaaa_of_an_ipv4_only_name() {
        let t = table();
        let m = decode(answer(
            &query("reviews.demo.", RecordType::AAAA),
            Some(&t),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert!(m.metadata.authoritative);
    }

    #[test]
    fn search_form_gets_cname_then_address() {
        let t = table();
        let m = decode(answer(
            &query(
                "reviews.demo.svc.cluster.local.demo.svc.cluster.local.",
                RecordType::A,
            ),
            Some(&t),
            Transport::Tcp,
        ));
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(
            m.answers[1].name.to_ascii(),
            "reviews.demo.svc.cluster.local."
        );
    }

    #[test]
    fn other_names_and_types_are_forwarded() {
        let t = table();
        assert_eq!(
            answer(
                &query("example.org.", RecordType::A),
                Some(&t),
                Transport::Udp
            ),
            Decision::Forward
        );
        assert_eq!(
            answer(&query("reviews.", RecordType::MX), Some(&t), Transport::Udp),
            Decision::Forward
        );
    }

    #[test]
    fn servfail_before_the_first_table_and_formerr_on_garbage() {
        let m = decode(answer(
            &query("reviews.", RecordType::A),
            None,
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let m = decode(answer(&[0xab, 0xcd, 0xff], None, Transport::Udp));
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(answer(&[1], None, Transport::Udp), Decision::Drop);
        let s = Message::from_vec(&servfail(&query("x.", RecordType::A)).unwrap()).unwrap();
        assert_eq!(s.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn large_udp_answers_are_truncated_tcp_ones_are_not() {
        let t = table();
        let q = query("many.example.com.", RecordType::A);
        let m = decode(answer(&q, Some(&t), Transport::Udp));
        assert!(m.metadata.truncation && m.answers.is_empty());
        let m = decode(answer(&q, Some(&t), Transport::Tcp));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
    }
}
