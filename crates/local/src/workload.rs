//! Workloads → pods, as Kubernetes' controllers and the injection webhook
//! would make them: replicas and names (`NAME-HASH-N` for Deployments,
//! `NAME-N` for StatefulSets and ReplicaSets), labels (`pod-template-hash`,
//! `statefulset.kubernetes.io/pod-name`), the sidecar injected by
//! `weft_inject` when the namespace or pod asks for it, and each container
//! planned by [`crate::container`]. Pure.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::container::{self, APP_PROBERS_ENV, ContainerPlan, PodFacts, Role};
use crate::error::PlanError;
use crate::manifest::Document;
use crate::plan::PlanOptions;

/// Most replicas one workload may ask for (the node's /24 holds 253 pods).
pub const MAX_REPLICAS: u64 = 50;

/// A pod to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The workload's kind (`Deployment`, `Pod`, ...).
    pub owner_kind: String,
    /// The workload's name.
    pub owner_name: String,
    /// The file and document the workload came from.
    pub source: (String, usize),
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations (after injection).
    pub annotations: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// Whether a sidecar was injected.
    pub injected: bool,
    /// Its containers: init ones in order, then sidecars, then apps.
    pub containers: Vec<ContainerPlan>,
    /// The Pod object weftd sees once the pod is ready (no `status` yet).
    pub object: Value,
    /// Changes whenever anything that needs a restart changes.
    pub fingerprint: String,
}

impl PodPlan {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerPlan> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// FNV-1a, 32 bits (stable across runs, for names and VIPs).
pub(crate) fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A `string → string` map from a JSON object (other values stringified).
pub(crate) fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Kubernetes' "safe" alphabet for generated name suffixes (no vowels).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn template_hash(template: &Value) -> String {
    let mut h = fnv1a(template.to_string().as_bytes());
    (0..5)
        .map(|_| {
            let c = SAFE[(h % SAFE.len() as u32) as usize] as char;
            h /= SAFE.len() as u32;
            c
        })
        .collect()
}

