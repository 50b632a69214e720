//! Peer certificate checks as Envoy's `CertificateValidationContext` does
//! them: the chain to `trusted_ca`, then `match_typed_subject_alt_names`
//! (any SAN of the matcher's type satisfying any matcher). Host names are
//! never checked against SNI (Istio verifies identities, not names).
//!
//! Owns the data plane's check of peer certificates ([`SanCheck`], plugged
//! into weft-identity's WebPKI verifiers) and reading SANs and the subject
//! from certificates. Failure texts end up in
//! `%UPSTREAM_TRANSPORT_FAILURE_REASON%` via
//! `weft_identity::tls::failure_reason`.

use crate::config::ConfigError;
use crate::model::common::{Ctx, StringMatch};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    SubjectAltNameMatcher, subject_alt_name_matcher::SanType,
};
use rustls::{CertificateError, Error, OtherError};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use weft_identity::tls::{ClientVerifier, EndEntityCheck, ServerVerifier};

/// Which SAN a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Uri,
    Dns,
    Email,
    Ip,
}

impl SanKind {
    fn label(self) -> &'static str {
        match self {
            SanKind::Uri => "URI",
            SanKind::Dns => "DNS",
            SanKind::Email => "EMAIL",
            SanKind::Ip => "IP_ADDRESS",
        }
    }
}

/// One entry of `match_typed_subject_alt_names`.
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub matcher: StringMatch,
}

/// Compiles `match_typed_subject_alt_names`.
pub fn compile_san_matchers(
    ctx: &Ctx<'_>,
    list: &[SubjectAltNameMatcher],
) -> Result<Vec<SanMatcher>, ConfigError> {
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let c = ctx.index("match_typed_subject_alt_names", i);
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Uri) => SanKind::Uri,
            Ok(SanType::Dns) => SanKind::Dns,
            Ok(SanType::Email) => SanKind::Email,
            Ok(SanType::IpAddress) => SanKind::Ip,
            Ok(SanType::OtherName) => {
                return Err(c.field("san_type").unsupported("OTHER_NAME"));
            }
            _ => return Err(c.field("san_type").invalid("san_type is required")),
        };
        let Some(sm) = &m.matcher else {
            return Err(c.field("matcher").invalid("matcher is required"));
        };
        out.push(SanMatcher {
            kind,
            matcher: StringMatch::compile(&c.field("matcher"), sm)?,
        });
    }
    Ok(out)
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, Default)]
pub struct CertNames {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<String>,
    /// The subject DN in RFC 2253 order (`CN=a,O=b`), empty when none.
    pub subject: String,
}

/// Reads SANs and the subject of a DER certificate (empty on a parse error).
pub fn cert_names(der: &[u8]) -> CertNames {
    use x509_parser::extensions::GeneralName;
    let mut n = CertNames::default();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return n;
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                GeneralName::URI(u) => n.uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => n.dns.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => n.emails.push((*e).to_owned()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        n.ips.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    // OpenSSL's RFC 2253 form lists the most specific RDN first.
    let mut rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .flat_map(|rdn| rdn.iter())
        .map(|atv| {
            let key = x509_parser::objects::oid2abbrev(
                atv.attr_type(),
                x509_parser::objects::oid_registry(),
            )
            .map(str::to_owned)
            .unwrap_or_else(|_| atv.attr_type().to_id_string());
            format!("{key}={}", atv.as_str().unwrap_or_default())
        })
        .collect();
    rdns.reverse();
    n.subject = rdns.join(",");
    n
}

/// A certificate whose SANs satisfy none of the configured matchers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer certificate SANs [{}] match none of match_typed_subject_alt_names [{}]", .found.join(", "), .expected.join(", "))]
pub struct SanMismatch {
    pub found: Vec<String>,
    pub expected: Vec<String>,
}

/// Checks `matchers` against the leaf (no matchers: any certificate).
pub fn check_sans(matchers: &[SanMatcher], leaf: &[u8]) -> Result<(), Error> {
    if matchers.is_empty() {
        return Ok(());
    }
    let names = cert_names(leaf);
    let of = |k: SanKind| match k {
        SanKind::Uri => &names.uris,
        SanKind::Dns => &names.dns,
        SanKind::Email => &names.emails,
        SanKind::Ip => &names.ips,
    };
    if matchers
        .iter()
        .any(|m| of(m.kind).iter().any(|v| m.matcher.matches(v)))
    {
        return Ok(());
    }
    let found = [SanKind::Uri, SanKind::Dns, SanKind::Email, SanKind::Ip]
        .into_iter()
        .flat_map(|k| of(k).iter().map(move |v| format!("{}:{v}", k.label())))
        .collect();
    let expected = matchers
        .iter()
        .map(|m| format!("{}:{:?}", m.kind.label(), m.matcher))
        .collect();
    Err(Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(SanMismatch { found, expected })),
    )))
}

/// Envoy's `match_typed_subject_alt_names` as the check of weft-identity's
/// verifiers (no matchers: any certificate).
#[derive(Debug, Clone)]
pub struct SanCheck(pub Vec<SanMatcher>);

impl EndEntityCheck for SanCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        check_sans(&self.0, end_entity)
    }
}

/// Verifies an upstream's certificate: the chain to the validation
/// context's roots when one is configured (without one, Envoy accepts any
/// certificate: [`ServerVerifier::without_roots`]), then the SAN matchers.
pub type UpstreamVerifier = ServerVerifier<SanCheck>;

/// Verifies a downstream client certificate: WebPKI chain checks to the
/// validation context's roots, then the SAN matchers.
pub type DownstreamVerifier = ClientVerifier<SanCheck>;
