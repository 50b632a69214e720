//! The typed [`Object`]: one decoded manifest with its kind, metadata, spec
//! and origin.

use serde::Serialize;

use crate::k8s;
use crate::mesh::MeshConfig;
use crate::meta::{Kind, ObjectKey, ObjectMeta, Origin};
use crate::networking as net;
use crate::security as sec;

/// The typed content of an object, one variant per supported kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    VirtualService(net::VirtualService),
    /// Boxed: large, and keeping `Resource` small keeps every object small.
    DestinationRule(Box<net::DestinationRule>),
    Gateway(net::Gateway),
    ServiceEntry(net::ServiceEntry),
    /// Boxed: the largest remaining spec.
    Sidecar(Box<net::Sidecar>),
    WorkloadEntry(net::WorkloadEntry),
    PeerAuthentication(sec::PeerAuthentication),
    AuthorizationPolicy(sec::AuthorizationPolicy),
    Namespace(k8s::Namespace),
    Service(k8s::ServiceSpec),
    EndpointSlice(k8s::EndpointSlice),
    Pod(k8s::Pod),
    /// Boxed for the same reason as DestinationRule.
    MeshConfig(Box<MeshConfig>),
    /// A kind Weft passes through untyped: the whole document.
    Other(serde_yaml::Value),
}

/// One object from the config source.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `apiVersion` as written.
    pub api_version: String,
    pub kind: Kind,
    pub meta: ObjectMeta,
    pub spec: Resource,
    pub origin: Origin,
}

impl Object {
    /// The namespace the object lives in (`default` when unset; empty for
    /// cluster-scoped kinds).
    pub fn namespace(&self) -> &str {
        if self.kind.is_namespaced() {
            self.meta.namespace_or_default()
        } else {
            ""
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The key that identifies this object across reloads.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind.clone(),
            namespace: self.namespace().to_string(),
            name: self.meta.name.clone(),
        }
    }

    /// The object as a manifest (`apiVersion`, `kind`, `metadata`, `spec`),
    /// for debug dumps. Unset fields are omitted.
    pub fn to_manifest(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert("apiVersion".into(), self.api_version.clone().into());
        doc.insert("kind".into(), self.kind.name().into());
        doc.insert(
            "metadata".into(),
            serde_json::to_value(&self.meta).unwrap_or_default(),
        );
        let body = prune(serde_json::to_value(&self.spec).unwrap_or_default());
        match (&self.spec, body) {
            (Resource::EndpointSlice(_) | Resource::Pod(_), serde_json::Value::Object(m)) => {
                doc.extend(m);
            }
            (Resource::Other(_), v) => return v,
            (Resource::MeshConfig(_), v) => {
                // Istio keeps MeshConfig as YAML text in the `istio` ConfigMap.
                doc.insert("kind".into(), "ConfigMap".into());
                let text = serde_yaml::to_string(&v).unwrap_or_default();
                doc.insert("data".into(), serde_json::json!({ "mesh": text }));
            }
            (_, v) => {
                doc.insert("spec".into(), v);
            }
        }
        serde_json::Value::Object(doc)
    }

    // === typed accessors ===

    /// The VirtualService spec, if this is one.
    pub fn as_virtual_service(&self) -> Option<&net::VirtualService> {
        match &self.spec {
            Resource::VirtualService(v) => Some(v),
            _ => None,
        }
    }
    /// The DestinationRule spec, if this is one.
    pub fn as_destination_rule(&self) -> Option<&net::DestinationRule> {
        match &self.spec {
            Resource::DestinationRule(v) => Some(v.as_ref()),
            _ => None,
        }
    }
    /// The ServiceEntry spec, if this is one.
    pub fn as_service_entry(&self) -> Option<&net::ServiceEntry> {
        match &self.spec {
            Resource::ServiceEntry(v) => Some(v),
            _ => None,
        }
    }
    /// The Sidecar spec, if this is one.
    pub fn as_sidecar(&self) -> Option<&net::Sidecar> {
        match &self.spec {
            Resource::Sidecar(v) => Some(v.as_ref()),
            _ => None,
        }
    }
    /// The WorkloadEntry spec, if this is one.
    pub fn as_workload_entry(&self) -> Option<&net::WorkloadEntry> {
        match &self.spec {
            Resource::WorkloadEntry(v) => Some(v),
            _ => None,
        }
    }
    /// The Kubernetes Service spec, if this is one.
    pub fn as_service(&self) -> Option<&k8s::ServiceSpec> {
        match &self.spec {
            Resource::Service(v) => Some(v),
            _ => None,
        }
    }
    /// The EndpointSlice, if this is one.
    pub fn as_endpoint_slice(&self) -> Option<&k8s::EndpointSlice> {
        match &self.spec {
            Resource::EndpointSlice(v) => Some(v),
            _ => None,
        }
    }
    /// The Pod, if this is one.
    pub fn as_pod(&self) -> Option<&k8s::Pod> {
        match &self.spec {
            Resource::Pod(v) => Some(v),
            _ => None,
        }
    }
    /// The MeshConfig, if this is one.
    pub fn as_mesh_config(&self) -> Option<&MeshConfig> {
        match &self.spec {
            Resource::MeshConfig(v) => Some(v.as_ref()),
            _ => None,
        }
    }
}

/// Drops nulls, empty lists, empty maps and `false`-free noise from a
/// serialized spec so dumps read like the manifest they came from.
fn prune(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        other => other,
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(m) => m.is_empty(),
        _ => false,
    }
}
