//! Helpers of the conformance tests: Istio test settings translated to
//! Weft settings, and the comparison "in meaning" of two documents.

use serde_json::{Map, Value};
use std::path::Path;
use weft_inject::Settings;
use weft_inject::config::merge_into;
use weft_inject::objects::pod_template_pointer;

/// Istio's `custom` template of `custom-template.iop.yaml`, in Weft's template syntax.
const CUSTOM_TEMPLATE: &str = r#"
metadata:
  annotations:
    prometheus.istio.io/merge-metrics: "false"
    sidecar.istio.io/rewriteAppHTTPProbers: "false"
    foo: bar
spec:
  containers:
  {%- for c in pod.spec.containers %}
  - name: {{ c.name | tojson }}
    env:
    - name: SOME_ENV
      value: "true"
    - name: SOME_FILE
      value: /var/lib/data/foo.json
    volumeMounts:
    - mountPath: /var/lib/data/foo.json
      subPath: foo.json
      name: some-injected-file
  {%- endfor %}
  volumes:
  - name: some-injected-file
    downwardAPI:
      items:
      - path: foo.json
        fieldRef:
          fieldPath: "metadata.annotations['foo']"
"#;

/// Settings for a case: `{"values": {...}, "mesh": {...}, "iop": FILE, "custom_template": true}`.
pub fn settings_for(spec: &Value, dir: &Path) -> Settings {
    let mut s = Settings::default();
    if let Some(file) = spec.get("iop").and_then(Value::as_str) {
        let text = std::fs::read_to_string(dir.join(file)).expect("iop file");
        let mut iop: Value = serde_yaml::from_str(&text).expect("iop yaml");
        // Istio's templates in values are Go templates; Weft's are minijinja.
        // The custom one is translated above; others are not used by the
        // cases' outputs (hello-template-in-values shows no DNS config).
        if let Some(m) = iop
            .pointer_mut("/spec/values/sidecarInjectorWebhook")
            .and_then(Value::as_object_mut)
        {
            m.remove("templates");
        }
        if let Some(v) = iop.pointer_mut("/spec/values/global/podDNSSearchNamespaces") {
            *v = Value::Null;
        }
        s.merge_operator(&iop).expect("iop applies");
    }
    if let Some(v) = spec.get("values") {
        merge_into(&mut s.values, v);
    }
    if let Some(m) = spec.get("mesh") {
        merge_into(&mut s.mesh, m);
    }
    if spec.get("custom_template").is_some() {
        s.config
            .templates
            .insert("custom".into(), CUSTOM_TEMPLATE.into());
    }
    s
}

fn canonical_quantity(q: &str) -> String {
    if let Some(n) = q.strip_suffix('m').and_then(|n| n.parse::<u64>().ok())
        && n % 1000 == 0
    {
        return (n / 1000).to_string();
    }
    q.to_string()
}

