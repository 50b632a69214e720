//! SDS resources weftd serves over ADS: the mesh trust bundle.
//!
//! Owns the `Secret` type of weftd's ADS answers. As in Istio, only the
//! secret that carries no private key comes from the control plane: `ROOTCA`
//! (a validation context with the mesh root). The workload certificate
//! (`default`) must be produced next to the proxy, by whatever holds the
//! key it generated (Istio's node agent serving SDS on a local socket); weftd
//! never sees workload keys, so it never serves `default`. Every other type
//! is answered by the wrapped generator (translation).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};
use prost::Message as _;
use weft_xds::types::SECRET;
use weft_xds::{Any, Generator, NodeInfo, ResourceSet};

/// Istio's name of the trust-bundle secret Envoy sidecars subscribe to.
pub const ROOT_CA_SECRET: &str = "ROOTCA";
/// Istio's name of the workload certificate secret (served by the agent).
pub const DEFAULT_SECRET: &str = "default";

/// The `ROOTCA` secret: a validation context trusting `root_pem`.
pub fn root_ca_secret(root_pem: &str) -> Secret {
    Secret {
        name: ROOT_CA_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(root_pem.as_bytes().to_vec())),
                    ..DataSource::default()
                }),
                ..CertificateValidationContext::default()
            },
        )),
    }
}

/// Wraps a generator and answers SDS with `ROOTCA`.
pub struct SecretGenerator {
    inner: Arc<dyn Generator>,
    secrets: ResourceSet,
}

impl std::fmt::Debug for SecretGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretGenerator").finish_non_exhaustive()
    }
}

impl SecretGenerator {
    /// `inner` for every type but SDS; SDS holds `ROOTCA` with `root_pem`.
    pub fn new(inner: Arc<dyn Generator>, root_pem: &str) -> Self {
        let secret = root_ca_secret(root_pem);
        let mut secrets = ResourceSet::new();
        secrets.insert(
            ROOT_CA_SECRET,
            Any {
                type_url: SECRET.into(),
                value: secret.encode_to_vec(),
            },
        );
        SecretGenerator { inner, secrets }
    }
}

impl Generator for SecretGenerator {
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet {
        if type_url == SECRET {
            self.secrets.clone()
        } else {
            self.inner.generate(node, type_url)
        }
    }

    fn cache_key(&self, node: &NodeInfo, type_url: &str) -> Option<String> {
        if type_url == SECRET {
            // The same bundle for every proxy.
            Some(String::new())
        } else {
            self.inner.cache_key(node, type_url)
        }
    }

    fn forget(&self, node: &NodeInfo) {
        self.inner.forget(node);
    }
}
