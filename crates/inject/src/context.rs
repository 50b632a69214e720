//! The template context: everything a template may read about the pod, its
//! workload and the settings, plus the values the injector computes for it
//! (capture flags, images, resources, readiness settings, canonical labels).

use crate::capture::{self, CaptureInputs};
use crate::config::Settings;
use crate::error::InjectError;
use crate::pod::{
    NATIVE_SIDECAR_ANNOTATION, PROXY_CONTAINER, bool_annotation, int_annotation, value_i64,
};
use crate::resources;
use crate::workload::{self, Workload};
use serde_json::{Map, Value, json};

/// The template context (see templates/sidecar.yaml.j2 for its documentation).
pub(crate) fn build_context(
    pod: &Value,
    owner: &Workload,
    settings: &Settings,
    proxy_config: &Value,
    annotations: &Map<String, Value>,
) -> Result<Value, InjectError> {
    let values = &settings.values;
    let labels = pod
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    let empty = Vec::new();
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let user_proxy = containers
        .iter()
        .chain(
            pod.pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .unwrap_or(&empty),
        )
        .find(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER));
    let sc_num = |k: &str| -> Option<i64> {
        user_proxy.and_then(|c| {
            c.pointer(&format!("/securityContext/{k}"))
                .and_then(Value::as_i64)
        })
    };
    let proxy_uid = sc_num("runAsUser");
    let proxy_gid = sc_num("runAsGroup");

    let status_port = match int_annotation(annotations, capture::STATUS_PORT)? {
        Some(p) => p,
        None => value_i64(values, "/global/proxy/statusPort", 15020),
    };
    let capture = capture::capture_args(&CaptureInputs {
        annotations,
        values,
        proxy_config,
        status_port: &status_port.to_string(),
        proxy_uid: proxy_uid.map(|u| u.to_string()),
        proxy_gid: None,
    });
    let native = match bool_annotation(annotations, NATIVE_SIDECAR_ANNOTATION)? {
        Some(b) => b,
        None => values
            .pointer("/sidecarInjectorWebhook/nativeSidecar")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    let readiness = |ann: &str, key: &str, default: i64| -> Result<i64, InjectError> {
        Ok(int_annotation(annotations, ann)?
            .unwrap_or_else(|| value_i64(values, &format!("/global/proxy/{key}"), default)))
    };
    let mut ports = Vec::new();
    for c in containers {
        if c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER) {
            continue;
        }
        for p in c.get("ports").and_then(Value::as_array).unwrap_or(&empty) {
            if p.get("protocol").and_then(Value::as_str) == Some("UDP") {
                continue;
            }
            ports.push(p.clone());
        }
    }
    let app_containers: Vec<&str> = containers
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .filter(|n| *n != PROXY_CONTAINER)
        .collect();
    let workload_name = labels
        .get(workload::WORKLOAD_NAME_LABEL)
        .and_then(Value::as_str)
        .unwrap_or(&owner.name)
        .to_string();
    let hub = values
        .pointer("/global/hub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let tag = match values.pointer("/global/tag") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let image = |name: &str| -> String {
        if name.contains('/') {
            name.to_string()
        } else {
            format!("{hub}/{name}:{tag}")
        }
    };
    let proxy_image_name = values
        .pointer("/global/proxy/image")
        .and_then(Value::as_str)
        .unwrap_or(crate::config::DEFAULT_PROXY_IMAGE);
    let proxy_image = annotations
        .get("sidecar.istio.io/proxyImage")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| image(proxy_image_name));
    let init_image_name = values
        .pointer("/global/proxy_init/image")
        .and_then(Value::as_str)
        .unwrap_or(proxy_image_name);
    let resources = resources::proxy_resources(annotations, values);
    let trust_domain = settings
        .mesh
        .get("trustDomain")
        .and_then(Value::as_str)
        .unwrap_or("cluster.local")
        .to_string();
    let mesh_id = values
        .pointer("/global/meshID")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| trust_domain.clone());
    let istio_ns = values
        .pointer("/global/istioNamespace")
        .and_then(Value::as_str)
        .unwrap_or("istio-system");
    let ca_address = values
        .pointer("/global/caAddress")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            // weftd's Service, per revision (`weftd-canary` for revision canary).
            let rev = settings.revision.as_str();
            let suffix = if rev.is_empty() || rev == "default" {
                String::new()
            } else {
                format!("-{rev}")
            };
            format!("weftd{suffix}.{istio_ns}.svc:15012")
        });
    let user_json = |name: &str| -> Result<Value, InjectError> {
        match annotations.get(name).and_then(Value::as_str) {
            None => Ok(json!({})),
            Some(t) => serde_json::from_str::<Value>(t)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| InjectError::annotation(name, t, "expected a JSON object")),
        }
    };
    let cni = values
        .pointer("/istio_cni/enabled")
        .and_then(Value::as_bool)
        == Some(true);
    let ann_or = |name: &str, pointer: &str| -> String {
        annotations
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                values
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
    };
    let exclude_in = ann_or(
        capture::EXCLUDE_INBOUND_PORTS,
        "/global/proxy/excludeInboundPorts",
    );
    let cni_exclude_inbound = if status_port == 0
        || exclude_in
            .split(',')
            .any(|p| p.trim() == status_port.to_string())
    {
        exclude_in
    } else if exclude_in.is_empty() {
        status_port.to_string()
    } else {
        format!("{exclude_in},{status_port}")
    };
    let mut cni_include_inbound = ann_or(
        capture::INCLUDE_INBOUND_PORTS,
        "/global/proxy/includeInboundPorts",
    );
    if cni_include_inbound.is_empty() && !annotations.contains_key(capture::INCLUDE_INBOUND_PORTS) {
        cni_include_inbound = "*".to_string();
    }

    let istio_level = annotations
        .get("sidecar.istio.io/logLevel")
        .and_then(Value::as_str)
        .or_else(|| {
            values
                .pointer("/global/proxy/logLevel")
                .and_then(Value::as_str)
        })
        .unwrap_or("warning");
    // Istio's (Envoy's) level names to weft-proxy's.
    let log_level = match istio_level {
        "trace" | "debug" | "info" | "error" => istio_level,
        "warning" | "warn" => "warn",
        _ => "error",
    };
    let concurrency = proxy_config
        .get("concurrency")
        .and_then(Value::as_i64)
        .filter(|c| *c > 0)
        .unwrap_or(2);

    Ok(json!({
        "pod": {"metadata": pod.get("metadata").cloned().unwrap_or(json!({})),
                "spec": pod.get("spec").cloned().unwrap_or(json!({}))},
        "type_meta": {"apiVersion": owner.api_version, "kind": owner.kind},
        "deployment_meta": {"name": owner.name, "namespace": owner.namespace},
        "values": values,
        "mesh": settings.mesh,
        "proxy_config": proxy_config,
        "revision": settings.revision,
        "sidecar": {
            "native": native,
            "log_level": log_level,
            "concurrency": concurrency,
            "cni": cni,
            "capture": {
                "mode": capture.mode,
                "args": capture.args,
                "proxy_uid_num": proxy_uid.unwrap_or(1337),
                "proxy_gid_num": proxy_gid.unwrap_or(1337),
            },
            "cni_include_ips": ann_or(capture::INCLUDE_OUTBOUND_IP_RANGES, "/global/proxy/includeIPRanges"),
            "cni_exclude_ips": ann_or(capture::EXCLUDE_OUTBOUND_IP_RANGES, "/global/proxy/excludeIPRanges"),
            "cni_include_inbound": cni_include_inbound,
            "cni_exclude_inbound": cni_exclude_inbound,
            "status_port": status_port,
            "readiness": {
                "initialDelaySeconds": readiness("readiness.status.sidecar.istio.io/initialDelaySeconds", "readinessInitialDelaySeconds", 0)?,
                "periodSeconds": readiness("readiness.status.sidecar.istio.io/periodSeconds", "readinessPeriodSeconds", 15)?,
                "failureThreshold": readiness("readiness.status.sidecar.istio.io/failureThreshold", "readinessFailureThreshold", 4)?,
            },
            "resources": resources,
            "init_resources": resources.clone().unwrap_or(json!({})),
            "proxy_image": proxy_image,
            "init_image": image(init_image_name),
            "image_pull_policy": values.pointer("/global/imagePullPolicy").cloned().unwrap_or(json!("")),
            "pod_ports": Value::Array(ports).to_string(),
            "app_containers": app_containers.join(","),
            "workload_name": workload_name,
            "owner": if owner.api_version.is_empty() || owner.name.is_empty() { String::new() } else { owner.owner_uri() },
            "canonical_name": workload::canonical_name(&labels, &workload_name),
            "canonical_revision": workload::canonical_revision(&labels),
            "proxy_config_json": proxy_config.to_string(),
            "trust_domain": trust_domain,
            "mesh_id": mesh_id,
            "ca_address": ca_address,
            "user_volumes": user_json("sidecar.istio.io/userVolume")?,
            "user_volume_mounts": user_json("sidecar.istio.io/userVolumeMount")?,
        }
    }))
}
