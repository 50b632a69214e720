//! rustls configurations for mesh mTLS (ring provider only) and the
//! SPIFFE-aware certificate verifiers behind them.
//!
//! Owns: chain verification to the mesh root, the peer SPIFFE ID checks
//! (trust domain; the expected set of server identities, as Istio checks SAN
//! URIs and never host names), Istio's ALPN values, and turning handshake
//! failures into `UPSTREAM_TRANSPORT_FAILURE_REASON` strings. Sockets and
//! listeners belong to the proxy.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::spiffe::{CertIdentityError, SpiffeId, spiffe_id_from_cert_der};

/// ALPN the client offers first so an Istio peer knows the stream carries
/// metadata exchange (Envoy's `istio-peer-exchange`).
pub const ALPN_ISTIO_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
/// ALPN marking an in-mesh mTLS connection.
pub const ALPN_ISTIO: &[u8] = b"istio";

/// The ring crypto provider every mesh config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors of building a TLS config.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("mesh root certificate #{index} is not a usable trust anchor: {reason}")]
    BadRoot { index: usize, reason: String },
    #[error("no mesh root certificates given")]
    NoRoots,
    #[error("rustls: {0}")]
    Rustls(String),
}

/// What mesh peers must chain to and which trust domains they may be in.
#[derive(Clone, Debug)]
pub struct MeshTrust {
    roots: Arc<RootCertStore>,
    trust_domains: Arc<[String]>,
}

impl MeshTrust {
    /// `trust_domains`: the mesh's trust domain followed by its aliases.
    pub fn new(
        roots: &[CertificateDer<'static>],
        trust_domains: Vec<String>,
    ) -> Result<Self, TlsConfigError> {
        if roots.is_empty() {
            return Err(TlsConfigError::NoRoots);
        }
        let mut store = RootCertStore::empty();
        for (index, root) in roots.iter().enumerate() {
            store
                .add(root.clone())
                .map_err(|e| TlsConfigError::BadRoot {
                    index,
                    reason: e.to_string(),
                })?;
        }
        Ok(Self {
            roots: Arc::new(store),
            trust_domains: trust_domains.into(),
        })
    }

    fn check_trust_domain(&self, id: &SpiffeId) -> Result<(), PeerIdentityError> {
        if self.trust_domains.iter().any(|td| td == id.trust_domain()) {
            Ok(())
        } else {
            Err(PeerIdentityError::WrongTrustDomain {
                id: id.to_string(),
                expected: self.trust_domains.to_vec(),
            })
        }
    }
}

/// A peer certificate that chains correctly but names the wrong identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer certificate identity: {0}")]
    NoIdentity(#[from] CertIdentityError),
    #[error("peer SPIFFE ID {id} is not in trust domain {}", .expected.join(" or "))]
    WrongTrustDomain { id: String, expected: Vec<String> },
    #[error("peer SPIFFE ID {id} is not one of the expected {}", .expected.join(", "))]
    UnexpectedIdentity { id: String, expected: Vec<String> },
}

fn identity_error(e: PeerIdentityError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Reads the SPIFFE ID of a connection's peer (first certificate of the chain).
pub fn peer_spiffe_id(
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<SpiffeId, CertIdentityError> {
    let leaf = peer_certificates
        .and_then(|c| c.first())
        .ok_or(CertIdentityError::NoSpiffeId)?;
    spiffe_id_from_cert_der(leaf)
}

// === server side: verify the client ===

/// Requires a client certificate chained to the mesh root, with a SPIFFE ID
/// in the mesh's trust domains.
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust: MeshTrust,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("trust_domains", &self.trust.trust_domains)
            .finish()
    }
}

impl SpiffeClientVerifier {
    /// A client certificate is required.
    pub fn new(trust: MeshTrust) -> Result<Self, TlsConfigError> {
        Self::build(trust, false)
    }

    /// A client certificate is verified when presented but not required
    /// (the CA port: bootstrapping proxies have only a token).
    pub fn optional(trust: MeshTrust) -> Result<Self, TlsConfigError> {
        Self::build(trust, true)
    }

