//! `security.istio.io` resources: PeerAuthentication and AuthorizationPolicy.
//!
//! Types with Istio's field names; validation checks their structure only
//! (enforcement belongs to the proxy and the identity work).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::networking::LabelSelector;

/// API group of these resources.
pub const GROUP: &str = "security.istio.io";
/// Versions accepted for this group.
pub const VERSIONS: &[&str] = &["v1", "v1beta1"];

/// `spec` of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub selector: Option<LabelSelector>,
    pub mtls: Option<PeerMtls>,
    pub port_level_mtls: Option<BTreeMap<PortKey, PeerMtls>>,
}

/// A port number used as a map key; YAML may write it as `8080:` or `"8080":`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PortKey(pub u32);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(PortKey(n)),
            Raw::Text(s) => s
                .parse()
                .map(PortKey)
                .map_err(|_| serde::de::Error::custom(format!("port {s:?} is not a number"))),
        }
    }
}

/// `mtls: {mode}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PeerMtls {
    pub mode: Option<MtlsMode>,
}

/// Peer authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub selector: Option<LabelSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    pub target_refs: Vec<PolicyTargetReference>,
    pub rules: Option<Vec<Rule>>,
    pub action: Option<AuthorizationAction>,
    pub provider: Option<ExtensionProvider>,
}

/// `targetRef` (Gateway API style).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

/// Authorization action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    Allow,
    Deny,
    Audit,
    Custom,
}

/// `provider: {name}` for CUSTOM action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
}

/// One rule: sources, operations and conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Rule {
    pub from: Vec<RuleFrom>,
    pub to: Vec<RuleTo>,
    pub when: Vec<Condition>,
}

/// `from: [{source: ...}]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RuleFrom {
    pub source: Option<Source>,
}

/// `to: [{operation: ...}]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RuleTo {
    pub operation: Option<Operation>,
}

/// Request source attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
    pub trust_domains: Vec<String>,
    pub not_trust_domains: Vec<String>,
}

impl Source {
    /// All `(field name, values)` pairs, for structural checks.
    pub fn fields(&self) -> [(&'static str, &Vec<String>); 14] {
        [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
            ("trustDomains", &self.trust_domains),
            ("notTrustDomains", &self.not_trust_domains),
        ]
    }
}

/// Request operation attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

impl Operation {
    /// All `(field name, values)` pairs, for structural checks.
    pub fn fields(&self) -> [(&'static str, &Vec<String>); 8] {
        [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("ports", &self.ports),
            ("notPorts", &self.not_ports),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
        ]
    }
}

/// `when: [{key, values, notValues}]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}
