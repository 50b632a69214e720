//! The workload side of identity (weft-proxy's pilot-agent role): an
//! in-memory ECDSA P-256 key, a CSR for the SPIFFE ID, the current
//! certificate held in an `ArcSwap`, and rotation at half life with jitter.
//!
//! Owns key generation and rotation. The private key never touches disk.
//! It serves the certificate to rustls through `ResolvesServerCert` /
//! `ResolvesClientCert`, so a rotation changes what new handshakes present
//! and leaves established connections alone.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use crate::ca::{CertificateAuthority, ServerSan};
use crate::grpc::{CaClient, IstioCertificateRequest};
use crate::spiffe::SpiffeId;

/// Errors of obtaining or installing a workload certificate.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadCertError {
    #[error("generating the workload key or CSR for {id}: {reason}")]
    Csr { id: String, reason: String },
    #[error("reading bootstrap token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate request for {id} failed: {reason}")]
    Provider { id: String, reason: String },
    #[error("CA response for {id}: {reason}")]
    BadResponse { id: String, reason: String },
}

/// A fresh in-memory key pair and the PEM CSR asking for `id`.
pub fn generate_key_and_csr(id: &SpiffeId) -> Result<(KeyPair, String), WorkloadCertError> {
    let err = |reason: String| WorkloadCertError::Csr {
        id: id.to_string(),
        reason,
    };
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| err(e.to_string()))?;
    let mut params = CertificateParams::default();
    let uri = id
        .uri()
        .try_into()
        .map_err(|e: rcgen::Error| err(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| err(e.to_string()))?;
    let pem = csr.pem().map_err(|e| err(e.to_string()))?;
    Ok((key, pem))
}

/// Boxed future of a provider.
pub type ProvideFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<String>, WorkloadCertError>> + Send + 'a>>;

/// Something that turns a CSR into a chain (leaf first, root last).
pub trait CertificateProvider: Send + Sync + 'static {
    fn create_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
        csr_pem: &'a str,
        ttl: Option<Duration>,
    ) -> ProvideFuture<'a>;
}

/// Where the bootstrap token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    None,
    Static(String),
    /// Re-read on every request, so a runtime may replace it.
    File(PathBuf),
}

impl TokenSource {
    fn read(&self) -> Result<Option<String>, WorkloadCertError> {
        match self {
            Self::None => Ok(None),
            Self::Static(t) => Ok(Some(t.clone())),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|source| WorkloadCertError::Token {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// The remote CA over gRPC (weftd), as weft-proxy uses it.
pub struct GrpcCertificateProvider {
    client: CaClient,
    token: TokenSource,
}

impl GrpcCertificateProvider {
    pub fn new(client: CaClient, token: TokenSource) -> Self {
        Self { client, token }
    }
}

impl CertificateProvider for GrpcCertificateProvider {
    fn create_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
        csr_pem: &'a str,
        ttl: Option<Duration>,
    ) -> ProvideFuture<'a> {
        Box::pin(async move {
            let token = self.token.read()?;
            let request = IstioCertificateRequest {
                csr: csr_pem.to_string(),
                validity_duration: ttl.map(|t| t.as_secs() as i64).unwrap_or(0),
                metadata: None,
            };
            // Channels are cheap to clone and multiplex requests.
            let mut client = self.client.clone();
            client
                .create_certificate(request, token.as_deref())
                .await
                .map_err(|e| WorkloadCertError::Provider {
                    id: id.to_string(),
                    reason: e.to_string(),
                })
        })
    }
}

/// The CA in the same process (weftd's own certificate, tests).
pub struct LocalCertificateProvider {
    ca: Arc<CertificateAuthority>,
    default_ttl: Duration,
    /// DNS/IP names every certificate also carries (a serving certificate).
    server_names: Vec<ServerSan>,
}

impl LocalCertificateProvider {
    pub fn new(ca: Arc<CertificateAuthority>, default_ttl: Duration) -> Self {
        Self {
            ca,
            default_ttl,
            server_names: Vec::new(),
        }
    }

    /// Every certificate (the first and each rotation) also carries
    /// `names` as DNS/IP SANs: the control plane's serving certificate.
    pub fn with_server_names(mut self, names: Vec<ServerSan>) -> Self {
        self.server_names = names;
        self
    }
}

impl CertificateProvider for LocalCertificateProvider {
    fn create_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
        csr_pem: &'a str,
        ttl: Option<Duration>,
    ) -> ProvideFuture<'a> {
        Box::pin(async move {
            let ttl = ttl.unwrap_or(self.default_ttl);
            let issued = if self.server_names.is_empty() {
                self.ca.sign_csr(csr_pem, id, ttl)
            } else {
                self.ca
                    .sign_server_csr(csr_pem, id, ttl, &self.server_names)
            };
            issued
                .map(|issued| issued.chain_pem)
                .map_err(|e| WorkloadCertError::Provider {
                    id: id.to_string(),
                    reason: e.to_string(),
                })
        })
    }
}

/// A workload certificate ready for rustls.
#[derive(Clone, Debug)]
pub struct WorkloadCertificate {
    pub id: SpiffeId,
    /// What the workload presents: leaf and intermediates (root omitted).
    pub certified_key: Arc<CertifiedKey>,
    /// The mesh root from the CA response (its last element).
    pub root: CertificateDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Serial number of the leaf (hex), to tell rotations apart.
    pub serial: String,
}

