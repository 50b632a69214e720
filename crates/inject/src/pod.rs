//! Injection of one pod (or pod template): decision, validation, removal of
//! an earlier injection, template rendering and merging, then the
//! post-processing Istio does outside its templates (native-sidecar
//! placement, probe rewriting, Prometheus annotations, default container,
//! status annotation).

use crate::capture;
use crate::config::{Settings, merge_into, string_map};
use crate::context::build_context;
use crate::decision::{self, SkipReason};
use crate::error::InjectError;
use crate::merge::{self, Added, ensure_list, ensure_map};
use crate::postprocess::{apply_default_container, apply_multus, apply_prometheus_merge};
use crate::probes;
use crate::resources;
use crate::workload::Workload;
use serde_json::{Map, Value, json};

/// Annotation recording what injection added.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Annotation keeping user-declared containers that templates also declare.
pub const OVERRIDES_ANNOTATION: &str = "proxy.istio.io/overrides";
/// Annotation choosing templates.
pub const TEMPLATES_ANNOTATION: &str = "inject.istio.io/templates";
/// Per-pod ProxyConfig overrides.
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// Opt in/out of native sidecars.
pub const NATIVE_SIDECAR_ANNOTATION: &str = "sidecar.istio.io/nativeSidecar";
/// Opt out of probe rewriting.
pub const REWRITE_PROBES_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// The proxy container's name (Istio's, kept for tooling compatibility).
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// Outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodOutcome {
    /// Left alone, with the reason.
    Skipped(SkipReason),
    /// The injected pod (`{metadata, spec}` plus any other fields it had).
    Injected(Value),
}

fn annotations_of(pod: &Value) -> Map<String, Value> {
    string_map(pod.pointer("/metadata/annotations"))
}

pub(crate) fn bool_annotation(
    a: &Map<String, Value>,
    name: &str,
) -> Result<Option<bool>, InjectError> {
    match a.get(name).and_then(Value::as_str) {
        None => Ok(None),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" | "1" => Ok(Some(true)),
            "false" | "no" | "n" | "off" | "0" => Ok(Some(false)),
            _ => Err(InjectError::annotation(name, v, "expected true or false")),
        },
    }
}

pub(crate) fn int_annotation(
    a: &Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, InjectError> {
    match a.get(name).and_then(Value::as_str) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| InjectError::annotation(name, v, "expected an integer")),
    }
}

pub(crate) fn value_i64(v: &Value, pointer: &str, default: i64) -> i64 {
    match v.pointer(pointer) {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => s.parse().unwrap_or(default),
        _ => default,
    }
}

