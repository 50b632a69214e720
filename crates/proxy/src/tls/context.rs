//! Compiling Envoy's TLS configuration into rustls configs:
//! `static_resources.secrets`, `DownstreamTlsContext` (filter chains) and
//! `UpstreamTlsContext` (clusters).
//!
//! Where certificates come from:
//! - inline `tls_certificates` / `validation_context` (PEM inline or files);
//! - an `SdsSecretConfig` without `sds_config`: a static secret by name;
//! - an `SdsSecretConfig` with `sds_config` named `default` or `ROOTCA`:
//!   the workload identity (`crate::identity`), whatever the config source
//!   says (weft-proxy is its own node agent). Other SDS names are refused.
//!
//! A context whose secrets are not available (no certificate source) still
//! compiles; its connections fail with the reason (`UF` and
//! `%UPSTREAM_TRANSPORT_FAILURE_REASON%` upstream, a closed connection
//! downstream), as Envoy does while a secret is not warmed.

use super::verify::{DownstreamVerifier, SanMatcher, UpstreamVerifier, compile_san_matchers};
use crate::config::ConfigError;
use crate::model::common::Ctx;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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
struct Validation {
    roots: Roots,
    sans: Vec<SanMatcher>,
}

#[derive(Debug, Clone, Default)]
enum Roots {
    /// No trusted_ca: the chain is not verified (Envoy's behaviour).
    #[default]
    None,
    Static(Vec<CertificateDer<'static>>),
    /// `ROOTCA` from the workload identity.
    Workload,
}

/// Where the certificate a side presents comes from.
#[derive(Debug, Clone)]
enum CertSource {
    None,
    Static(Arc<CertifiedKey>),
    Workload,
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

fn tls_certificate(
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

fn validation_context(
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

    fn cert(&self, ctx: &Ctx<'_>, sds: &pb::SdsSecretConfig) -> Result<CertSource, ConfigError> {
        if sds.sds_config.is_some() {
            return if sds.name == DEFAULT_SECRET {
                Ok(CertSource::Workload)
            } else {
                Err(ctx.field("name").unsupported(format!(
                    "SDS secret {:?}: weft-proxy serves only {DEFAULT_SECRET:?} and {ROOT_CA_SECRET:?} from its own certificate source",
                    sds.name
                )))
            };
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

    fn validation(
        &self,
        ctx: &Ctx<'_>,
        sds: &pb::SdsSecretConfig,
    ) -> Result<Validation, ConfigError> {
        if sds.sds_config.is_some() {
            return if sds.name == ROOT_CA_SECRET {
                Ok(Validation {
                    roots: Roots::Workload,
                    sans: Vec::new(),
                })
            } else {
                Err(ctx.field("name").unsupported(format!(
                    "SDS validation secret {:?}: weft-proxy serves only {ROOT_CA_SECRET:?} from its own certificate source",
                    sds.name
                )))
            };
        }
        self.validation.get(&sds.name).cloned().ok_or_else(|| {
            ctx.field("name").invalid(format!(
                "no validation_context secret {:?} in static_resources.secrets",
                sds.name
            ))
        })
    }
}

/// The parts of a `CommonTlsContext` both sides use.
struct Common {
    cert: CertSource,
    validation: Option<Validation>,
    alpn: Vec<Vec<u8>>,
    versions: Vec<&'static SupportedProtocolVersion>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// The TLS 1.2 suites rustls implements, by their OpenSSL names.
const TLS12_SUITES: &[(&str, rustls::CipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Envoy's `cipher_suites` (TLS 1.2 only, as in BoringSSL; TLS 1.3 suites
/// are fixed). OpenSSL names rustls does not implement (non-ECDHE, CBC)
/// cannot be offered and are left out; `[A|B]` groups count as both.
fn provider_with_suites(names: &[String]) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return Arc::new(p);
    }
    let wanted: Vec<rustls::CipherSuite> = names
        .iter()
        .flat_map(|n| n.trim_matches(|c| c == '[' || c == ']').split('|'))
        .filter_map(|n| {
            TLS12_SUITES
                .iter()
                .find(|(name, _)| *name == n.trim())
                .map(|(_, s)| *s)
        })
        .collect();
    p.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(_) => wanted.contains(&s.suite()),
    });
    Arc::new(p)
}

fn common(
    ctx: &Ctx<'_>,
    c: Option<&pb::CommonTlsContext>,
    secrets: &Secrets,
) -> Result<Common, ConfigError> {
    let default = pb::CommonTlsContext::default();
    let c = c.unwrap_or(&default);
    let ctx = ctx.field("common_tls_context");
    let n = c.tls_certificates.len() + c.tls_certificate_sds_secret_configs.len();
    if n > 1 {
        return Err(ctx.unsupported("more than one certificate (SNI/key-type selection)"));
    }
    let cert = if let Some(t) = c.tls_certificates.first() {
        CertSource::Static(tls_certificate(&ctx.index("tls_certificates", 0), t)?)
    } else if let Some(s) = c.tls_certificate_sds_secret_configs.first() {
        secrets.cert(&ctx.index("tls_certificate_sds_secret_configs", 0), s)?
    } else {
        CertSource::None
    };
    let validation = match &c.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(v)) => {
            Some(validation_context(&ctx.field("validation_context"), v)?)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            Some(secrets.validation(&ctx.field("validation_context_sds_secret_config"), s)?)
        }
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let cc = ctx.field("combined_validation_context");
            let mut v = match &cv.default_validation_context {
                Some(d) => validation_context(&cc.field("default_validation_context"), d)?,
                None => Validation::default(),
            };
            if let Some(s) = &cv.validation_context_sds_secret_config {
                // The dynamic context is merged into the default one.
                let dynamic =
                    secrets.validation(&cc.field("validation_context_sds_secret_config"), s)?;
                if !matches!(dynamic.roots, Roots::None) {
                    v.roots = dynamic.roots;
                }
                v.sans.extend(dynamic.sans);
            }
            Some(v)
        }
        #[allow(deprecated)]
        Some(_) => return Err(ctx.unsupported("certificate provider validation contexts")),
    };
    let mut versions: Vec<&'static SupportedProtocolVersion> =
        vec![&rustls::version::TLS12, &rustls::version::TLS13];
    if let Some(p) = &c.tls_params {
        let pc = ctx.field("tls_params");
        let min = TlsProtocol::try_from(p.tls_minimum_protocol_version).unwrap_or_default();
        let max = TlsProtocol::try_from(p.tls_maximum_protocol_version).unwrap_or_default();
        if max != TlsProtocol::TlsAuto && max < TlsProtocol::TlSv12 {
            return Err(pc
                .field("tls_maximum_protocol_version")
                .unsupported(format!(
                    "{} (weft-proxy speaks TLS 1.2 and 1.3)",
                    max.as_str_name()
                )));
        }
        if min == TlsProtocol::TlSv13 {
            versions.retain(|v| v.version == rustls::ProtocolVersion::TLSv1_3);
        }
        if max == TlsProtocol::TlSv12 {
            versions.retain(|v| v.version == rustls::ProtocolVersion::TLSv1_2);
        }
        if versions.is_empty() {
            return Err(pc.invalid("tls_minimum_protocol_version is above the maximum"));
        }
    }
    let provider = provider_with_suites(
        c.tls_params
            .as_ref()
            .map(|p| p.cipher_suites.as_slice())
            .unwrap_or_default(),
    );
    Ok(Common {
        provider,
        cert,
        validation,
        alpn: c
            .alpn_protocols
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect(),
        versions,
    })
}

fn roots_store(v: &Validation) -> Result<Option<Arc<RootCertStore>>, String> {
    let certs: Vec<CertificateDer<'static>> = match &v.roots {
        Roots::None => return Ok(None),
        Roots::Static(c) => c.clone(),
        Roots::Workload => match crate::identity::current() {
            Some(w) if !w.roots().is_empty() => w.roots().to_vec(),
            Some(_) => {
                return Err(format!(
                    "secret {ROOT_CA_SECRET} is not available: no mesh root (WEFT_ROOT_CERT_FILE)"
                ));
            }
            None => {
                return Err(format!(
                    "secret {ROOT_CA_SECRET} is not available: {}",
                    crate::identity::NO_SOURCE
                ));
            }
        },
    };
    let mut store = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        store
            .add(c)
            .map_err(|e| format!("trusted CA certificate #{i}: {e}"))?;
    }
    Ok(Some(Arc::new(store)))
}

