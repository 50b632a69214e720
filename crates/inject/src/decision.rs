//! The injection decision, following Istio's table: which webhook entry
//! selects the pod (namespace label `istio-injection` / `istio.io/rev`,
//! object label `sidecar.istio.io/inject`), then the object's own opt-in or
//! opt-out (label wins over annotation), the never/always selectors and the
//! policy. Host-network pods and Kubernetes' system namespaces never get a
//! sidecar.

use crate::config::{InjectionConfig, Policy};
use crate::selector::{LabelSelector, Operator, Requirement};
use serde_json::{Map, Value};
use std::fmt;

/// Label and annotation that opt a workload in or out.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";
/// Namespace label enabling injection by the default revision.
pub const NAMESPACE_INJECTION_LABEL: &str = "istio-injection";
/// Label selecting a control-plane revision.
pub const REVISION_LABEL: &str = "istio.io/rev";
/// Namespaces that never get sidecars.
pub const IGNORED_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];

/// Why an object was left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The pod uses the node's network namespace.
    HostNetwork,
    /// The pod lives in a Kubernetes system namespace.
    IgnoredNamespace(String),
    /// No webhook entry selects the pod (namespace and object labels).
    NotSelected,
    /// The object's label or annotation `sidecar.istio.io/inject` says no.
    OptedOut(String),
    /// A `neverInjectSelector` matched.
    NeverInjectSelector,
    /// Policy `disabled` and the object did not opt in.
    PolicyDisabled,
    /// The object's kind carries no pod template.
    NotAWorkload(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::HostNetwork => write!(f, "the pod has host networking enabled"),
            SkipReason::IgnoredNamespace(ns) => write!(f, "namespace {ns} is never injected"),
            SkipReason::NotSelected => write!(
                f,
                "neither the namespace (istio-injection / istio.io/rev) nor the object labels select this revision"
            ),
            SkipReason::OptedOut(v) => write!(f, "{INJECT_LABEL} is {v:?}"),
            SkipReason::NeverInjectSelector => write!(f, "a neverInjectSelector matches"),
            SkipReason::PolicyDisabled => write!(
                f,
                "the injection policy is disabled and the object does not opt in"
            ),
            SkipReason::NotAWorkload(kind) => write!(f, "kind {kind} has no pod template"),
        }
    }
}

/// One entry of the MutatingWebhookConfiguration: which namespaces and
/// objects it sends to `/inject`.
#[derive(Debug, Clone)]
pub struct WebhookEntry {
    /// The webhook name, e.g. `namespace.sidecar-injector.istio.io`.
    pub name: String,
    /// Selector on the namespace's labels.
    pub namespace_selector: LabelSelector,
    /// Selector on the pod's labels.
    pub object_selector: LabelSelector,
}

/// The four webhook entries Istio installs: namespace label and object label,
/// each for the revision (`istio.io/rev`) and, for the default revision,
/// for `istio-injection=enabled` / `sidecar.istio.io/inject=true`.
pub fn webhook_entries(revision: &str) -> Vec<WebhookEntry> {
    use Operator::*;
    let rev = if revision.is_empty() {
        "default"
    } else {
        revision
    };
    let prefix = if rev == "default" {
        String::new()
    } else {
        format!("{rev}.")
    };
    let not_false = Requirement::new(INJECT_LABEL, NotIn, &["false"]);
    let mut entries = vec![
        WebhookEntry {
            name: format!("{prefix}rev.namespace.sidecar-injector.istio.io"),
            namespace_selector: LabelSelector::expressions(vec![
                Requirement::new(REVISION_LABEL, In, &[rev]),
                Requirement::new(NAMESPACE_INJECTION_LABEL, DoesNotExist, &[]),
            ]),
            object_selector: LabelSelector::expressions(vec![not_false.clone()]),
        },
        WebhookEntry {
            name: format!("{prefix}rev.object.sidecar-injector.istio.io"),
            namespace_selector: LabelSelector::expressions(vec![
                Requirement::new(REVISION_LABEL, DoesNotExist, &[]),
                Requirement::new(NAMESPACE_INJECTION_LABEL, DoesNotExist, &[]),
            ]),
            object_selector: LabelSelector::expressions(vec![
                not_false.clone(),
                Requirement::new(REVISION_LABEL, In, &[rev]),
            ]),
        },
    ];
    if rev == "default" {
        entries.push(WebhookEntry {
            name: "namespace.sidecar-injector.istio.io".to_string(),
            namespace_selector: LabelSelector::expressions(vec![Requirement::new(
                NAMESPACE_INJECTION_LABEL,
                In,
                &["enabled"],
            )]),
            object_selector: LabelSelector::expressions(vec![not_false]),
        });
        entries.push(WebhookEntry {
            name: "object.sidecar-injector.istio.io".to_string(),
            namespace_selector: LabelSelector::expressions(vec![
                Requirement::new(NAMESPACE_INJECTION_LABEL, DoesNotExist, &[]),
                Requirement::new(REVISION_LABEL, DoesNotExist, &[]),
            ]),
            object_selector: LabelSelector::expressions(vec![
                Requirement::new(INJECT_LABEL, In, &["true"]),
                Requirement::new(REVISION_LABEL, DoesNotExist, &[]),
            ]),
        });
    }
    entries
}