    fn build(trust: MeshTrust, optional: bool) -> Result<Self, TlsConfigError> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&trust.roots), provider());
        if optional {
            builder = builder.allow_unauthenticated();
        }
        let inner = builder
            .build()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        Ok(Self { inner, trust })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = spiffe_id_from_cert_der(end_entity).map_err(|e| identity_error(e.into()))?;
        self.trust.check_trust_domain(&id).map_err(identity_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server config for an inbound mTLS listener: presents the workload
/// certificate from `resolver` (the [`crate::CertificateManager`]), requires a
/// mesh client certificate, negotiates `alpn` (e.g. `h2`, `http/1.1`; empty
/// for TCP). The peer's ID: [`peer_spiffe_id`] on the connection's
/// `peer_certificates()`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    trust: &MeshTrust,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig, TlsConfigError> {
    let verifier = Arc::new(SpiffeClientVerifier::new(trust.clone())?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Server config for the control plane's gRPC over TLS (15012): ALPN `h2`,
/// a client certificate verified when presented but optional, so proxies can
/// bootstrap with a token and renew with their certificate.
pub fn control_plane_server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    trust: &MeshTrust,
) -> Result<ServerConfig, TlsConfigError> {
    let verifier = Arc::new(SpiffeClientVerifier::optional(trust.clone())?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

// === client side: verify the server ===

/// Verifies the server's chain to the mesh root and that its SPIFFE ID is
/// in the expected set (Istio's `subjectAltNames` of ISTIO_MUTUAL). The SNI
/// (`outbound_.80_.v1_.reviews.default.svc.cluster.local`) is not checked
/// against the certificate.
pub struct SpiffeServerVerifier {
    trust: MeshTrust,
    /// Empty = any ID in the trust domains.
    expected: Vec<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected)
            .finish()
    }
}

impl SpiffeServerVerifier {
    pub fn new(trust: MeshTrust, expected: Vec<SpiffeId>) -> Self {
        Self {
            trust,
            expected,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.trust.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let id = spiffe_id_from_cert_der(end_entity).map_err(|e| identity_error(e.into()))?;
        self.trust.check_trust_domain(&id).map_err(identity_error)?;
        if !self.expected.is_empty() && !self.expected.contains(&id) {
            return Err(identity_error(PeerIdentityError::UnexpectedIdentity {
                id: id.to_string(),
                expected: self.expected.iter().map(ToString::to_string).collect(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client config for an ISTIO_MUTUAL cluster: presents the workload
/// certificate from `resolver`, verifies the server against `trust` and
/// `expected` identities, and offers ALPN `istio-peer-exchange`, `istio`,
/// then `app_protocols` (e.g. `h2`).
pub fn client_config(
    resolver: Arc<dyn ResolvesClientCert>,
    trust: &MeshTrust,
    expected: Vec<SpiffeId>,
    app_protocols: &[&[u8]],
) -> Result<ClientConfig, TlsConfigError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(trust.clone(), expected));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = [ALPN_ISTIO_PEER_EXCHANGE, ALPN_ISTIO]
        .into_iter()
        .chain(app_protocols.iter().copied())
        .map(<[u8]>::to_vec)
        .collect();
    Ok(config)
}

/// Client config of a proxy that has no certificate yet (first contact with
/// the CA): verifies the control plane like [`client_config`] and presents
/// no client certificate; ALPN `h2`.
pub fn bootstrap_client_config(
    trust: &MeshTrust,
    expected: Vec<SpiffeId>,
) -> Result<ClientConfig, TlsConfigError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(trust.clone(), expected));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Whether a ClientHello's ALPN list marks Istio mTLS (`istio`,
/// `istio-peer-exchange`, or `istio-*`), as the inbound listener's filter
/// chain match does.
pub fn is_istio_alpn<'a>(mut offered: impl Iterator<Item = &'a [u8]>) -> bool {
    offered.any(|p| p == ALPN_ISTIO || p.starts_with(b"istio-"))
}

// === failure reasons ===

/// A short, stable reason for a TLS failure, suitable for Envoy's
/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, e.g.
/// `TLS_error:|CERTIFICATE_VERIFY_FAILED:certificate expired:TLS_error_end`.
pub fn failure_reason(error: &Error) -> String {
    let verify =
        |detail: String| format!("TLS_error:|CERTIFICATE_VERIFY_FAILED:{detail}:TLS_error_end");
    match error {
        Error::InvalidCertificate(cert) => verify(match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not yet valid".into()
            }
            CertificateError::UnknownIssuer => {
                "certificate not signed by the mesh root (unknown issuer)".into()
            }
            CertificateError::BadSignature => {
                "certificate signature does not verify against the mesh root (issued by another CA with the same name?)".into()
            }
            CertificateError::Other(OtherError(inner)) => {
                match inner.downcast_ref::<PeerIdentityError>() {
                    Some(id) => id.to_string(),
                    None => inner.to_string(),
                }
            }
            other => format!("{other:?}"),
        }),
        Error::NoCertificatesPresented => verify("peer presented no certificate".into()),
        Error::AlertReceived(alert) => {
            format!("TLS_error:|peer sent alert {alert:?}:TLS_error_end")
        }
        other => format!("TLS_error:|{other}:TLS_error_end"),
    }
}

/// [`failure_reason`] for the `io::Error` tokio-rustls returns from a failed
/// handshake (or the plain error text when it is not a TLS error).
pub fn handshake_failure_reason(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        Some(tls) => failure_reason(tls),
        None => format!("TLS_error:|{error}:TLS_error_end"),
    }
}
