//! `weft kube-inject` end to end: the real binary, its flags, its errors,
//! and atomic output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn conformance(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../inject/tests/conformance")
        .join(name)
}

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn init_args(yaml: &str) -> Vec<String> {
    let docs = weft_inject::parse_stream(yaml).expect("yaml");
    let inits = docs[0]
        .pointer("/spec/template/spec/initContainers")
        .and_then(|v| v.as_array())
        .expect("init containers");
    let init = inits
        .iter()
        .find(|c| c["name"] == "istio-init")
        .expect("istio-init");
    init["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

#[test]
fn hello_is_injected_with_istio_capture_flags() {
    let out = weft(&["kube-inject", "-f", path(&conformance("hello.yaml"))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        init_args(&text),
        [
            "iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020"
        ]
    );
    let docs = weft_inject::parse_stream(&text).expect("yaml");
    let proxy = &docs[0]["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "istio-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(proxy["ports"][0]["name"], "http-envoy-prom");
}

#[test]
fn stdin_input_and_atomic_output_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("out.yaml");
    let input = std::fs::read(conformance("pod.yaml")).expect("input");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["kube-inject", "-f", "-", "-o", path(&out_file)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), &input).expect("write stdin");
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "with -o nothing goes to stdout");
    let written = std::fs::read_to_string(&out_file).expect("output written");
    assert!(written.contains("sidecar.istio.io/status"), "{written}");
    // Only the output file is left in the directory (no temporary files).
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
}

#[test]
fn bad_annotation_fails_naming_document_object_field_and_leaves_output_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("out.yaml");
    std::fs::write(&out_file, "previous content\n").expect("seed");
    // A stream whose second document is bad: nothing may be written.
    let input = dir.path().join("in.yaml");
    let good = std::fs::read_to_string(conformance("hello.yaml")).expect("hello");
    let bad = std::fs::read_to_string(conformance("traffic-annotations-bad-includeipranges.yaml"))
        .expect("bad");
    std::fs::write(&input, format!("{good}\n---\n{bad}")).expect("write input");
    let out = weft(&["kube-inject", "-f", path(&input), "-o", path(&out_file)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "in.yaml",
        "document 1",
        "Deployment/traffic",
        "spec.template.metadata.annotations[traffic.sidecar.istio.io/includeOutboundIPRanges]",
        "\"bad\"",
    ] {
        assert!(err.contains(needle), "error lacks {needle:?}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&out_file).expect("read"),
        "previous content\n"
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2);
}

#[test]
fn invalid_yaml_and_unknown_workload_kinds_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_yaml = dir.path().join("broken.yaml");
    std::fs::write(&not_yaml, "kind: Pod\nmetadata: [unclosed\n").expect("write");
    let out = weft(&["kube-inject", "-f", path(&not_yaml)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.yaml") && err.contains("document 0") && err.contains("YAML"),
        "{err}"
    );

    let unknown = dir.path().join("rollout.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\n\
         spec:\n  template:\n    spec:\n      containers: [{name: web, image: nginx}]\n",
    )
    .expect("write");
    let out = weft(&["kube-inject", "-f", path(&unknown)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Rollout/web") && err.contains("kind"), "{err}");
}

#[test]
fn non_workloads_and_opt_outs_pass_through_unchanged() {
    let out = weft(&["kube-inject", "-f", path(&conformance("hello-ignore.yaml"))]);
    assert!(out.status.success());
    let got = weft_inject::parse_stream(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    let input = weft_inject::parse_stream(
        &std::fs::read_to_string(conformance("hello-ignore.yaml")).expect("read"),
    )
    .expect("yaml");
    assert_eq!(got, input);
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipping injection"));

    let out = weft(&[
        "kube-inject",
        "-f",
        path(&conformance("hello-service.yaml")),
    ]);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "a Service is not worth a note");
}

#[test]
fn mesh_values_and_inject_config_files_are_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "defaultConfig:\n  interceptionMode: TPROXY\n").expect("write");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "global:\n  proxy:\n    excludeIPRanges: 10.0.0.0/8\n",
    )
    .expect("write");
    let out = weft(&[
        "kube-inject",
        "-f",
        path(&conformance("hello.yaml")),
        "--meshConfigFile",
        path(&mesh),
        "--valuesFile",
        path(&values),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = init_args(&String::from_utf8_lossy(&out.stdout));
    let flag = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .map(|i| args[i + 1].clone())
    };
    assert_eq!(flag("-m").as_deref(), Some("TPROXY"));
    assert_eq!(flag("-x").as_deref(), Some("10.0.0.0/8"));

    let cfg = dir.path().join("inject.yaml");
    std::fs::write(&cfg, "policy: disabled\n").expect("write");
    let out = weft(&[
        "kube-inject",
        "-f",
        path(&conformance("hello.yaml")),
        "--injectConfigFile",
        path(&cfg),
    ]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sidecar.istio.io/status"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy is disabled"));

    std::fs::write(&cfg, "policy: sometimes\n").expect("write");
    let out = weft(&[
        "kube-inject",
        "-f",
        path(&conformance("hello.yaml")),
        "--injectConfigFile",
        path(&cfg),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inject.yaml"));
}

#[test]
fn proxy_metadata_reaches_the_init_step_and_the_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "accessLogFile: /dev/stdout
enableAutoMtls: true
defaultConfig:
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: \"true\"
",
    )
    .expect("write");
    let out = weft(&[
        "kube-inject",
        "-f",
        path(&conformance("hello.yaml")),
        "--meshConfigFile",
        path(&mesh),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = weft_inject::parse_stream(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    let inits = docs[0]["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("inits");
    for name in ["istio-init", "istio-proxy"] {
        let c = inits.iter().find(|c| c["name"] == name).expect(name);
        let env = c["env"].as_array().expect("env");
        assert!(
            env.iter()
                .any(|e| e["name"] == "ISTIO_META_DNS_CAPTURE" && e["value"] == "true"),
            "{name} lacks ISTIO_META_DNS_CAPTURE: {env:?}"
        );
    }
}

#[test]
fn bootstrap_override_runs_the_proxy_on_the_mounted_bootstrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("pod.yaml");
    std::fs::write(
        &input,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n    sidecar.istio.io/bootstrapOverride: web-bootstrap\n\
         spec:\n  containers:\n  - {name: web, image: nginx}\n",
    )
    .expect("write");
    let out = weft(&["kube-inject", "-f", path(&input)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = weft_inject::parse_stream(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    let spec = &docs[0]["spec"];
    let proxy = spec["initContainers"]
        .as_array()
        .expect("inits")
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("proxy");
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    assert_eq!(
        args[i + 1],
        "/etc/istio/custom-bootstrap/custom_bootstrap.json"
    );
    assert!(
        proxy["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "custom-bootstrap-volume")
    );
    let vol = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "custom-bootstrap-volume")
        .expect("volume");
    assert_eq!(vol["configMap"]["name"], "web-bootstrap");
}

#[test]
fn yaml_1_1_booleans_stay_strings_for_kubectl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("pod.yaml");
    std::fs::write(
        &input,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {a: \"on\", b: \"yes\", c: \"n\"}\n\
         spec:\n  containers: [{name: c, image: x}]\n",
    )
    .expect("write");
    let out = weft(&["kube-inject", "-f", path(&input)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["a: \"on\"", "b: \"yes\"", "c: \"n\""] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[test]
fn revision_flag_sets_the_status_revision() {
    let out = weft(&[
        "kube-inject",
        "-f",
        path(&conformance("hello.yaml")),
        "--revision",
        "canary",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let docs = weft_inject::parse_stream(&text).expect("yaml");
    let status = docs[0]
        .pointer("/spec/template/metadata/annotations/sidecar.istio.io~1status")
        .and_then(|s| s.as_str())
        .expect("status annotation");
    assert!(status.contains(r#""revision":"canary""#), "{status}");
    assert!(text.contains("istio.io/rev: canary"), "{text}");
    assert!(
        text.contains("weftd-canary.istio-system.svc:15012"),
        "CA address of the revision: {text}"
    );
}
