//! One container of a planned pod: its command line (via [`crate::image`]),
//! environment (values and the downward API), user, ports and readiness
//! probe, with Istio's probe rewriting undone so the runtime can play the
//! agent's part (probing the app on localhost). Pure.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::image::{self, Argv};

/// Istio's env var holding the original probes of rewritten ones.
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Where a container stands in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs to completion before anything else (e.g. `istio-init`).
    Init,
    /// A native sidecar (an init container with `restartPolicy: Always`,
    /// e.g. `istio-proxy`): started before the app, restarted when it exits.
    Sidecar,
    /// An app container.
    App,
}

/// An environment value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// Known at plan time.
    Literal(String),
    /// `status.podIP`.
    PodIp,
    /// `status.podIPs`.
    PodIps,
    /// `status.hostIP` (the node bridge's address).
    HostIp,
}

/// A planned container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// The container's name.
    pub name: String,
    /// Its image (for messages).
    pub image: String,
    /// What runs.
    pub argv: Argv,
    /// Environment, in order (later entries may use `$(EARLIER)`).
    pub env: Vec<(String, EnvValue)>,
    /// `securityContext.runAsUser`/`runAsGroup` (pod-level as fallback).
    pub run_as: Option<(u32, u32)>,
    /// The readiness probe, with Istio's rewrite undone.
    pub readiness: Option<Probe>,
    /// Where it stands in the pod.
    pub role: Role,
}

/// A readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What is checked.
    pub action: ProbeAction,
    /// Seconds before the first probe.
    pub initial_delay_s: u32,
    /// Seconds between probes.
    pub period_s: u32,
    /// Seconds before one probe counts as failed.
    pub timeout_s: u32,
    /// Consecutive failures that make the container unready.
    pub failure_threshold: u32,
}

/// What a probe checks, on the pod's localhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET path` answered 200..400.
    Http {
        /// The port.
        port: u16,
        /// The path.
        path: String,
    },
    /// A TCP connection is accepted.
    Tcp {
        /// The port.
        port: u16,
    },
    /// A command exits 0 (run inside the pod).
    Exec {
        /// The command line.
        command: Vec<String>,
    },
}

/// Facts about the pod a container's environment may refer to.
pub(crate) struct PodFacts<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub node_name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub pod_annotations_json: &'a Map<String, Value>,
    /// Original probes of rewritten ones (`ISTIO_KUBE_APP_PROBERS`).
    pub app_probers: &'a Map<String, Value>,
}

/// Plans one container; errors are `(field relative to the container, message)`.
pub(crate) fn plan_container(
    c: &Value,
    role: Role,
    pod_security: Option<&Value>,
    facts: &PodFacts<'_>,
) -> Result<ContainerPlan, (String, String)> {
    let name = c
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ("name".to_owned(), "missing".to_owned()))?
        .to_owned();
    let argv = image::map_container(c, facts.pod_annotations_json)?;
    let mut env = Vec::new();
    for (i, e) in c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("env[{i}]");
        let key = e
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| (format!("{field}.name"), "missing".to_owned()))?;
        env.push((key.to_owned(), env_value(e, facts).map_err(|m| (field, m))?));
    }
    if c.get("envFrom").is_some() {
        return Err((
            "envFrom".into(),
            "ConfigMaps and Secrets are not available in the local mesh; use env values".into(),
        ));
    }
    let uid = |key: &str| -> Result<Option<u32>, (String, String)> {
        let v = c
            .pointer(&format!("/securityContext/{key}"))
            .or_else(|| pod_security.and_then(|s| s.get(key)));
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    (
                        format!("securityContext.{key}"),
                        format!("expected a user/group id, found {v}"),
                    )
                }),
        }
    };
    let run_as = match (uid("runAsUser")?, uid("runAsGroup")?) {
        (None, None) | (Some(0), None | Some(0)) => None,
        (Some(u), g) => Some((u, g.unwrap_or(u))),
        (None, Some(g)) => Some((0, g)),
    };
    let readiness = match c.get("readinessProbe") {
        None | Some(Value::Null) => None,
        Some(p) => Some(
            probe(p, c, facts.app_probers).map_err(|(f, m)| (format!("readinessProbe{f}"), m))?,
        ),
    };
    Ok(ContainerPlan {
        name,
        image: c
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        argv,
        env,
        run_as,
        readiness,
        role,
    })
}