/// Inject one pod. `namespace_labels` is `Some` in the webhook (the
/// namespace/object selectors of the webhook configuration apply) and
/// `None` for `kube-inject`, which injects whatever it is given unless the
/// object itself opts out.
pub fn inject_pod(
    pod: &Value,
    owner: &Workload,
    settings: &Settings,
    namespace_labels: Option<&Map<String, Value>>,
) -> Result<PodOutcome, InjectError> {
    let empty = json!({});
    let metadata = pod.get("metadata").unwrap_or(&empty);
    let spec = pod.get("spec").unwrap_or(&empty);
    if let Some(ns_labels) = namespace_labels {
        let pod_labels = string_map(metadata.get("labels"));
        if !decision::selected_by_webhook(ns_labels, &pod_labels, &settings.revision) {
            return Ok(PodOutcome::Skipped(SkipReason::NotSelected));
        }
    }
    if let Err(reason) =
        decision::injection_required(&settings.config, &owner.namespace, metadata, spec)
    {
        return Ok(PodOutcome::Skipped(reason));
    }

    let annotations = annotations_of(pod);
    capture::validate_annotations(&annotations)?;
    resources::validate_annotations(&annotations)?;
    for name in [
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        "readiness.status.sidecar.istio.io/periodSeconds",
        "readiness.status.sidecar.istio.io/failureThreshold",
    ] {
        int_annotation(&annotations, name)?;
    }

    let mut pod = pod.clone();
    let (prior_injected, previous_probers) = take_previous_injection(&mut pod)?;
    let annotations = annotations_of(&pod);

    // Effective proxy config: mesh defaultConfig + proxy.istio.io/config.
    let mut proxy_config = settings.default_proxy_config();
    if let Some(text) = annotations
        .get(PROXY_CONFIG_ANNOTATION)
        .and_then(Value::as_str)
    {
        let overrides: Value = serde_yaml::from_str(text).map_err(|e| {
            InjectError::annotation(
                PROXY_CONFIG_ANNOTATION,
                text,
                format!("not a ProxyConfig: {e}"),
            )
        })?;
        if let Err(why) = check_proxy_config(&overrides) {
            return Err(InjectError::annotation(PROXY_CONFIG_ANNOTATION, text, why));
        }
        merge_into(&mut proxy_config, &overrides);
    }

    let templates = template_names(&annotations, settings)?;
    let context = build_context(&pod, owner, settings, &proxy_config, &annotations)?;
    let native = context.pointer("/sidecar/native").and_then(Value::as_bool) == Some(true);
    let status_port = context
        .pointer("/sidecar/status_port")
        .and_then(Value::as_u64)
        .unwrap_or(0);

    let user: Vec<String> = ["containers", "initContainers"]
        .iter()
        .flat_map(|f| {
            pod.pointer(&format!("/spec/{f}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
        .filter(|n| !prior_injected.contains(n))
        .collect();
    let existing = merge::Existing {
        user,
        prior: prior_injected,
    };

    let compiled = settings.compiled.get(&settings.config.templates)?;
    let mut added = Added::default();
    for name in &templates {
        let patch = compiled.render(name, &context)?;
        merge::apply_patch(&mut pod, &patch, &existing, &mut added);
    }

    order_containers(&mut pod, &added, native, &proxy_config, settings);
    if context
        .pointer("/sidecar/capture/mode")
        .and_then(Value::as_str)
        == Some("TPROXY")
    {
        // TPROXY needs the proxy to run as root, whatever the pod asked for.
        for field in ["initContainers", "containers"] {
            for c in ensure_list(&mut pod, field).iter_mut() {
                if c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER) {
                    let sc = ensure_map(c, &["securityContext"]);
                    sc.insert("runAsUser".into(), json!(0));
                    sc.insert("runAsNonRoot".into(), json!(false));
                }
            }
        }
        for field in ["initContainers", "containers"] {
            if ensure_list(&mut pod, field).is_empty() {
                ensure_map(&mut pod, &["spec"]).remove(field);
            }
        }
    }
    let annotations = annotations_of(&pod);

    // Probe rewriting.
    let rewrite = match bool_annotation(&annotations, REWRITE_PROBES_ANNOTATION)? {
        Some(b) => b,
        None => settings
            .values
            .pointer("/sidecarInjectorWebhook/rewriteAppHTTPProbe")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    if rewrite
        && status_port != 0
        && let Some(spec) = pod.get_mut("spec")
    {
        {
            let probers = probes::rewrite_app_probes(
                spec,
                status_port as u16,
                &[PROXY_CONTAINER],
                &previous_probers,
            );
            if !probers.is_empty() {
                set_proxy_env(
                    &mut pod,
                    probes::APP_PROBERS_ENV,
                    &Value::Object(probers).to_string(),
                );
            }
        }
    }

    apply_prometheus_merge(&mut pod, settings, &annotations);
    apply_default_container(&mut pod, &added);
    for (k, v) in &settings.config.injected_annotations {
        ensure_map(&mut pod, &["metadata", "annotations"]).insert(k.clone(), json!(v));
    }
    apply_multus(&mut pod, settings, &owner.namespace);

    let none_if_empty = |v: &Vec<String>| {
        if v.is_empty() { Value::Null } else { json!(v) }
    };
    let mut status = Map::new();
    status.insert(
        "initContainers".into(),
        none_if_empty(&added.init_containers),
    );
    status.insert("containers".into(), none_if_empty(&added.containers));
    status.insert("volumes".into(), none_if_empty(&added.volumes));
    status.insert(
        "imagePullSecrets".into(),
        none_if_empty(&added.image_pull_secrets),
    );
    status.insert("revision".into(), json!(settings.revision));
    let ann = ensure_map(&mut pod, &["metadata", "annotations"]);
    ann.insert(
        STATUS_ANNOTATION.into(),
        json!(Value::Object(status).to_string()),
    );
    if !added.overridden_containers.is_empty() || !added.overridden_init_containers.is_empty() {
        let mut o = Map::new();
        if !added.overridden_init_containers.is_empty() {
            o.insert(
                "initContainers".into(),
                json!(added.overridden_init_containers),
            );
        }
        if !added.overridden_containers.is_empty() {
            o.insert("containers".into(), json!(added.overridden_containers));
        }
        ann.insert(
            OVERRIDES_ANNOTATION.into(),
            json!(Value::Object(o).to_string()),
        );
    }
    sort_map(ensure_map(&mut pod, &["metadata", "annotations"]));
    sort_map(ensure_map(&mut pod, &["metadata", "labels"]));
    Ok(PodOutcome::Injected(pod))
}

fn sort_map(m: &mut Map<String, Value>) {
    m.sort_keys();
}

/// Type checks for the ProxyConfig fields injection reads; other fields
/// pass through to the proxy untouched.
fn check_proxy_config(overrides: &Value) -> Result<(), String> {
    let map = match overrides {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        _ => return Err("expected a mapping of ProxyConfig fields".into()),
    };
    for (field, v) in map {
        let ok = match field.as_str() {
            "holdApplicationUntilProxyStarts" => v.is_boolean(),
            "concurrency" | "statusPort" => v.as_u64().is_some_and(|n| n <= 65535),
            "interceptionMode" => matches!(v.as_str(), Some("REDIRECT" | "TPROXY" | "NONE")),
            "proxyMetadata" => v
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.is_string())),
            _ => true,
        };
        if !ok {
            return Err(format!("field {field} has an invalid value {v}"));
        }
    }
    Ok(())
}

/// The templates to apply: the annotation's list (aliases expanded,
/// duplicates applied once) or the configured defaults.
fn template_names(
    annotations: &Map<String, Value>,
    settings: &Settings,
) -> Result<Vec<String>, InjectError> {
    let requested: Vec<String> = match annotations
        .get(TEMPLATES_ANNOTATION)
        .and_then(Value::as_str)
    {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => settings.config.default_templates.clone(),
    };
    let mut out: Vec<String> = Vec::new();
    for name in requested {
        let expanded = settings
            .config
            .aliases
            .get(&name)
            .cloned()
            .unwrap_or_else(|| vec![name.clone()]);
        for t in expanded {
            if !settings.config.templates.contains_key(&t) {
                let list = annotations
                    .get(TEMPLATES_ANNOTATION)
                    .and_then(Value::as_str)
                    .unwrap_or(&t);
                return Err(InjectError::annotation(
                    TEMPLATES_ANNOTATION,
                    list,
                    format!("unknown template {t:?}"),
                ));
            }
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// What an earlier injection left (named in the status annotation): the
/// containers it added and the probes it had rewritten (from the old
/// proxy's environment). The status annotation is removed; injecting again
/// merges into those containers, so the pod keeps one sidecar.
fn take_previous_injection(
    pod: &mut Value,
) -> Result<(Vec<String>, Map<String, Value>), InjectError> {
    let annotations = annotations_of(pod);
    let Some(text) = annotations.get(STATUS_ANNOTATION).and_then(Value::as_str) else {
        return Ok((Vec::new(), Map::new()));
    };
    let status: Value = serde_json::from_str(text).map_err(|e| {
        InjectError::annotation(STATUS_ANNOTATION, text, format!("not valid JSON: {e}"))
    })?;
    let mut names = Vec::new();
    for key in ["initContainers", "containers"] {
        for n in status
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = n.as_str() {
                names.push(n.to_string());
            }
        }
    }
    let mut previous = Map::new();
    for c in ["initContainers", "containers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
    {
        if c.get("name").and_then(Value::as_str) != Some(PROXY_CONTAINER) {
            continue;
        }
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            if e.get("name").and_then(Value::as_str) == Some(probes::APP_PROBERS_ENV)
                && let Some(Value::Object(m)) = e
                    .get("value")
                    .and_then(Value::as_str)
                    .and_then(|v| serde_json::from_str(v).ok())
            {
                previous.extend(m);
            }
        }
    }
    ensure_map(pod, &["metadata", "annotations"]).remove(STATUS_ANNOTATION);
    Ok((names, previous))
}

/// Native sidecars: injected init containers first (init step, then the
/// proxy), before the pod's own. Classic sidecars: the pod's init
/// containers first; the proxy container last, or first when the
/// application must wait for it.
fn order_containers(
    pod: &mut Value,
    added: &Added,
    native: bool,
    proxy_config: &Value,
    settings: &Settings,
) {
    let inits = ensure_list(pod, "initContainers");
    let (mut injected, mut own): (Vec<Value>, Vec<Value>) = inits.drain(..).partition(|c| {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        added.init_containers.iter().any(|n| n == name)
    });
    // Keep the template's order for injected init containers.
    injected.sort_by_key(|c| {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        added.init_containers.iter().position(|n| n == name)
    });
    for c in &mut injected {
        if c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER)
            && let Some(m) = c.as_object_mut()
        {
            m.insert("restartPolicy".into(), json!("Always"));
        }
    }
    *inits = if native {
        injected.append(&mut own);
        injected
    } else {
        own.append(&mut injected);
        own
    };
    if inits.is_empty() {
        ensure_map(pod, &["spec"]).remove("initContainers");
    }
    let hold = proxy_config
        .get("holdApplicationUntilProxyStarts")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || settings
            .values
            .pointer("/global/proxy/holdApplicationUntilProxyStarts")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let containers = ensure_list(pod, "containers");
    if let Some(i) = containers
        .iter()
        .position(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
        && added.containers.iter().any(|n| n == PROXY_CONTAINER)
    {
        let mut proxy = containers.remove(i);
        if hold && !native {
            if let Some(m) = proxy.as_object_mut() {
                let lifecycle = m.entry("lifecycle").or_insert_with(|| json!({}));
                if let Some(l) = lifecycle.as_object_mut() {
                    l.entry("postStart")
                        .or_insert_with(|| json!({"exec": {"command": ["weft-proxy", "wait"]}}));
                }
            }
            containers.insert(0, proxy);
        } else {
            containers.push(proxy);
        }
    }
}

pub(crate) fn set_proxy_env(pod: &mut Value, name: &str, value: &str) {
    for field in ["initContainers", "containers"] {
        for c in ensure_list(pod, field).iter_mut() {
            if c.get("name").and_then(Value::as_str) != Some(PROXY_CONTAINER) {
                continue;
            }
            let Some(m) = c.as_object_mut() else { continue };
            let env = m.entry("env").or_insert_with(|| json!([]));
            if let Some(env) = env.as_array_mut() {
                env.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
                env.push(json!({"name": name, "value": value}));
            }
        }
    }
    for field in ["initContainers", "containers"] {
        let list = ensure_list(pod, field);
        if list.is_empty() {
            ensure_map(pod, &["spec"]).remove(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_proxy_config;
    use serde_json::json;

    #[test]
    fn proxy_config_fields_are_type_checked() {
        assert!(
            check_proxy_config(&json!({"concurrency": 2, "holdApplicationUntilProxyStarts": true}))
                .is_ok()
        );
        let err = check_proxy_config(&json!({"interceptionMode": "MAGIC"})).unwrap_err();
        assert!(
            err.contains("interceptionMode") && err.contains("MAGIC"),
            "{err}"
        );
        assert!(check_proxy_config(&json!({"proxyMetadata": {"A": 1}})).is_err());
        assert!(check_proxy_config(&json!("text")).is_err());
    }
}
