//! When the proxy says it is ready (15021 `/healthz/ready`, admin `/ready`,
//! and so `weft-proxy wait` and `holdApplicationUntilProxyStarts`): as
//! Envoy under pilot-agent, only once it can serve what its configuration
//! asks for.
//!
//! Ready means: not draining, the configuration is in (listeners and
//! clusters, and the routes and endpoints they name, or the initial fetch
//! timeout passed), and every SDS secret the active configuration
//! references (`default`, `ROOTCA`, any other name) is available from the
//! certificate source ([`crate::identity`]). Envoy keeps such listeners
//! warming until the secret arrives, and Istio sets no initial fetch
//! timeout for SDS, so this waits as long as it takes; the body says what
//! is missing (`waiting for secret default: ...`). Once ready, the proxy
//! stays ready until it drains (as Envoy's server state stays LIVE).
//!
//! The rule ([`readiness`]), the secret names of a configuration
//! ([`sds_references`]) and the availability of one secret
//! ([`secret_problem`]) are pure; [`ReadyGate`] feeds them from the running
//! proxy.

use crate::identity::{NO_SOURCE, WorkloadIdentity};
use crate::model::Snapshot;
use crate::server::Shared;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The proxy's state as Envoy's `/ready` names it, with the reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Live,
    Draining,
    /// Not ready yet, with what it waits for.
    PreInitializing(Vec<String>),
}

impl Readiness {
    /// Envoy's state name.
    pub fn state(&self) -> &'static str {
        match self {
            Readiness::Live => "LIVE",
            Readiness::Draining => "DRAINING",
            Readiness::PreInitializing(_) => "PRE_INITIALIZING",
        }
    }

    pub fn is_live(&self) -> bool {
        *self == Readiness::Live
    }

    /// The body of `/ready` and `/healthz/ready`: the state on the first
    /// line, then one reason per line.
    pub fn body(&self) -> String {
        let mut out = format!("{}\n", self.state());
        if let Readiness::PreInitializing(reasons) = self {
            for r in reasons {
                out.push_str(r);
                out.push('\n');
            }
        }
        out
    }
}

/// What the rule looks at.
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    pub draining: bool,
    /// Ready once before (stays ready until draining).
    pub was_live: bool,
    /// The configuration is in (the proxy's own ready flag).
    pub configured: bool,
    /// Why there is no configuration stream, if known.
    pub xds_problem: Option<&'a str>,
    /// Referenced secrets that are not available, with why.
    pub missing_secrets: &'a [(String, String)],
}

/// The readiness rule.
pub fn readiness(i: &Inputs<'_>) -> Readiness {
    if i.draining {
        return Readiness::Draining;
    }
    if i.was_live {
        return Readiness::Live;
    }
    let mut reasons = Vec::new();
    if !i.configured {
        reasons.push(match i.xds_problem {
            Some(p) => format!("waiting for the configuration from weftd: {p}"),
            None => "waiting for the configuration from weftd (listeners, clusters, routes and endpoints)".to_owned(),
        });
    }
    for (name, why) in i.missing_secrets {
        reasons.push(format!("waiting for secret {name}: {why}"));
    }
    if reasons.is_empty() {
        Readiness::Live
    } else {
        Readiness::PreInitializing(reasons)
    }
}