/// Drop nulls and empty maps/lists (Go's serializer emits `resources: {}`,
/// `status: {}`, `creationTimestamp: null`), keep `emptyDir: {}`, and
/// canonicalize resource quantities.
pub fn normalize(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if let Some(n) = normalize(v, k) {
                    let n = match (key, &n) {
                        ("requests" | "limits", Value::String(s)) => {
                            Value::String(canonical_quantity(s))
                        }
                        _ => n,
                    };
                    out.insert(k.clone(), n);
                }
            }
            if out.is_empty() && key != "emptyDir" {
                None
            } else {
                Some(Value::Object(out))
            }
        }
        Value::Array(a) => {
            let out: Vec<Value> = a.iter().filter_map(|v| normalize(v, "")).collect();
            if out.is_empty() {
                None
            } else {
                Some(Value::Array(out))
            }
        }
        other => Some(other.clone()),
    }
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn capture_flags(c: &Value) -> Vec<String> {
    c.get("args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .enumerate()
                .filter(|(i, s)| !(*i == 0 && (*s == "istio-iptables" || *s == "iptables")))
                .map(|(_, s)| s.to_string())
                .filter(|s| !s.starts_with("--log_output_level"))
                // CNI mode: Istio validates (--run-validation --skip-rule-apply),
                // weft-proxy prints the rules (--dry-run); see DEVIATIONS.
                .filter(|s| {
                    !matches!(
                        s.as_str(),
                        "--run-validation" | "--skip-rule-apply" | "--dry-run"
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const INJECTED: [&str; 4] = [
    "istio-proxy",
    "istio-init",
    "istio-validation",
    "enable-core-dump",
];
const INJECTED_FIELDS: [&str; 9] = [
    "name",
    "ports",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "securityContext",
    "resources",
    "restartPolicy",
    "volumeMounts",
];

fn check(diffs: &mut Vec<String>, what: &str, got: Option<&Value>, want: Option<&Value>) {
    if got != want {
        diffs.push(format!(
            "{what}: got {} want {}",
            got.map(Value::to_string).unwrap_or("-".into()),
            want.map(Value::to_string).unwrap_or("-".into())
        ));
    }
}

fn pick(v: &Value, fields: &[&str]) -> Value {
    let mut m = Map::new();
    for f in fields {
        if let Some(x) = v.get(*f) {
            m.insert(f.to_string(), x.clone());
        }
    }
    Value::Object(m)
}

fn compare_pod(got: &Value, want: &Value, limited: bool, diffs: &mut Vec<String>) {
    let status = |p: &Value| {
        p.pointer("/metadata/annotations/sidecar.istio.io~1status")
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
    };
    let (gs, ws) = (status(got), status(want));
    if gs.is_some() != ws.is_some() {
        diffs.push(format!(
            "injected: got {} want {}",
            gs.is_some(),
            ws.is_some()
        ));
        return;
    }
    for field in ["initContainers", "containers"] {
        if limited && field == "containers" {
            continue;
        }
        let (g, w) = (names(got, field), names(want, field));
        if g != w {
            diffs.push(format!("{field}: got {g:?} want {w:?}"));
        }
    }
    if limited || !diffs.is_empty() {
        return;
    }
    check(
        diffs,
        "labels",
        got.pointer("/metadata/labels"),
        want.pointer("/metadata/labels"),
    );
    let mut ga = got
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or(Value::Null);
    let mut wa = want
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or(Value::Null);
    for a in [&mut ga, &mut wa] {
        if let Some(m) = a.as_object_mut() {
            m.remove("sidecar.istio.io/status");
            // Compare which containers were kept as overrides, not their text.
            if let Some(o) = m.get("proxy.istio.io/overrides").and_then(Value::as_str) {
                let o: Value = serde_json::from_str(o).unwrap_or(Value::Null);
                let keep = ["initContainers", "containers"].map(|f| {
                    (
                        f,
                        o.get(f)
                            .and_then(Value::as_array)
                            .map(|a| a.iter().map(|c| c["name"].clone()).collect::<Vec<_>>()),
                    )
                });
                m.insert(
                    "proxy.istio.io/overrides".into(),
                    serde_json::json!(format!("{keep:?}")),
                );
            }
        }
    }
    check(diffs, "annotations", Some(&ga), Some(&wa));
    check(diffs, "status annotation", gs.as_ref(), ws.as_ref());
    let mut gspec = got.get("spec").cloned().unwrap_or(Value::Null);
    let mut wspec = want.get("spec").cloned().unwrap_or(Value::Null);
    for spec in [&mut gspec, &mut wspec] {
        if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            for v in vols {
                if v.as_object().is_some_and(|m| m.len() == 1) {
                    v["emptyDir"] = serde_json::json!({});
                }
            }
        }
    }
    for field in ["initContainers", "containers"] {
        let empty = Vec::new();
        let gl = gspec
            .get(field)
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .clone();
        let wl = wspec
            .get(field)
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .clone();
        for (g, w) in gl.iter().zip(&wl) {
            let name = w["name"].as_str().unwrap_or_default();
            if INJECTED.contains(&name) {
                check(
                    diffs,
                    &format!("{field}[{name}]"),
                    Some(&pick(g, &INJECTED_FIELDS)),
                    Some(&pick(w, &INJECTED_FIELDS)),
                );
                if name != "istio-proxy" {
                    let (gf, wf) = (capture_flags(g), capture_flags(w));
                    if gf != wf {
                        diffs.push(format!("{name} flags: got {gf:?} want {wf:?}"));
                    }
                }
            } else {
                check(diffs, &format!("{field}[{name}]"), Some(g), Some(w));
            }
        }
        for spec in [&mut gspec, &mut wspec] {
            if let Some(m) = spec.as_object_mut() {
                m.remove(field);
            }
        }
    }
    check(diffs, "pod spec (other fields)", Some(&gspec), Some(&wspec));
}

/// Compare Weft's document with Istio's. `limited`: only the decision and
/// the container layout (see DEVIATIONS).
pub fn compare_documents(got: &Value, want: &Value, limited: bool) -> Result<(), Vec<String>> {
    let got = normalize(got, "").unwrap_or(Value::Null);
    let mut want = normalize(want, "").unwrap_or(Value::Null);
    cronjob_metadata_to_pod(&mut want);
    let mut diffs = Vec::new();
    let kind = want.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" {
        let empty = Vec::new();
        let gi = got.get("items").and_then(Value::as_array).unwrap_or(&empty);
        let wi = want
            .get("items")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        if gi.len() != wi.len() {
            return Err(vec![format!(
                "List: {} items, Istio has {}",
                gi.len(),
                wi.len()
            )]);
        }
        for (i, (g, w)) in gi.iter().zip(wi).enumerate() {
            if let Err(d) = compare_documents(g, w, limited) {
                diffs.extend(d.into_iter().map(|d| format!("items[{i}]: {d}")));
            }
        }
        return if diffs.is_empty() { Ok(()) } else { Err(diffs) };
    }
    match pod_template_pointer(kind) {
        None => check(&mut diffs, "object", Some(&got), Some(&want)),
        Some(ptr) => {
            let empty = Value::Null;
            let gp = if ptr.is_empty() {
                &got
            } else {
                got.pointer(ptr).unwrap_or(&empty)
            };
            let wp = if ptr.is_empty() {
                &want
            } else {
                want.pointer(ptr).unwrap_or(&empty)
            };
            compare_pod(gp, wp, limited, &mut diffs);
            if !ptr.is_empty() {
                let (mut go, mut wo) = (got.clone(), want.clone());
                *go.pointer_mut(ptr).expect("template") = Value::Null;
                if let Some(slot) = wo.pointer_mut(ptr) {
                    *slot = Value::Null;
                }
                check(
                    &mut diffs,
                    "workload fields",
                    Some(&workload_fields(&go)),
                    Some(&workload_fields(&wo)),
                );
            } else {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("spec");
                        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                            md.remove("labels");
                            md.remove("annotations");
                        }
                    }
                    v
                };
                check(
                    &mut diffs,
                    "pod fields",
                    Some(&strip(&got)),
                    Some(&strip(&want)),
                );
            }
        }
    }
    if diffs.is_empty() { Ok(()) } else { Err(diffs) }
}

