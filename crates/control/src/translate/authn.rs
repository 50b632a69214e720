//! PeerAuthentication: the mTLS mode of a workload's inbound ports and the
//! mode clients infer for a destination namespace (auto mTLS), with
//! Istio's precedence.
//!
//! - Mesh policy: a PeerAuthentication without selector (or with empty
//!   `matchLabels`) in the root namespace; namespace policy: one without
//!   selector in the workload's namespace; workload policy: one whose
//!   selector matches the workload's labels, in the workload's namespace.
//!   Where several qualify, Istio takes the oldest; weft has no creation
//!   times and takes the first by name.
//! - Workload overrides namespace overrides mesh; `UNSET` (or no `mtls`)
//!   inherits; the default is PERMISSIVE. `portLevelMtls` (workload
//!   policies only) sets single ports, `UNSET` there inherits the
//!   workload's mode.
//! - Clients (auto mTLS) only look at the namespace/mesh policy of the
//!   destination's namespace: no policy at all means PERMISSIVE.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_api::Object;
use weft_api::Resource;
use weft_api::registry::labels_match;
use weft_api::security::{MtlsMode, PeerAuthentication, PeerMtls};

/// An effective mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerMode {
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext, told apart by sniffing.
    Permissive,
    /// mTLS only.
    Strict,
}

impl PeerMode {
    fn from_api(m: Option<&PeerMtls>) -> Option<PeerMode> {
        match m.and_then(|m| m.mode)? {
            MtlsMode::Unset => None,
            MtlsMode::Disable => Some(PeerMode::Disable),
            MtlsMode::Permissive => Some(PeerMode::Permissive),
            MtlsMode::Strict => Some(PeerMode::Strict),
        }
    }

    /// Istio's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerMode::Disable => "DISABLE",
            PeerMode::Permissive => "PERMISSIVE",
            PeerMode::Strict => "STRICT",
        }
    }
}

/// The merged policy of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub mode: PeerMode,
    /// `portLevelMtls` of the workload policy (target ports).
    pub per_port: BTreeMap<u32, PeerMode>,
}

impl PeerPolicy {
    /// The mode of one inbound (target) port.
    pub fn for_port(&self, port: u32) -> PeerMode {
        self.per_port.get(&port).copied().unwrap_or(self.mode)
    }
}

fn spec(o: &Object) -> Option<&PeerAuthentication> {
    match &o.spec {
        Resource::PeerAuthentication(pa) => Some(pa),
        _ => None,
    }
}

fn selects_all(pa: &PeerAuthentication) -> bool {
    pa.selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
}

/// Every PeerAuthentication of a snapshot, indexed.
#[derive(Debug, Clone, Default)]
pub struct PeerAuthentications {
    root_namespace: String,
    /// In key order (namespace, name).
    policies: Vec<Arc<Object>>,
    /// The mesh policy's mode; `None` when there is none or it is UNSET
    /// (then PERMISSIVE applies).
    mesh: Option<PeerMode>,
    /// Whether a mesh policy exists (an UNSET one still counts for
    /// clients: PERMISSIVE).
    has_mesh: bool,
    /// Namespace policies' modes, UNSET resolved against the mesh.
    namespaces: BTreeMap<String, PeerMode>,
}

