//! The node's cluster DNS (CoreDNS' part in Kubernetes): answers `A`
//! queries for `SERVICE.NAMESPACE.svc.cluster.local` with the Service VIP on
//! the node bridge's port 53. Pods' resolv.conf points here with Kubernetes'
//! search list, so short names work without a sidecar; with DNS capture the
//! sidecar's DNS proxy answers first and forwards the rest here. Names
//! outside the cluster domain are refused: nothing leaves the node.
//!
//! [`answer`] is pure; [`serve`] runs it on a UDP socket.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, RwLock};

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";

/// FQDN (lowercase, no trailing dot) → address.
pub type Table = Arc<RwLock<BTreeMap<String, Ipv4Addr>>>;

/// The answer to one DNS query message, or `None` for garbage.
pub fn answer(query: &[u8], table: &BTreeMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    // Walk the question name.
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    query.get(..question_end)?;
    let name = labels.join(".");
    let (rcode, addr) = if qdcount != 1 {
        (1, None) // FORMERR
    } else if let Some(addr) = table.get(&name) {
        (0, (qtype == 1 || qtype == 255).then_some(*addr))
    } else if name == DOMAIN || name.ends_with(&format!(".{DOMAIN}")) {
        (3, None) // NXDOMAIN
    } else {
        (5, None) // REFUSED: no upstream resolver from the node
    };
    let mut out = Vec::with_capacity(question_end + 16);
    out.extend_from_slice(&query[..2]);
    // QR, opcode copied, AA, RD copied; RA; rcode.
    out.push(0x80 | (query[2] & 0x78) | 0x04 | (query[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(addr.is_some()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    if let Some(addr) = addr {
        out.extend_from_slice(&[0xc0, 0x0c]); // name: pointer to the question
        out.extend_from_slice(&1u16.to_be_bytes()); // A
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&5u32.to_be_bytes()); // TTL
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    Some(out)
}

/// Serves `table` on `socket` until the socket fails (it is closed when the
/// node namespace goes away).
pub fn serve(socket: UdpSocket, table: Table) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            return;
        };
        let reply = {
            let table = table.read().unwrap_or_else(|e| e.into_inner());
            answer(&buf[..n], &table)
        };
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn answers_services_and_refuses_the_rest() {
        let table = BTreeMap::from([(
            "reviews.demo.svc.cluster.local".to_owned(),
            Ipv4Addr::new(10, 96, 1, 2),
        )]);
        let a = answer(&query("Reviews.demo.svc.cluster.local", 1), &table).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1);
        assert_eq!(&a[a.len() - 4..], &[10, 96, 1, 2]);
        // AAAA of a known name: no error, no answer.
        let aaaa = answer(&query("reviews.demo.svc.cluster.local", 28), &table).unwrap();
        assert_eq!((aaaa[3] & 0x0f, aaaa[7]), (0, 0));
        let nx = answer(&query("reviews.demo.demo.svc.cluster.local", 1), &table).unwrap();
        assert_eq!(nx[3] & 0x0f, 3);
        let refused = answer(&query("example.com", 1), &table).unwrap();
        assert_eq!(refused[3] & 0x0f, 5);
        assert!(answer(&[1, 2, 3], &table).is_none());
    }
}
