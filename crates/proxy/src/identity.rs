//! The sidecar's certificate source (pilot-agent's job): the mesh root from
//! `WEFT_ROOT_CERT_FILE`, and a workload certificate for
//! `spiffe://<trust-domain>/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT` from
//! weftd's CA (`CA_ADDR`, over TLS verified with that root; the CSR is
//! authenticated by the bootstrap token in `WEFT_TOKEN_FILE`). The key is
//! generated in memory; `weft_identity::CertificateManager` rotates it at
//! half life (with jitter) on a thread of its own, off the data path.
//!
//! TLS contexts reference it by the secret names Istio uses: `default`
//! (chain and key) and `ROOTCA` (trust bundle), whatever their
//! `sds_config` says. New handshakes pick up a rotated certificate;
//! established connections keep theirs. With weftd unreachable the current
//! certificate keeps serving and fetching is retried with back-off.
//!
//! Environment (as Istio's agent reads it): `CA_ADDR` (HOST:PORT, default:
//! the xDS address's host with port 15012; a port 15010 CA is spoken to in
//! plaintext, Istio's "IP-secure network" case), `CA_ROOT_CA` (a PEM file
//! of roots for the CA connection instead of the mesh root), `WEFT_TOKEN_FILE`,
//! `WEFT_ROOT_CERT_FILE`, `POD_NAMESPACE` (default `default`),
//! `SERVICE_ACCOUNT` (default `default`), `TRUST_DOMAIN` (default
//! `cluster.local`), `SECRET_TTL` (requested lifetime, e.g. `24h`, `90s`),
//! `SECRET_GRACE_PERIOD_RATIO` (default 0.5).
//!
//! The installed source is process-wide ([`install`] once, [`current`]),
//! like the worker count: config compilation (static files and xDS alike)
//! looks it up when a TLS context names `default` or `ROOTCA`.

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use weft_identity::{
    CaClient, CertificateManager, GrpcCertificateProvider, MeshTrust, RotationPolicy, SpiffeId,
    TokenSource,
};

/// Errors of setting up the certificate source (they name the variable or file).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("WEFT_ROOT_CERT_FILE {path}: {reason}")]
    RootFile { path: PathBuf, reason: String },
    #[error("{var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

/// The workload's trust bundle and (once issued) its certificate.
#[derive(Debug)]
pub struct WorkloadIdentity {
    pub id: Option<SpiffeId>,
    roots: Vec<CertificateDer<'static>>,
    manager: ArcSwapOption<CertificateManager>,
    /// Why there is no certificate yet (for failure reasons).
    status: ArcSwap<String>,
}

impl WorkloadIdentity {
    /// A source with a trust bundle and no certificate (yet).
    pub fn new(id: Option<SpiffeId>, roots: Vec<CertificateDer<'static>>, status: &str) -> Self {
        WorkloadIdentity {
            id,
            roots,
            manager: ArcSwapOption::empty(),
            status: ArcSwap::from_pointee(status.to_owned()),
        }
    }

    /// `ROOTCA`: the mesh root(s).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// `default`: the key and chain to present now, if one was issued.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.manager.load().as_ref().map(|m| m.certified_key())
    }

    /// The certificate manager, once the first certificate arrived.
    pub fn manager(&self) -> Option<Arc<CertificateManager>> {
        self.manager.load_full()
    }

    /// Installs a manager (the first certificate arrived).
    pub fn set_manager(&self, m: Arc<CertificateManager>) {
        self.manager.store(Some(m));
    }

    /// Why `default` is not available.
    pub fn unavailable_reason(&self) -> String {
        self.status.load().as_str().to_owned()
    }
}

static CURRENT: OnceLock<Arc<WorkloadIdentity>> = OnceLock::new();

/// Installs the process's certificate source (first call wins).
pub fn install(w: Arc<WorkloadIdentity>) {
    let _ = CURRENT.set(w);
}

/// The installed certificate source, if any.
pub fn current() -> Option<&'static Arc<WorkloadIdentity>> {
    CURRENT.get()
}

/// Why `default`/`ROOTCA` cannot be served when no source is installed.
pub const NO_SOURCE: &str = "weft-proxy has no certificate source (set CA_ADDR, WEFT_TOKEN_FILE and WEFT_ROOT_CERT_FILE, or run with --xds-address)";

