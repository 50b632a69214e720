//! Authentication of certificate requests: who is calling `CreateCertificate`.
//!
//! Owns the [`Authenticator`] seam and the local-mode implementation, per-pod
//! bootstrap tokens ([`TokenStore`], [`BootstrapTokenAuthenticator`]). The
//! Kubernetes implementation (a TokenReview of the pod's projected
//! service-account token, audience `istio-ca`, yielding
//! `system:serviceaccount:<ns>:<sa>`) plugs into the same trait; it is not
//! written yet. Authorization (which SPIFFE ID a caller gets) is the CA
//! service's job, not this module's.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// What a caller presented: the bearer token from `authorization: Bearer
/// <token>`, and the SPIFFE ID of its client certificate when the call came
/// over mTLS (renewal on 15012).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub bearer_token: Option<String>,
    pub peer_identity: Option<crate::SpiffeId>,
}

/// An authenticated caller: the Kubernetes-style workload identity it proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    pub namespace: String,
    pub service_account: String,
    /// Which authenticator accepted the caller (for logs).
    pub authenticator: &'static str,
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: expected header `authorization: Bearer <token>`")]
    MissingCredentials,
    #[error("{authenticator}: token not recognised (revoked, or not issued by this control plane)")]
    UnknownToken { authenticator: &'static str },
    #[error("{authenticator}: {reason}")]
    Rejected {
        authenticator: &'static str,
        reason: String,
    },
}

/// A boxed future, so authenticators that call out (TokenReview) fit the
/// same object-safe trait as in-memory ones.
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CallerIdentity, AuthError>> + Send + 'a>>;

/// Proves who a certificate request comes from.
pub trait Authenticator: Send + Sync + 'static {
    /// A short name for logs and errors, e.g. `bootstrap-token`.
    fn name(&self) -> &'static str;
    /// Authenticates the caller or says why not.
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthFuture<'a>;
}

// === TokenStore ===

/// One grant: a token hash and the identity it proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token was written for (to revoke it when the pod goes).
    pub pod: String,
}

#[derive(Serialize, Deserialize)]
struct StoredGrant {
    sha256: String,
    #[serde(flatten)]
    grant: TokenGrant,
}

/// Per-pod bootstrap tokens. Only SHA-256 hashes of tokens are kept (in
/// memory and in the saved file), so the store itself holds nothing a thief
/// could present.
#[derive(Clone, Debug, Default)]
pub struct TokenStore {
    grants: Arc<RwLock<HashMap<String, TokenGrant>>>,
}

/// Errors of the token store's files.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token store {path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("random number generator failed")]
    Random,
}

