//! Workload identities for Istio's metric labels: this proxy's own
//! workload (from the node metadata Istio's agent reports: `NAME`,
//! `NAMESPACE`, `WORKLOAD_NAME`, `LABELS`, `SERVICE_ACCOUNT`,
//! `CLUSTER_ID`), the peer workload learnt from Istio's metadata exchange
//! headers (`x-envoy-peer-metadata-id`, `x-envoy-peer-metadata`: base64 of
//! a serialized `google.protobuf.Struct` of the peer's node metadata) or
//! from EDS endpoint metadata (`istio.workload`:
//! `NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER`), and the
//! destination service from cluster metadata (`istio.services`). Pure.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use http::HeaderValue;
use prost::Message;

/// Istio's canonical service and revision labels.
const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

/// A workload as Istio's labels describe it. Empty fields print `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
    /// `spiffe://TD/ns/NS/sa/SA` when known from metadata.
    pub principal: String,
}

/// This proxy's workload plus its metadata-exchange header values.
#[derive(Debug, Clone)]
pub struct Node {
    pub me: Workload,
    /// `x-envoy-peer-metadata-id`: the node id.
    pub exchange_id: Option<HeaderValue>,
    /// `x-envoy-peer-metadata`: base64 of the exchanged Struct.
    pub exchange: Option<HeaderValue>,
}

/// Same workload and node id (the exchange value's bytes are not compared:
/// a protobuf map encodes in no fixed order).
impl PartialEq for Node {
    fn eq(&self, o: &Self) -> bool {
        self.me == o.me && self.exchange_id == o.exchange_id
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::from_metadata("", &Struct::default())
    }
}

fn string<'a>(s: &'a Struct, key: &str) -> &'a str {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => v,
        _ => "",
    }
}

fn labels(s: &Struct) -> Option<&Struct> {
    match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => Some(l),
        _ => None,
    }
}

fn str_value(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    }
}

impl Workload {
    /// Reads Istio's node-metadata keys (the proxy's own, or a peer's
    /// exchanged copy).
    pub fn from_metadata(md: &Struct) -> Workload {
        let empty = Struct::default();
        let l = labels(md).unwrap_or(&empty);
        let label = |k: &str| string(l, k).to_owned();
        let mut workload = string(md, "WORKLOAD_NAME").to_owned();
        if workload.is_empty() {
            workload = string(md, "NAME").to_owned();
        }
        let app = {
            let a = label("app");
            if a.is_empty() {
                label("app.kubernetes.io/name")
            } else {
                a
            }
        };
        let version = {
            let v = label("version");
            if v.is_empty() {
                label("app.kubernetes.io/version")
            } else {
                v
            }
        };
        let canonical_service = [label(CANONICAL_NAME), app.clone(), workload.clone()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let canonical_revision = [label(CANONICAL_REVISION), version.clone()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_else(|| "latest".to_owned());
        let namespace = string(md, "NAMESPACE").to_owned();
        let sa = string(md, "SERVICE_ACCOUNT");
        let principal = if sa.is_empty() || namespace.is_empty() {
            String::new()
        } else {
            let td = Some(string(md, "TRUST_DOMAIN"))
                .filter(|t| !t.is_empty())
                .unwrap_or("cluster.local");
            format!("spiffe://{td}/ns/{namespace}/sa/{sa}")
        };
        Workload {
            workload,
            namespace,
            app,
            version,
            canonical_service,
            canonical_revision,
            cluster: string(md, "CLUSTER_ID").to_owned(),
            principal,
        }
    }

    /// Istio's `istio.workload` endpoint metadata, plus `weft.app`/`version`.
    pub fn from_endpoint(md: &Metadata) -> Option<Workload> {
        let spec = endpoint_workload(md)?;
        let mut parts = spec.split(';');
        let mut next = || parts.next().unwrap_or("").to_owned();
        let mut w = Workload {
            workload: next(),
            namespace: next(),
            canonical_service: next(),
            canonical_revision: next(),
            cluster: next(),
            ..Default::default()
        };
        if let Some(weft) = md.filter_metadata.get("weft") {
            w.app = string(weft, "app").to_owned();
            w.version = string(weft, "version").to_owned();
            w.principal = string(weft, "principal").to_owned();
        }
        Some(w)
    }

    /// Decodes an `x-envoy-peer-metadata` value.
    pub fn from_exchange(value: &[u8]) -> Option<Workload> {
        let bytes = base64_decode(value)?;
        let s = Struct::decode(bytes.as_slice()).ok()?;
        Some(Workload::from_metadata(&s))
    }
}

/// The `istio.workload` string of an endpoint's metadata.
pub fn endpoint_workload(md: &Metadata) -> Option<&str> {
    let istio = md.filter_metadata.get("istio")?;
    Some(string(istio, "workload")).filter(|s| !s.is_empty())
}

impl Node {
    /// This proxy from its node id and metadata.
    pub fn from_metadata(id: &str, md: &Struct) -> Node {
        let me = Workload::from_metadata(md);
        // The exchanged copy: the keys Istio's metadata exchange sends.
        let mut x = Struct::default();
        for k in [
            "NAME",
            "NAMESPACE",
            "WORKLOAD_NAME",
            "CLUSTER_ID",
            "SERVICE_ACCOUNT",
            "TRUST_DOMAIN",
        ] {
            let v = string(md, k);
            if !v.is_empty() {
                x.fields.insert(k.to_owned(), str_value(v));
            }
        }
        if let Some(l) = labels(md) {
            let mut kept = Struct::default();
            for k in [
                "app",
                "version",
                CANONICAL_NAME,
                CANONICAL_REVISION,
                "app.kubernetes.io/name",
                "app.kubernetes.io/version",
            ] {
                let v = string(l, k);
                if !v.is_empty() {
                    kept.fields.insert(k.to_owned(), str_value(v));
                }
            }
            x.fields.insert(
                "LABELS".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(kept)),
                },
            );
        }
        let known = !x.fields.is_empty();
        Node {
            me,
            exchange_id: Some(id)
                .filter(|i| known && !i.is_empty())
                .and_then(|i| HeaderValue::from_str(i).ok()),
            exchange: known
                .then(|| HeaderValue::from_str(&base64_encode(&x.encode_to_vec())).ok())
                .flatten(),
        }
    }
}

/// The first `istio.services` entry of a cluster: (host, name, namespace);
/// else weft's `destination_service*` fields.
pub fn service(md: &Metadata) -> Option<(String, String, String)> {
    if let Some(istio) = md.filter_metadata.get("istio")
        && let Some(Kind::ListValue(list)) =
            istio.fields.get("services").and_then(|v| v.kind.as_ref())
        && let Some(Kind::StructValue(s)) = list.values.first().and_then(|v| v.kind.as_ref())
    {
        return Some((
            string(s, "host").to_owned(),
            string(s, "name").to_owned(),
            string(s, "namespace").to_owned(),
        ));
    }
    let weft = md.filter_metadata.get("weft")?;
    let host = string(weft, "destination_service");
    (!host.is_empty()).then(|| {
        (
            host.to_owned(),
            string(weft, "destination_service_name").to_owned(),
            string(weft, "destination_service_namespace").to_owned(),
        )
    })
}

/// The namespace in a SPIFFE id (`spiffe://td/ns/NS/sa/SA`).
pub fn namespace_of(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("spiffe://")?;
    let mut it = rest.split('/').skip(1);
    while let Some(seg) = it.next() {
        if seg == "ns" {
            return it.next().filter(|s| !s.is_empty());
        }
    }
    None
}

// === base64 (standard alphabet, padded) ===

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in data {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