/// Parses `90s`, `15m`, `24h`, `1h30m`, `2d` or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'd' => 86400.0,
            's' => 1.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            _ => return None,
        };
        total += v * unit;
        any = true;
    }
    (any && num.is_empty()).then(|| Duration::from_secs_f64(total))
}

/// Where and how to get the workload certificate.
#[derive(Debug, Clone)]
pub struct CaSettings {
    pub ca_addr: String,
    /// `CA_ROOT_CA`: roots for verifying the CA instead of the mesh root.
    pub ca_roots_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub id: SpiffeId,
    pub trust_domain: String,
    pub policy: RotationPolicy,
}

/// Reads the environment: the root file (if any) and the CA settings (if
/// a CA address is known). `xds_address` gives CA_ADDR's default.
pub fn from_env(
    env: &HashMap<String, String>,
    xds_address: Option<&str>,
) -> Result<Option<(WorkloadIdentity, Option<CaSettings>)>, IdentityError> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let roots = match get("WEFT_ROOT_CERT_FILE") {
        Some(p) => {
            let path = PathBuf::from(&p);
            let pem = std::fs::read(&path).map_err(|e| IdentityError::RootFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let roots: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| IdentityError::RootFile {
                    path: path.clone(),
                    reason: format!("not PEM certificates: {e}"),
                })?;
            if roots.is_empty() {
                return Err(IdentityError::RootFile {
                    path,
                    reason: "no certificate in the file".into(),
                });
            }
            roots
        }
        None => Vec::new(),
    };
    let ca_addr = get("CA_ADDR").or_else(|| {
        xds_address.map(|x| {
            let x = x
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let host = match x.rsplit_once(':') {
                Some((h, _)) => h,
                None => x,
            };
            format!("{host}:15012")
        })
    });
    if roots.is_empty() && ca_addr.is_none() {
        return Ok(None);
    }
    let trust_domain = get("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into());
    let ns = get("POD_NAMESPACE").unwrap_or_else(|| "default".into());
    let sa = get("SERVICE_ACCOUNT").unwrap_or_else(|| "default".into());
    let id = SpiffeId::new(&trust_domain, &ns, &sa).map_err(|e| IdentityError::Env {
        var: "POD_NAMESPACE/SERVICE_ACCOUNT/TRUST_DOMAIN",
        value: format!("{trust_domain}/{ns}/{sa}"),
        reason: e.to_string(),
    })?;
    let mut policy = RotationPolicy::default();
    if let Some(t) = get("SECRET_TTL") {
        policy.ttl = Some(parse_duration(&t).ok_or_else(|| IdentityError::Env {
            var: "SECRET_TTL",
            value: t.clone(),
            reason: "not a duration (e.g. 24h, 90s)".into(),
        })?);
    }
    if let Some(r) = get("SECRET_GRACE_PERIOD_RATIO") {
        policy.grace_ratio = r
            .parse::<f64>()
            .ok()
            .filter(|v| (0.0..=1.0).contains(v))
            .ok_or_else(|| IdentityError::Env {
                var: "SECRET_GRACE_PERIOD_RATIO",
                value: r.clone(),
                reason: "not a number in [0, 1]".into(),
            })?;
    }
    let token_file = get("WEFT_TOKEN_FILE").map(PathBuf::from);
    let ca_roots_file = get("CA_ROOT_CA").map(PathBuf::from);
    let settings = ca_addr.map(|ca_addr| CaSettings {
        ca_addr,
        ca_roots_file,
        token_file,
        id: id.clone(),
        trust_domain,
        policy,
    });
    let status = match &settings {
        Some(s) => format!(
            "waiting for the first certificate from the CA at {}",
            s.ca_addr
        ),
        None => "no CA configured (CA_ADDR)".to_owned(),
    };
    Ok(Some((
        WorkloadIdentity::new(Some(id), roots, &status),
        settings,
    )))
}

/// Reads the environment, installs the source and (with a CA) starts the
/// `weft:identity` thread that fetches and rotates the certificate.
/// Returns the installed source, or None when nothing is configured.
pub fn start_from_env(
    env: &HashMap<String, String>,
    xds_address: Option<&str>,
) -> Result<Option<Arc<WorkloadIdentity>>, IdentityError> {
    let Some((w, settings)) = from_env(env, xds_address)? else {
        return Ok(None);
    };
    let w = Arc::new(w);
    install(w.clone());
    if let Some(s) = settings {
        let w2 = w.clone();
        let spawned = std::thread::Builder::new()
            .name("weft:identity".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(w2, s)),
                    Err(e) => tracing::error!("identity runtime: {e}"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the identity thread: {e}");
        }
    }
    Ok(Some(w))
}

