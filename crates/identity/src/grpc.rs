//! Istio's CA wire protocol: `istio.v1.auth.IstioCertificateService/CreateCertificate`,
//! with hand-written prost messages, a tonic server and a tonic client.
//!
//! Owns the wire format and the `authorization: Bearer <token>` header;
//! decisions are made by [`CertificateService`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{Body, BoxFuture, StdError, http};

use crate::auth::Credentials;
use crate::service::CertificateService;

/// gRPC service name, as Istio's `security.proto` declares it.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// Full path of the one method.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// `istio.v1.auth.IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity in seconds; 0 means the CA's default.
    #[prost(int64, tag = "2")]
    pub validity_duration: i64,
    /// Optional metadata (Istio uses it for impersonation by node agents).
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<prost_types::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: leaf first, then intermediates, root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// Reads `authorization: Bearer <token>` from request metadata.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

// === server ===

/// The tonic service for `IstioCertificateService`; add it to a
/// `tonic::transport::Server` with `add_service`.
#[derive(Clone)]
pub struct IstioCertificateServer {
    inner: Arc<CertificateService>,
}

impl IstioCertificateServer {
    pub fn new(inner: Arc<CertificateService>) -> Self {
        Self { inner }
    }
}

struct CreateCertificateSvc(Arc<CertificateService>);

impl tonic::server::UnaryService<IstioCertificateRequest> for CreateCertificateSvc {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move {
            // Over `grpc_tls::mtls_incoming` the client certificate's ID
            // rides in the request extensions; over plaintext it is absent.
            let peer_identity = request
                .extensions()
                .get::<crate::grpc_tls::PeerIdentity>()
                .and_then(|p| p.spiffe_id.clone());
            let credentials = Credentials {
                bearer_token: bearer_token(request.metadata()),
                peer_identity,
            };
            let req = request.into_inner();
            let issued = service
                .create_certificate(&credentials, &req.csr, req.validity_duration)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "CreateCertificate refused"))?;
            Ok(tonic::Response::new(IstioCertificateResponse {
                cert_chain: issued.chain_pem,
            }))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for IstioCertificateServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == CREATE_CERTIFICATE_PATH {
            let method = CreateCertificateSvc(Arc::clone(&self.inner));
            return Box::pin(async move {
                let codec = tonic_prost::ProstCodec::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.unary(method, req).await)
            });
        }
        Box::pin(async move {
            let mut response = http::Response::new(tonic::body::Body::default());
            let headers = response.headers_mut();
            headers.insert(
                tonic::Status::GRPC_STATUS,
                (tonic::Code::Unimplemented as i32).into(),
            );
            headers.insert(
                http::header::CONTENT_TYPE,
                tonic::metadata::GRPC_CONTENT_TYPE,
            );
            Ok(response)
        })
    }
}

impl tonic::server::NamedService for IstioCertificateServer {
    const NAME: &'static str = SERVICE_NAME;
}

// === client ===

/// Errors of the CA client.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("CA address {address:?}: {reason}")]
    Connect { address: String, reason: String },
    #[error("bootstrap token is not a valid header value")]
    BadToken,
    #[error("CreateCertificate failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("CA returned an empty cert_chain")]
    EmptyChain,
}

/// A client of `IstioCertificateService` over a tonic channel.
#[derive(Clone, Debug)]
pub struct CaClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl CaClient {
    /// Connects to `address` (e.g. `http://127.0.0.1:15010`).
    pub async fn connect(address: &str) -> Result<Self, CaClientError> {
        let err = |reason: String| CaClientError::Connect {
            address: address.to_string(),
            reason,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(address.to_string())
            .map_err(|e| err(e.to_string()))?;
        let channel = endpoint.connect().await.map_err(|e| err(e.to_string()))?;
        Ok(Self::new(channel))
    }

    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// Sends one CSR with `authorization: Bearer <token>` and returns the
    /// chain, leaf first.
    pub async fn create_certificate(
        &mut self,
        request: IstioCertificateRequest,
        token: Option<&str>,
    ) -> Result<Vec<String>, CaClientError> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("CA channel not ready: {e}")))?;
        let mut req = tonic::Request::new(request);
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| CaClientError::BadToken)?;
            req.metadata_mut().insert("authorization", value);
        }
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
        let codec =
            tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
        let response = self.inner.unary(req, path, codec).await?.into_inner();
        if response.cert_chain.is_empty() {
            return Err(CaClientError::EmptyChain);
        }
        Ok(response.cert_chain)
    }
}
