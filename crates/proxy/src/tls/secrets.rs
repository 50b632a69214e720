//! `static_resources.secrets` and the secret references of TLS contexts:
//! inline PEM or files, static secrets by name, and Istio's SDS names
//! `default`/`ROOTCA` answered by the workload identity (`crate::identity`).
//! Other SDS names compile into an unavailable secret whose connections
//! fail with the reason, as in Envoy while a secret never arrives.

use super::verify::{SanMatcher, compile_san_matchers};
use crate::config::ConfigError;
use crate::model::common::Ctx;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pb;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::Arc;

/// Istio's secret names that the workload identity answers.
pub const DEFAULT_SECRET: &str = "default";
pub const ROOT_CA_SECRET: &str = "ROOTCA";

/// `static_resources.secrets`, compiled.
#[derive(Debug, Default)]
pub struct Secrets {
    certs: HashMap<String, Arc<CertifiedKey>>,
    validation: HashMap<String, Validation>,
}

/// Trust anchors and SAN matchers.
#[derive(Debug, Clone, Default)]
pub(super) struct Validation {
    pub(super) roots: Roots,
    pub(super) sans: Vec<SanMatcher>,
}

#[derive(Debug, Clone, Default)]
pub(super) enum Roots {
    /// No trusted_ca: the chain is not verified (Envoy's behaviour).
    #[default]
    None,
    Static(Vec<CertificateDer<'static>>),
    /// `ROOTCA` from the workload identity.
    Workload,
    /// An SDS name weft-proxy cannot serve (the reason).
    Unavailable(String),
}

/// Where the certificate a side presents comes from.
#[derive(Debug, Clone)]
pub(super) enum CertSource {
    None,
    Static(Arc<CertifiedKey>),
    Workload,
    /// An SDS name weft-proxy cannot serve (the reason).
    Unavailable(String),
}

fn pem_certs(ctx: &Ctx<'_>, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| ctx.invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(ctx.invalid("no PEM certificate found"));
    }
    Ok(certs)
}

pub(super) fn tls_certificate(
    ctx: &Ctx<'_>,
    c: &pb::TlsCertificate,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let chain_ctx = ctx.field("certificate_chain");
    let Some(chain) = &c.certificate_chain else {
        return Err(chain_ctx.invalid("certificate_chain is required"));
    };
    let chain = pem_certs(&chain_ctx, &crate::model::data_source(&chain_ctx, chain)?)?;
    let key_ctx = ctx.field("private_key");
    let Some(key) = &c.private_key else {
        return Err(key_ctx.invalid("private_key is required"));
    };
    let key_pem = crate::model::data_source(&key_ctx, key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_ctx.invalid(format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_ctx.invalid(format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| ctx.invalid(format!("certificate and private key do not match: {e}")))?;
    Ok(Arc::new(ck))
}

pub(super) fn validation_context(
    ctx: &Ctx<'_>,
    v: &pb::CertificateValidationContext,
) -> Result<Validation, ConfigError> {
    let roots = match &v.trusted_ca {
        Some(ds) => {
            let c = ctx.field("trusted_ca");
            Roots::Static(pem_certs(&c, &crate::model::data_source(&c, ds)?)?)
        }
        None => Roots::None,
    };
    Ok(Validation {
        roots,
        sans: compile_san_matchers(ctx, &v.match_typed_subject_alt_names)?,
    })
}

impl Secrets {
    /// Compiles `static_resources.secrets` (`ctx` is that list's parent).
    pub fn compile(ctx: &Ctx<'_>, secrets: &[pb::Secret]) -> Result<Secrets, ConfigError> {
        let mut out = Secrets::default();
        for (i, s) in secrets.iter().enumerate() {
            let c = ctx.index("secrets", i);
            if s.name.is_empty() {
                return Err(c.field("name").invalid("a secret needs a name"));
            }
            let dup = match &s.r#type {
                Some(pb::secret::Type::TlsCertificate(t)) => out
                    .certs
                    .insert(
                        s.name.clone(),
                        tls_certificate(&c.field("tls_certificate"), t)?,
                    )
                    .is_some(),
                Some(pb::secret::Type::ValidationContext(v)) => out
                    .validation
                    .insert(
                        s.name.clone(),
                        validation_context(&c.field("validation_context"), v)?,
                    )
                    .is_some(),
                Some(_) => {
                    return Err(c.unsupported(
                        "only tls_certificate and validation_context secrets are implemented",
                    ));
                }
                None => return Err(c.invalid("tls_certificate or validation_context is required")),
            };
            if dup {
                return Err(c
                    .field("name")
                    .invalid(format!("duplicate secret {:?}", s.name)));
            }
        }
        Ok(out)
    }

    pub(super) fn cert(
        &self,
        ctx: &Ctx<'_>,
        sds: &pb::SdsSecretConfig,
    ) -> Result<CertSource, ConfigError> {
        if sds.sds_config.is_some() {
            // Like a secret Envoy's SDS never delivers: the context
            // compiles, its connections fail with this reason.
            return Ok(if sds.name == DEFAULT_SECRET {
                CertSource::Workload
            } else {
                CertSource::Unavailable(format!(
                    "SDS secret {:?} is not available: weft-proxy serves only {DEFAULT_SECRET:?} and {ROOT_CA_SECRET:?} from its own certificate source",
                    sds.name
                ))
            });
        }
        self.certs
            .get(&sds.name)
            .map(|c| CertSource::Static(c.clone()))
            .ok_or_else(|| {
                ctx.field("name").invalid(format!(
                    "no tls_certificate secret {:?} in static_resources.secrets",
                    sds.name
                ))
            })
    }

    pub(super) fn validation(
        &self,
        ctx: &Ctx<'_>,
        sds: &pb::SdsSecretConfig,
    ) -> Result<Validation, ConfigError> {
        if sds.sds_config.is_some() {
            return Ok(Validation {
                roots: if sds.name == ROOT_CA_SECRET {
                    Roots::Workload
                } else {
                    Roots::Unavailable(format!(
                        "SDS validation secret {:?} is not available: weft-proxy serves only {ROOT_CA_SECRET:?} from its own certificate source",
                        sds.name
                    ))
                },
                sans: Vec::new(),
            });
        }
        self.validation.get(&sds.name).cloned().ok_or_else(|| {
            ctx.field("name").invalid(format!(
                "no validation_context secret {:?} in static_resources.secrets",
                sds.name
            ))
        })
    }
}
