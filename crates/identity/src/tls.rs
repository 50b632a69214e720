//! rustls configurations for mesh mTLS (ring provider only) and the
//! SPIFFE-aware certificate verifiers behind them.
//!
//! Owns: the certificate verifiers of the workspace ([`ClientVerifier`],
//! [`ServerVerifier`]: WebPKI chain validation plus a pluggable
//! [`EndEntityCheck`] of the peer's certificate; weft-proxy plugs in
//! Envoy's SAN matchers), the mesh's check of peer SPIFFE IDs
//! ([`SpiffeCheck`]: trust domain; the expected set of server identities,
//! as Istio checks SAN URIs and never host names), Istio's ALPN values, and
//! turning handshake failures into `UPSTREAM_TRANSPORT_FAILURE_REASON`
//! strings. Sockets and listeners belong to the proxy.

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

// === verifiers: WebPKI plus a check of the end-entity certificate ===

/// What a peer's end-entity certificate must satisfy once its chain has
/// verified: SPIFFE IDs here ([`SpiffeCheck`]), Envoy's SAN matchers in
/// weft-proxy. An error should be `Error::InvalidCertificate` (with
/// `CertificateError::Other` for a rejection of the peer's names), so
/// [`failure_reason`] can tell what went wrong.
pub trait EndEntityCheck: fmt::Debug + Send + Sync {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error>;
}

/// Verifies client certificates (the server side of mTLS): rustls' WebPKI
/// client verifier against `roots`, then the check `C`.
pub struct ClientVerifier<C> {
    inner: Arc<dyn ClientCertVerifier>,
    check: C,
}

impl<C: fmt::Debug> fmt::Debug for ClientVerifier<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("mandatory", &self.inner.client_auth_mandatory())
            .field("check", &self.check)
            .finish()
    }
}

impl<C: EndEntityCheck> ClientVerifier<C> {
    /// `required`: false accepts clients without a certificate (a
    /// presented one is still verified).
    pub fn with_roots(
        roots: Arc<RootCertStore>,
        check: C,
        required: bool,
    ) -> Result<Self, TlsConfigError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
        if !required {
            builder = builder.allow_unauthenticated();
        }
        let inner = builder
            .build()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        Ok(Self { inner, check })
    }
}

impl<C: EndEntityCheck> ClientCertVerifier for ClientVerifier<C> {
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
        self.check.check(end_entity)?;
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

/// Verifies server certificates (the client side): the chain to `roots`
/// by WebPKI, then the check `C`. The server name (SNI) is never checked
/// against the certificate: peers are verified by identity, as Istio and
/// Envoy's SAN matchers do.
pub struct ServerVerifier<C> {
    /// None: the chain is not verified (see [`ServerVerifier::without_roots`]).
    roots: Option<Arc<RootCertStore>>,
    check: C,
    algorithms: WebPkiSupportedAlgorithms,
}

impl<C: fmt::Debug> fmt::Debug for ServerVerifier<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("verifies_chain", &self.roots.is_some())
            .field("check", &self.check)
            .finish()
    }
}

impl<C: EndEntityCheck> ServerVerifier<C> {
    pub fn with_roots(roots: Arc<RootCertStore>, check: C) -> Self {
        Self {
            roots: Some(roots),
            check,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// Accepts any chain and runs only the check (and the handshake
    /// signature checks): Envoy's upstream TLS without a validation
    /// context. Never for mesh traffic.
    pub fn without_roots(check: C) -> Self {
        Self {
            roots: None,
            check,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// Whether the chain is verified.
    pub fn verifies_chain(&self) -> bool {
        self.roots.is_some()
    }
}

impl<C: EndEntityCheck> ServerCertVerifier for ServerVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = &self.roots {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        self.check.check(end_entity)?;
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

// === the mesh's check: SPIFFE IDs ===

/// The peer's SPIFFE ID must be in the mesh's trust domains and, when
/// `expected` is not empty, one of `expected` (Istio's `subjectAltNames`
/// of ISTIO_MUTUAL).
#[derive(Debug, Clone)]
pub struct SpiffeCheck {
    trust_domains: Arc<[String]>,
    /// Empty = any ID in the trust domains.
    expected: Vec<SpiffeId>,
}

impl SpiffeCheck {
    pub fn new(trust: &MeshTrust, expected: Vec<SpiffeId>) -> Self {
        Self {
            trust_domains: Arc::clone(&trust.trust_domains),
            expected,
        }
    }
}

impl EndEntityCheck for SpiffeCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        let id = spiffe_id_from_cert_der(end_entity).map_err(|e| identity_error(e.into()))?;
        if !self.trust_domains.iter().any(|td| td == id.trust_domain()) {
            return Err(identity_error(PeerIdentityError::WrongTrustDomain {
                id: id.to_string(),
                expected: self.trust_domains.to_vec(),
            }));
        }
        if !self.expected.is_empty() && !self.expected.contains(&id) {
            return Err(identity_error(PeerIdentityError::UnexpectedIdentity {
                id: id.to_string(),
                expected: self.expected.iter().map(ToString::to_string).collect(),
            }));
        }
        Ok(())
    }
}

/// Requires a client certificate chained to the mesh root, with a SPIFFE ID
/// in the mesh's trust domains.
pub type SpiffeClientVerifier = ClientVerifier<SpiffeCheck>;

impl ClientVerifier<SpiffeCheck> {
    /// A client certificate is required.
    pub fn new(trust: MeshTrust) -> Result<Self, TlsConfigError> {
        let check = SpiffeCheck::new(&trust, Vec::new());
        Self::with_roots(trust.roots, check, true)
    }

    /// A client certificate is verified when presented but not required
    /// (the CA port: bootstrapping proxies have only a token).
    pub fn optional(trust: MeshTrust) -> Result<Self, TlsConfigError> {
        let check = SpiffeCheck::new(&trust, Vec::new());
        Self::with_roots(trust.roots, check, false)
    }
}

// === server side: verify the client ===

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
pub type SpiffeServerVerifier = ServerVerifier<SpiffeCheck>;

impl ServerVerifier<SpiffeCheck> {
    /// `expected` empty: any ID in the trust domains.
    pub fn new(trust: MeshTrust, expected: Vec<SpiffeId>) -> Self {
        let check = SpiffeCheck::new(&trust, expected);
        Self::with_roots(trust.roots, check)
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
