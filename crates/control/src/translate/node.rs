//! The proxy's identity as translation needs it, parsed from the Envoy
//! `Node` sent by Istio's agent or weft-proxy: id
//! `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN` plus metadata with Istio's
//! keys (`NAMESPACE`, `LABELS`, `INSTANCE_IPS`, `SERVICE_ACCOUNT`,
//! `WORKLOAD_NAME`, `ISTIO_VERSION`, `CLUSTER_ID`, `INTERCEPTION_MODE`, and
//! `proxyMetadata` entries such as `DNS_CAPTURE`, `DNS_AUTO_ALLOCATE`).

use std::collections::BTreeMap;

use weft_xds::proxy_node::NodeIdError;
use weft_xds::{Node, ProxyKind, ProxyMetadata};

/// Why a node cannot be translated for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Id(#[from] NodeIdError),
    #[error("node {id:?}: no namespace in node.id nor metadata NAMESPACE")]
    NoNamespace { id: String },
}

/// One proxy, as translation sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyNode {
    /// `node.id` as sent.
    pub id: String,
    pub kind: ProxyKind,
    pub namespace: String,
    /// Pod (instance) name.
    pub pod_name: String,
    /// Workload (Deployment) name; derived from the pod name when absent.
    pub workload_name: String,
    pub labels: BTreeMap<String, String>,
    /// Instance IPs, first is primary.
    pub ips: Vec<String>,
    pub service_account: String,
    pub cluster_id: String,
    pub istio_version: String,
    /// `REDIRECT`, `TPROXY` or `NONE` (empty when not sent).
    pub interception_mode: String,
    /// `DNS_CAPTURE` proxy metadata is `true`.
    pub dns_capture: bool,
    /// `DNS_AUTO_ALLOCATE` proxy metadata is `true`: ServiceEntry hosts
    /// without addresses get their auto-allocated VIP in listeners/routes.
    pub dns_auto_allocate: bool,
    /// Other string metadata, keys as sent (without `ISTIO_META_`).
    pub metadata: BTreeMap<String, String>,
}

impl ProxyNode {
    /// Reads an Envoy node.
    pub fn from_node(node: &Node) -> Result<ProxyNode, NodeError> {
        let md = ProxyMetadata::from_node(node)?;
        Self::from_metadata(node.id.clone(), md)
    }

    /// Builds a node from parsed metadata (`id` is kept as given).
    pub fn from_metadata(id: String, md: ProxyMetadata) -> Result<ProxyNode, NodeError> {
        if md.namespace.is_empty() {
            return Err(NodeError::NoNamespace { id });
        }
        let flag = |k: &str| {
            [k.to_string(), format!("ISTIO_META_{k}")]
                .iter()
                .any(|key| {
                    md.extra
                        .get(key)
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                })
        };
        let workload_name = if md.workload_name.is_empty() {
            workload_from_pod(&md.pod_name)
        } else {
            md.workload_name.clone()
        };
        Ok(ProxyNode {
            id,
            kind: md.kind,
            namespace: md.namespace.clone(),
            pod_name: md.pod_name.clone(),
            workload_name,
            labels: md.labels.clone(),
            ips: md.ips.clone(),
            service_account: if md.service_account.is_empty() {
                "default".to_string()
            } else {
                md.service_account.clone()
            },
            cluster_id: md.cluster_id.clone(),
            istio_version: md.istio_version.clone(),
            interception_mode: md.interception_mode.clone(),
            dns_capture: flag("DNS_CAPTURE"),
            dns_auto_allocate: flag("DNS_AUTO_ALLOCATE"),
            metadata: md.extra,
        })
    }