/// The pods of one workload document.
pub(crate) fn pods_of(
    doc: &Document,
    namespace_labels: &Map<String, Value>,
    opts: &PlanOptions,
) -> Result<Vec<PodPlan>, PlanError> {
    let kind = doc.kind();
    let is_pod = kind == "Pod";
    let prefix = if is_pod { "" } else { "spec.template." };
    match kind {
        "Pod"
        | "Deployment"
        | "StatefulSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "DaemonSet" => {}
        other => {
            return Err(PlanError::new(
                doc,
                "kind",
                format!(
                    "{other} is not run by the local mesh (it runs Pods, Deployments, StatefulSets, \
                     ReplicaSets, ReplicationControllers and DaemonSets)"
                ),
            ));
        }
    }
    let replicas = match (kind, doc.value.pointer("/spec/replicas")) {
        ("Pod" | "DaemonSet", _) | (_, None | Some(Value::Null)) => 1,
        (_, Some(v)) => match v.as_u64() {
            Some(n) if n <= MAX_REPLICAS => n,
            _ => {
                return Err(PlanError::new(
                    doc,
                    "spec.replicas",
                    format!("{v} is not a replica count between 0 and {MAX_REPLICAS}"),
                ));
            }
        },
    };
    let injected_doc =
        match weft_inject::inject_object(&doc.value, &opts.settings, Some(namespace_labels)) {
            Ok(weft_inject::Injection::Injected(v)) => Some(v),
            Ok(weft_inject::Injection::Skipped(_)) => None,
            Err(weft_inject::InjectError::Field { field, message }) => {
                return Err(PlanError::new(
                    doc,
                    field,
                    format!("sidecar injection: {message}"),
                ));
            }
            Err(e) => {
                return Err(PlanError::new(doc, "", format!("sidecar injection: {e}")));
            }
        };
    let injected = injected_doc.is_some();
    let source = injected_doc.as_ref().unwrap_or(&doc.value);
    let template = if is_pod {
        source.clone()
    } else {
        source.pointer("/spec/template").cloned().ok_or_else(|| {
            PlanError::new(
                doc,
                "spec.template",
                "missing (a workload needs a pod template)",
            )
        })?
    };
    let template_labels = string_map(template.pointer("/metadata/labels"));
    if !is_pod {
        let selector = string_map(doc.value.pointer("/spec/selector/matchLabels"));
        let selector = if kind == "ReplicationController" && selector.is_empty() {
            string_map(doc.value.pointer("/spec/selector"))
        } else {
            selector
        };
        if let Some((k, v)) = selector
            .iter()
            .find(|(k, v)| template_labels.get(*k) != Some(*v))
        {
            return Err(PlanError::new(
                doc,
                "spec.selector",
                format!(
                    "selects {k}={v}, which the pod template's labels do not have (Kubernetes refuses this)"
                ),
            ));
        }
    }
    let hash = template_hash(doc.value.pointer("/spec/template").unwrap_or(&doc.value));
    let names: Vec<(String, BTreeMap<String, String>)> = (0..replicas)
        .map(|i| {
            let mut extra = BTreeMap::new();
            let name = match kind {
                "Pod" => doc.name().to_owned(),
                "Deployment" => {
                    extra.insert("pod-template-hash".to_owned(), hash.clone());
                    format!("{}-{hash}-{i}", doc.name())
                }
                "StatefulSet" => {
                    let name = format!("{}-{i}", doc.name());
                    extra.insert(
                        "statefulset.kubernetes.io/pod-name".to_owned(),
                        name.clone(),
                    );
                    extra.insert("apps.kubernetes.io/pod-index".to_owned(), i.to_string());
                    name
                }
                _ => format!("{}-{i}", doc.name()),
            };
            (name, extra)
        })
        .collect();
    let namespace = doc.namespace().to_owned();
    let spec = template.get("spec").cloned().unwrap_or(json!({}));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(PlanError::new(
            doc,
            format!("{prefix}spec.hostNetwork"),
            "host-network pods would share the host's network; the local mesh never touches it",
        ));
    }
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    let annotations_json = template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let annotations = string_map(template.pointer("/metadata/annotations"));
    let app_probers = app_probers(&spec);
    let mut pods = Vec::new();
    for (name, extra) in names {
        if !valid_pod_name(&name) {
            return Err(PlanError::new(
                doc,
                "metadata.name",
                format!(
                    "pod name {name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-', '.'; up to 253 characters)"
                ),
            ));
        }
        let mut labels = template_labels.clone();
        labels.extend(extra);
        let facts = PodFacts {
            name: &name,
            namespace: &namespace,
            service_account: &service_account,
            node_name: &opts.node_name,
            labels: &labels,
            annotations: &annotations,
            pod_annotations_json: &annotations_json,
            app_probers: &app_probers,
        };
        let mut containers = Vec::new();
        for (list, default_role) in [("initContainers", Role::Init), ("containers", Role::App)] {
            for (i, c) in spec
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let role = if default_role == Role::Init
                    && c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
                {
                    Role::Sidecar
                } else {
                    default_role
                };
                let planned =
                    container::plan_container(c, role, spec.get("securityContext"), &facts)
                        .map_err(|(field, message)| {
                            PlanError::new(
                                doc,
                                format!("{prefix}spec.{list}[{i}].{field}"),
                                message,
                            )
                        })?;
                containers.push(planned);
            }
        }
        if !containers.iter().any(|c| c.role == Role::App) {
            return Err(PlanError::new(
                doc,
                format!("{prefix}spec.containers"),
                "a pod needs at least one container",
            ));
        }
        let mut pod_spec = spec.clone();
        if let Some(s) = pod_spec.as_object_mut() {
            s.insert("serviceAccountName".into(), json!(service_account));
            s.insert("nodeName".into(), json!(opts.node_name));
        }
        let mut metadata = json!({
            "name": name,
            "namespace": namespace,
            "labels": labels,
        });
        if !annotations.is_empty() {
            metadata["annotations"] = json!(annotations);
        }
        if !is_pod {
            metadata["ownerReferences"] = json!([{
                "apiVersion": doc.api_version(),
                "kind": kind,
                "name": doc.name(),
            }]);
        }
        let object =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec});
        let fingerprint = format!("{:08x}", fnv1a(object.to_string().as_bytes()));
        pods.push(PodPlan {
            namespace: namespace.clone(),
            name,
            owner_kind: kind.to_owned(),
            owner_name: doc.name().to_owned(),
            source: (doc.file.clone(), doc.index),
            labels,
            annotations: annotations.clone(),
            service_account: service_account.clone(),
            injected,
            containers,
            object,
            fingerprint,
        });
    }
    Ok(pods)
}

/// The original probes of probes Istio rewrote, from the proxy's env.
fn app_probers(spec: &Value) -> Map<String, Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .flat_map(|c| c.get("env").and_then(Value::as_array).into_iter().flatten())
        .find(|e| e.get("name").and_then(Value::as_str) == Some(APP_PROBERS_ENV))
        .and_then(|e| e.get("value").and_then(Value::as_str))
        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
        .unwrap_or_default()
}

fn valid_pod_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}
