//! The webhook and `weft kube-inject` make the same pod: for every pod of
//! the conformance inputs, weftd's `/inject` (over real HTTPS) returns a
//! JSON Patch that, applied to the pod with a JSON Patch library, equals
//! what the real `weft kube-inject` binary prints for the same pod; pods
//! that kube-inject leaves alone get no patch, and pods it rejects are
//! denied.

use base64::Engine;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use weft_control::namespaces::NamespaceStore;
use weft_control::webhook::client::WebhookClient;
use weft_control::webhook::{WebhookState, serve_https, tls};
use weft_inject::Settings;

const NAMESPACE: &str = "shop";

/// Pods made from a conformance input: Pods as they are, workloads' pod
/// templates as Pods named after the workload.
fn pods_of(doc: &Value) -> Vec<Value> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    if kind == "List" {
        return doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(pods_of)
            .collect();
    }
    let Some(ptr) = weft_inject::objects::pod_template_pointer(kind) else {
        return vec![];
    };
    let template = if ptr.is_empty() {
        doc.clone()
    } else {
        doc.pointer(ptr).cloned().unwrap_or_default()
    };
    let mut metadata = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    metadata["name"] = doc["metadata"]["name"].clone();
    metadata["namespace"] = json!(NAMESPACE);
    vec![json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})]
}

fn kube_inject(pod: &Value, dir: &Path) -> Result<Value, String> {
    let file = dir.join("pod.yaml");
    std::fs::write(&file, serde_yaml::to_string(pod).expect("yaml")).expect("write pod");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["kube-inject", "-f"])
        .arg(&file)
        .output()
        .expect("run weft");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let docs = weft_inject::parse_stream(&String::from_utf8_lossy(&out.stdout)).expect("yaml out");
    Ok(docs.into_iter().next().expect("one document"))
}

#[test]
fn webhook_patch_equals_kube_inject_for_every_conformance_pod() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut namespaces = NamespaceStore::default();
    namespaces
        .add_documents(
            Path::new("ns.yaml"),
            "kind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n",
        )
        .expect("namespace");
    let state = Arc::new(WebhookState {
        settings: Settings::default(),
        namespaces,
    });
    let cert = tls::generate(&["localhost".to_string()]).expect("cert");
    let ca = cert.ca_bundle_pem.clone();
    let tls_config = tls::server_config(cert).expect("tls config");

    let conformance = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inject/tests/conformance");
    let mut inputs: Vec<_> = std::fs::read_dir(&conformance)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            n.ends_with(".yaml") && !n.ends_with(".iop.yaml")
        })
        .collect();
    inputs.sort();

    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_https(listener, tls_config, state));
        let mut client = WebhookClient::connect(addr, "localhost", &ca)
            .await
            .expect("connect");
        let (mut injected, mut skipped, mut denied) = (0, 0, 0);
        for input in &inputs {
            let name = input
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let docs = weft_inject::parse_stream(&std::fs::read_to_string(input).expect("read"))
                .expect("input yaml");
            for pod in docs.iter().flat_map(pods_of) {
                let expected = kube_inject(&pod, dir.path());
                let review = json!({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                "namespace": NAMESPACE, "operation": "CREATE", "object": pod}
                });
                let (status, body) = client
                    .review(serde_json::to_vec(&review).expect("json"))
                    .await
                    .expect("review");
                assert_eq!(status, 200, "{name}");
                let resp: Value = serde_json::from_slice(&body).expect("response json");
                let response = &resp["response"];
                match expected {
                    Err(err) => {
                        assert_eq!(
                            response["allowed"], false,
                            "{name}: kube-inject failed ({err}) so the webhook must deny"
                        );
                        denied += 1;
                    }
                    Ok(expected) => {
                        assert_eq!(response["allowed"], true, "{name}: {response}");
                        let mut got = pod.clone();
                        if let Some(p) = response["patch"].as_str() {
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(p)
                                .expect("base64");
                            let patch: json_patch::Patch =
                                serde_json::from_slice(&bytes).expect("RFC 6902 patch");
                            json_patch::patch(&mut got, &patch).expect("patch applies");
                            injected += 1;
                        } else {
                            skipped += 1;
                        }
                        assert_eq!(got, expected, "{name}: webhook and kube-inject disagree");
                    }
                }
            }
        }
        assert!(injected > 80, "only {injected} pods injected");
        assert!(skipped >= 3, "only {skipped} pods skipped");
        assert!(denied >= 5, "only {denied} pods denied");
    });
}