/// Presents a fixed certificate, or the workload's current one.
#[derive(Debug)]
struct Resolver(CertSource);

impl Resolver {
    fn key(&self) -> Option<Arc<CertifiedKey>> {
        match &self.0 {
            CertSource::None => None,
            CertSource::Static(k) => Some(k.clone()),
            CertSource::Workload => crate::identity::current().and_then(|w| w.certified_key()),
        }
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
    fn has_certs(&self) -> bool {
        !matches!(self.0, CertSource::None)
    }
}

/// Why the workload certificate is missing right now, if it is.
fn workload_missing(cert: &CertSource) -> Option<String> {
    if !matches!(cert, CertSource::Workload) {
        return None;
    }
    match crate::identity::current() {
        Some(w) if w.certified_key().is_some() => None,
        Some(w) => Some(format!(
            "secret {DEFAULT_SECRET} is not available: {}",
            w.unavailable_reason()
        )),
        None => Some(format!(
            "secret {DEFAULT_SECRET} is not available: {}",
            crate::identity::NO_SOURCE
        )),
    }
}

// === downstream ===

/// A compiled `DownstreamTlsContext`: one rustls config per ALPN outcome,
/// so the server answers with the protocol it prefers among those offered
/// and, like Envoy, carries on without ALPN when none is shared.
#[derive(Debug)]
pub struct ServerTls {
    configs: Result<ServerConfigs, String>,
    cert: CertSource,
}

#[derive(Debug)]
struct ServerConfigs {
    protocols: Vec<Vec<u8>>,
    per_protocol: Vec<Arc<ServerConfig>>,
    none: Arc<ServerConfig>,
}

impl ServerTls {
    pub fn compile(
        ctx: &Ctx<'_>,
        d: &pb::DownstreamTlsContext,
        secrets: &Secrets,
    ) -> Result<ServerTls, ConfigError> {
        let c = common(ctx, d.common_tls_context.as_ref(), secrets)?;
        if matches!(c.cert, CertSource::None) {
            return Err(ctx
                .field("common_tls_context")
                .invalid("a DownstreamTlsContext needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)"));
        }
        let required = d.require_client_certificate.is_some_and(|b| b.value);
        if required && c.validation.is_none() {
            return Err(ctx
                .field("require_client_certificate")
                .invalid("requiring a client certificate needs a validation context"));
        }
        let build = || -> Result<ServerConfigs, String> {
            let builder = ServerConfig::builder_with_provider(c.provider.clone())
                .with_protocol_versions(&c.versions)
                .map_err(|e| e.to_string())?;
            let resolver = Arc::new(Resolver(c.cert.clone()));
            let base = match &c.validation {
                Some(v) => match roots_store(v)? {
                    Some(roots) => builder
                        .with_client_cert_verifier(Arc::new(DownstreamVerifier::new(
                            roots,
                            v.sans.clone(),
                            required,
                        )?))
                        .with_cert_resolver(resolver),
                    None if required => {
                        return Err("require_client_certificate without trusted_ca".into());
                    }
                    None => builder.with_no_client_auth().with_cert_resolver(resolver),
                },
                None => builder.with_no_client_auth().with_cert_resolver(resolver),
            };
            let with = |alpn: Vec<Vec<u8>>| {
                let mut cfg = base.clone();
                cfg.alpn_protocols = alpn;
                Arc::new(cfg)
            };
            Ok(ServerConfigs {
                per_protocol: c.alpn.iter().map(|p| with(vec![p.clone()])).collect(),
                none: with(Vec::new()),
                protocols: c.alpn.clone(),
            })
        };
        Ok(ServerTls {
            configs: build(),
            cert: c.cert.clone(),
        })
    }

