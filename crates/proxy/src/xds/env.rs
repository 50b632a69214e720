//! What the sidecar mode reads from the environment Istio's injector
//! sets on the proxy container: the node it reports to weftd and the
//! discovery address.

use std::collections::HashMap;
use weft_xds::ProxyMetadata;

/// The proxy's node metadata from the environment variables Istio's
/// injector sets on the proxy container (`POD_NAME`, `POD_NAMESPACE`,
/// `INSTANCE_IP`, `SERVICE_ACCOUNT`, `ISTIO_META_*`,
/// `ISTIO_METAJSON_LABELS`).
pub fn metadata_from_env(env: &HashMap<String, String>) -> Result<ProxyMetadata, String> {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    let mut md = ProxyMetadata {
        pod_name: get("POD_NAME"),
        namespace: get("POD_NAMESPACE"),
        service_account: get("SERVICE_ACCOUNT"),
        istio_version: env
            .get("ISTIO_META_ISTIO_VERSION")
            .cloned()
            .unwrap_or_else(|| crate::admin::VERSION.to_owned()),
        ..Default::default()
    };
    if md.namespace.is_empty() {
        md.namespace = "default".to_owned();
    }
    let ips = env
        .get("INSTANCE_IP")
        .or_else(|| env.get("ISTIO_META_INSTANCE_IPS"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    md.ips = ips
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(labels) = env.get("ISTIO_METAJSON_LABELS").filter(|s| !s.is_empty()) {
        md.labels = serde_json::from_str(labels).map_err(|e| {
            format!("ISTIO_METAJSON_LABELS: {labels:?} is not a JSON string map: {e}")
        })?;
    }
    for (k, v) in env {
        let Some(key) = k.strip_prefix("ISTIO_META_") else {
            continue;
        };
        match key {
            "WORKLOAD_NAME" => md.workload_name = v.clone(),
            "CLUSTER_ID" => md.cluster_id = v.clone(),
            "MESH_ID" => md.mesh_id = v.clone(),
            "INTERCEPTION_MODE" => md.interception_mode = v.clone(),
            "DNS_DOMAIN" => md.domain = v.clone(),
            "ISTIO_VERSION" | "INSTANCE_IPS" => {}
            other => {
                md.extra.insert(other.to_owned(), v.clone());
            }
        }
    }
    if md.cluster_id.is_empty() {
        md.cluster_id = "Kubernetes".to_owned();
    }
    if md.interception_mode.is_empty() {
        md.interception_mode = "REDIRECT".to_owned();
    }
    if md.workload_name.is_empty() {
        md.workload_name = md.pod_name.clone();
    }
    Ok(md)
}

/// The xDS address from the environment: `XDS_ADDRESS`, `PILOT_ADDRESS`,
/// or `discoveryAddress` of the `PROXY_CONFIG` JSON.
pub fn address_from_env(env: &HashMap<String, String>) -> Result<Option<String>, String> {
    for k in ["XDS_ADDRESS", "PILOT_ADDRESS"] {
        if let Some(v) = env.get(k).filter(|v| !v.is_empty()) {
            return Ok(Some(v.clone()));
        }
    }
    let Some(pc) = env.get("PROXY_CONFIG").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(pc).map_err(|e| format!("PROXY_CONFIG: not JSON ({e}): {pc:?}"))?;
    Ok(v.get("discoveryAddress")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .map(str::to_owned))
}

/// `HOST:PORT` (or a URL) as the client's URL.
pub fn address_url(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn node_from_injector_env() {
        let md = metadata_from_env(&env(&[
            ("POD_NAME", "reviews-v1-abc"),
            ("POD_NAMESPACE", "bookinfo"),
            ("INSTANCE_IP", "10.0.0.5"),
            ("SERVICE_ACCOUNT", "reviews"),
            ("ISTIO_META_WORKLOAD_NAME", "reviews-v1"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"reviews","version":"v1"}"#,
            ),
        ]))
        .unwrap();
        let node = md.to_node();
        assert_eq!(
            node.id,
            "sidecar~10.0.0.5~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(node.cluster, "reviews.bookinfo");
        let back = ProxyMetadata::from_node(&node).unwrap();
        assert_eq!(back.workload_name, "reviews-v1");
        assert_eq!(back.service_account, "reviews");
        assert_eq!(back.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(back.cluster_id, "Kubernetes");
        assert_eq!(back.interception_mode, "REDIRECT");
        assert_eq!(
            back.extra.get("DNS_CAPTURE").map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn bad_labels_json_names_the_variable() {
        let e = metadata_from_env(&env(&[("ISTIO_METAJSON_LABELS", "{nope")])).unwrap_err();
        assert!(e.starts_with("ISTIO_METAJSON_LABELS:"), "{e}");
    }

    #[test]
    fn address_from_proxy_config() {
        let e = env(&[(
            "PROXY_CONFIG",
            r#"{"discoveryAddress":"weftd.weft-system.svc:15010"}"#,
        )]);
        assert_eq!(
            address_from_env(&e).unwrap().as_deref(),
            Some("weftd.weft-system.svc:15010")
        );
        let e = env(&[("PILOT_ADDRESS", "a:1"), ("PROXY_CONFIG", "{}")]);
        assert_eq!(address_from_env(&e).unwrap().as_deref(), Some("a:1"));
        assert_eq!(address_from_env(&env(&[])).unwrap(), None);
        assert_eq!(address_url("a:1"), "http://a:1");
    }
}
