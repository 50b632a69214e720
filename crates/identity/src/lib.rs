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
//!
//! How the pieces are wired:
//! - weftd: `CertificateAuthority::load_or_generate(dir)` (or `load` for a
//!   plugged-in `cacerts`), a `CertificateService` with the
//!   `BootstrapTokenAuthenticator` (the local runtime issues per-pod tokens
//!   with `TokenStore::issue_to_file`) and the `PeerCertificateAuthenticator`,
//!   served as `IstioCertificateServer` on plaintext (15010) or on
//!   `grpc_tls::mtls_incoming` with `tls::control_plane_server_config` (15012).
//! - weft-proxy: `CaClient::connect_tls` with `tls::bootstrap_client_config`,
//!   a `GrpcCertificateProvider` reading the token file, a
//!   `CertificateManager` with `spawn_rotation`, and the manager as the cert
//!   resolver of `tls::server_config` (inbound 15006) and
//!   `tls::client_config` (ISTIO_MUTUAL clusters).

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
pub use ca::{CaError, CertificateAuthority, IssuedChain, ServerSan};
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
