//! Compiling Envoy's TLS contexts into rustls configs:
//! `DownstreamTlsContext` (filter chains) and `UpstreamTlsContext`
//! (clusters): certificates and trust (see `super::secrets` for where they
//! come from), SAN matchers, ALPN, TLS versions and cipher suites, SNI and
//! session resumption.
//!
//! A context whose secrets are not available (no certificate source) still
//! compiles; its connections fail with the reason (`UF` and
//! `%UPSTREAM_TRANSPORT_FAILURE_REASON%` upstream, a closed connection
//! downstream), as Envoy does while a secret is not warmed.

use super::secrets::{
    CertSource, DEFAULT_SECRET, ROOT_CA_SECRET, Roots, Secrets, Validation, tls_certificate,
    validation_context,
};
use super::verify::{DownstreamVerifier, SanCheck, UpstreamVerifier};
use crate::config::ConfigError;
use crate::model::common::Ctx;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

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
        Roots::Unavailable(why) => return Err(why.clone()),
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
            CertSource::None | CertSource::Unavailable(_) => None,
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
    match cert {
        CertSource::Workload => {}
        CertSource::Unavailable(why) => return Some(why.clone()),
        CertSource::None | CertSource::Static(_) => return None,
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
                        .with_client_cert_verifier(Arc::new(
                            DownstreamVerifier::with_roots(
                                roots,
                                SanCheck(v.sans.clone()),
                                required,
                            )
                            .map_err(|e| e.to_string())?,
                        ))
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
                Some(v) => (roots_store(v)?, SanCheck(v.sans.clone())),
                None => (None, SanCheck(Vec::new())),
            };
            let verifier = match roots {
                Some(roots) => UpstreamVerifier::with_roots(roots, sans),
                None => UpstreamVerifier::without_roots(sans),
            };
            let mut cfg = ClientConfig::builder_with_provider(c.provider.clone())
                .with_protocol_versions(&c.versions)
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
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