impl PeerAuthentications {
    /// Indexes `objects` (any kinds; PeerAuthentications are picked).
    pub fn new<'a>(
        objects: impl IntoIterator<Item = &'a Arc<Object>>,
        root_namespace: &str,
    ) -> PeerAuthentications {
        let mut policies: Vec<Arc<Object>> = objects
            .into_iter()
            .filter(|o| spec(o).is_some())
            .cloned()
            .collect();
        policies.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
        let mut out = PeerAuthentications {
            root_namespace: root_namespace.to_string(),
            ..PeerAuthentications::default()
        };
        let mut ns_raw: BTreeMap<String, Option<PeerMode>> = BTreeMap::new();
        for o in &policies {
            let Some(pa) = spec(o).filter(|pa| selects_all(pa)) else {
                continue;
            };
            if o.namespace() == root_namespace {
                if !out.has_mesh {
                    out.has_mesh = true;
                    out.mesh = PeerMode::from_api(pa.mtls.as_ref());
                }
            } else {
                ns_raw
                    .entry(o.namespace().to_string())
                    .or_insert_with(|| PeerMode::from_api(pa.mtls.as_ref()));
            }
        }
        let inherited = out.mesh.unwrap_or(PeerMode::Permissive);
        out.namespaces = ns_raw
            .into_iter()
            .map(|(ns, m)| (ns, m.unwrap_or(inherited)))
            .collect();
        out.policies = policies;
        out
    }

    /// The mode clients assume for services in `namespace`: its namespace
    /// policy, else the mesh policy, else PERMISSIVE (Istio's
    /// `BestEffortInferServiceMTLSMode` for in-mesh services).
    pub fn namespace_mode(&self, namespace: &str) -> PeerMode {
        if let Some(m) = self.namespaces.get(namespace) {
            return *m;
        }
        if self.has_mesh {
            return self.mesh.unwrap_or(PeerMode::Permissive);
        }
        PeerMode::Permissive
    }

    /// The merged policy of a workload in `namespace` with `labels`.
    pub fn for_workload(&self, namespace: &str, labels: &BTreeMap<String, String>) -> PeerPolicy {
        let mut mesh = None;
        let mut ns = None;
        let mut workload: Option<&PeerAuthentication> = None;
        for o in &self.policies {
            let Some(pa) = spec(o) else { continue };
            let in_root = o.namespace() == self.root_namespace;
            if !in_root && o.namespace() != namespace {
                continue;
            }
            if selects_all(pa) {
                if in_root {
                    mesh.get_or_insert(pa);
                } else {
                    ns.get_or_insert(pa);
                }
            } else if !in_root
                && pa
                    .selector
                    .as_ref()
                    .is_some_and(|s| labels_match(&s.match_labels, labels))
            {
                workload.get_or_insert(pa);
            }
        }
        let mut mode = PeerMode::Permissive;
        for pa in [mesh, ns, workload].into_iter().flatten() {
            if let Some(m) = PeerMode::from_api(pa.mtls.as_ref()) {
                mode = m;
            }
        }
        let per_port = workload
            .and_then(|pa| pa.port_level_mtls.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .map(|(p, m)| (p.0, PeerMode::from_api(Some(m)).unwrap_or(mode)))
                    .collect()
            })
            .unwrap_or_default();
        PeerPolicy { mode, per_port }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::store::{StoreOptions, build_snapshot};

    fn index(yaml: &str) -> PeerAuthentications {
        let files = BTreeMap::from([("pa.yaml".to_string(), yaml.to_string())]);
        let snap = build_snapshot(&files, Vec::new(), None, &StoreOptions::default());
        let errors: Vec<_> = snap.problems.iter().filter(|p| p.is_error()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        PeerAuthentications::new(snap.objects(), "istio-system")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: inherit, namespace: other}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: legacy}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: DISABLE}
  portLevelMtls:
    3306: {mode: STRICT}
    9000: {mode: UNSET}
"#;

    #[test]
    fn workload_over_namespace_over_mesh() {
        let idx = index(POLICIES);
        let p = idx.for_workload("default", &labels(&[("app", "x")]));
        assert_eq!(p.mode, PeerMode::Strict, "mesh policy");
        let p = idx.for_workload("legacy", &labels(&[("app", "web")]));
        assert_eq!(p.mode, PeerMode::Permissive, "namespace policy");
        let p = idx.for_workload("legacy", &labels(&[("app", "db")]));
        assert_eq!(p.mode, PeerMode::Disable, "workload policy");
        assert_eq!(p.for_port(3306), PeerMode::Strict);
        assert_eq!(p.for_port(9000), PeerMode::Disable, "UNSET inherits");
        assert_eq!(p.for_port(80), PeerMode::Disable);
        let p = idx.for_workload("other", &labels(&[]));
        assert_eq!(p.mode, PeerMode::Strict, "empty namespace policy inherits");
    }

    #[test]
    fn clients_infer_namespace_modes() {
        let idx = index(POLICIES);
        assert_eq!(idx.namespace_mode("legacy"), PeerMode::Permissive);
        assert_eq!(idx.namespace_mode("default"), PeerMode::Strict);
        assert_eq!(idx.namespace_mode("other"), PeerMode::Strict);
        let none = PeerAuthentications::default();
        assert_eq!(none.namespace_mode("default"), PeerMode::Permissive);
        assert_eq!(
            none.for_workload("default", &labels(&[])).mode,
            PeerMode::Permissive
        );
    }
}
