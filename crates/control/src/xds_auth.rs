//! Authentication of xDS clients on weftd's TLS port (15012), as istiod
//! requires it there.
//!
//! Owns three things: the pure decision ([`XdsAuthenticator::authenticate`]:
//! the verified client certificate's SPIFFE ID, if any, and the
//! `authorization` header, if any, in; the caller's identity or the reason
//! out), and the tower layer ([`XdsAuthLayer`]) that refuses ADS and
//! SDS calls that are not authenticated with `UNAUTHENTICATED`, logs why
//! with the peer address (15012 runs on `weft_identity::grpc_tls::mtls_incoming`,
//! whose connections carry the peer's address and SPIFFE ID into request
//! extensions as [`PeerIdentity`]) and counts them
//! (`pilot_xds_auth_failures_total`). `CreateCertificate` is passed through
//! untouched: it authenticates its callers itself (a proxy's first
//! certificate comes from its bootstrap token alone). The plaintext port
//! (15010) is not wrapped, as in Istio.
//!
//! Accepted credentials are the ones `CreateCertificate` accepts: a client
//! certificate chained to the mesh root (verified by the TLS layer) with a
//! SPIFFE ID in the mesh trust domain, or a bearer token the CA's token
//! authenticator knows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tonic::codegen::http;
use weft_identity::SpiffeId;
use weft_identity::auth::{AuthError, Authenticator, CallerIdentity, Credentials};
use weft_identity::grpc_tls::PeerIdentity;

/// gRPC path prefix of ADS.
pub const ADS_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/";
/// gRPC path prefix of SDS.
pub const SDS_PATH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/";

/// Whether a call to `path` must be authenticated on 15012 (ADS and SDS).
pub fn requires_auth(path: &str) -> bool {
    path.starts_with(ADS_PATH) || path.starts_with(SDS_PATH)
}

/// Why an xDS call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdsAuthError {
    /// Neither a client certificate nor a bearer token.
    #[error(
        "no client certificate and no `authorization: Bearer <token>` header (15012 requires one)"
    )]
    NoCredentials,
    /// An `authorization` header that is not `Bearer <token>`.
    #[error("authorization header is not `Bearer <token>` ({0}) and no client certificate")]
    MalformedAuthorization(&'static str),
    /// Every authenticator refused.
    #[error("{}", join(.0))]
    Rejected(Vec<AuthError>),
}

fn join(errors: &[AuthError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The token of an `authorization` header value `Bearer <token>`.
pub fn bearer_token(header: &str) -> Result<&str, &'static str> {
    let token = header
        .strip_prefix("Bearer ")
        .ok_or("the scheme is not `Bearer`")?
        .trim();
    if token.is_empty() {
        return Err("the token is empty");
    }
    Ok(token)
}

/// Decides whether an xDS caller is authenticated; counts refusals.
pub struct XdsAuthenticator {
    authenticators: Vec<Arc<dyn Authenticator>>,
    failures: Counter,
}

impl std::fmt::Debug for XdsAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.authenticators.iter().map(|a| a.name()).collect();
        f.debug_struct("XdsAuthenticator")
            .field("authenticators", &names)
            .finish_non_exhaustive()
    }
}

impl XdsAuthenticator {
    /// Tries `authenticators` in order (the CA's: bootstrap tokens and the
    /// client certificate).
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        XdsAuthenticator {
            authenticators,
            failures: Counter::default(),
        }
    }

    /// Registers `pilot_xds_auth_failures` (exported as `_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pilot_xds_auth_failures",
            "xDS calls on the TLS port refused as unauthenticated",
            self.failures.clone(),
        );
    }

    /// Refusals so far.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }

    /// The caller's identity from the verified client certificate's SPIFFE
    /// ID (`peer`) or the `authorization` header, or why not. Does not count.
    pub async fn authenticate(
        &self,
        peer: Option<&SpiffeId>,
        authorization: Option<&str>,
    ) -> Result<CallerIdentity, XdsAuthError> {
        let token = match authorization.map(bearer_token) {
            None => None,
            Some(Ok(token)) => Some(token.to_string()),
            Some(Err(why)) if peer.is_none() => {
                return Err(XdsAuthError::MalformedAuthorization(why));
            }
            Some(Err(_)) => None,
        };
        if peer.is_none() && token.is_none() {
            return Err(XdsAuthError::NoCredentials);
        }
        let credentials = Credentials {
            bearer_token: token,
            peer_identity: peer.cloned(),
        };
        let mut errors = Vec::new();
        for authenticator in &self.authenticators {
            match authenticator.authenticate(&credentials).await {
                Ok(caller) => return Ok(caller),
                Err(e) => errors.push(e),
            }
        }
        Err(XdsAuthError::Rejected(errors))
    }
}

// === the TLS accept loop ===

// === the tower layer ===

/// Wraps the 15012 gRPC routes: ADS and SDS calls must authenticate.
#[derive(Clone, Debug)]
pub struct XdsAuthLayer {
    auth: Arc<XdsAuthenticator>,
}

impl XdsAuthLayer {
    /// A layer deciding with `auth`.
    pub fn new(auth: Arc<XdsAuthenticator>) -> Self {
        XdsAuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for XdsAuthLayer {
    type Service = XdsAuthService<S>;
    fn layer(&self, inner: S) -> XdsAuthService<S> {
        XdsAuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`XdsAuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct XdsAuthService<S> {
    inner: S,
    auth: Arc<XdsAuthenticator>,
}

type BoxedResponse<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for XdsAuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxedResponse<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let auth = self.auth.clone();
        Box::pin(async move {
            let peer = req.extensions().get::<PeerIdentity>().cloned();
            let path = req.uri().path().to_string();
            if requires_auth(&path) {
                let header = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap_or("<not ASCII>"));
                let identity = peer.as_ref().and_then(|p| p.spiffe_id.as_ref());
                match auth.authenticate(identity, header).await {
                    Ok(caller) => tracing::debug!(
                        peer = ?peer.as_ref().map(|p| p.remote),
                        %path,
                        namespace = %caller.namespace,
                        service_account = %caller.service_account,
                        authenticator = caller.authenticator,
                        "xDS client authenticated"
                    ),
                    Err(e) => {
                        auth.failures.inc();
                        let remote = peer
                            .as_ref()
                            .map_or_else(|| "unknown".to_string(), |p| p.remote.to_string());
                        tracing::warn!(peer = %remote, %path, reason = %e, "xDS client not authenticated");
                        let status =
                            tonic::Status::unauthenticated(format!("authentication failure: {e}"));
                        return Ok(status.into_http());
                    }
                }
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests;