fn env_value(e: &Value, facts: &PodFacts<'_>) -> Result<EnvValue, String> {
    if let Some(v) = e.get("value") {
        return Ok(EnvValue::Literal(match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }));
    }
    let Some(from) = e.get("valueFrom") else {
        return Ok(EnvValue::Literal(String::new()));
    };
    if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
        let map_key = |prefix: &str| -> Option<String> {
            let rest = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(rest.to_owned())
        };
        let literal = |s: &str| Ok(EnvValue::Literal(s.to_owned()));
        return match path {
            "metadata.name" => literal(facts.name),
            "metadata.namespace" => literal(facts.namespace),
            "spec.serviceAccountName" => literal(facts.service_account),
            "spec.nodeName" => literal(facts.node_name),
            "status.podIP" => Ok(EnvValue::PodIp),
            "status.podIPs" => Ok(EnvValue::PodIps),
            "status.hostIP" | "status.hostIPs" => Ok(EnvValue::HostIp),
            "metadata.labels" => literal(&kv_lines(facts.labels)),
            "metadata.annotations" => literal(&kv_lines(facts.annotations)),
            _ => {
                if let Some(k) = map_key("metadata.labels['") {
                    literal(facts.labels.get(&k).map_or("", String::as_str))
                } else if let Some(k) = map_key("metadata.annotations['") {
                    literal(facts.annotations.get(&k).map_or("", String::as_str))
                } else {
                    Err(format!(
                        "valueFrom.fieldRef.fieldPath: {path:?} is not a downward API field"
                    ))
                }
            }
        };
    }
    if let Some(res) = from
        .pointer("/resourceFieldRef/resource")
        .and_then(Value::as_str)
    {
        // No resource limits are enforced locally: report what Kubernetes
        // reports for an unlimited container (the node's capacity).
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        return match res {
            "limits.cpu" | "requests.cpu" => Ok(EnvValue::Literal(cpus.to_string())),
            "limits.memory" | "requests.memory" => Ok(EnvValue::Literal("0".into())),
            other => Err(format!(
                "valueFrom.resourceFieldRef.resource: {other:?} is not supported"
            )),
        };
    }
    Err(
        "valueFrom: only fieldRef and resourceFieldRef work in the local mesh \
         (there are no ConfigMaps or Secrets); use a value"
            .into(),
    )
}

/// The downward API's `key="value"` lines.
fn kv_lines(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn probe(
    p: &Value,
    container: &Value,
    app_probers: &Map<String, Value>,
) -> Result<Probe, (String, String)> {
    let num = |key: &str, default: u32| -> u32 {
        p.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default)
    };
    // Istio rewrote the probe to the agent (`/app-health/NAME/readyz` on
    // 15020): the original lives in ISTIO_KUBE_APP_PROBERS.
    let mut action_src = p.clone();
    if let Some(path) = p.pointer("/httpGet/path").and_then(Value::as_str)
        && path.starts_with("/app-health/")
        && let Some(original) = app_probers.get(path)
    {
        action_src = original.clone();
    }
    let action = if let Some(h) = action_src.get("httpGet") {
        ProbeAction::Http {
            port: port(h.get("port"), container).map_err(|m| (".httpGet.port".into(), m))?,
            path: h
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_owned(),
        }
    } else if let Some(t) = action_src.get("tcpSocket") {
        ProbeAction::Tcp {
            port: port(t.get("port"), container).map_err(|m| (".tcpSocket.port".into(), m))?,
        }
    } else if let Some(e) = action_src.get("exec") {
        let command: Vec<String> = e
            .get("command")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if command.is_empty() {
            return Err((".exec.command".into(), "missing or empty".into()));
        }
        ProbeAction::Exec { command }
    } else {
        return Err((
            String::new(),
            "needs httpGet, tcpSocket or exec (grpc probes are not supported locally)".into(),
        ));
    };
    Ok(Probe {
        action,
        initial_delay_s: num("initialDelaySeconds", 0),
        // Kubernetes' 10 s default period makes a local mesh feel stuck.
        period_s: num("periodSeconds", 1).clamp(1, 10),
        timeout_s: num("timeoutSeconds", 1).max(1),
        failure_threshold: num("failureThreshold", 3).max(1),
    })
}

/// A probe port: a number, or the name of one of the container's ports.
fn port(v: Option<&Value>, container: &Value) -> Result<u16, String> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{n} is not a port")),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("{name:?} names no port of the container"))
        }
        _ => Err("missing".into()),
    }
}

/// Expands `$(VAR)` in `s` with `env` (Kubernetes' rule: unknown
/// references stay as written, `$$` escapes a `$`).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x".to_owned()),
        ];
        assert_eq!(expand("$(A)-$(B)-$(C)", &env), "1-x-$(C)");
        assert_eq!(expand("$$(A) $ end", &env), "$(A) $ end");
    }
}
