//! Rewriting of application probes and lifecycle hooks to the agent's status
//! port (`/app-health/<container>/readyz|livez|startupz`,
//! `/app-lifecycle/<container>/poststartz|prestopz`), so kubelet checks keep
//! working when mTLS is enforced. The originals go to the proxy's
//! `ISTIO_KUBE_APP_PROBERS` environment variable, which the agent serves.

use serde_json::{Map, Value, json};

/// Environment variable carrying the original probes (JSON map path -> probe).
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

const PROBES: [(&str, &str, &str); 3] = [
    ("readinessProbe", "app-health", "readyz"),
    ("livenessProbe", "app-health", "livez"),
    ("startupProbe", "app-health", "startupz"),
];
const HOOKS: [(&str, &str); 2] = [("postStart", "poststartz"), ("preStop", "prestopz")];

/// Resolve a named port against the container's ports.
fn resolve_port(port: &Value, container: &Value) -> Value {
    if let Some(name) = port.as_str() {
        if let Ok(n) = name.parse::<u64>() {
            return json!(n);
        }
        if let Some(cp) = container
            .get("ports")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            })
            .and_then(|p| p.get("containerPort"))
        {
            return cp.clone();
        }
    }
    port.clone()
}

/// The original action of a probe or hook, as the agent needs it, or None
/// when it is not rewritable (exec, or nothing).
fn original_action(probe: &Value, container: &Value, with_timeout: bool) -> Option<Value> {
    let mut out = Map::new();
    if let Some(http) = probe.get("httpGet").and_then(Value::as_object) {
        let mut h = http.clone();
        if let Some(p) = h.get("port").cloned() {
            h.insert("port".to_string(), resolve_port(&p, container));
        }
        out.insert("httpGet".to_string(), Value::Object(h));
    } else if let Some(tcp) = probe.get("tcpSocket").and_then(Value::as_object) {
        let mut t = tcp.clone();
        if let Some(p) = t.get("port").cloned() {
            t.insert("port".to_string(), resolve_port(&p, container));
        }
        out.insert("tcpSocket".to_string(), Value::Object(t));
    } else if let Some(grpc) = probe.get("grpc") {
        out.insert("grpc".to_string(), grpc.clone());
    } else {
        return None;
    }
    if with_timeout && let Some(t) = probe.get("timeoutSeconds") {
        out.insert("timeoutSeconds".to_string(), t.clone());
    }
    Some(Value::Object(out))
}

fn is_already_rewritten(probe: &Value, status_port: u16) -> Option<String> {
    let http = probe.get("httpGet")?;
    let path = http.get("path")?.as_str()?;
    let port = http.get("port")?.as_u64()?;
    (port == u64::from(status_port)
        && (path.starts_with("/app-health/") || path.starts_with("/app-lifecycle/")))
    .then(|| path.to_string())
}

fn rewritten_http(probe: &Value, path: &str, status_port: u16) -> Value {
    let mut http = Map::new();
    http.insert("path".to_string(), json!(path));
    http.insert("port".to_string(), json!(status_port));
    if probe.pointer("/httpGet/scheme").is_some() {
        http.insert("scheme".to_string(), json!("HTTP"));
    }
    Value::Object(http)
}

/// Rewrite the probes and lifecycle hooks of the application containers in
/// `spec.containers` (every container except `skip`). `previous` holds the
/// originals recorded by an earlier injection. Returns the map for
/// `ISTIO_KUBE_APP_PROBERS` (empty when nothing was rewritten).
pub fn rewrite_app_probes(
    spec: &mut Value,
    status_port: u16,
    skip: &[&str],
    previous: &Map<String, Value>,
) -> Map<String, Value> {
    let mut probers: Map<String, Value> = Map::new();
    for field in ["initContainers", "containers"] {
        let Some(list) = spec.get_mut(field).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in list.iter_mut() {
            // Of the init containers only native sidecars run alongside the app.
            if field == "initContainers"
                && container.get("restartPolicy").and_then(Value::as_str) != Some("Always")
            {
                continue;
            }
            rewrite_container(container, status_port, skip, previous, &mut probers);
        }
    }
    probers.sort_keys();
    probers
}

fn rewrite_container(
    container: &mut Value,
    status_port: u16,
    skip: &[&str],
    previous: &Map<String, Value>,
    probers: &mut Map<String, Value>,
) {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if skip.contains(&name.as_str()) {
        return;
    }
    let snapshot = container.clone();
    for (field, prefix, suffix) in PROBES {
        let path = format!("/{prefix}/{name}/{suffix}");
        let Some(probe) = container.get_mut(field) else {
            continue;
        };
        if let Some(old) = is_already_rewritten(probe, status_port) {
            if let Some(orig) = previous.get(&old) {
                probers.insert(path, orig.clone());
            }
            continue;
        }
        let Some(orig) = original_action(probe, &snapshot, true) else {
            continue;
        };
        let http = rewritten_http(probe, &path, status_port);
        if let Some(p) = probe.as_object_mut() {
            p.remove("tcpSocket");
            p.remove("grpc");
            p.insert("httpGet".to_string(), http);
        }
        probers.insert(path, orig);
    }
    let Some(lifecycle) = container.get_mut("lifecycle") else {
        return;
    };
    for (hook, suffix) in HOOKS {
        let path = format!("/app-lifecycle/{name}/{suffix}");
        let Some(handler) = lifecycle.get_mut(hook) else {
            continue;
        };
        if let Some(old) = is_already_rewritten(handler, status_port) {
            if let Some(orig) = previous.get(&old) {
                probers.insert(path, orig.clone());
            }
            continue;
        }
        let Some(orig) = original_action(handler, &snapshot, false) else {
            continue;
        };
        let http = json!({"path": path, "port": status_port});
        if let Some(h) = handler.as_object_mut() {
            h.remove("tcpSocket");
            h.insert("httpGet".to_string(), http);
        }
        probers.insert(path, orig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_http_tcp_and_named_ports() {
        let mut spec = json!({"containers": [{
            "name": "app",
            "ports": [{"name": "http", "containerPort": 80}],
            "livenessProbe": {"httpGet": {"port": "http", "path": "/live"}, "timeoutSeconds": 2},
            "readinessProbe": {"tcpSocket": {"port": 3333}},
            "startupProbe": {"exec": {"command": ["true"]}}
        }, {"name": "istio-proxy", "readinessProbe": {"httpGet": {"port": 15021}}}]});
        let probers = rewrite_app_probes(&mut spec, 15020, &["istio-proxy"], &Map::new());
        assert_eq!(
            Value::Object(probers),
            json!({
                "/app-health/app/livez": {"httpGet": {"port": 80, "path": "/live"}, "timeoutSeconds": 2},
                "/app-health/app/readyz": {"tcpSocket": {"port": 3333}}
            })
        );
        assert_eq!(
            spec.pointer("/containers/0/livenessProbe"),
            Some(
                &json!({"httpGet": {"path": "/app-health/app/livez", "port": 15020}, "timeoutSeconds": 2})
            )
        );
        assert_eq!(
            spec.pointer("/containers/0/readinessProbe"),
            Some(&json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020}}))
        );
        assert_eq!(
            spec.pointer("/containers/1/readinessProbe/httpGet/port"),
            Some(&json!(15021))
        );
    }
}
