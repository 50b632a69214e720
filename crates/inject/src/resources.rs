//! The proxy's compute resources: from the pod's `sidecar.istio.io/proxyCPU`,
//! `proxyMemory`, `proxyCPULimit`, `proxyMemoryLimit` annotations when any
//! is set, else from `global.proxy.resources` (entries set to null dropped).

use crate::error::InjectError;
use serde_json::{Map, Value, json};

/// CPU request annotation.
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
/// Memory request annotation.
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
/// CPU limit annotation.
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
/// Memory limit annotation.
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";

const SUFFIXES: [&str; 14] = [
    "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
];

/// Whether `s` is a Kubernetes resource quantity (`100m`, `1.5Gi`, `1e3`).
pub fn is_quantity(s: &str) -> bool {
    let s = s.trim();
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(digits_end);
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        return false;
    }
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    // Decimal exponent: e3, E-2.
    let exp = suffix.strip_prefix(['e', 'E']);
    exp.is_some_and(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    })
}

/// Reject resource annotations that are not quantities.
pub fn validate_annotations(annotations: &Map<String, Value>) -> Result<(), InjectError> {
    for name in [PROXY_CPU, PROXY_MEMORY, PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT] {
        if let Some(v) = annotations.get(name).and_then(Value::as_str)
            && !is_quantity(v)
        {
            return Err(InjectError::annotation(
                name,
                v,
                "not a resource quantity (e.g. 100m, 128Mi)",
            ));
        }
    }
    Ok(())
}

fn drop_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), drop_nulls(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The proxy container's `resources`, or None when there are none to set.
pub fn proxy_resources(annotations: &Map<String, Value>, values: &Value) -> Option<Value> {
    let get = |n: &str| annotations.get(n).and_then(Value::as_str);
    if [PROXY_CPU, PROXY_MEMORY, PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT]
        .iter()
        .any(|n| get(n).is_some())
    {
        let mut out = Map::new();
        for (key, cpu, mem) in [
            ("requests", PROXY_CPU, PROXY_MEMORY),
            ("limits", PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT),
        ] {
            let mut m = Map::new();
            if let Some(c) = get(cpu) {
                m.insert("cpu".into(), json!(c));
            }
            if let Some(c) = get(mem) {
                m.insert("memory".into(), json!(c));
            }
            if !m.is_empty() {
                out.insert(key.into(), Value::Object(m));
            }
        }
        return Some(Value::Object(out));
    }
    values
        .pointer("/global/proxy/resources")
        .filter(|r| r.is_object())
        .map(drop_nulls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["100m", "1", "1.5Gi", "2Gi", "1e3", "0", "4000m"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "bad", "1.2.3", "10Q", "m"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn annotations_win_and_nulls_drop() {
        let a = json!({PROXY_CPU: "4000m"});
        assert_eq!(
            proxy_resources(a.as_object().expect("map"), &json!({})),
            Some(json!({"requests": {"cpu": "4000m"}}))
        );
        let values =
            json!({"global": {"proxy": {"resources": {"limits": {"cpu": null, "memory": "1Gi"}}}}});
        assert_eq!(
            proxy_resources(&Map::new(), &values),
            Some(json!({"limits": {"memory": "1Gi"}}))
        );
    }
}
