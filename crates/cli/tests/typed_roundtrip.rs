//! Every conformance input, injected by the real `weft kube-inject` binary,
//! parses into the typed Kubernetes objects of `k8s-openapi` with no field
//! lost: serializing the typed object back gives the same document.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../inject/tests/conformance")
}

/// The custom template of Istio's `custom-template` case, in Weft's syntax.
const CUSTOM_INJECT_CONFIG: &str = r#"
templates:
  custom: |
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
        - {name: SOME_ENV, value: "true"}
        volumeMounts:
        - {mountPath: /var/lib/data/foo.json, subPath: foo.json, name: some-injected-file}
      {%- endfor %}
      volumes:
      - name: some-injected-file
        downwardAPI:
          items:
          - path: foo.json
            fieldRef: {fieldPath: "metadata.annotations['foo']"}
"#;

/// Paths where two documents differ. A null field carries no data (the
/// input's `creationTimestamp: null`), so nulls count as absent.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let w = y.get(k).unwrap_or(&Value::Null);
                differences(v, w, &format!("{path}.{k}"), out);
            }
            for (k, w) in y {
                if !x.contains_key(k) && !w.is_null() {
                    out.push(format!("{path}.{k}: missing on one side, other has {w}"));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (x, y) if x == y => {}
        (x, y) => out.push(format!("{path}: {x} vs {y}")),
    }
}

/// Deserialize into `T` and serialize back; the result must equal the input.
fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value, what: &str) {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse as a typed object: {e}\n{v:#}"));
    let back = serde_json::to_value(&typed).expect("serialize typed");
    let mut diffs = Vec::new();
    differences(v, &back, "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what}: fields lost or changed in the typed round trip (input vs typed):\n{}",
        diffs.join("\n")
    );
}

fn check_typed(doc: &Value, what: &str) {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "Deployment" => roundtrip::<apps::Deployment>(doc, what),
        "StatefulSet" => roundtrip::<apps::StatefulSet>(doc, what),
        "DaemonSet" => roundtrip::<apps::DaemonSet>(doc, what),
        "ReplicaSet" => roundtrip::<apps::ReplicaSet>(doc, what),
        "ReplicationController" => roundtrip::<core::ReplicationController>(doc, what),
        "Job" => roundtrip::<batch::Job>(doc, what),
        "CronJob" => roundtrip::<batch::CronJob>(doc, what),
        "Pod" => roundtrip::<core::Pod>(doc, what),
        "Service" => roundtrip::<core::Service>(doc, what),
        "List" => {
            for (i, item) in doc["items"].as_array().expect("items").iter().enumerate() {
                check_typed(item, &format!("{what} items[{i}]"));
            }
        }
        // OpenShift's DeploymentConfig is not in k8s-openapi: check its pod template.
        "DeploymentConfig" => roundtrip::<core::PodTemplateSpec>(&doc["spec"]["template"], what),
        other => panic!("{what}: no typed check for kind {other}"),
    }
}

/// The init container's command line must be accepted and validated by the
/// real `weft-proxy iptables` flag parser.
fn check_capture_args(doc: &Value, what: &str) {
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                let is_init = m.get("command") == Some(&serde_json::json!(["weft-proxy"]))
                    && m.get("args").and_then(|a| a.get(0)).and_then(Value::as_str)
                        == Some("iptables");
                if is_init {
                    let args: Vec<&str> = m["args"]
                        .as_array()
                        .expect("args")
                        .iter()
                        .skip(1)
                        .map(|a| a.as_str().expect("string arg"))
                        .collect();
                    let parsed = weft_capture::cli::IptablesArgs::parse_from_iter(
                        args.iter()
                            .copied()
                            .chain(["--ipv6=false", "--dns-servers", ""]),
                    )
                    .unwrap_or_else(|e| {
                        panic!("{what}: weft-proxy iptables rejects {args:?}: {e}")
                    });
                    parsed
                        .to_config(&weft_capture::CaptureEnv::default())
                        .unwrap_or_else(|e| {
                            panic!("{what}: weft-proxy iptables refuses {args:?}: {e}")
                        });
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
}

fn kube_inject(input: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("kube-inject")
        .arg("-f")
        .arg(input)
        .args(extra)
        .output()
        .expect("run weft")
}

#[test]
fn every_conformance_output_parses_into_typed_objects_without_loss() {
    let dir = conformance_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let custom = tmp.path().join("inject-config.yaml");
    std::fs::write(&custom, CUSTOM_INJECT_CONFIG).expect("write config");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("conformance dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && !n.ends_with(".iop.yaml"))
        .collect();
    names.sort();
    let mut checked = 0;
    for name in names {
        let input = dir.join(&name);
        let extra: Vec<&str> = if name == "custom-template.yaml" {
            vec!["--injectConfigFile", custom.to_str().expect("utf-8 path")]
        } else {
            vec![]
        };
        let out = kube_inject(&input, &extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if name.starts_with("traffic-annotations-bad-") || name.starts_with("grpc-") {
            assert!(!out.status.success(), "{name} must be rejected");
            assert!(
                stderr.contains(&name),
                "{name}: error must name the file: {stderr}"
            );
            assert!(
                out.stdout.is_empty(),
                "{name}: nothing on stdout after an error"
            );
            continue;
        }
        assert!(out.status.success(), "{name}: {stderr}");
        let text = String::from_utf8(out.stdout).expect("utf-8 output");
        let docs = weft_inject::parse_stream(&text).expect("output is YAML");
        assert!(!docs.is_empty(), "{name}: empty output");
        for (i, doc) in docs.iter().enumerate() {
            check_typed(doc, &format!("{name} doc {i}"));
            check_capture_args(doc, &format!("{name} doc {i}"));
            checked += 1;
        }
    }
    assert!(checked > 90, "only {checked} documents checked");
}
