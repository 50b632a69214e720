//! Decoding state-of-the-world requests without a `String` per resource
//! name. Every SotW ACK repeats the proxy's whole subscription (24,000
//! EDS names at 10,000 services); prost would allocate each name on its
//! own, per ACK and per proxy. [`SotwRequest`] reads the same wire format
//! (`envoy.service.discovery.v3.DiscoveryRequest`) but keeps the names in
//! one buffer, checked as UTF-8 as prost would; every other field decodes
//! into a plain [`DiscoveryRequest`] (whose `resource_names` stays empty).

use bytes::{Buf, BufMut};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_varint, encode_key, encode_varint,
    encoded_len_varint, key_len,
};
use prost::{DecodeError, Message};

/// `DiscoveryRequest.resource_names`.
const RESOURCE_NAMES: u32 = 3;

/// A `DiscoveryRequest` with its resource names kept in one buffer.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct SotwRequest {
    /// Every field but `resource_names`.
    pub(crate) head: DiscoveryRequest,
    /// The names, one after the other (each checked as UTF-8 when read).
    text: Vec<u8>,
    /// Where each name ends in `text`, in request order.
    ends: Vec<usize>,
}

impl SotwRequest {
    /// The resource names in request order.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                // Checked when decoded (or built from `&str`).
                let n = std::str::from_utf8(&self.text[start..end]).unwrap_or_default();
                start = end;
                n
            })
            .collect()
    }

    /// A request with `names` (tests).
    #[cfg(test)]
    pub(crate) fn with_names(head: DiscoveryRequest, names: &[&str]) -> SotwRequest {
        let mut r = SotwRequest {
            head,
            ..SotwRequest::default()
        };
        for n in names {
            r.text.extend_from_slice(n.as_bytes());
            r.ends.push(r.text.len());
        }
        r
    }
}

/// The error prost's own string decoding gives for a field of `len`
/// bytes holding `bytes` (too short, or not UTF-8), so errors read as
/// prost's.
fn string_error(len: u64, bytes: &[u8]) -> DecodeError {
    let mut wire = Vec::with_capacity(bytes.len() + 10);
    encode_varint(len, &mut wire);
    wire.extend_from_slice(bytes);
    let mut s = String::new();
    let ctx = DecodeContext::default();
    match prost::encoding::string::merge(WireType::LengthDelimited, &mut s, &mut &wire[..], ctx) {
        Err(e) => e,
        // Not reached: callers pass a short or invalid field.
        Ok(()) => match decode_varint(&mut &[0x80u8][..]) {
            Err(e) => e,
            Ok(_) => unreachable!("a truncated varint never decodes"),
        },
    }
}

impl Message for SotwRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        for n in self.names() {
            encode_key(RESOURCE_NAMES, WireType::LengthDelimited, buf);
            encode_varint(n.len() as u64, buf);
            buf.put_slice(n.as_bytes());
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != RESOURCE_NAMES {
            return self.head.merge_field(tag, wire_type, buf, ctx);
        }
        check_wire_type(WireType::LengthDelimited, wire_type)?;
        let len = decode_varint(buf)?;
        let len = match usize::try_from(len) {
            Ok(n) if n <= buf.remaining() => n,
            _ => return Err(string_error(len, &[])),
        };
        let start = self.text.len();
        self.text.reserve(len);
        let mut left = len;
        while left > 0 {
            let chunk = buf.chunk();
            let n = chunk.len().min(left);
            self.text.extend_from_slice(&chunk[..n]);
            buf.advance(n);
            left -= n;
        }
        if std::str::from_utf8(&self.text[start..]).is_err() {
            let err = string_error(len as u64, &self.text[start..]);
            self.text.truncate(start);
            return Err(err);
        }
        self.ends.push(self.text.len());
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        let names: usize = self
            .names()
            .iter()
            .map(|n| key_len(RESOURCE_NAMES) + encoded_len_varint(n.len() as u64) + n.len())
            .sum();
        self.head.encoded_len() + names
    }

    fn clear(&mut self) {
        self.head.clear();
        self.text.clear();
        self.ends.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    #[test]
    fn decodes_what_prost_encodes_and_back() {
        let req = DiscoveryRequest {
            version_info: "v1".into(),
            type_url: "type.googleapis.com/x.Y".into(),
            response_nonce: "n/3".into(),
            resource_names: vec![
                "outbound|80||a.ns".into(),
                "".into(),
                "ü".into(),
                "b".into(),
            ],
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let got = SotwRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(got.names(), ["outbound|80||a.ns", "", "ü", "b"]);
        let mut head = req.clone();
        head.resource_names.clear();
        assert_eq!(got.head, head);
        // And back: the same bytes prost writes.
        assert_eq!(got.encoded_len(), bytes.len());
        let again = DiscoveryRequest::decode(got.encode_to_vec().as_slice()).unwrap();
        assert_eq!(again, req);
        // A split buffer (several chunks) decodes the same.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let chained = Buf::chain(a, b);
        assert_eq!(SotwRequest::decode(chained).unwrap(), got);
    }

    #[test]
    fn rejects_names_that_are_not_utf8() {
        let mut bytes = Vec::new();
        encode_key(RESOURCE_NAMES, WireType::LengthDelimited, &mut bytes);
        encode_varint(2, &mut bytes);
        bytes.extend_from_slice(&[0xff, 0xfe]);
        assert!(SotwRequest::decode(bytes.as_slice()).is_err());
        let ok = SotwRequest::with_names(DiscoveryRequest::default(), &["a", "b"]);
        assert_eq!(ok.names(), ["a", "b"]);
    }
}
