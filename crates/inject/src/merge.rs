//! Merging rendered template patches into a pod, with the semantics of
//! Kubernetes' strategic merge for the fields injection touches: containers
//! merge by name (across `containers` and `initContainers`, whose names are
//! unique within a pod), volumes and image pull secrets by name, env by
//! name, volume mounts by mount path, ports by container port. A container
//! the user already declared (e.g. their own `istio-proxy` with overrides)
//! wins over the template, field by field.

use serde_json::{Map, Value};

/// What the templates added, for the status annotation.
#[derive(Debug, Default, Clone)]
pub struct Added {
    /// Init containers added (in order).
    pub init_containers: Vec<String>,
    /// Containers added (in order).
    pub containers: Vec<String>,
    /// Volumes added.
    pub volumes: Vec<String>,
    /// Image pull secrets added.
    pub image_pull_secrets: Vec<String>,
    /// Containers the user declared that a template also declares: the
    /// user's version, kept for re-injection (`proxy.istio.io/overrides`).
    pub overridden_containers: Vec<Value>,
    /// Same for init containers.
    pub overridden_init_containers: Vec<Value>,
}

fn name_of(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or_default()
}

fn key_for(field: &str) -> Option<&'static str> {
    match field {
        "env" | "volumes" | "imagePullSecrets" | "containers" | "initContainers" => Some("name"),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Deep-merge `overlay` onto `base` (overlay wins); lists with a merge key
/// merge item by item, keeping base order and appending new items.
pub fn overlay_keyed(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match (b.get_mut(k), key_for(k)) {
                    (Some(Value::Array(existing)), Some(key)) if v.is_array() => merge_list(
                        existing,
                        v.as_array().map(Vec::as_slice).unwrap_or(&[]),
                        key,
                    ),
                    (Some(existing), _) if existing.is_object() && v.is_object() => {
                        overlay_keyed(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn merge_list(existing: &mut Vec<Value>, overlay: &[Value], key: &str) {
    for item in overlay {
        let k = item.get(key);
        match existing.iter_mut().find(|e| k.is_some() && e.get(key) == k) {
            Some(e) => overlay_keyed(e, item),
            None => existing.push(item.clone()),
        }
    }
}

/// Containers that existed before this injection.
#[derive(Debug, Default, Clone)]
pub struct Existing {
    /// Declared by the user: their fields win and they are recorded as overrides.
    pub user: Vec<String>,
    /// Added by an earlier injection: their fields win (as Istio does when
    /// injecting twice), nothing is recorded.
    pub prior: Vec<String>,
}

/// Merge one rendered template (`{metadata, spec}`) into `pod`.
pub fn apply_patch(pod: &mut Value, patch: &Value, existing: &Existing, added: &mut Added) {
    if let Some(meta) = patch.get("metadata").and_then(Value::as_object) {
        for field in ["labels", "annotations"] {
            if let Some(m) = meta.get(field).and_then(Value::as_object) {
                let target = ensure_map(pod, &["metadata", field]);
                for (k, v) in m {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let Some(pspec) = patch.get("spec").and_then(Value::as_object) else {
        return;
    };
    for (field, value) in pspec {
        match field.as_str() {
            "containers" | "initContainers" => {
                for c in value.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    merge_container(pod, field, c, existing, added);
                }
            }
            "volumes" | "imagePullSecrets" => {
                let list = ensure_list(pod, field);
                let mut front: Vec<Value> = Vec::new();
                for item in value.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    let name = name_of(item).to_string();
                    match list.iter().position(|e| name_of(e) == name) {
                        Some(i) => {
                            // A volume's source is one of many fields: the
                            // template's definition replaces the old one.
                            list.remove(i);
                            front.push(item.clone());
                        }
                        None => front.push(item.clone()),
                    }
                    let record = if field == "volumes" {
                        &mut added.volumes
                    } else {
                        &mut added.image_pull_secrets
                    };
                    if !record.contains(&name) {
                        record.push(name);
                    }
                }
                // Template entries first, then the pod's own.
                let rest = std::mem::take(list);
                *list = front;
                list.extend(rest);
            }
            _ => {
                let spec = ensure_map(pod, &["spec"]);
                match spec.get_mut(field) {
                    Some(existing) => overlay_keyed(existing, value),
                    None => {
                        spec.insert(field.clone(), value.clone());
                    }
                }
            }
        }
    }
}

fn merge_container(
    pod: &mut Value,
    field: &str,
    template: &Value,
    existing_names: &Existing,
    added: &mut Added,
) {
    let user_containers = &existing_names.user;
    let name = name_of(template).to_string();
    // Find an existing container of that name in either list.
    let mut found: Option<(String, usize, Value)> = None;
    for list_name in ["initContainers", "containers"] {
        let list = ensure_list(pod, list_name);
        if let Some(i) = list.iter().position(|c| name_of(c) == name) {
            let c = list.remove(i);
            found = Some((list_name.to_string(), i, c));
            break;
        }
    }
    let merged = match &found {
        Some((_, _, existing)) if user_containers.contains(&name) => {
            let mut user = existing.clone();
            if user.get("image").and_then(Value::as_str) == Some("auto")
                && let Some(u) = user.as_object_mut()
            {
                u.remove("image");
            }
            let mut m = template.clone();
            overlay_keyed(&mut m, &user);
            let record = if field == "initContainers" {
                &mut added.overridden_init_containers
            } else {
                &mut added.overridden_containers
            };
            if !record.iter().any(|c| name_of(c) == name) {
                record.push(existing.clone());
            }
            m
        }
        Some((_, _, existing)) if existing_names.prior.contains(&name) => {
            let mut m = template.clone();
            overlay_keyed(&mut m, existing);
            m
        }
        Some((_, _, existing)) => {
            let mut m = existing.clone();
            overlay_keyed(&mut m, template);
            m
        }
        None => template.clone(),
    };
    // The first template that declares a container decides its list (e.g.
    // the native proxy goes to initContainers, even if the user declared it
    // under containers); later templates merge into it where it is.
    let placed = added.init_containers.contains(&name) || added.containers.contains(&name);
    let field = match &found {
        Some((list_name, _, _)) if placed => list_name.as_str(),
        _ => field,
    }
    .to_string();
    let field = field.as_str();
    match found {
        Some((list_name, i, _)) if list_name == field => {
            let list = ensure_list(pod, field);
            list.insert(i.min(list.len()), merged);
        }
        _ => ensure_list(pod, field).push(merged),
    }
    // A name lives in one list only.
    added.init_containers.retain(|n| *n != name);
    added.containers.retain(|n| *n != name);
    if field == "initContainers" {
        added.init_containers.push(name);
    } else {
        added.containers.push(name);
    }
}

/// The object at `path`, created as an empty map where missing.
pub fn ensure_map<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for p in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else {
            unreachable!("just made an object")
        };
        let next = m
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        cur = next;
    }
    match cur {
        Value::Object(m) => m,
        _ => unreachable!("ensured an object"),
    }
}

/// `pod.spec[field]` as a list, created where missing.
pub fn ensure_list<'a>(pod: &'a mut Value, field: &str) -> &'a mut Vec<Value> {
    let spec = ensure_map(pod, &["spec"]);
    let entry = spec
        .entry(field.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    match entry {
        Value::Array(a) => a,
        _ => unreachable!("ensured a list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_container_fields_win_and_lists_merge_by_key() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "app"},
            {"name": "istio-proxy", "image": "auto", "resources": {"limits": {"cpu": "3"}},
             "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs"}]}
        ]}});
        let patch = json!({"spec": {"initContainers": [{"name": "istio-proxy", "image": "proxy",
            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]}});
        let mut added = Added::default();
        let existing = Existing {
            user: vec!["app".into(), "istio-proxy".into()],
            prior: vec![],
        };
        apply_patch(&mut pod, &patch, &existing, &mut added);
        assert_eq!(
            pod.pointer("/spec/containers"),
            Some(&json!([{"name": "app"}]))
        );
        assert_eq!(
            pod.pointer("/spec/initContainers/0"),
            Some(&json!({"name": "istio-proxy", "image": "proxy",
                "resources": {"limits": {"cpu": "3", "memory": "1Gi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "certs", "mountPath": "/etc/certs"}]}))
        );
        assert_eq!(added.init_containers, vec!["istio-proxy".to_string()]);
        assert_eq!(added.volumes, vec!["data".to_string()]);
        assert_eq!(added.overridden_init_containers.len(), 1);
    }
}
