//! The webhook's serving certificate: loaded from PEM files
//! (`--tls-cert`, `--tls-key`) or generated at start (a CA and a serving
//! certificate signed by it, with rcgen), and the rustls server config
//! (ring provider, HTTP/1.1 via ALPN).

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// TLS setup errors, naming the file or flag.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{flag} {path}: {message}")]
    Pem {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Certificate generation failed.
    #[error("generating the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A serving certificate chain, its key, and the PEM CA bundle clients
/// (the API server) must trust.
pub struct ServingCert {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// PEM of the CA that signed the chain (for `caBundle`).
    pub ca_bundle_pem: String,
}

/// Load the chain and key from PEM files. The CA bundle is the chain's last
/// certificate (the issuer clients should trust).
pub fn load(cert: &Path, key: &Path) -> Result<ServingCert, TlsError> {
    let pem_err = |flag, path: &Path, message: String| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err("--tls-cert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err("--tls-cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err("--tls-cert", cert, "no CERTIFICATE block".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem_err("--tls-key", key, format!("no usable private key: {e}")))?;
    let last = chain
        .last()
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    Ok(ServingCert {
        chain,
        key: key_der,
        ca_bundle_pem: der_to_pem(&last),
    })
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Generate a CA and a serving certificate for `names` (DNS names or IP
/// addresses).
pub fn generate(names: &[String]) -> Result<ServingCert, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "weftd webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(DnType::CommonName, "weftd");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(ServingCert {
        chain: vec![leaf_cert.der().clone()],
        key: PrivateKeyDer::try_from(leaf_key.serialize_der())
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?,
        ca_bundle_pem: ca_cert.pem(),
    })
}

/// The names a generated certificate covers by default: loopback and the
/// in-cluster Service names.
pub fn default_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        service.into(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// rustls server config for the webhook (ring provider, HTTP/1.1).
pub fn server_config(cert: ServingCert) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
