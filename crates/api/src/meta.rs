//! Object metadata, kinds and keys shared by every resource.
//!
//! Owns the Kubernetes-style `metadata` block, the [`Kind`] of each supported
//! resource with its API group and accepted versions, and the [`ObjectKey`]
//! (kind, namespace, name) that identifies an object across reloads.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The namespace an object lands in when its manifest names none, as with
/// `kubectl apply` without `-n`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Kubernetes `metadata`: the fields the mesh reads. Other metadata fields
/// (uid, creationTimestamp, ...) are accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace, or [`DEFAULT_NAMESPACE`] when none was given.
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// Every kind Weft understands. `Other` carries kinds that are passed through
/// untyped (Deployments, ConfigMaps, Istio kinds Weft does not implement).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    PeerAuthentication,
    AuthorizationPolicy,
    Namespace,
    Service,
    EndpointSlice,
    Pod,
    /// MeshConfig, read from the `istio` ConfigMap (`data.mesh`).
    MeshConfig,
    /// A kind passed through untyped: `(apiVersion, kind)`.
    Other(String, String),
}

impl Kind {
    /// The kind's name as written in manifests.
    pub fn name(&self) -> &str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::MeshConfig => "MeshConfig",
            Kind::Other(_, kind) => kind,
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(&self) -> bool {
        !matches!(self, Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one object: kind, namespace (empty for cluster-scoped kinds)
/// and name. Two manifests with the same key describe the same object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Where an object was read from: file, 1-based document index in that file
/// and the 1-based line the document starts on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Origin {
    pub file: String,
    pub doc: usize,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.doc == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}[doc {}]", self.file, self.doc)
        }
    }
}
