//! The proxy's self-description as Istio's agent sends it in `node`: the id
//! `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`, the cluster
//! `SERVICE.NAMESPACE`, and metadata fields named as Istio names them
//! (`NAMESPACE`, `NAME`, `WORKLOAD_NAME`, `LABELS`, `SERVICE_ACCOUNT`,
//! `INSTANCE_IPS`, `CLUSTER_ID`, `MESH_ID`, `INTERCEPTION_MODE`,
//! `ISTIO_VERSION`, plus `proxyMetadata` entries such as `DNS_CAPTURE`).
//!
//! weft-proxy builds a [`Node`] from a [`ProxyMetadata`]; weftd reads it
//! back with [`ProxyMetadata::from_node`]. Pure data, no I/O.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// The kind of proxy, the first field of the node id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyKind {
    /// A sidecar next to a workload.
    #[default]
    Sidecar,
    /// A gateway (Istio's `router`).
    Router,
}

impl ProxyKind {
    /// `sidecar` or `router`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
        }
    }
}

/// Why a node id is not in Istio's form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node.id {id:?} is not in Istio's form TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN: {reason}"
)]
pub struct NodeIdError {
    /// The id as sent.
    pub id: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// What a proxy says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyMetadata {
    /// Sidecar or gateway.
    pub kind: ProxyKind,
    /// The workload's IPs; the first goes into the node id (`INSTANCE_IPS`).
    pub ips: Vec<String>,
    /// Pod (instance) name (`NAME`).
    pub pod_name: String,
    /// Namespace (`NAMESPACE`).
    pub namespace: String,
    /// Cluster DNS domain; empty means `cluster.local`.
    pub domain: String,
    /// Workload (Deployment) name (`WORKLOAD_NAME`).
    pub workload_name: String,
    /// Pod labels (`LABELS`).
    pub labels: BTreeMap<String, String>,
    /// Service account (`SERVICE_ACCOUNT`).
    pub service_account: String,
    /// `CLUSTER_ID`, `Kubernetes` by default in Istio.
    pub cluster_id: String,
    /// `MESH_ID`.
    pub mesh_id: String,
    /// `INTERCEPTION_MODE`: `REDIRECT`, `TPROXY` or `NONE`.
    pub interception_mode: String,
    /// `ISTIO_VERSION`.
    pub istio_version: String,
    /// Other string fields, e.g. `proxyMetadata` entries (`DNS_CAPTURE`,
    /// `DNS_AUTO_ALLOCATE`) with their `ISTIO_META_` prefix removed.
    pub extra: BTreeMap<String, String>,
}

const KNOWN: [&str; 10] = [
    "NAME",
    "NAMESPACE",
    "WORKLOAD_NAME",
    "LABELS",
    "SERVICE_ACCOUNT",
    "INSTANCE_IPS",
    "CLUSTER_ID",
    "MESH_ID",
    "INTERCEPTION_MODE",
    "ISTIO_VERSION",
];