/// The SDS secret names a configuration references, from its JSON form:
/// every `SdsSecretConfig` with an `sds_config` (a secret delivered over
/// SDS; names without one refer to `static_resources.secrets`).
pub fn sds_references(config_json: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !config_json.contains("sdsConfig") && !config_json.contains("sds_config") {
        return out;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(config_json) {
        collect(&v, &mut out);
    }
    out
}

fn collect(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            let sds = m.get("sdsConfig").or_else(|| m.get("sds_config"));
            if sds.is_some_and(|c| !c.is_null())
                && let Some(name) = m.get("name").and_then(|n| n.as_str())
            {
                out.insert(name.to_owned());
            }
            m.values().for_each(|x| collect(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// Why the SDS secret `name` cannot be served now (`None`: it can).
pub fn secret_problem(name: &str, source: Option<&WorkloadIdentity>) -> Option<String> {
    use crate::tls::{DEFAULT_SECRET, ROOT_CA_SECRET};
    let Some(source) = source else {
        return Some(NO_SOURCE.to_owned());
    };
    match name {
        DEFAULT_SECRET if source.certified_key().is_none() => Some(source.unavailable_reason()),
        ROOT_CA_SECRET if source.roots().is_empty() => {
            Some("no mesh root (WEFT_ROOT_CERT_FILE is unset)".to_owned())
        }
        DEFAULT_SECRET | ROOT_CA_SECRET => None,
        other => Some(format!(
            "weft-proxy serves only {DEFAULT_SECRET:?} and {ROOT_CA_SECRET:?} from its certificate source, never {other:?}"
        )),
    }
}

/// The secret names of one snapshot (held weakly, so it is not kept alive).
type SnapshotRefs = (Weak<Snapshot>, Arc<BTreeSet<String>>);

/// The readiness of one running proxy: remembers the secret names of the
/// last snapshot it looked at and whether it was ready once.
#[derive(Debug, Default)]
pub struct ReadyGate {
    was_live: AtomicBool,
    refs: Mutex<Option<SnapshotRefs>>,
}

impl ReadyGate {
    /// The secret names `snap` references (computed once per snapshot).
    fn references(&self, snap: &Arc<Snapshot>) -> Arc<BTreeSet<String>> {
        let mut cached = self.refs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, refs)) = cached.as_ref()
            && Weak::ptr_eq(seen, &Arc::downgrade(snap))
        {
            return refs.clone();
        }
        let refs = Arc::new(sds_references(&snap.config_json));
        *cached = Some((Arc::downgrade(snap), refs.clone()));
        refs
    }

    /// The proxy's readiness now.
    pub fn check(&self, shared: &Shared) -> Readiness {
        let draining = *shared.drain_rx.borrow();
        let was_live = self.was_live.load(Ordering::SeqCst);
        let configured = shared.ready.load(Ordering::SeqCst);
        let mut missing = Vec::new();
        if !draining && !was_live {
            let source = crate::identity::current().map(|w| &**w);
            for name in self.references(&shared.snapshot.load_full()).iter() {
                if let Some(why) = secret_problem(name, source) {
                    missing.push((name.clone(), why));
                }
            }
        }
        let problem = (!configured).then(crate::xds::status::problem).flatten();
        let r = readiness(&Inputs {
            draining,
            was_live,
            configured,
            xds_problem: problem.as_deref(),
            missing_secrets: &missing,
        });
        if r.is_live() && !was_live {
            self.was_live.store(true, Ordering::SeqCst);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(name: &str, why: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), why.to_owned())]
    }

    #[test]
    fn ready_needs_the_configuration_and_every_referenced_secret() {
        assert_eq!(
            readiness(&Inputs {
                configured: true,
                ..Default::default()
            }),
            Readiness::Live
        );
        let m = missing(
            "default",
            "no workload certificate from the CA at 10.88.0.1:15012: refused",
        );
        let r = readiness(&Inputs {
            configured: true,
            missing_secrets: &m,
            ..Default::default()
        });
        assert_eq!(
            r.body(),
            "PRE_INITIALIZING\nwaiting for secret default: no workload certificate from the CA at 10.88.0.1:15012: refused\n"
        );
        let r = readiness(&Inputs {
            configured: false,
            xds_problem: Some("xDS to weftd at 127.0.0.1:15012: name mismatch"),
            ..Default::default()
        });
        assert!(!r.is_live());
        assert!(
            r.body().contains(
                "configuration from weftd: xDS to weftd at 127.0.0.1:15012: name mismatch"
            ),
            "{}",
            r.body()
        );
    }

    #[test]
    fn ready_once_stays_ready_until_draining() {
        let m = missing("default", "rotation failed");
        let live = Inputs {
            was_live: true,
            configured: true,
            missing_secrets: &m,
            ..Default::default()
        };
        assert_eq!(readiness(&live), Readiness::Live);
        let draining = Inputs {
            draining: true,
            ..live
        };
        assert_eq!(readiness(&draining).body(), "DRAINING\n");
    }

    #[test]
    fn sds_names_are_found_anywhere_in_the_config() {
        let json = r#"{"dynamic_clusters":[{"name":"outbound|9080||reviews","transportSocket":{"typedConfig":{
            "@type":"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "commonTlsContext":{"tlsCertificateSdsSecretConfigs":[{"name":"default","sdsConfig":{"apiConfigSource":{}}}],
            "combinedValidationContext":{"validationContextSdsSecretConfig":{"name":"ROOTCA","sdsConfig":{"ads":{}}}}}}}}],
            "static":{"tls_certificate_sds_secret_configs":[{"name":"file-cert","sds_config":{"path":"/x"}}],
            "validation_context_sds_secret_config":{"name":"static-only"}}}"#;
        let names: Vec<String> = sds_references(json).into_iter().collect();
        assert_eq!(names, ["ROOTCA", "default", "file-cert"]);
        assert!(sds_references(r#"{"dynamic_listeners":[{"name":"virtualInbound"}]}"#).is_empty());
    }

    #[tokio::test]
    async fn secrets_are_available_from_the_certificate_source() {
        let waiting = WorkloadIdentity::new(
            None,
            Vec::new(),
            "waiting for the first certificate from the CA at 10.88.0.1:15012",
        );
        assert_eq!(
            secret_problem("default", Some(&waiting)).as_deref(),
            Some("waiting for the first certificate from the CA at 10.88.0.1:15012")
        );
        assert!(
            secret_problem("ROOTCA", Some(&waiting))
                .unwrap()
                .contains("WEFT_ROOT_CERT_FILE")
        );
        assert!(
            secret_problem("kubernetes://db-cert", Some(&waiting))
                .unwrap()
                .contains("db-cert")
        );
        assert_eq!(secret_problem("default", None).as_deref(), Some(NO_SOURCE));
        let ca =
            weft_identity::CertificateAuthority::generate_self_signed("cluster.local").unwrap();
        let with_root = WorkloadIdentity::new(None, vec![ca.root_cert_der().clone()], "");
        assert_eq!(secret_problem("ROOTCA", Some(&with_root)), None);
        let id = weft_identity::SpiffeId::new("cluster.local", "default", "reviews").unwrap();
        let provider = Arc::new(weft_identity::LocalCertificateProvider::new(
            Arc::new(ca),
            std::time::Duration::from_secs(3600),
        ));
        let manager = weft_identity::CertificateManager::new(id, provider, Default::default())
            .await
            .unwrap();
        with_root.set_manager(manager);
        assert_eq!(secret_problem("default", Some(&with_root)), None);
    }
}