fn set_status(w: &WorkloadIdentity, s: String) {
    w.status.store(Arc::new(s));
}

async fn connect(w: &WorkloadIdentity, s: &CaSettings) -> Result<CaClient, String> {
    let addr: SocketAddr = s
        .ca_addr
        .to_socket_addrs()
        .map_err(|e| format!("CA_ADDR {:?}: {e}", s.ca_addr))?
        .next()
        .ok_or_else(|| format!("CA_ADDR {:?}: no address", s.ca_addr))?;
    if s.ca_addr.ends_with(":15010") {
        // Istio's agent speaks plaintext to a CA on 15010 (debugging or an
        // IP-secure network).
        return CaClient::connect(&format!("http://{addr}"))
            .await
            .map_err(|e| e.to_string());
    }
    let roots = match &s.ca_roots_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("CA_ROOT_CA {}: {e}", path.display()))?;
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("CA_ROOT_CA {}: not PEM certificates: {e}", path.display()))?
        }
        None => w.roots.clone(),
    };
    if roots.is_empty() {
        return Err(match &s.ca_roots_file {
            Some(p) => format!("CA_ROOT_CA {}: no certificate in the file", p.display()),
            None => "WEFT_ROOT_CERT_FILE is required to verify the CA".into(),
        });
    }
    let trust = MeshTrust::new(&roots, vec![s.trust_domain.clone()]).map_err(|e| e.to_string())?;
    let config = weft_identity::tls::bootstrap_client_config(&trust, Vec::new())
        .map_err(|e| e.to_string())?;
    let host = s
        .ca_addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or("weftd");
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| rustls_pki_types::ServerName::try_from("istiod").expect("valid name"));
    CaClient::connect_tls(addr, name, config)
        .await
        .map_err(|e| e.to_string())
}

/// Gets the first certificate (retrying with back-off), then rotates forever.
async fn run(w: Arc<WorkloadIdentity>, s: CaSettings) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let client = connect(&w, &s).await?;
            let token = match &s.token_file {
                Some(p) => TokenSource::File(p.clone()),
                None => TokenSource::None,
            };
            let provider = Arc::new(GrpcCertificateProvider::new(client, token));
            CertificateManager::new(s.id.clone(), provider, s.policy)
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(m) => {
                let cert = m.current();
                tracing::info!(id = %s.id, serial = %cert.serial, "workload certificate issued");
                w.set_manager(m.clone());
                set_status(&w, "certificate installed".into());
                // Rotation keeps the old certificate while the CA is down.
                let _ = m.spawn_rotation().await;
                return;
            }
            Err(e) => {
                tracing::warn!(ca = %s.ca_addr, error = %e, retry_in = ?backoff, "no workload certificate yet");
                set_status(
                    &w,
                    format!("no workload certificate from the CA at {}: {e}", s.ca_addr),
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
    }

    #[test]
    fn ca_address_defaults_to_the_xds_host() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([
            ("POD_NAMESPACE".to_owned(), "shop".to_owned()),
            ("SERVICE_ACCOUNT".to_owned(), "cart".to_owned()),
            (
                "WEFT_TOKEN_FILE".to_owned(),
                dir.path().join("t").display().to_string(),
            ),
        ]);
        let (w, s) = from_env(&env, Some("10.0.0.1:15010")).unwrap().unwrap();
        let s = s.unwrap();
        assert_eq!(s.ca_addr, "10.0.0.1:15012");
        assert_eq!(s.id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert!(w.certified_key().is_none());
        assert!(w.unavailable_reason().contains("10.0.0.1:15012"));
        assert!(from_env(&HashMap::new(), None).unwrap().is_none());
    }

    #[test]
    fn a_bad_root_file_is_named() {
        let env = HashMap::from([(
            "WEFT_ROOT_CERT_FILE".to_owned(),
            "/nonexistent/root.pem".to_owned(),
        )]);
        let e = from_env(&env, None).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/root.pem"), "{e}");
    }
}
