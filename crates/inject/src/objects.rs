//! Kubernetes objects and YAML streams: where each kind keeps its pod
//! template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! ReplicationController, Job, CronJob, OpenShift DeploymentConfig), `kind:
//! List`, and multi-document YAML. Kinds without a pod template pass
//! through unchanged.

use crate::config::Settings;
use crate::decision::SkipReason;
use crate::error::InjectError;
use crate::pod::{PodOutcome, inject_pod};
use crate::workload::Workload;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// Outcome of injecting one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// Nothing to do; the object is unchanged.
    Skipped(SkipReason),
    /// The object with its pod (template) injected.
    Injected(Value),
}

/// Where the pod template of `kind` lives (JSON pointer; "" for a Pod).
pub fn pod_template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job"
        | "DeploymentConfig" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn pointer_to_field(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Inject one object (any kind). `namespace_labels`: see [`inject_pod`].
pub fn inject_object(
    obj: &Value,
    settings: &Settings,
    namespace_labels: Option<&Map<String, Value>>,
) -> Result<Injection, InjectError> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" {
        let Some(items) = obj.get("items").and_then(Value::as_array) else {
            return Ok(Injection::Skipped(SkipReason::NotAWorkload("List".into())));
        };
        let mut out = Vec::with_capacity(items.len());
        let mut first_skip = None;
        let mut any = false;
        for (i, item) in items.iter().enumerate() {
            match inject_object(item, settings, namespace_labels)
                .map_err(|e| e.within(&format!("items[{i}]")))?
            {
                Injection::Injected(v) => {
                    any = true;
                    out.push(v);
                }
                Injection::Skipped(r) => {
                    first_skip.get_or_insert(r);
                    out.push(item.clone());
                }
            }
        }
        if !any {
            return Ok(Injection::Skipped(
                first_skip.unwrap_or(SkipReason::NotAWorkload("List".into())),
            ));
        }
        let mut list = obj.clone();
        list["items"] = Value::Array(out);
        return Ok(Injection::Injected(list));
    }
    let Some(pointer) = pod_template_pointer(kind) else {
        if obj
            .pointer("/spec/template/spec/containers")
            .is_some_and(Value::is_array)
        {
            return Err(InjectError::field(
                "kind",
                format!(
                    "kind {kind:?} has a pod template (spec.template) but is not a kind Weft knows how to inject; \
                     supported: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, DeploymentConfig"
                ),
            ));
        }
        return Ok(Injection::Skipped(SkipReason::NotAWorkload(
            kind.to_string(),
        )));
    };
    let owner = if kind == "Pod" {
        Workload::of_pod(obj)
    } else {
        Workload::of_object(obj)
    };
    let template = if pointer.is_empty() {
        Some(obj)
    } else {
        obj.pointer(pointer)
    };
    let Some(template) = template.filter(|t| t.is_object()) else {
        return Err(InjectError::field(
            pointer_to_field(pointer),
            format!("{kind} has no pod template"),
        ));
    };
    if !template
        .pointer("/spec/containers")
        .is_some_and(Value::is_array)
    {
        let prefix = pointer_to_field(pointer);
        let field = if prefix.is_empty() {
            "spec.containers".to_string()
        } else {
            format!("{prefix}.spec.containers")
        };
        return Err(InjectError::field(field, "missing or not a list"));
    }
    let outcome = inject_pod(template, &owner, settings, namespace_labels).map_err(|e| {
        let prefix = pointer_to_field(pointer);
        if prefix.is_empty() {
            e
        } else {
            e.within(&prefix)
        }
    })?;
    match outcome {
        PodOutcome::Skipped(r) => Ok(Injection::Skipped(r)),
        PodOutcome::Injected(pod) => {
            if pointer.is_empty() {
                return Ok(Injection::Injected(pod));
            }
            let mut out = obj.clone();
            if let Some(slot) = out.pointer_mut(pointer) {
                *slot = pod;
            }
            Ok(Injection::Injected(out))
        }
    }
}

/// An error in a YAML stream, naming the document, its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StreamError {
    /// Zero-based index of the document in the stream.
    pub index: usize,
    /// The document's kind, if it could be read.
    pub kind: String,
    /// The document's metadata.name, if it could be read.
    pub name: String,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        if !self.kind.is_empty() || !self.name.is_empty() {
            write!(f, " ({}/{})", self.kind, self.name)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Result of processing one document of a stream.
#[derive(Debug, Clone)]
pub struct DocumentReport {
    /// Index in the stream.
    pub index: usize,
    /// kind/name of the document.
    pub kind: String,
    /// metadata.name.
    pub name: String,
    /// None when injected, else why it was left alone.
    pub skipped: Option<SkipReason>,
}

/// Parse a multi-document YAML stream into JSON values (empty documents dropped).
pub fn parse_stream(text: &str) -> Result<Vec<Value>, StreamError> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de).map_err(|e| StreamError {
            index,
            kind: String::new(),
            name: String::new(),
            message: format!("not valid YAML: {e}"),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Render documents as a YAML stream (each document followed by `---`).
pub fn render_stream(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str(&crate::yaml::to_yaml(d));
        out.push_str("---\n");
    }
    out
}

/// Inject every document of a YAML stream (`weft kube-inject`). Nothing is
/// returned unless every document succeeded.
pub fn inject_stream(
    text: &str,
    settings: &Settings,
) -> Result<(Vec<Value>, Vec<DocumentReport>), StreamError> {
    let docs = parse_stream(text)?;
    let mut out = Vec::with_capacity(docs.len());
    let mut reports = Vec::with_capacity(docs.len());
    for (index, doc) in docs.into_iter().enumerate() {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !doc.is_object() {
            return Err(StreamError {
                index,
                kind,
                name,
                message: "a Kubernetes object must be a mapping".into(),
            });
        }
        match inject_object(&doc, settings, None) {
            Ok(Injection::Injected(v)) => {
                out.push(v);
                reports.push(DocumentReport {
                    index,
                    kind,
                    name,
                    skipped: None,
                });
            }
            Ok(Injection::Skipped(r)) => {
                out.push(doc);
                reports.push(DocumentReport {
                    index,
                    kind,
                    name,
                    skipped: Some(r),
                });
            }
            Err(e) => {
                return Err(StreamError {
                    index,
                    kind,
                    name,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok((out, reports))
}
