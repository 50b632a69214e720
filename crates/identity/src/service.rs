//! The CA service logic behind `CreateCertificate`: authenticate the caller,
//! decide which SPIFFE ID it is authorized for, apply the TTL policy, sign.
//!
//! Owns authorization and TTL policy. Transport (gRPC, headers) is in
//! `grpc`; key material and X.509 shape are in `ca`.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthError, Authenticator, Credentials};
use crate::ca::{CaError, CertificateAuthority, IssuedChain};
use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Istio's default workload certificate TTL (`DEFAULT_WORKLOAD_CERT_TTL`).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Istio's default maximum (`MAX_WORKLOAD_CERT_TTL`, 90 days).
pub const DEFAULT_MAX_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// How certificates are issued.
#[derive(Clone, Debug)]
pub struct SigningPolicy {
    /// Trust domain of every issued SPIFFE ID.
    pub trust_domain: String,
    /// TTL when the request's `validity_duration` is 0 or negative.
    pub default_ttl: Duration,
    /// Requests above this are refused (as Istio does), never silently shortened.
    pub max_ttl: Duration,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        Self {
            trust_domain: crate::spiffe::DEFAULT_TRUST_DOMAIN.into(),
            default_ttl: DEFAULT_CERT_TTL,
            max_ttl: DEFAULT_MAX_CERT_TTL,
        }
    }
}

/// Why a certificate request failed; maps onto gRPC status codes.
#[derive(Debug, thiserror::Error)]
pub enum CreateCertificateError {
    #[error("authentication failed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Unauthenticated(Vec<AuthError>),
    #[error("caller identity is not a valid SPIFFE ID: {0}")]
    BadCallerIdentity(#[from] SpiffeIdError),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("invalid request field {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("CA failure: {0}")]
    Internal(String),
}

impl From<CreateCertificateError> for tonic::Status {
    fn from(e: CreateCertificateError) -> Self {
        let msg = e.to_string();
        match e {
            CreateCertificateError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            CreateCertificateError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            CreateCertificateError::InvalidArgument { .. } => tonic::Status::invalid_argument(msg),
            CreateCertificateError::BadCallerIdentity(_) | CreateCertificateError::Internal(_) => {
                tonic::Status::internal(msg)
            }
        }
    }
}

/// Authenticates, authorizes and signs certificate requests.
pub struct CertificateService {
    ca: Arc<CertificateAuthority>,
    authenticators: Vec<Arc<dyn Authenticator>>,
    policy: SigningPolicy,
}

impl CertificateService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticators: Vec<Arc<dyn Authenticator>>,
        policy: SigningPolicy,
    ) -> Self {
        Self {
            ca,
            authenticators,
            policy,
        }
    }

    pub fn policy(&self) -> &SigningPolicy {
        &self.policy
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Tries each authenticator in order; the first success wins.
    async fn authenticate(
        &self,
        credentials: &Credentials,
    ) -> Result<crate::auth::CallerIdentity, CreateCertificateError> {
        let mut errors = Vec::new();
        for authenticator in &self.authenticators {
            match authenticator.authenticate(credentials).await {
                Ok(caller) => return Ok(caller),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            errors.push(AuthError::Rejected {
                authenticator: "none",
                reason: "no authenticator is configured".into(),
            });
        }
        Err(CreateCertificateError::Unauthenticated(errors))
    }

    /// Handles one request: `csr` (PEM PKCS#10) and `validity_duration`
    /// (seconds). Returns the chain, leaf first and root last.
    pub async fn create_certificate(
        &self,
        credentials: &Credentials,
        csr_pem: &str,
        validity_duration_secs: i64,
    ) -> Result<IssuedChain, CreateCertificateError> {
        let caller = self.authenticate(credentials).await?;
        let identity = SpiffeId::new(
            self.policy.trust_domain.clone(),
            caller.namespace.clone(),
            caller.service_account.clone(),
        )?;
        let ttl = if validity_duration_secs <= 0 {
            self.policy.default_ttl
        } else {
            Duration::from_secs(validity_duration_secs as u64)
        };
        if ttl > self.policy.max_ttl {
            return Err(CreateCertificateError::InvalidArgument {
                field: "validity_duration",
                reason: format!(
                    "requested {}s is greater than the maximum TTL {}s",
                    ttl.as_secs(),
                    self.policy.max_ttl.as_secs()
                ),
            });
        }
        let issued = self
            .ca
            .sign_csr(csr_pem, &identity, ttl)
            .map_err(|e| match e {
                CaError::IdentityNotAuthorized { .. } => {
                    CreateCertificateError::PermissionDenied(e.to_string())
                }
                CaError::BadCsr(_) => CreateCertificateError::InvalidArgument {
                    field: "csr",
                    reason: e.to_string(),
                },
                other => CreateCertificateError::Internal(other.to_string()),
            })?;
        tracing::info!(
            identity = %identity,
            authenticator = caller.authenticator,
            ttl_secs = ttl.as_secs(),
            "issued workload certificate"
        );
        Ok(issued)
    }
}
