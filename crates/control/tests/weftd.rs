//! The real `weftd` binary: HTTPS `/inject` with a generated certificate
//! (CA bundle written with --ca-bundle-out) or one from --tls-cert/--tls-key,
//! plain `/ready`, HTTP 400 for malformed reviews, namespace selection from
//! `--config file://DIR`.

mod support;

use base64::Engine;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use weft_control::webhook::client::WebhookClient;

/// A weftd child process, killed on drop.
struct Weftd {
    _process: support::Weftd,
    webhook: SocketAddr,
    ready: SocketAddr,
}

fn start(config_dir: &Path, extra: &[&str]) -> Weftd {
    let process = support::Weftd::start(config_dir, extra);
    Weftd {
        webhook: process.addr("webhook-addr"),
        ready: process.addr("ready-addr"),
        _process: process,
    }
}

fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("namespaces.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio-injection: enabled\n",
    )
    .expect("write namespaces");
    dir
}

fn review(namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "9b2f4d8e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}
            }
        }
    }))
    .expect("json")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn generated_certificate_serves_inject_ready_and_rejects_malformed_reviews() {
    let dir = config_dir();
    let ca_path = dir.path().join("ca.pem");
    let weftd = start(
        dir.path(),
        &["--ca-bundle-out", ca_path.to_str().expect("path")],
    );
    let ca = std::fs::read_to_string(&ca_path).expect("CA bundle written");
    runtime().block_on(async {
        let mut client = WebhookClient::connect(weftd.webhook, "localhost", &ca)
            .await
            .expect("TLS handshake with the generated certificate");
        // Injected in a namespace labelled istio-injection=enabled.
        let (status, body) = client.review(review("shop")).await.expect("review");
        assert_eq!(status, 200);
        let resp: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(
            resp["response"]["uid"],
            "9b2f4d8e-0000-4000-8000-000000000001"
        );
        assert_eq!(resp["response"]["allowed"], true);
        assert_eq!(resp["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(resp["response"]["patch"].as_str().expect("patch"))
            .expect("base64");
        let patch: Value = serde_json::from_slice(&patch).expect("patch json");
        assert!(patch.as_array().is_some_and(|ops| !ops.is_empty()));
        // Same connection (keep-alive): a namespace without the label is left alone.
        let (status, body) = client.review(review("plain")).await.expect("review");
        assert_eq!(status, 200);
        let resp: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(resp["response"]["allowed"], true);
        assert!(resp["response"].get("patch").is_none());
        // Malformed reviews: HTTP 400 with a reason, and the server lives on.
        for (bad, reason) in [
            (b"{not json".to_vec(), "not JSON"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
                "missing request",
            ),
        ] {
            let (status, body) = client.review(bad).await.expect("exchange");
            assert_eq!(status, 400);
            assert!(
                String::from_utf8_lossy(&body).contains(reason),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        let (status, _) = client
            .send(hyper::Method::GET, "/ready", vec![])
            .await
            .expect("ready");
        assert_eq!(status, 200);
    });
    // Plain-HTTP /ready.
    let mut tcp = std::net::TcpStream::connect(weftd.ready).expect("connect ready");
    std::io::Write::write_all(
        &mut tcp,
        b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut tcp, &mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn certificate_from_files_is_used() {
    let dir = config_dir();
    // A CA and serving certificate made outside weftd.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["webhook.test".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem())).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let ca_out = dir.path().join("bundle.pem");
    let weftd = start(
        dir.path(),
        &[
            "--tls-cert",
            cert_path.to_str().expect("p"),
            "--tls-key",
            key_path.to_str().expect("p"),
            "--ca-bundle-out",
            ca_out.to_str().expect("p"),
        ],
    );
    let bundle = std::fs::read_to_string(&ca_out).expect("bundle");
    assert_eq!(
        bundle.trim(),
        ca_cert.pem().trim(),
        "the bundle is the chain's CA"
    );
    runtime().block_on(async {
        let mut client = WebhookClient::connect(weftd.webhook, "webhook.test", &ca_cert.pem())
            .await
            .expect("handshake with the provided certificate");
        let (status, _) = client.review(review("shop")).await.expect("review");
        assert_eq!(status, 200);
        // The generated-certificate name is not in this certificate.
        assert!(
            WebhookClient::connect(weftd.webhook, "localhost", &ca_cert.pem())
                .await
                .is_err()
        );
    });
}

#[test]
fn bad_flags_fail_with_the_flag_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .args([
            "--config",
            "/no/scheme",
            "--webhook-addr",
            "127.0.0.1:0",
            "--ready-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let dir = config_dir();
    let missing = dir.path().join("missing.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--config")
        .arg(format!("file://{}", dir.path().display()))
        .args([
            "--webhook-addr",
            "127.0.0.1:0",
            "--ready-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            missing.to_str().expect("p"),
            "--tls-key",
            missing.to_str().expect("p"),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-cert"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether weftd's answer to a review in `namespace` carries a patch.
async fn injects(client: &mut WebhookClient, namespace: &str) -> bool {
    let (status, body) = client.review(review(namespace)).await.expect("review");
    assert_eq!(status, 200);
    let resp: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(resp["response"]["allowed"], true);
    resp["response"].get("patch").is_some()
}

#[test]
fn namespace_relabelled_in_the_watched_directory_changes_injection_without_restart() {
    let dir = config_dir();
    let ca_path = dir.path().join("ca.pem");
    let weftd = start(
        dir.path(),
        &["--ca-bundle-out", ca_path.to_str().expect("path")],
    );
    let ca = std::fs::read_to_string(&ca_path).expect("CA bundle written");
    runtime().block_on(async {
        let mut client = WebhookClient::connect(weftd.webhook, "localhost", &ca)
            .await
            .expect("TLS handshake");
        assert!(injects(&mut client, "shop").await, "labelled at start");
        // The label is turned off in the watched file: injection stops.
        std::fs::write(
            dir.path().join("namespaces.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio-injection: disabled\n",
        )
        .expect("rewrite namespaces");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while injects(&mut client, "shop").await {
            assert!(
                std::time::Instant::now() < deadline,
                "weftd still injects into namespace shop 20 s after its label was disabled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // And back on.
        std::fs::write(
            dir.path().join("namespaces.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio-injection: enabled\n",
        )
        .expect("rewrite namespaces");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !injects(&mut client, "shop").await {
            assert!(
                std::time::Instant::now() < deadline,
                "weftd does not inject into namespace shop 20 s after it was labelled again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
}
