//! Mesh identity for Weft: what weftd's CA and weft-proxy's certificate
//! handling share.
//!
//! - [`spiffe`]: `spiffe://<td>/ns/<ns>/sa/<sa>` IDs and reading them from certificates.
//! - [`ca`]: the CA (self-signed root persisted in Istio's `cacerts` layout, or
//!   a plugged-in root/intermediate) and CSR signing.
//! - [`auth`]: who is asking (bootstrap tokens now; a TokenReview seam).
//! - [`service`]: authorization and TTL policy of `CreateCertificate`.
//! - [`grpc`]: Istio's `IstioCertificateService` wire protocol, server and client.
//! - [`grpc_tls`]: the same service over mesh mTLS (15012), peer identity in requests.
//! - [`workload`]: in-memory keys, CSRs, the rotating [`CertificateManager`].
//! - [`tls`]: rustls mTLS configs with SPIFFE verification and failure reasons.

pub mod auth;
pub mod ca;
pub mod grpc;
pub mod grpc_tls;
pub mod service;
pub mod spiffe;
pub mod tls;
pub mod workload;

pub use auth::{
    AuthError, Authenticator, BootstrapTokenAuthenticator, CallerIdentity, Credentials,
    PeerCertificateAuthenticator, TokenStore,
};
pub use ca::{CaError, CertificateAuthority, IssuedChain};
pub use grpc::{
    CaClient, IstioCertificateRequest, IstioCertificateResponse, IstioCertificateServer,
};
pub use service::{CertificateService, CreateCertificateError, SigningPolicy};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{MeshTrust, client_config, server_config};
pub use workload::{
    CertificateManager, CertificateProvider, GrpcCertificateProvider, LocalCertificateProvider,
    RotationPolicy, TokenSource, WorkloadCertificate,
};
