//! SPIFFE identities in Istio's shape: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! Owns parsing, formatting and validation of the ID, and reading the ID out
//! of an X.509 certificate's URI SAN. It does no chain verification (see
//! `tls`) and no signing (see `ca`).

use std::fmt;
use std::str::FromStr;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI scheme prefix of every SPIFFE ID.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a SPIFFE ID Weft accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID {id:?} must start with \"spiffe://\"")]
    MissingScheme { id: String },
    #[error(
        "SPIFFE ID {id:?}: path must be /ns/<namespace>/sa/<service-account> (Istio's form), got {path:?}"
    )]
    BadPath { id: String, path: String },
    #[error(
        "SPIFFE ID {id:?}: trust domain {trust_domain:?} is invalid: {reason} (allowed: lowercase letters, digits, '.', '-', '_')"
    )]
    BadTrustDomain {
        id: String,
        trust_domain: String,
        reason: &'static str,
    },
    #[error(
        "SPIFFE ID {id:?}: {field} {value:?} is invalid: {reason} (allowed: letters, digits, '.', '-', '_')"
    )]
    BadSegment {
        id: String,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl SpiffeId {
    /// Builds and validates an ID from its parts.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        id.validate()?;
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let rest = s
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or_else(|| SpiffeIdError::MissingScheme { id: s.to_string() })?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let bad_path = || SpiffeIdError::BadPath {
            id: s.to_string(),
            path: format!("/{path}"),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_kw, ns, sa_kw, sa] = parts.as_slice() else {
            return Err(bad_path());
        };
        if *ns_kw != "ns" || *sa_kw != "sa" {
            return Err(bad_path());
        }
        Self::new(trust_domain, *ns, *sa)
    }

    fn validate(&self) -> Result<(), SpiffeIdError> {
        let td = &self.trust_domain;
        let td_err = |reason| SpiffeIdError::BadTrustDomain {
            id: self.to_string(),
            trust_domain: td.clone(),
            reason,
        };
        if td.is_empty() {
            return Err(td_err("empty"));
        }
        if td.len() > 255 {
            return Err(td_err("longer than 255 characters"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(td_err("contains a character outside the allowed set"));
        }
        for (field, value) in [
            ("namespace", &self.namespace),
            ("service account", &self.service_account),
        ] {
            let seg_err = |reason| SpiffeIdError::BadSegment {
                id: self.to_string(),
                field,
                value: value.clone(),
                reason,
            };
            if value.is_empty() {
                return Err(seg_err("empty"));
            }
            if value == "." || value == ".." {
                return Err(seg_err("dot segments are not allowed"));
            }
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(seg_err("contains a character outside the allowed set"));
            }
        }
        Ok(())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The ID as a URI string (same as `to_string()`).
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Istio's principal form without the scheme: `<td>/ns/<ns>/sa/<sa>`,
    /// as AuthorizationPolicy `principals` and `source_principal` use it.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_SCHEME}{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why no SPIFFE ID could be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(String),
    #[error("certificate has no URI SAN with a spiffe:// ID")]
    NoSpiffeId,
    #[error("certificate has {0} spiffe:// URI SANs; an X.509-SVID must have exactly one")]
    MultipleSpiffeIds(usize),
    #[error("certificate URI SAN: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
}

/// Reads the single SPIFFE ID in the URI SAN of a DER certificate.
pub fn spiffe_id_from_cert_der(der: &[u8]) -> Result<SpiffeId, CertIdentityError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertIdentityError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertIdentityError::BadCertificate(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) if uri.starts_with(SPIFFE_SCHEME) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(CertIdentityError::NoSpiffeId),
        [one] => Ok(SpiffeId::parse(one)?),
        many => Err(CertIdentityError::MultipleSpiffeIds(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/bookinfo-reviews").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(
            id.principal(),
            "cluster.local/ns/default/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn rejects_bad_ids_with_reasons() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", "must start with"),
            ("spiffe://cluster.local/ns/a", "path must be"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "path must be"),
            ("spiffe://cluster.local/namespace/a/sa/b", "path must be"),
            ("spiffe:///ns/a/sa/b", "trust domain \"\" is invalid: empty"),
            (
                "spiffe://Cluster.Local/ns/a/sa/b",
                "trust domain \"Cluster.Local\"",
            ),
            ("spiffe://td/ns//sa/b", "namespace \"\" is invalid: empty"),
            ("spiffe://td/ns/a/sa/..", "dot segments"),
            ("spiffe://td/ns/a/sa/b%20c", "service account \"b%20c\""),
        ];
        for (input, want) in cases {
            let err = SpiffeId::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err} should contain {want}");
        }
    }
}
