//! `networking.istio.io` resources: VirtualService, DestinationRule, Gateway,
//! ServiceEntry, Sidecar and WorkloadEntry, with Istio's YAML field names.
//!
//! Types only; rules live in `crate::validate`. Every struct accepts exactly
//! the fields Istio's CRD schema defines (unknown ones are reported by the
//! decoder with their path), and all fields are optional at the serde level so
//! that missing required fields are reported by validation with a path rather
//! than failing the whole document.

mod destination_rule;
mod service_entry;
mod sidecar;
mod virtual_service;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use destination_rule::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;

/// API group of these resources.
pub const GROUP: &str = "networking.istio.io";
/// Versions accepted for this group (v1 is served; the others are aliases).
pub const VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// The one match a valid [`StringMatch`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

impl StringMatch {
    /// The match, if exactly one variant is set.
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(StringMatchKind::Exact(e)),
            (None, Some(p), None) => Some(StringMatchKind::Prefix(p)),
            (None, None, Some(r)) => Some(StringMatchKind::Regex(r)),
            _ => None,
        }
    }
    /// How many variants are set (valid matches set exactly one; an empty
    /// match `{}` is a presence match for headers).
    pub fn variants_set(&self) -> usize {
        usize::from(self.exact.is_some())
            + usize::from(self.prefix.is_some())
            + usize::from(self.regex.is_some())
    }
}

/// Istio's `Percent`: a fraction of 100 (`value: 10.5`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Percent {
    pub value: f64,
}

/// `port: {number: 9080}` in a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u32,
}

/// A destination: a service host, optionally a subset and a port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

/// `workloadSelector: {labels: {...}}` as used by Sidecar and ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub labels: BTreeMap<String, String>,
}

/// `selector`/`workloadSelector: {matchLabels: {...}}` as used by
/// DestinationRule, PeerAuthentication and AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// A gateway/sidecar port (`number`, `protocol`, `name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Port {
    pub number: u32,
    pub protocol: String,
    pub name: String,
    pub target_port: Option<u32>,
}

/// Server-side TLS (Gateway servers, Sidecar ingress listeners).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerTlsSettings {
    pub https_redirect: bool,
    pub mode: Option<ServerTlsMode>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub credential_name: Option<String>,
    pub credential_names: Vec<String>,
    pub subject_alt_names: Vec<String>,
    pub verify_certificate_spki: Vec<String>,
    pub verify_certificate_hash: Vec<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Vec<String>,
    pub ca_cert_credential_name: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ecdh_curves: Vec<String>,
    pub tls_certificates: Vec<TlsCertificate>,
}

/// One of several server certificates (`tlsCertificates`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsCertificate {
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
}

/// `ServerTLSSettings.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

/// Client-side TLS to an upstream (`trafficPolicy.tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    pub mode: Option<ClientTlsMode>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_crl: Option<String>,
}

/// `ClientTLSSettings.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}
