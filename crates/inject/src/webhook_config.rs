//! The MutatingWebhookConfiguration that sends pod creations to weftd's
//! `/inject`: Istio's four entries (namespace label and object label, for
//! the revision and, for the default revision, `istio-injection=enabled` /
//! `sidecar.istio.io/inject=true`), built from [`webhook_entries`] so the
//! manifest and weftd's own selection never disagree.

use crate::decision::webhook_entries;
use serde_json::{Value, json};

/// Where the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookTarget {
    /// An in-cluster Service (`clientConfig.service`).
    Service {
        /// Service name.
        name: String,
        /// Service namespace.
        namespace: String,
        /// Service port.
        port: u16,
    },
    /// A URL (`clientConfig.url`), e.g. weftd outside the cluster.
    Url(String),
}

/// Render the MutatingWebhookConfiguration for `revision`. `ca_bundle_b64`
/// is the base64 of the PEM CA bundle that signs weftd's serving cert.
pub fn mutating_webhook_configuration(
    revision: &str,
    target: &WebhookTarget,
    ca_bundle_b64: &str,
) -> Value {
    let rev = if revision.is_empty() {
        "default"
    } else {
        revision
    };
    let name = if rev == "default" {
        "weft-sidecar-injector".to_string()
    } else {
        format!("weft-sidecar-injector-{rev}")
    };
    let mut client_config = match target {
        WebhookTarget::Service {
            name,
            namespace,
            port,
        } => json!({
            "service": {"name": name, "namespace": namespace, "path": "/inject", "port": port}
        }),
        WebhookTarget::Url(url) => json!({"url": format!("{}/inject", url.trim_end_matches('/'))}),
    };
    if !ca_bundle_b64.is_empty() {
        client_config["caBundle"] = json!(ca_bundle_b64);
    }
    let webhooks: Vec<Value> = webhook_entries(rev)
        .into_iter()
        .map(|e| {
            json!({
                "name": e.name,
                "clientConfig": client_config,
                "rules": [{
                    "operations": ["CREATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                }],
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "reinvocationPolicy": "Never",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
                "namespaceSelector": e.namespace_selector,
                "objectSelector": e.object_selector,
            })
        })
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {"app": "sidecar-injector", "istio.io/rev": rev},
        },
        "webhooks": webhooks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_revision_has_four_entries_revision_two() {
        let target = WebhookTarget::Service {
            name: "weftd".into(),
            namespace: "istio-system".into(),
            port: 443,
        };
        let cfg = mutating_webhook_configuration("default", &target, "Q0E=");
        let hooks = cfg["webhooks"].as_array().expect("webhooks");
        assert_eq!(hooks.len(), 4);
        for h in hooks {
            assert_eq!(h["failurePolicy"], "Fail");
            assert_eq!(h["sideEffects"], "None");
            assert_eq!(h["reinvocationPolicy"], "Never");
            assert_eq!(h["clientConfig"]["caBundle"], "Q0E=");
            assert_eq!(h["rules"][0]["operations"], json!(["CREATE"]));
        }
        let canary = mutating_webhook_configuration("canary", &target, "");
        assert_eq!(canary["webhooks"].as_array().map(Vec::len), Some(2));
        assert_eq!(canary["metadata"]["name"], "weft-sidecar-injector-canary");
    }
}