fn sha256_hex(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TokenStoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TokenStoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

impl TokenStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Generates a random token (256 bits, hex) granting `namespace`/`service_account`
    /// to `pod`, remembers its hash and returns the token itself.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
    ) -> Result<String, TokenStoreError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenStoreError::Random)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.insert_hash(
            sha256_hex(&token),
            TokenGrant {
                namespace: namespace.into(),
                service_account: service_account.into(),
                pod: pod.into(),
            },
        );
        Ok(token)
    }

    /// Issues a token and writes it to `path` (mode 0600), the file the
    /// pod's proxy reads, like Istio's `/var/run/secrets/tokens/istio-token`.
    pub fn issue_to_file(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        path: &Path,
    ) -> Result<String, TokenStoreError> {
        let token = self.issue(namespace, service_account, pod)?;
        write_private(path, token.as_bytes())?;
        Ok(token)
    }

    fn insert_hash(&self, hash: String, grant: TokenGrant) {
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        grants.insert(hash, grant);
    }

    /// The grant of `token`, if it is known.
    pub fn lookup(&self, token: &str) -> Option<TokenGrant> {
        let grants = self.grants.read().unwrap_or_else(|e| e.into_inner());
        grants.get(&sha256_hex(token)).cloned()
    }

    /// Forgets every token issued for `pod`; returns how many.
    pub fn revoke_pod(&self, pod: &str) -> usize {
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        let before = grants.len();
        grants.retain(|_, g| g.pod != pod);
        before - grants.len()
    }

    pub fn len(&self) -> usize {
        self.grants.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Saves the hashes and grants as JSON (mode 0600), so a runtime in one
    /// process and the CA in another share the store.
    pub fn save(&self, path: &Path) -> Result<(), TokenStoreError> {
        let stored: Vec<StoredGrant> = {
            let grants = self.grants.read().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<StoredGrant> = grants
                .iter()
                .map(|(sha256, grant)| StoredGrant {
                    sha256: sha256.clone(),
                    grant: grant.clone(),
                })
                .collect();
            v.sort_by(|a, b| a.sha256.cmp(&b.sha256));
            v
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| TokenStoreError::Bad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_private(path, &json)
    }

    /// Replaces the contents with the grants saved at `path`.
    pub fn reload(&self, path: &Path) -> Result<(), TokenStoreError> {
        let text = fs::read(path).map_err(|source| TokenStoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let stored: Vec<StoredGrant> =
            serde_json::from_slice(&text).map_err(|e| TokenStoreError::Bad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let map = stored.into_iter().map(|s| (s.sha256, s.grant)).collect();
        *self.grants.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    /// Loads a store saved with [`TokenStore::save`].
    pub fn load(path: &Path) -> Result<Self, TokenStoreError> {
        let store = Self::new();
        store.reload(path)?;
        Ok(store)
    }
}

// === BootstrapTokenAuthenticator ===

/// Local-mode authentication: the bearer token must be one the runtime
/// issued through the [`TokenStore`].
#[derive(Clone, Debug)]
pub struct BootstrapTokenAuthenticator {
    store: TokenStore,
    backing_file: Option<PathBuf>,
}

impl BootstrapTokenAuthenticator {
    pub fn new(store: TokenStore) -> Self {
        Self {
            store,
            backing_file: None,
        }
    }

    /// Re-reads `path` (written by another process's [`TokenStore::save`])
    /// when a token is not found, so pods started after the CA are accepted.
    pub fn with_backing_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.backing_file = Some(path.into());
        self
    }
}

impl Authenticator for BootstrapTokenAuthenticator {
    fn name(&self) -> &'static str {
        "bootstrap-token"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthFuture<'a> {
        Box::pin(async move {
            let token = credentials
                .bearer_token
                .as_deref()
                .ok_or(AuthError::MissingCredentials)?;
            let mut grant = self.store.lookup(token);
            if grant.is_none()
                && let Some(path) = &self.backing_file
            {
                if let Err(e) = self.store.reload(path) {
                    tracing::warn!(error = %e, "reloading the bootstrap token store");
                }
                grant = self.store.lookup(token);
            }
            let grant = grant.ok_or(AuthError::UnknownToken {
                authenticator: self.name(),
            })?;
            Ok(CallerIdentity {
                namespace: grant.namespace,
                service_account: grant.service_account,
                authenticator: self.name(),
            })
        })
    }
}

// === Kubernetes seam ===

/// The Kubernetes authenticator, when written, implements [`Authenticator`]
/// by sending the bearer token (the pod's projected service-account token,
/// audience `istio-ca`) in a `TokenReview` to the API server and accepting
/// `status.authenticated` with a username
/// `system:serviceaccount:<namespace>:<service-account>`; this function is
/// the mapping from that username to the caller's identity.
pub fn service_account_from_username(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, service_account) = rest.split_once(':')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(':');
    (valid(namespace) && valid(service_account))
        .then(|| (namespace.to_string(), service_account.to_string()))
}

// === PeerCertificateAuthenticator ===

/// Renewal over mTLS (Istio's client-certificate authenticator): a caller
/// whose client certificate, already verified against the mesh root by the
/// TLS layer, carries a SPIFFE ID in one of `trust_domains` is that identity.
#[derive(Clone, Debug)]
pub struct PeerCertificateAuthenticator {
    trust_domains: Vec<String>,
}

impl PeerCertificateAuthenticator {
    pub fn new(trust_domains: Vec<String>) -> Self {
        Self { trust_domains }
    }
}

impl Authenticator for PeerCertificateAuthenticator {
    fn name(&self) -> &'static str {
        "client-certificate"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthFuture<'a> {
        Box::pin(async move {
            let id = credentials
                .peer_identity
                .as_ref()
                .ok_or(AuthError::Rejected {
                    authenticator: self.name(),
                    reason: "no client certificate on the connection".into(),
                })?;
            if !self.trust_domains.iter().any(|td| td == id.trust_domain()) {
                return Err(AuthError::Rejected {
                    authenticator: self.name(),
                    reason: format!(
                        "client certificate {id} is not in trust domain {}",
                        self.trust_domains.join(" or ")
                    ),
                });
            }
            Ok(CallerIdentity {
                namespace: id.namespace().to_string(),
                service_account: id.service_account().to_string(),
                authenticator: self.name(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_authenticate_until_revoked_and_survive_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new();
        let token_file = dir.path().join("pods/reviews-v1/istio-token");
        let token = store
            .issue_to_file("default", "reviews", "reviews-v1", &token_file)
            .unwrap();
        assert_eq!(fs::read_to_string(&token_file).unwrap(), token);
        assert_eq!(token.len(), 64);

        let store_file = dir.path().join("tokens.json");
        store.save(&store_file).unwrap();
        assert!(!fs::read_to_string(&store_file).unwrap().contains(&token));

        let auth = BootstrapTokenAuthenticator::new(TokenStore::load(&store_file).unwrap());
        let creds = Credentials {
            bearer_token: Some(token.clone()),
            peer_identity: None,
        };
        let caller = auth.authenticate(&creds).await.unwrap();
        assert_eq!(
            (caller.namespace.as_str(), caller.service_account.as_str()),
            ("default", "reviews")
        );

        let wrong = Credentials {
            bearer_token: Some("0".repeat(64)),
            peer_identity: None,
        };
        assert!(matches!(
            auth.authenticate(&wrong).await,
            Err(AuthError::UnknownToken { .. })
        ));
        assert_eq!(
            auth.authenticate(&Credentials::default()).await,
            Err(AuthError::MissingCredentials)
        );

        assert_eq!(auth.store.revoke_pod("reviews-v1"), 1);
        assert!(auth.authenticate(&creds).await.is_err());
    }

    #[test]
    fn token_review_usernames_map_to_service_accounts() {
        assert_eq!(
            service_account_from_username("system:serviceaccount:default:bookinfo-reviews"),
            Some(("default".into(), "bookinfo-reviews".into()))
        );
        for bad in [
            "system:serviceaccount:default",
            "system:serviceaccount::sa",
            "system:serviceaccount:ns:",
            "system:serviceaccount:ns:sa:extra",
            "system:node:worker-1",
            "alice",
        ] {
            assert_eq!(service_account_from_username(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn backing_file_picks_up_tokens_issued_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        TokenStore::new().save(&path).unwrap();
        let auth = BootstrapTokenAuthenticator::new(TokenStore::load(&path).unwrap())
            .with_backing_file(&path);
        let runtime_side = TokenStore::load(&path).unwrap();
        let token = runtime_side.issue("ns1", "sa1", "pod1").unwrap();
        runtime_side.save(&path).unwrap();
        let caller = auth
            .authenticate(&Credentials {
                bearer_token: Some(token),
                peer_identity: None,
            })
            .await
            .unwrap();
        assert_eq!(caller.namespace, "ns1");
    }
}