    /// A sidecar node for tests and tools: namespace, pod name, labels, IP.
    pub fn sidecar(
        namespace: &str,
        pod_name: &str,
        ip: &str,
        labels: impl IntoIterator<Item = (&'static str, &'static str)>,
    ) -> ProxyNode {
        let md = ProxyMetadata {
            kind: ProxyKind::Sidecar,
            ips: vec![ip.to_string()],
            pod_name: pod_name.to_string(),
            namespace: namespace.to_string(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ProxyMetadata::default()
        };
        let id = md.node_id();
        ProxyNode::from_metadata(id, md).expect("namespace is set")
    }

    /// The primary IP, if known.
    pub fn ip(&self) -> Option<&str> {
        self.ips.first().map(String::as_str)
    }

    /// The canonical service name (Istio's rule: the
    /// `service.istio.io/canonical-name` label, else `app.kubernetes.io/name`,
    /// else `app`, else the workload name).
    pub fn canonical_service(&self) -> &str {
        canonical_service(&self.labels, &self.workload_name)
    }

    /// The canonical revision (`service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`).
    pub fn canonical_revision(&self) -> &str {
        canonical_revision(&self.labels)
    }
}

/// Istio's canonical service of a workload.
pub fn canonical_service<'a>(labels: &'a BTreeMap<String, String>, workload: &'a str) -> &'a str {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .map_or(workload, String::as_str)
}

/// Istio's canonical revision of a workload.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> &str {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .map_or("latest", String::as_str)
}

/// The Deployment name of a pod named `NAME-<replicaset hash>-<pod hash>`,
/// as Istio's agent guesses it; other names are kept.
pub fn workload_from_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    match parts[..] {
        [suffix, hash, name] if suffix.len() == 5 && (6..=10).contains(&hash.len()) => {
            name.to_string()
        }
        _ => pod.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.to_string())),
        }
    }

    #[test]
    fn parses_istio_agent_node() {
        let labels = Struct {
            fields: [
                ("app".to_string(), s("reviews")),
                ("version".to_string(), s("v2")),
            ]
            .into_iter()
            .collect(),
        };
        let mut fields: std::collections::HashMap<String, Value> = [
            ("NAMESPACE", "bookinfo"),
            ("INSTANCE_IPS", "10.1.0.7,fd00::7"),
            ("SERVICE_ACCOUNT", "bookinfo-reviews"),
            ("WORKLOAD_NAME", "reviews-v2"),
            ("ISTIO_VERSION", "1.24.0"),
            ("CLUSTER_ID", "Kubernetes"),
            ("INTERCEPTION_MODE", "REDIRECT"),
            ("DNS_AUTO_ALLOCATE", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), s(v)))
        .collect();
        fields.insert(
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        let node = Node {
            id: "sidecar~10.1.0.7~reviews-v2-5b64f7c6d8-x2x9k.bookinfo~bookinfo.svc.cluster.local"
                .to_string(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Node::default()
        };
        let p = ProxyNode::from_node(&node).unwrap();
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.pod_name, "reviews-v2-5b64f7c6d8-x2x9k");
        assert_eq!(p.workload_name, "reviews-v2");
        assert_eq!(p.ips, ["10.1.0.7", "fd00::7"]);
        assert_eq!(p.service_account, "bookinfo-reviews");
        assert_eq!(p.labels["version"], "v2");
        assert_eq!(p.canonical_service(), "reviews");
        assert_eq!(p.canonical_revision(), "v2");
        assert!(p.dns_auto_allocate);
        assert!(!p.dns_capture);
        assert_eq!(p.interception_mode, "REDIRECT");
    }

    #[test]
    fn bad_ids_name_the_id() {
        let node = Node {
            id: "nonsense".to_string(),
            ..Node::default()
        };
        let err = ProxyNode::from_node(&node).unwrap_err().to_string();
        assert!(err.contains("\"nonsense\""), "{err}");
    }

    #[test]
    fn workload_name_from_pod_name() {
        assert_eq!(
            workload_from_pod("reviews-v1-7d9c8f6b5c-abcde"),
            "reviews-v1"
        );
        assert_eq!(workload_from_pod("standalone"), "standalone");
    }
}
