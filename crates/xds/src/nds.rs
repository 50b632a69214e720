//! Istio's Name Discovery Service resource, `istio.networking.nds.v1.NameTable`:
//! the hostnames a sidecar's DNS proxy answers for and their IPs. weftd
//! generates it per proxy; weft-proxy's DNS proxy consumes it.
//!
//! The messages are written by hand with prost's derive (field numbers as in
//! Istio's `pkg/dns/proto/nds.proto`), so the wire format is Istio's and an
//! Istio agent or istiod can talk to weft on this type. Owns only the wire
//! types and the resource naming; what goes into a table is weftd's job.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The NDS type URL, as Istio's agent requests it over ADS.
pub const NAME_TABLE: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

/// The name weft gives the single NameTable resource of a proxy (Istio
/// sends it unnamed; a name keeps state-of-the-world bookkeeping uniform).
pub const NAME_TABLE_RESOURCE: &str = "nametable";

/// Table of hostnames and their IPs (`NameTable`).
#[derive(Clone, PartialEq, Message)]
pub struct NameTable {
    /// Hostname (FQDN or ServiceEntry host, without trailing dot) to its
    /// resolution attributes. A `BTreeMap` so encoding is deterministic.
    #[prost(btree_map = "string, message", tag = "1")]
    pub table: BTreeMap<String, NameInfo>,
    /// Attributes of the host named by the resource (unused by weft).
    #[prost(message, optional, tag = "2")]
    pub name_info: Option<NameInfo>,
}

/// One host's resolution attributes (`NameTable.NameInfo`).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct NameInfo {
    /// IPs of the host (VIPs, or endpoint IPs of a headless service).
    #[prost(string, repeated, tag = "1")]
    pub ips: Vec<String>,
    /// Registry of the service: `Kubernetes` or `External`.
    #[prost(string, tag = "2")]
    pub registry: String,
    /// The Kubernetes service name (registry `Kubernetes` only).
    #[prost(string, tag = "3")]
    pub shortname: String,
    /// The Kubernetes namespace (registry `Kubernetes` only).
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Extra names for the host (deprecated in Istio; honoured by weft).
    #[prost(string, repeated, tag = "5")]
    pub alt_hosts: Vec<String>,
}

/// Istio's registry name for Kubernetes services.
pub const REGISTRY_KUBERNETES: &str = "Kubernetes";
/// Istio's registry name for ServiceEntry hosts.
pub const REGISTRY_EXTERNAL: &str = "External";

impl NameTable {
    /// The table as an xDS resource.
    pub fn to_any(&self) -> Any {
        Any {
            type_url: NAME_TABLE.to_string(),
            value: self.encode_to_vec(),
        }
    }

    /// Decodes a resource of type [`NAME_TABLE`].
    pub fn from_any(any: &Any) -> Result<NameTable, String> {
        if any.type_url != NAME_TABLE {
            return Err(format!(
                "resource of type {} where {NAME_TABLE} was expected",
                any.type_url
            ));
        }
        NameTable::decode(any.value.as_slice())
            .map_err(|e| format!("NameTable: cannot decode: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_istio_field_numbers() {
        let mut t = NameTable::default();
        t.table.insert(
            "reviews.default.svc.cluster.local".into(),
            NameInfo {
                ips: vec!["10.96.0.20".into()],
                registry: REGISTRY_KUBERNETES.into(),
                shortname: "reviews".into(),
                namespace: "default".into(),
                alt_hosts: vec![],
            },
        );
        let any = t.to_any();
        // map entry (field 1, length-delimited) first.
        assert_eq!(any.value[0], 0x0a);
        assert_eq!(NameTable::from_any(&any).unwrap(), t);
        let wrong = Any {
            type_url: "x".into(),
            value: vec![],
        };
        assert!(NameTable::from_any(&wrong).is_err());
    }
}