/// Turns a CA response and the in-memory key into a [`WorkloadCertificate`].
pub fn workload_certificate(
    id: &SpiffeId,
    chain_pem: &[String],
    key: &KeyPair,
) -> Result<WorkloadCertificate, WorkloadCertError> {
    let bad = |reason: String| WorkloadCertError::BadResponse {
        id: id.to_string(),
        reason,
    };
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    for pem in chain_pem {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(der.map_err(|e| bad(format!("cert_chain is not PEM: {e}")))?);
        }
    }
    let (Some(leaf), Some(root)) = (chain.first().cloned(), chain.last().cloned()) else {
        return Err(bad("cert_chain is empty".into()));
    };
    let got =
        crate::spiffe::spiffe_id_from_cert_der(&leaf).map_err(|e| bad(format!("leaf: {e}")))?;
    if &got != id {
        return Err(bad(format!("leaf is for {got}, not the requested {id}")));
    }
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&leaf).map_err(|e| bad(format!("leaf: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            "leaf public key does not match the key that made the CSR".into(),
        ));
    }
    let to_time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let (not_before, not_after) = (
        to_time(parsed.validity().not_before),
        to_time(parsed.validity().not_after),
    );
    let serial = parsed.raw_serial_as_string();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| bad(format!("key: {e}")))?;
    let presented: Vec<CertificateDer<'static>> = if chain.len() > 1 {
        chain[..chain.len() - 1].to_vec()
    } else {
        chain.clone()
    };
    Ok(WorkloadCertificate {
        id: id.clone(),
        certified_key: Arc::new(CertifiedKey::new(presented, signing_key)),
        root,
        not_before,
        not_after,
        serial,
    })
}

/// When to rotate: Istio's grace ratio (0.5 = half life) with jitter.
#[derive(Clone, Copy, Debug)]
pub struct RotationPolicy {
    /// Fraction of the lifetime after which to rotate.
    pub grace_ratio: f64,
    /// Maximum +/- deviation of the ratio, drawn at random per certificate.
    pub jitter: f64,
    /// Requested TTL; `None` takes the CA's default.
    pub ttl: Option<Duration>,
    /// First retry delay after a failed rotation (doubles up to `max_backoff`).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            grace_ratio: 0.5,
            jitter: 0.05,
            ttl: None,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RotationPolicy {
    /// The instant to rotate a certificate valid in `[not_before, not_after]`,
    /// given `unit` in `[-1, 1]` (the random draw).
    pub fn refresh_at(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
        unit: f64,
    ) -> SystemTime {
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let ratio = (self.grace_ratio + self.jitter * unit.clamp(-1.0, 1.0)).clamp(0.0, 1.0);
        not_before + lifetime.mul_f64(ratio)
    }
}

fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(b) as f64 / u64::MAX as f64) * 2.0 - 1.0
}

/// Holds the current workload certificate and rotates it.
pub struct CertificateManager {
    id: SpiffeId,
    provider: Arc<dyn CertificateProvider>,
    policy: RotationPolicy,
    current: ArcSwap<WorkloadCertificate>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for CertificateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateManager")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CertificateManager {
    /// Obtains the first certificate; fails if the CA cannot issue one.
    pub async fn new(
        id: SpiffeId,
        provider: Arc<dyn CertificateProvider>,
        policy: RotationPolicy,
    ) -> Result<Arc<Self>, WorkloadCertError> {
        let first = Self::fetch(&id, provider.as_ref(), policy.ttl).await?;
        Ok(Arc::new(Self {
            id,
            provider,
            policy,
            current: ArcSwap::from_pointee(first),
            generation: watch::Sender::new(0),
        }))
    }

    async fn fetch(
        id: &SpiffeId,
        provider: &dyn CertificateProvider,
        ttl: Option<Duration>,
    ) -> Result<WorkloadCertificate, WorkloadCertError> {
        let (key, csr) = generate_key_and_csr(id)?;
        let chain = provider.create_certificate(id, &csr, ttl).await?;
        workload_certificate(id, &chain, &key)
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The current certificate.
    pub fn current(&self) -> Arc<WorkloadCertificate> {
        self.current.load_full()
    }

    /// The rustls key to present now.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.load().certified_key)
    }

    /// Counts installed certificates (0 = the first); changes on rotation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Gets a new key and certificate now and installs it. On failure the
    /// current certificate stays in place.
    pub async fn rotate(&self) -> Result<Arc<WorkloadCertificate>, WorkloadCertError> {
        let next = Arc::new(Self::fetch(&self.id, self.provider.as_ref(), self.policy.ttl).await?);
        self.current.store(Arc::clone(&next));
        self.generation.send_modify(|g| *g += 1);
        tracing::info!(id = %self.id, serial = %next.serial, "rotated workload certificate");
        Ok(next)
    }

    /// Runs rotation forever: sleeps until the refresh point of the current
    /// certificate, rotates, and on failure retries with backoff while the
    /// old certificate keeps serving (until it expires).
    pub fn spawn_rotation(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = this.policy.initial_backoff;
            let mut wait = this.next_refresh_delay();
            loop {
                tokio::time::sleep(wait).await;
                match this.rotate().await {
                    Ok(_) => {
                        backoff = this.policy.initial_backoff;
                        wait = this.next_refresh_delay();
                    }
                    Err(e) => {
                        tracing::warn!(id = %this.id, error = %e, retry_in = ?backoff, "certificate rotation failed; keeping the current certificate");
                        wait = backoff;
                        backoff = (backoff * 2).min(this.policy.max_backoff);
                    }
                }
            }
        })
    }

    fn next_refresh_delay(&self) -> Duration {
        let cert = self.current.load();
        let at = self
            .policy
            .refresh_at(cert.not_before, cert.not_after, random_unit());
        at.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

impl rustls::server::ResolvesServerCert for CertificateManager {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl rustls::client::ResolvesClientCert for CertificateManager {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
