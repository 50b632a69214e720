//! Deterministic encoding. prost encodes protobuf `map` fields in the
//! iteration order of a `std::collections::HashMap`, which differs between
//! map instances, so two translations of the same config could give
//! different bytes and weft_xds (which versions resources by a hash of
//! their bytes) would push unchanged resources again. This module
//! re-emits the encoded bytes with the entries of every map translation
//! writes sorted, walking only the known paths to those maps (metadata
//! `filter_metadata` and nested `Struct`s, routes' `typed_per_filter_config`,
//! clusters' `typed_extension_protocol_options` and transport socket
//! matches, RBAC filters' `policies`).
//!
//! Protobuf permits map entries in any order, so the result decodes to the
//! same message.

/// Which fields of a message to descend into and which (maps) to sort.
pub struct Spec {
    /// Length-delimited fields holding a sub-message to canonicalize.
    children: &'static [(u32, &'static Spec)],
    /// Repeated fields (map entries) to emit sorted by their bytes.
    sorted: &'static [u32],
    /// For `google.protobuf.Any`: the spec of the payload by type URL.
    any: &'static [(&'static str, &'static Spec)],
}

static NONE: Spec = Spec {
    children: &[],
    sorted: &[],
    any: &[],
};
// google.protobuf.Struct { map<string, Value> fields = 1 }
static STRUCT: Spec = Spec {
    children: &[(1, &STRUCT_ENTRY)],
    sorted: &[1],
    any: &[],
};
static STRUCT_ENTRY: Spec = Spec {
    children: &[(2, &VALUE)],
    sorted: &[],
    any: &[],
};
// google.protobuf.Value { struct_value = 5, list_value = 6 }
static VALUE: Spec = Spec {
    children: &[(5, &STRUCT), (6, &LIST)],
    sorted: &[],
    any: &[],
};
// google.protobuf.ListValue { repeated Value values = 1 }
static LIST: Spec = Spec {
    children: &[(1, &VALUE)],
    sorted: &[],
    any: &[],
};
// envoy.config.core.v3.Metadata { map<string, Struct> filter_metadata = 1 }
static METADATA: Spec = Spec {
    children: &[(1, &METADATA_ENTRY)],
    sorted: &[1],
    any: &[],
};
static METADATA_ENTRY: Spec = Spec {
    children: &[(2, &STRUCT)],
    sorted: &[],
    any: &[],
};
/// envoy.config.listener.v3.Listener { filter_chains = 3,
/// Metadata metadata = 6, default_filter_chain = 25 }
pub static LISTENER: Spec = Spec {
    children: &[(3, &FILTER_CHAIN), (6, &METADATA), (25, &FILTER_CHAIN)],
    sorted: &[],
    any: &[],
};
// FilterChain { filters = 3 { typed_config = 4 } }
static FILTER_CHAIN: Spec = Spec {
    children: &[(3, &FILTER)],
    sorted: &[],
    any: &[],
};
static FILTER: Spec = Spec {
    children: &[(4, &NETWORK_FILTER_CONFIG)],
    sorted: &[],
    any: &[],
};
static NETWORK_FILTER_CONFIG: Spec = Spec {
    children: &[],
    sorted: &[],
    any: &[
        (
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            &HCM,
        ),
        (
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            &TCP_PROXY,
        ),
        (
            "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            &RBAC_FILTER,
        ),
    ],
};
// HttpConnectionManager { http_filters = 5, access_log = 13 },
// TcpProxy { access_log = 5 }
static HCM: Spec = Spec {
    children: &[(5, &HTTP_FILTER), (13, &ACCESS_LOG)],
    sorted: &[],
    any: &[],
};
// HttpFilter { typed_config = 4 }
static HTTP_FILTER: Spec = Spec {
    children: &[(4, &HTTP_FILTER_CONFIG)],
    sorted: &[],
    any: &[],
};
static HTTP_FILTER_CONFIG: Spec = Spec {
    children: &[],
    sorted: &[],
    any: &[(
        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        &RBAC_FILTER,
    )],
};
// HTTP and network RBAC filters { rules = 1, shadow_rules = 2 }, each
// envoy.config.rbac.v3.RBAC { map<string, Policy> policies = 2 }
static RBAC_FILTER: Spec = Spec {
    children: &[(1, &RBAC), (2, &RBAC)],
    sorted: &[],
    any: &[],
};
static RBAC: Spec = Spec {
    children: &[(2, &NONE)],
    sorted: &[2],
    any: &[],
};
static TCP_PROXY: Spec = Spec {
    children: &[(5, &ACCESS_LOG)],
    sorted: &[],
    any: &[],
};
// AccessLog { typed_config = 4 }
static ACCESS_LOG: Spec = Spec {
    children: &[(4, &ACCESS_LOG_CONFIG)],
    sorted: &[],
    any: &[],
};
static ACCESS_LOG_CONFIG: Spec = Spec {
    children: &[],
    sorted: &[],
    any: &[(
        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &FILE_LOG,
    )],
};
// FileAccessLog { log_format = 5 { json_format = 2 } }
static FILE_LOG: Spec = Spec {
    children: &[(5, &FORMAT)],
    sorted: &[],
    any: &[],
};
static FORMAT: Spec = Spec {
    children: &[(2, &STRUCT)],
    sorted: &[],
    any: &[],
};
/// envoy.config.cluster.v3.Cluster { Metadata metadata = 25,
/// map typed_extension_protocol_options = 36,
/// transport_socket_matches = 43 { Struct match = 2 } }
pub static CLUSTER: Spec = Spec {
    children: &[(25, &METADATA), (36, &NONE), (43, &SOCKET_MATCH)],
    sorted: &[36],
    any: &[],
};
static SOCKET_MATCH: Spec = Spec {
    children: &[(2, &STRUCT)],
    sorted: &[],
    any: &[],
};
/// ClusterLoadAssignment { endpoints = 2 { lb_endpoints = 2 { metadata = 3 } } }
pub static ASSIGNMENT: Spec = Spec {
    children: &[(2, &LOCALITY_ENDPOINTS)],
    sorted: &[],
    any: &[],
};
static LOCALITY_ENDPOINTS: Spec = Spec {
    children: &[(2, &LB_ENDPOINT)],
    sorted: &[],
    any: &[],
};
static LB_ENDPOINT: Spec = Spec {
    children: &[(3, &METADATA)],
    sorted: &[],
    any: &[],
};
/// RouteConfiguration { virtual_hosts = 2 { routes = 3 {
/// map typed_per_filter_config = 13 } } }
pub static ROUTE_CONFIG: Spec = Spec {
    children: &[(2, &VIRTUAL_HOST)],
    sorted: &[],
    any: &[],
};
static VIRTUAL_HOST: Spec = Spec {
    children: &[(3, &ROUTE)],
    sorted: &[],
    any: &[],
};
static ROUTE: Spec = Spec {
    children: &[(13, &NONE)],
    sorted: &[13],
    any: &[],
};

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Re-encodes `bytes` (a message described by `spec`) with the listed map
/// fields sorted. Bytes that do not parse as protobuf are returned as they
/// are (they came from prost, so this does not happen).
pub fn canonicalize(bytes: &[u8], spec: &Spec) -> Vec<u8> {
    walk(bytes, spec).unwrap_or_else(|| bytes.to_vec())
}