    /// The config for a ClientHello offering `offered` ALPN values.
    pub fn config_for<'a>(
        &self,
        offered: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Result<Arc<ServerConfig>, String> {
        if let Some(why) = workload_missing(&self.cert) {
            return Err(why);
        }
        let c = self.configs.as_ref().map_err(Clone::clone)?;
        for (i, p) in c.protocols.iter().enumerate() {
            if offered.clone().any(|o| o == p.as_slice()) {
                return Ok(c.per_protocol[i].clone());
            }
        }
        Ok(c.none.clone())
    }
}

// === upstream ===

/// A compiled `UpstreamTlsContext`.
#[derive(Debug)]
pub struct ClientTls {
    config: Result<Arc<ClientConfig>, String>,
    server_name: ServerName<'static>,
    cert: CertSource,
    /// The SNI sent, for logs.
    pub sni: Option<Arc<str>>,
}

impl ClientTls {
    /// `http2`: whether the cluster speaks HTTP/2 (else `h2` is not offered).
    pub fn compile(
        ctx: &Ctx<'_>,
        u: &pb::UpstreamTlsContext,
        secrets: &Secrets,
        http2: bool,
    ) -> Result<ClientTls, ConfigError> {
        let c = common(ctx, u.common_tls_context.as_ref(), secrets)?;
        let (server_name, sni) = if u.sni.is_empty() {
            (
                ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
                None,
            )
        } else {
            let name = ServerName::try_from(u.sni.clone())
                .map_err(|e| ctx.field("sni").invalid(format!("{:?}: {e}", u.sni)))?;
            (name, Some(Arc::from(u.sni.as_str())))
        };
        let alpn: Vec<Vec<u8>> = c
            .alpn
            .iter()
            .filter(|p| http2 || p.as_slice() != b"h2")
            .cloned()
            .collect();
        let max_session_keys = u.max_session_keys.map(|v| v.value);
        let build = || -> Result<Arc<ClientConfig>, String> {
            let (roots, sans) = match &c.validation {
                Some(v) => (roots_store(v)?, v.sans.clone()),
                None => (None, Vec::new()),
            };
            let mut cfg = ClientConfig::builder_with_provider(c.provider.clone())
                .with_protocol_versions(&c.versions)
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UpstreamVerifier::new(roots, sans)))
                .with_client_cert_resolver(Arc::new(Resolver(c.cert.clone())));
            cfg.alpn_protocols = alpn;
            cfg.enable_sni = sni.is_some();
            // Envoy's max_session_keys: 0 turns session resumption off.
            if let Some(n) = max_session_keys {
                cfg.resumption = if n == 0 {
                    rustls::client::Resumption::disabled()
                } else {
                    rustls::client::Resumption::in_memory_sessions(n as usize)
                };
            }
            Ok(Arc::new(cfg))
        };
        Ok(ClientTls {
            config: build(),
            server_name,
            cert: c.cert,
            sni,
        })
    }

    /// Runs the handshake on `tcp`; the error is Envoy's transport failure
    /// reason (`TLS_error:|...:TLS_error_end`).
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let wrap = |m: String| format!("TLS_error:|{m}:TLS_error_end");
        if let Some(why) = workload_missing(&self.cert) {
            return Err(wrap(why));
        }
        let cfg = self.config.as_ref().map_err(|e| wrap(e.clone()))?;
        tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| weft_identity::tls::handshake_failure_reason(&e))
    }
}