/// Whether any webhook entry for `revision` sends this pod to the injector.
pub fn selected_by_webhook(
    namespace_labels: &Map<String, Value>,
    pod_labels: &Map<String, Value>,
    revision: &str,
) -> bool {
    webhook_entries(revision).iter().any(|e| {
        e.namespace_selector.matches(namespace_labels) && e.object_selector.matches(pod_labels)
    })
}

/// Istio's `injectRequired`: the object-level part of the decision.
/// `namespace` is the object's namespace (may be empty).
pub fn injection_required(
    config: &InjectionConfig,
    namespace: &str,
    metadata: &Value,
    spec: &Value,
) -> Result<(), SkipReason> {
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(SkipReason::HostNetwork);
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Err(SkipReason::IgnoredNamespace(namespace.to_string()));
    }
    let labels = crate::config::string_map(metadata.get("labels"));
    let annotations = crate::config::string_map(metadata.get("annotations"));
    let said = labels
        .get(INJECT_LABEL)
        .or_else(|| annotations.get(INJECT_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("");
    let (mut use_default, mut inject) = match said.to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "on" => (false, true),
        "" => (true, false),
        _ => (false, false),
    };
    let mut never_matched = false;
    if use_default
        && config
            .never_inject_selector
            .iter()
            .any(|s| !s.is_empty() && s.matches(&labels))
    {
        inject = false;
        use_default = false;
        never_matched = true;
    }
    if use_default
        && config
            .always_inject_selector
            .iter()
            .any(|s| !s.is_empty() && s.matches(&labels))
    {
        inject = true;
        use_default = false;
    }
    let required = match config.policy {
        Policy::Enabled => use_default || inject,
        Policy::Disabled => !use_default && inject,
    };
    if required {
        Ok(())
    } else if never_matched {
        Err(SkipReason::NeverInjectSelector)
    } else if !use_default {
        Err(SkipReason::OptedOut(said.to_string()))
    } else {
        Err(SkipReason::PolicyDisabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn webhook_selection_table() {
        let none = m(json!({}));
        let enabled = m(json!({"istio-injection": "enabled"}));
        let disabled = m(json!({"istio-injection": "disabled"}));
        let rev_default = m(json!({"istio.io/rev": "default"}));
        let rev_canary = m(json!({"istio.io/rev": "canary"}));
        let opt_in = m(json!({"sidecar.istio.io/inject": "true"}));
        let opt_out = m(json!({"sidecar.istio.io/inject": "false"}));
        assert!(selected_by_webhook(&enabled, &none, "default"));
        assert!(!selected_by_webhook(&enabled, &opt_out, "default"));
        assert!(!selected_by_webhook(&disabled, &opt_in, "default"));
        assert!(!selected_by_webhook(&none, &none, "default"));
        assert!(selected_by_webhook(&none, &opt_in, "default"));
        assert!(selected_by_webhook(&rev_default, &none, "default"));
        assert!(!selected_by_webhook(&rev_canary, &none, "default"));
        assert!(selected_by_webhook(&rev_canary, &none, "canary"));
        assert!(!selected_by_webhook(&enabled, &none, "canary"));
        let obj_canary = m(json!({"istio.io/rev": "canary"}));
        assert!(selected_by_webhook(&none, &obj_canary, "canary"));
        assert!(!selected_by_webhook(&none, &obj_canary, "default"));
    }

    #[test]
    fn object_decision_table() {
        let mut cfg = InjectionConfig::default();
        let pod = |labels: Value, annotations: Value| json!({"labels": labels, "annotations": annotations});
        let spec = json!({});
        assert_eq!(
            injection_required(&cfg, "", &pod(json!({}), json!({})), &spec),
            Ok(())
        );
        assert_eq!(
            injection_required(
                &cfg,
                "",
                &pod(json!({}), json!({INJECT_LABEL: "false"})),
                &spec
            ),
            Err(SkipReason::OptedOut("false".into()))
        );
        // label wins over annotation
        assert_eq!(
            injection_required(
                &cfg,
                "",
                &pod(
                    json!({INJECT_LABEL: "true"}),
                    json!({INJECT_LABEL: "false"})
                ),
                &spec
            ),
            Ok(())
        );
        assert_eq!(
            injection_required(
                &cfg,
                "",
                &pod(json!({}), json!({})),
                &json!({"hostNetwork": true})
            ),
            Err(SkipReason::HostNetwork)
        );
        assert_eq!(
            injection_required(&cfg, "kube-system", &pod(json!({}), json!({})), &spec),
            Err(SkipReason::IgnoredNamespace("kube-system".into()))
        );
        cfg.policy = Policy::Disabled;
        assert_eq!(
            injection_required(&cfg, "", &pod(json!({}), json!({})), &spec),
            Err(SkipReason::PolicyDisabled)
        );
        assert_eq!(
            injection_required(
                &cfg,
                "",
                &pod(json!({}), json!({INJECT_LABEL: "yes"})),
                &spec
            ),
            Ok(())
        );
        let mut always = LabelSelector::default();
        always.match_labels.insert("app".into(), "a".into());
        cfg.always_inject_selector = vec![always.clone()];
        assert_eq!(
            injection_required(&cfg, "", &pod(json!({"app": "a"}), json!({})), &spec),
            Ok(())
        );
        cfg.policy = Policy::Enabled;
        cfg.never_inject_selector = vec![always];
        assert_eq!(
            injection_required(&cfg, "", &pod(json!({"app": "a"}), json!({})), &spec),
            Err(SkipReason::NeverInjectSelector)
        );
    }
}
