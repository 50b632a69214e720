//! Workload identity of a pod: the owning workload's name and type (used
//! for `ISTIO_META_WORKLOAD_NAME` / `ISTIO_META_OWNER`) and the canonical
//! service name and revision labels.

use serde_json::Value;

/// Label overriding the workload name.
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";
/// Canonical service name label.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// Canonical service revision label.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// The workload a pod (template) belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// `apiVersion` of the workload object.
    pub api_version: String,
    /// `kind` of the workload object.
    pub kind: String,
    /// Workload name.
    pub name: String,
    /// Namespace (may be empty).
    pub namespace: String,
}

impl Workload {
    /// The workload of a top-level object (Deployment, Pod, ...).
    pub fn of_object(obj: &Value) -> Self {
        let s = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Workload {
            api_version: s("/apiVersion"),
            kind: s("/kind"),
            name: s("/metadata/name"),
            namespace: s("/metadata/namespace"),
        }
    }

    /// The workload of a bare pod: its controller owner if any (a
    /// ReplicaSet's Deployment, a Job's CronJob), else the pod itself.
    pub fn of_pod(pod: &Value) -> Self {
        let mut w = Workload::of_object(pod);
        if w.api_version.is_empty() {
            w.api_version = "v1".to_string();
        }
        if w.kind.is_empty() {
            w.kind = "Pod".to_string();
        }
        if w.name.is_empty() {
            // Pods created by controllers often only have generateName.
            let g = pod
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            w.name = g.trim_end_matches('-').to_string();
        }
        let owner = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|o| {
                o.iter()
                    .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            });
        if let Some(owner) = owner {
            let s = |k: &str| {
                owner
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (kind, name, api) = (s("kind"), s("name"), s("apiVersion"));
            let hash = pod
                .pointer("/metadata/labels/pod-template-hash")
                .and_then(Value::as_str);
            match (kind.as_str(), hash) {
                ("ReplicaSet", Some(h)) if name.ends_with(&format!("-{h}")) => {
                    w.kind = "Deployment".to_string();
                    w.api_version = "apps/v1".to_string();
                    w.name = name[..name.len() - h.len() - 1].to_string();
                }
                ("Job", _) if pod.pointer("/metadata/labels/job-name").is_some() => {
                    w.kind = "Job".to_string();
                    w.api_version = api;
                    w.name = name;
                }
                _ => {
                    w.kind = kind;
                    w.api_version = api;
                    w.name = name;
                }
            }
        }
        w
    }

    /// `kubernetes://apis/<apiVersion>/namespaces/<ns>/<kind>s/<name>`.
    pub fn owner_uri(&self) -> String {
        let ns = if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        };
        format!(
            "kubernetes://apis/{}/namespaces/{}/{}s/{}",
            self.api_version,
            ns,
            self.kind.to_ascii_lowercase(),
            self.name
        )
    }
}

/// Truncate to a valid label value (63 characters, ending alphanumeric).
pub fn label_value(s: &str) -> String {
    let t: String = s.chars().take(63).collect();
    t.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn label<'a>(labels: &'a Value, key: &str) -> Option<&'a str> {
    labels
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Canonical service name: label, `app.kubernetes.io/name`, `app`, else the workload name.
pub fn canonical_name(labels: &Value, workload_name: &str) -> String {
    label(labels, CANONICAL_NAME_LABEL)
        .or_else(|| label(labels, "app.kubernetes.io/name"))
        .or_else(|| label(labels, "app"))
        .map(str::to_string)
        .unwrap_or_else(|| label_value(workload_name))
}

/// Canonical revision: label, `app.kubernetes.io/version`, `version`, else `latest`.
pub fn canonical_revision(labels: &Value) -> String {
    label(labels, CANONICAL_REVISION_LABEL)
        .or_else(|| label(labels, "app.kubernetes.io/version"))
        .or_else(|| label(labels, "version"))
        .unwrap_or("latest")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replicaset_owner_maps_to_deployment() {
        let pod = json!({"metadata": {"name": "web-5d8f-abc", "namespace": "shop",
            "labels": {"pod-template-hash": "5d8f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "controller": true}]}});
        let w = Workload::of_pod(&pod);
        assert_eq!(w.name, "web");
        assert_eq!(
            w.owner_uri(),
            "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"
        );
    }

    #[test]
    fn canonical_labels() {
        assert_eq!(canonical_name(&json!({"app": "a"}), "w"), "a");
        assert_eq!(canonical_name(&json!({}), &"x".repeat(70)).len(), 63);
        assert_eq!(canonical_revision(&json!({"version": "v2"})), "v2");
        assert_eq!(canonical_revision(&json!({})), "latest");
    }
}