impl ProxyMetadata {
    /// `sidecar~10.0.0.5~reviews-v1-abc.default~default.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        format!(
            "{}~{}~{}.{}~{}.svc.{}",
            self.kind.as_str(),
            self.ips.first().map(String::as_str).unwrap_or(""),
            self.pod_name,
            self.namespace,
            self.namespace,
            if self.domain.is_empty() {
                "cluster.local"
            } else {
                &self.domain
            }
        )
    }

    /// The service name for `node.cluster`: the canonical-name label, else
    /// `app`, else the workload name.
    pub fn service_name(&self) -> &str {
        [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|k| self.labels.get(*k))
        .map(String::as_str)
        .unwrap_or(&self.workload_name)
    }

    /// The Envoy node to send on each ADS stream.
    pub fn to_node(&self) -> Node {
        let mut fields = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                fields.insert(k.to_string(), string_value(v));
            }
        };
        put("NAME", &self.pod_name);
        put("NAMESPACE", &self.namespace);
        put("WORKLOAD_NAME", &self.workload_name);
        put("SERVICE_ACCOUNT", &self.service_account);
        put("INSTANCE_IPS", &self.ips.join(","));
        put("CLUSTER_ID", &self.cluster_id);
        put("MESH_ID", &self.mesh_id);
        put("INTERCEPTION_MODE", &self.interception_mode);
        put("ISTIO_VERSION", &self.istio_version);
        for (k, v) in &self.extra {
            put(k, v);
        }
        if !self.labels.is_empty() {
            let labels = Struct {
                fields: self
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), string_value(v)))
                    .collect(),
            };
            fields.insert(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            );
        }
        Node {
            id: self.node_id(),
            cluster: format!("{}.{}", self.service_name(), self.namespace),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            user_agent_name: "weft-proxy".to_string(),
            ..Default::default()
        }
    }

    /// Reads a node sent by weft-proxy or by Istio's agent. The id gives
    /// kind, IP, pod, namespace and domain; metadata fills in the rest and
    /// wins where both say something.
    pub fn from_node(node: &Node) -> Result<ProxyMetadata, NodeIdError> {
        let mut md = parse_node_id(&node.id)?;
        let fields = node.metadata.as_ref().map(|m| &m.fields);
        let get = |k: &str| -> Option<String> {
            match fields?.get(k)?.kind.as_ref()? {
                Kind::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        };
        if let Some(v) = get("NAME") {
            md.pod_name = v;
        }
        if let Some(v) = get("NAMESPACE") {
            md.namespace = v;
        }
        if let Some(v) = get("INSTANCE_IPS") {
            md.ips = v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        md.workload_name = get("WORKLOAD_NAME").unwrap_or_default();
        md.service_account = get("SERVICE_ACCOUNT").unwrap_or_default();
        md.cluster_id = get("CLUSTER_ID").unwrap_or_default();
        md.mesh_id = get("MESH_ID").unwrap_or_default();
        md.interception_mode = get("INTERCEPTION_MODE").unwrap_or_default();
        md.istio_version = get("ISTIO_VERSION").unwrap_or_default();
        if let Some(Kind::StructValue(labels)) = fields
            .and_then(|f| f.get("LABELS"))
            .and_then(|v| v.kind.as_ref())
        {
            md.labels = labels
                .fields
                .iter()
                .filter_map(|(k, v)| match v.kind.as_ref()? {
                    Kind::StringValue(s) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect();
        }
        if let Some(fields) = fields {
            for (k, v) in fields {
                if KNOWN.contains(&k.as_str()) {
                    continue;
                }
                if let Some(Kind::StringValue(s)) = v.kind.as_ref() {
                    md.extra.insert(k.clone(), s.clone());
                }
            }
        }
        Ok(md)
    }
}

/// Parses `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`.
pub fn parse_node_id(id: &str) -> Result<ProxyMetadata, NodeIdError> {
    let err = |reason| NodeIdError {
        id: id.to_string(),
        reason,
    };
    let parts: Vec<&str> = id.split('~').collect();
    let [kind, ip, instance, dns] = parts[..] else {
        return Err(err("expected four fields separated by '~'"));
    };
    let kind = match kind {
        "sidecar" => ProxyKind::Sidecar,
        "router" => ProxyKind::Router,
        _ => return Err(err("type must be sidecar or router")),
    };
    let (pod, namespace) = instance
        .rsplit_once('.')
        .ok_or_else(|| err("third field must be POD.NAMESPACE"))?;
    if pod.is_empty() || namespace.is_empty() {
        return Err(err("third field must be POD.NAMESPACE"));
    }
    let domain = dns
        .strip_prefix(namespace)
        .and_then(|d| d.strip_prefix(".svc."))
        .unwrap_or("")
        .to_string();
    Ok(ProxyMetadata {
        kind,
        ips: if ip.is_empty() {
            Vec::new()
        } else {
            vec![ip.to_string()]
        },
        pod_name: pod.to_string(),
        namespace: namespace.to_string(),
        domain,
        ..ProxyMetadata::default()
    })
}

fn string_value(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviews() -> ProxyMetadata {
        ProxyMetadata {
            kind: ProxyKind::Sidecar,
            ips: vec!["10.0.0.5".into(), "fd00::5".into()],
            pod_name: "reviews-v1-7d9c".into(),
            namespace: "bookinfo".into(),
            domain: "cluster.local".into(),
            workload_name: "reviews-v1".into(),
            labels: [("app", "reviews"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "bookinfo-reviews".into(),
            cluster_id: "Kubernetes".into(),
            mesh_id: "cluster.local".into(),
            interception_mode: "REDIRECT".into(),
            istio_version: "1.24.0".into(),
            extra: [("DNS_CAPTURE".to_string(), "true".to_string())].into(),
        }
    }

    #[test]
    fn node_round_trip_in_istio_form() {
        let md = reviews();
        let node = md.to_node();
        assert_eq!(
            node.id,
            "sidecar~10.0.0.5~reviews-v1-7d9c.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(node.cluster, "reviews.bookinfo");
        let info = crate::NodeInfo::from_node(Some(node.clone())).unwrap();
        assert_eq!(info.metadata_str("INSTANCE_IPS"), Some("10.0.0.5,fd00::5"));
        assert_eq!(info.metadata_map("LABELS")["version"], "v1");
        assert_eq!(ProxyMetadata::from_node(&node).unwrap(), md);
    }

    #[test]
    fn bad_ids_are_explained() {
        for id in [
            "",
            "sidecar~1.2.3.4~pod",
            "proxy~1~a.b~b.svc.cluster.local",
            "sidecar~1~nopod~x",
        ] {
            let e = parse_node_id(id).unwrap_err();
            assert!(e.to_string().contains(id), "{e}");
        }
        let md = parse_node_id("router~~gw-1.istio-system~istio-system.svc.corp.example").unwrap();
        assert_eq!(md.kind, ProxyKind::Router);
        assert!(md.ips.is_empty());
        assert_eq!(md.domain, "corp.example");
    }
}
