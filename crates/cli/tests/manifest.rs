//! `weft manifest generate` and `weft version`.

use std::path::Path;
use std::process::Command;

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft")
}

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";

#[test]
fn webhook_configuration_has_istios_four_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, CA).expect("write");
    let out = weft(&[
        "manifest",
        "generate",
        "--ca-bundle-file",
        ca.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_yaml::from_slice(&out.stdout).expect("yaml");
    assert_eq!(doc["kind"], "MutatingWebhookConfiguration");
    let hooks = doc["webhooks"].as_array().expect("webhooks");
    let names: Vec<&str> = hooks
        .iter()
        .map(|h| h["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "rev.namespace.sidecar-injector.istio.io",
            "rev.object.sidecar-injector.istio.io",
            "namespace.sidecar-injector.istio.io",
            "object.sidecar-injector.istio.io"
        ]
    );
    use base64::Engine;
    let expected_ca = base64::engine::general_purpose::STANDARD.encode(CA);
    for h in hooks {
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(
            h["rules"],
            serde_json::json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}])
        );
        assert_eq!(h["clientConfig"]["caBundle"], expected_ca.as_str());
        assert_eq!(h["clientConfig"]["service"]["path"], "/inject");
    }
    // The namespace entry selects istio-injection=enabled and honours the object's opt-out.
    assert_eq!(
        hooks[2]["namespaceSelector"],
        serde_json::json!({"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]})
    );
    assert_eq!(
        hooks[2]["objectSelector"],
        serde_json::json!({"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]})
    );
}

#[test]
fn bad_ca_bundle_and_plain_http_url_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a cert").expect("write");
    let out = weft(&[
        "manifest",
        "generate",
        "--ca-bundle-file",
        ca.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-bundle-file"));
    let out = weft(&[
        "manifest",
        "generate",
        "--webhook-url",
        "http://10.0.0.1:15017",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("https"));
}

#[test]
fn checked_in_manifest_is_up_to_date() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/sidecar-injector-webhook.yaml");
    let checked_in =
        std::fs::read_to_string(&file).expect("manifests/sidecar-injector-webhook.yaml");
    let out = weft(&["manifest", "generate"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        checked_in,
        "regenerate with `weft manifest generate -o manifests/sidecar-injector-webhook.yaml`"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let out = weft(&["version", "--short"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        env!("CARGO_PKG_VERSION")
    );
}
