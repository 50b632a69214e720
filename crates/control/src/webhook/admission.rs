//! AdmissionReview handling for `/inject` (pure): decode the review, run the
//! injection core on the pod with its namespace's labels, and answer with a
//! base64 JSON Patch (RFC 6902) that turns the pod into the injected pod.

use crate::namespaces::NamespaceStore;
use base64::Engine;
use serde_json::{Value, json};
use weft_inject::{InjectError, PodOutcome, Settings, Workload, inject_pod};

/// Why a request is not a usable AdmissionReview (answered with HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed AdmissionReview: {0}")]
pub struct MalformedReview(pub String);

/// What the webhook decided, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Patched.
    Injected,
    /// Allowed unchanged, with the reason.
    Skipped(String),
    /// Denied: the pod's injection settings are invalid.
    Denied(String),
}

fn malformed(msg: impl Into<String>) -> MalformedReview {
    MalformedReview(msg.into())
}

/// Handle one `admission.k8s.io/v1` AdmissionReview body.
pub fn review(
    body: &[u8],
    settings: &Settings,
    namespaces: &NamespaceStore,
) -> Result<(Value, Decision), MalformedReview> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| malformed(format!("body is not JSON: {e}")))?;
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api_version != "admission.k8s.io/v1" {
        return Err(malformed(format!(
            "apiVersion {api_version:?}: only admission.k8s.io/v1 is served"
        )));
    }
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(malformed("kind must be AdmissionReview"));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| malformed("missing request"))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| malformed("request.uid missing"))?;
    let respond = |extra: Value| -> Value {
        let mut response = json!({"uid": uid, "allowed": true});
        if let (Some(r), Some(e)) = (response.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    };
    let kind = request
        .pointer("/kind/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let group = request
        .pointer("/kind/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != "Pod" || !group.is_empty() {
        let why = format!("not a Pod ({group}/{kind})");
        return Ok((respond(json!({})), Decision::Skipped(why)));
    }
    let pod = request
        .get("object")
        .filter(|o| o.is_object())
        .ok_or_else(|| malformed("request.object missing or not an object"))?;
    if !pod.pointer("/spec/containers").is_some_and(Value::is_array) {
        return Err(malformed(
            "request.object.spec.containers missing or not a list",
        ));
    }
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("default");
    let mut owner = Workload::of_pod(pod);
    owner.namespace = namespace.to_string();
    let ns_labels = namespaces.labels(namespace);
    match inject_pod(pod, &owner, settings, Some(&ns_labels)) {
        Ok(PodOutcome::Skipped(reason)) => {
            Ok((respond(json!({})), Decision::Skipped(reason.to_string())))
        }
        Ok(PodOutcome::Injected(injected)) => {
            let patch = json_patch::diff(pod, &injected);
            let bytes = serde_json::to_vec(&patch).map_err(|e| malformed(e.to_string()))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            Ok((
                respond(json!({"patchType": "JSONPatch", "patch": b64})),
                Decision::Injected,
            ))
        }
        Err(e) => Ok((deny(uid, &e), Decision::Denied(e.to_string()))),
    }
}

/// The pod asks for an injection that cannot be done (e.g. a bad
/// `traffic.sidecar.istio.io/*` annotation): deny creation with the reason,
/// as Istio does, instead of starting a pod without working capture.
fn deny(uid: &str, e: &InjectError) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": false,
            "status": {"code": 400, "message": format!("sidecar injection failed: {e}")}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> NamespaceStore {
        let mut s = NamespaceStore::default();
        s.add_documents(
            std::path::Path::new("t.yaml"),
            "kind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n",
        )
        .expect("ns");
        s
    }

    fn review_for(ns: &str, pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": ns, "operation": "CREATE", "object": pod}
        }))
        .expect("json")
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": [{"name": "app", "image": "nginx"}]}})
    }

    #[test]
    fn injects_in_enabled_namespace_and_skips_elsewhere() {
        let settings = Settings::default();
        let (resp, d) = review(&review_for("shop", pod()), &settings, &store()).expect("ok");
        assert_eq!(d, Decision::Injected);
        assert_eq!(resp["response"]["uid"], "u1");
        assert_eq!(resp["response"]["allowed"], true);
        assert_eq!(resp["response"]["patchType"], "JSONPatch");
        let (resp, d) = review(&review_for("other", pod()), &settings, &store()).expect("ok");
        assert!(matches!(d, Decision::Skipped(_)));
        assert_eq!(resp["response"]["allowed"], true);
        assert!(resp["response"].get("patch").is_none());
    }

    #[test]
    fn malformed_reviews_are_rejected_with_a_reason() {
        let s = Settings::default();
        let ns = store();
        assert!(review(b"not json", &s, &ns).unwrap_err().0.contains("JSON"));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#;
        assert!(review(v1beta1, &s, &ns).unwrap_err().0.contains("v1beta1"));
        let no_uid =
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#;
        assert!(review(no_uid, &s, &ns).unwrap_err().0.contains("uid"));
        let no_obj = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"group":"","kind":"Pod"}}}"#;
        assert!(review(no_obj, &s, &ns).unwrap_err().0.contains("object"));
    }

    /// Truncations and byte flips of a valid review never panic: each is
    /// answered or rejected as malformed.
    #[test]
    fn mutated_reviews_never_panic() {
        let good = review_for("shop", pod());
        let settings = Settings::default();
        let ns = store();
        for cut in 0..good.len() {
            let _ = review(&good[..cut], &settings, &ns);
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut bytes = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = (next() & 0xff) as u8;
            }
            let _ = review(&bytes, &settings, &ns);
        }
    }

    #[test]
    fn bad_annotation_denies_with_the_annotation_named() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({"traffic.sidecar.istio.io/excludeInboundPorts": "*"});
        let (resp, d) = review(&review_for("shop", p), &Settings::default(), &store()).expect("ok");
        assert!(matches!(d, Decision::Denied(_)));
        assert_eq!(resp["response"]["allowed"], false);
        let msg = resp["response"]["status"]["message"]
            .as_str()
            .expect("message");
        assert!(
            msg.contains("traffic.sidecar.istio.io/excludeInboundPorts"),
            "{msg}"
        );
    }
}