fn walk(bytes: &[u8], spec: &Spec) -> Option<Vec<u8>> {
    if !spec.any.is_empty() {
        return walk_any(bytes, spec);
    }
    if spec.children.is_empty() && spec.sorted.is_empty() {
        return Some(bytes.to_vec());
    }
    let mut out = Vec::with_capacity(bytes.len());
    // Sorted fields: collected (encoded with their key), emitted at the end.
    let mut held: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let key = varint(bytes, &mut pos)?;
        let field = u32::try_from(key >> 3).ok()?;
        let wire = key & 7;
        let mut field_bytes = Vec::new();
        match wire {
            0 => {
                varint(bytes, &mut pos)?;
                field_bytes.extend_from_slice(&bytes[start..pos]);
            }
            1 | 5 => {
                pos += if wire == 1 { 8 } else { 4 };
                field_bytes.extend_from_slice(bytes.get(start..pos)?);
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?).ok()?;
                let payload = bytes.get(pos..pos + len)?;
                pos += len;
                let child = spec.children.iter().find(|(f, _)| *f == field);
                let payload = match child {
                    Some((_, s)) => walk(payload, s)?,
                    None => payload.to_vec(),
                };
                put_varint(key, &mut field_bytes);
                put_varint(payload.len() as u64, &mut field_bytes);
                field_bytes.extend_from_slice(&payload);
            }
            _ => return None,
        }
        if spec.sorted.contains(&field) {
            held.push((field, field_bytes));
        } else {
            out.extend_from_slice(&field_bytes);
        }
    }
    held.sort();
    for (_, b) in held {
        out.extend_from_slice(&b);
    }
    Some(out)
}

/// An `Any` { type_url = 1, value = 2 }: the payload is canonicalized by
/// the spec of its type (kept as is for other types).
fn walk_any(bytes: &[u8], spec: &Spec) -> Option<Vec<u8>> {
    let mut fields: Vec<(u32, &[u8])> = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let key = varint(bytes, &mut pos)?;
        if key & 7 != 2 {
            return None;
        }
        let len = usize::try_from(varint(bytes, &mut pos)?).ok()?;
        fields.push((u32::try_from(key >> 3).ok()?, bytes.get(pos..pos + len)?));
        pos += len;
    }
    let type_url = fields
        .iter()
        .find(|(f, _)| *f == 1)
        .and_then(|(_, b)| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let inner = spec
        .any
        .iter()
        .find(|(url, _)| *url == type_url)
        .map(|(_, s)| *s);
    let mut out = Vec::with_capacity(bytes.len());
    for (field, payload) in fields {
        let payload = match (field, inner) {
            (2, Some(s)) => walk(payload, s)?,
            _ => payload.to_vec(),
        };
        put_varint(u64::from(field) << 3 | 2, &mut out);
        put_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(&payload);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use prost::Message;
    use std::collections::HashMap;

    fn cluster() -> Cluster {
        let s = |n: usize| Struct {
            fields: (0..n)
                .map(|i| {
                    let v = Value {
                        kind: Some(Kind::StringValue(format!("v{i}"))),
                    };
                    (format!("k{i}"), v)
                })
                .collect::<HashMap<_, _>>(),
        };
        Cluster {
            name: "c".into(),
            metadata: Some(Metadata {
                filter_metadata: [("istio".to_string(), s(9)), ("weft".to_string(), s(12))]
                    .into_iter()
                    .collect(),
                ..Metadata::default()
            }),
            ..Cluster::default()
        }
    }

    #[test]
    fn equal_clusters_encode_to_equal_bytes() {
        let first = canonicalize(&cluster().encode_to_vec(), &CLUSTER);
        for _ in 0..20 {
            let again = canonicalize(&cluster().encode_to_vec(), &CLUSTER);
            assert_eq!(first, again);
        }
        assert_eq!(Cluster::decode(first.as_slice()).unwrap(), cluster());
    }
}
