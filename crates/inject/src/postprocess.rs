//! What Istio does to an injected pod outside its templates: Prometheus
//! scrape annotations pointing at the agent, the default-container
//! annotations, the Multus network for the CNI plugin, and the proxy's
//! environment updates.

use crate::config::Settings;
use crate::merge::{Added, ensure_map};
use crate::pod::{PROXY_CONTAINER, set_proxy_env, value_i64};
use serde_json::{Map, Value, json};

/// Point Prometheus at the agent's merged metrics, unless the pod opted out
/// of scraping or of merging; the pod's own scrape settings are handed to
/// the agent in `ISTIO_PROMETHEUS_ANNOTATIONS`.
pub(crate) fn apply_prometheus_merge(
    pod: &mut Value,
    settings: &Settings,
    annotations: &Map<String, Value>,
) {
    let enabled = settings
        .mesh
        .get("enablePrometheusMerge")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let merge_off = annotations
        .get("prometheus.istio.io/merge-metrics")
        .and_then(Value::as_str)
        == Some("false");
    let scrape = annotations
        .get("prometheus.io/scrape")
        .or_else(|| annotations.get("prometheus.io.scrape"))
        .and_then(Value::as_str);
    if !enabled || merge_off || scrape == Some("false") {
        return;
    }
    let port = value_i64(&settings.mesh, "/defaultConfig/statusPort", 15020);
    let already_merged = annotations
        .get("prometheus.io/path")
        .and_then(Value::as_str)
        == Some("/stats/prometheus")
        && annotations
            .get("prometheus.io/port")
            .and_then(Value::as_str)
            == Some(port.to_string().as_str());
    if scrape == Some("true") && !already_merged {
        let get = |k: &str| {
            annotations
                .get(&format!("prometheus.io/{k}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let mut original = Map::new();
        original.insert("scrape".into(), json!("true"));
        if let Some(p) = get("path") {
            original.insert("path".into(), json!(p));
        }
        if let Some(p) = get("port") {
            original.insert("port".into(), json!(p));
        }
        if let Some(t) = annotations
            .get("prometheus.istio.io/scrape-targets")
            .and_then(Value::as_str)
        {
            let targets: Vec<Value> = t
                .split(',')
                .filter_map(|pair| pair.trim().split_once(':'))
                .map(|(port, path)| json!({"port": port, "path": path}))
                .collect();
            if let Some(first) = targets.first() {
                original
                    .entry("path")
                    .or_insert_with(|| first["path"].clone());
                original
                    .entry("port")
                    .or_insert_with(|| first["port"].clone());
            }
            original.insert("targets".into(), json!(targets));
        }
        set_proxy_env(
            pod,
            "ISTIO_PROMETHEUS_ANNOTATIONS",
            &Value::Object(original).to_string(),
        );
    }
    let ann = ensure_map(pod, &["metadata", "annotations"]);
    ann.remove("prometheus.istio.io/scrape-targets");
    ann.insert("prometheus.io/scrape".into(), json!("true"));
    ann.insert("prometheus.io/port".into(), json!(port.to_string()));
    ann.insert("prometheus.io/path".into(), json!("/stats/prometheus"));
}

/// `kubectl.kubernetes.io/default-container` (and `-logs-`) name the first
/// application container, so `kubectl logs/exec` keep targeting the app.
pub(crate) fn apply_default_container(pod: &mut Value, added: &Added) {
    let first_app = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .find(|n| *n != PROXY_CONTAINER && !added.containers.iter().any(|a| a == n))
        })
        .map(str::to_string);
    let Some(app) = first_app else { return };
    let ann = ensure_map(pod, &["metadata", "annotations"]);
    for key in [
        "kubectl.kubernetes.io/default-container",
        "kubectl.kubernetes.io/default-logs-container",
    ] {
        ann.entry(key).or_insert_with(|| json!(app));
    }
}

/// With the Multus CNI provider, attach the `istio-cni` network.
pub(crate) fn apply_multus(pod: &mut Value, settings: &Settings, namespace: &str) {
    let cni = settings
        .values
        .pointer("/istio_cni/enabled")
        .and_then(Value::as_bool)
        == Some(true);
    let provider = settings
        .values
        .pointer("/istio_cni/provider")
        .and_then(Value::as_str);
    if !cni || provider != Some("multus") {
        return;
    }
    const KEY: &str = "k8s.v1.cni.cncf.io/networks";
    let ann = ensure_map(pod, &["metadata", "annotations"]);
    let current = ann
        .get(KEY)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    ann.insert(
        KEY.into(),
        json!(append_multus_network(&current, "istio-cni", ns)),
    );
}

/// Append `namespace/network` to a Multus networks annotation (flat list
/// or JSON list), once.
pub fn append_multus_network(current: &str, network: &str, namespace: &str) -> String {
    let qualified = format!("{namespace}/{network}");
    let trimmed = current.trim();
    if trimmed.is_empty() {
        return qualified;
    }
    if trimmed.starts_with('[') {
        if trimmed.contains(&format!("\"{network}\"")) {
            return current.to_string();
        }
        let body = trimmed.trim_end_matches(']').trim_end();
        return format!("{body}, {{\"name\": \"{network}\", \"namespace\": \"{namespace}\"}}]");
    }
    if trimmed
        .split(',')
        .any(|n| n.trim() == network || n.trim() == qualified)
    {
        return current.to_string();
    }
    format!("{current}, {qualified}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multus_networks_append_once() {
        assert_eq!(append_multus_network("", "istio-cni", "ns"), "ns/istio-cni");
        assert_eq!(
            append_multus_network("a, b", "istio-cni", "ns"),
            "a, b, ns/istio-cni"
        );
        assert_eq!(
            append_multus_network("a, ns/istio-cni", "istio-cni", "ns"),
            "a, ns/istio-cni"
        );
        assert_eq!(
            append_multus_network(r#"[{"name": "a"}]"#, "istio-cni", "ns"),
            r#"[{"name": "a"}, {"name": "istio-cni", "namespace": "ns"}]"#
        );
    }
}