/// Istio writes a CronJob's injected labels and annotations to
/// `spec.jobTemplate.metadata`, where they never reach the pods; Weft puts
/// them on the pod template. Compare Istio's metadata where it belongs.
fn cronjob_metadata_to_pod(want: &mut Value) {
    if want.get("kind").and_then(Value::as_str) != Some("CronJob") {
        return;
    }
    let Some(meta) = want.pointer("/spec/jobTemplate/metadata").cloned() else {
        return;
    };
    if let Some(jt) = want
        .pointer_mut("/spec/jobTemplate")
        .and_then(Value::as_object_mut)
    {
        jt.remove("metadata");
    }
    if let Some(t) = want
        .pointer_mut("/spec/jobTemplate/spec/template")
        .and_then(Value::as_object_mut)
    {
        let slot = t
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        merge_into(slot, &meta);
    }
}

/// The workload's own fields, without what Go's typed serializer invents
/// (`status` with zero counters, `false`/`0` defaults such as `test: false`).
fn workload_fields(v: &Value) -> Value {
    fn strip(v: &Value) -> Option<Value> {
        match v {
            Value::Bool(false) => None,
            Value::Number(n) if n.as_f64() == Some(0.0) => None,
            Value::Object(m) => Some(Value::Object(
                m.iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k.clone(), v)))
                    .collect(),
            )),
            other => Some(other.clone()),
        }
    }
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    strip(&v).unwrap_or(Value::Null)
}
