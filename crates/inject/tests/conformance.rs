//! Conformance with Istio's injection: every input under
//! `tests/conformance/` (Istio's own test data) is injected by Weft and
//! compared, in meaning, with what `istioctl kube-inject` produced: the same
//! objects injected or left alone; the same container layout; for the
//! injected containers the same ports, probes, security contexts, resources,
//! restart policy, volume mounts and capture flags; application containers
//! (rewritten probes and hooks included) identical; the same labels,
//! annotations, volumes and other pod fields. Images, arguments other than
//! the capture flags, environment and the proxy's lifecycle hook differ on
//! purpose (Weft's proxy is not pilot-agent + Envoy).
//!
//! Deliberate deviations are listed in `DEVIATIONS` with the reason.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use support::{compare_documents, settings_for};
use weft_inject::{Settings, inject_stream, parse_stream};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn read(name: &str) -> String {
    let p = data_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Cases Weft handles differently from Istio, and why. The comparison for
/// these is limited to what the reason says still holds.
const DEVIATIONS: &[(&str, &str)] = &[
    (
        "grpc-simple.yaml.injected",
        "proxyless gRPC templates (grpc-simple, grpc-agent) are not shipped: Weft has no proxyless \
         gRPC bootstrap; the injector refuses with an error naming the unknown template",
    ),
    ("grpc-agent.yaml.injected", "see grpc-simple"),
    (
        "sidecar-spire.yaml.injected",
        "Istio's spire template patches `containers: istio-proxy` after the proxy became a native \
         sidecar, leaving a second, image-less istio-proxy container (invalid pod). Weft merges the \
         patch into the one proxy; only the decision and the init containers are compared",
    ),
    (
        "hello-openshift.yaml.injected",
        "produced by Istio's webhook on OpenShift (uid from the namespace's UID range); Weft does \
         not model OpenShift SCC ranges; only the decision and container layout are compared",
    ),
    (
        "hello-openshift-tproxy.yaml.injected",
        "see hello-openshift",
    ),
    (
        "hello-openshift-custom-injection.yaml.injected",
        "see hello-openshift",
    ),
];

fn deviation(want: &str) -> Option<&'static str> {
    DEVIATIONS.iter().find(|(n, _)| *n == want).map(|(_, r)| *r)
}

/// A conformance case: input file, Istio's output, settings.
struct Case {
    input: String,
    want: String,
    settings: Settings,
}

/// Istio's explicit cases (input, output, settings from its test table);
/// every other `X.yaml` with an `X.yaml.injected` runs with the defaults
/// plus `X.iop.yaml` when present.
fn cases() -> Vec<Case> {
    let explicit: Vec<(&str, &str, Value)> = vec![
        (
            "hello.yaml",
            "hello.yaml.cni.injected",
            json!({"values": {"istio_cni": {"enabled": true}, "global": {"network": "network1"}}}),
        ),
        (
            "hello.yaml",
            "hello.yaml.proxyImageName.injected",
            json!({"values": {"global": {"proxy": {"image": "proxyTest"}}}}),
        ),
        (
            "hello.yaml",
            "hello.yaml.proxyInitImageName.injected",
            json!({"values": {"global": {"proxy_init": {"image": "proxyInitTest"}}}}),
        ),
        (
            "hello.yaml",
            "hello-tproxy.yaml.injected",
            json!({"mesh": {"defaultConfig": {"interceptionMode": "TPROXY"}}}),
        ),
        (
            "hello.yaml",
            "hello-always.yaml.injected",
            json!({"values": {"global": {"imagePullPolicy": "Always"}}}),
        ),
        (
            "hello.yaml",
            "hello-never.yaml.injected",
            json!({"values": {"global": {"imagePullPolicy": "Never"}}}),
        ),
        ("hello.yaml", "hello-fips-140-3.yaml.injected", json!({})),
        (
            "format-duration.yaml",
            "format-duration.yaml.injected",
            json!({"mesh": {"defaultConfig": {"drainDuration": "23s"}}}),
        ),
        (
            "traffic-params.yaml",
            "traffic-params.yaml.injected",
            json!({"values": {"global": {"proxy": {
            "includeIPRanges": "127.0.0.1/24,10.96.0.1/24", "excludeIPRanges": "10.96.0.2/24,10.96.0.3/24",
            "excludeInboundPorts": "4,5,6", "statusPort": 0}}}}),
        ),
        (
            "status_params.yaml",
            "status_params.yaml.injected",
            status_values(),
        ),
        (
            "kubevirtInterfaces.yaml",
            "kubevirtInterfaces.yaml.injected",
            status_values(),
        ),
        (
            "reroute-virtual-interfaces.yaml",
            "reroute-virtual-interfaces.yaml.injected",
            status_values(),
        ),
        (
            "hello.yaml",
            "hello-image-secrets-in-values.yaml.injected",
            json!({"iop": "hello-image-secrets-in-values.iop.yaml"}),
        ),
        (
            "hello-image-pull-secret.yaml",
            "hello-multiple-image-secrets.yaml.injected",
            json!({"iop": "hello-image-secrets-in-values.iop.yaml"}),
        ),
        (
            "hello.yaml",
            "hello-template-in-values.yaml.injected",
            json!({"iop": "hello-template-in-values.iop.yaml"}),
        ),
        (
            "hello.yaml",
            "hello-mount-mtls-certs.yaml.injected",
            json!({"values": {"global": {"mountMtlsCerts": true}}}),
        ),
        ("hello.yaml", "hello-cncf-networks.yaml.injected", multus()),
        (
            "hello-existing-cncf-networks.yaml",
            "hello-existing-cncf-networks.yaml.injected",
            multus(),
        ),
        (
            "hello-existing-cncf-networks-json.yaml",
            "hello-existing-cncf-networks-json.yaml.injected",
            multus(),
        ),
        (
            "hello.yaml",
            "hello.proxyHoldsApplication.yaml.injected",
            hold(),
        ),
        (
            "hello-probes.yaml",
            "hello-probes.proxyHoldsApplication.yaml.injected",
            hold(),
        ),
        (
            "hello-probes-noProxyHoldApplication-ProxyConfig.yaml",
            "hello-probes-noProxyHoldApplication-ProxyConfig.yaml.injected",
            hold(),
        ),
        ("merge-probers.yaml", "merge-probers.yaml.injected", hold()),
        (
            "traffic-annotations.yaml",
            "traffic-annotations.yaml.injected",
            json!({"mesh": {"defaultConfig": {"proxyMetadata": {
            "ISTIO_META_TLS_CLIENT_KEY": "/etc/identity/client/keys/client-key.pem"}}}}),
        ),
        (
            "proxy-override-runas.yaml",
            "proxy-override-runas.yaml.cni.injected",
            json!({"values": {"istio_cni": {"enabled": true}}}),
        ),
        (
            "proxy-override-runas.yaml",
            "proxy-override-runas.yaml.tproxy.injected",
            json!({"mesh": {"defaultConfig": {"interceptionMode": "TPROXY"}}}),
        ),
        (
            "proxy-override-args.yaml",
            "proxy-override-args-native.yaml.injected",
            json!({}),
        ),
        (
            "custom-template.yaml",
            "custom-template.yaml.injected",
            json!({"custom_template": true}),
        ),
        (
            "hello-tracing-disabled.yaml",
            "hello-tracing-disabled.yaml.injected",
            json!({"mesh": {"defaultConfig": {"tracing": {}}}}),
        ),
        (
            "hello-probes-localhost.yaml",
            "hello-probes-localhost.yaml.injected",
            json!({"mesh": {"inboundTrafficPolicy": {"mode": "LOCALHOST"}}}),
        ),
        (
            "hello-openshift.yaml",
            "hello-openshift.yaml.injected",
            json!({"values": {"istio_cni": {"enabled": true}}}),
        ),
        (
            "hello-openshift-tproxy.yaml",
            "hello-openshift-tproxy.yaml.injected",
            json!({"values": {"istio_cni": {"enabled": true}}}),
        ),
        (
            "hello-openshift-custom-injection.yaml",
            "hello-openshift-custom-injection.yaml.injected",
            json!({"values": {"istio_cni": {"enabled": true}}}),
        ),
        (
            "proxy-resources-null-no-init.yaml",
            "proxy-resources-null-no-init.yaml.injected",
            json!({"iop": "proxy-resources-null.iop.yaml"}),
        ),
        // Istio's "old version" outputs are the same inputs injected for a
        // cluster without native sidecar support.
        ("hello.yaml", "hello-old-version.yaml.injected", classic()),
        ("pod.yaml", "pod-old-version.yaml.injected", classic()),
        (
            "cronjob.yaml",
            "cronjob-old-version.yaml.injected",
            classic(),
        ),
        (
            "daemonset.yaml",
            "daemonset-old-version.yaml.injected",
            classic(),
        ),
        ("job.yaml", "job-old-version.yaml.injected", classic()),
        (
            "replicaset.yaml",
            "replicaset-old-version.yaml.injected",
            classic(),
        ),
        (
            "statefulset.yaml",
            "statefulset-old-version.yaml.injected",
            classic(),
        ),
        (
            "native-sidecar.yaml",
            "native-sidecar-old-version.yaml.injected",
            classic(),
        ),
    ];
    let mut out: Vec<Case> = explicit
        .into_iter()
        .map(|(i, w, s)| Case {
            input: i.into(),
            want: w.into(),
            settings: settings_for(&s, &data_dir()),
        })
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(data_dir())
        .expect("conformance dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        if !name.ends_with(".yaml") || name.ends_with(".iop.yaml") {
            continue;
        }
        let want = format!("{name}.injected");
        if out.iter().any(|c| c.want == want) || !names.contains(&want) {
            continue;
        }
        let iop = name.trim_end_matches(".yaml").to_string() + ".iop.yaml";
        let spec = if names.contains(&iop) {
            json!({"iop": iop})
        } else {
            json!({})
        };
        out.push(Case {
            input: name.clone(),
            want,
            settings: settings_for(&spec, &data_dir()),
        });
    }
    out
}

fn status_values() -> Value {
    json!({"values": {"global": {"proxy": {"statusPort": 123, "readinessInitialDelaySeconds": 100,
        "readinessPeriodSeconds": 200, "readinessFailureThreshold": 300}}}})
}
fn multus() -> Value {
    json!({"values": {"istio_cni": {"enabled": true, "provider": "multus"}}})
}
fn hold() -> Value {
    json!({"values": {"global": {"proxy": {"holdApplicationUntilProxyStarts": true}}}})
}
fn classic() -> Value {
    json!({"values": {"sidecarInjectorWebhook": {"nativeSidecar": false}}})
}

#[test]
fn every_output_file_is_covered() {
    let covered: Vec<String> = cases().into_iter().map(|c| c.want).collect();
    for e in std::fs::read_dir(data_dir()).expect("dir") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".injected") {
            assert!(covered.contains(&name), "no case produces {name}");
        }
    }
}

#[test]
fn injected_outputs_match_istio_in_meaning() {
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in cases() {
        let input = read(&case.input);
        let want_docs = parse_stream(&read(&case.want)).expect("Istio's output parses");
        let dev = deviation(&case.want);
        let got = inject_stream(&input, &case.settings);
        if case.want.starts_with("grpc-") {
            let err = got.expect_err("grpc templates are not shipped");
            assert!(
                err.to_string().contains("inject.istio.io/templates"),
                "{err}"
            );
            continue;
        }
        let (got_docs, _) = match got {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{} -> {}: error: {e}", case.input, case.want));
                continue;
            }
        };
        if got_docs.len() != want_docs.len() {
            failures.push(format!(
                "{}: {} documents, Istio has {}",
                case.want,
                got_docs.len(),
                want_docs.len()
            ));
            continue;
        }
        for (i, (g, w)) in got_docs.iter().zip(&want_docs).enumerate() {
            compared += 1;
            if let Err(diffs) = compare_documents(g, w, dev.is_some()) {
                failures.push(format!("{} doc {i}:\n  {}", case.want, diffs.join("\n  ")));
            }
        }
    }
    assert!(compared > 100, "compared only {compared} documents");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bad_traffic_annotations_are_rejected_naming_annotation_and_value() {
    let cases = [
        (
            "traffic-annotations-bad-includeipranges.yaml",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "bad",
        ),
        (
            "traffic-annotations-bad-excludeipranges.yaml",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "*",
        ),
        (
            "traffic-annotations-bad-includeinboundports.yaml",
            "traffic.sidecar.istio.io/includeInboundPorts",
            "bad",
        ),
        (
            "traffic-annotations-bad-excludeinboundports.yaml",
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "*",
        ),
        (
            "traffic-annotations-bad-excludeoutboundports.yaml",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "bad",
        ),
    ];
    let mut seen = 0;
    for e in std::fs::read_dir(data_dir()).expect("dir") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.starts_with("traffic-annotations-bad-") {
            seen += 1;
            assert!(
                cases.iter().any(|c| c.0 == name),
                "bad case {name} not covered"
            );
        }
    }
    assert_eq!(seen, cases.len());
    for (file, annotation, value) in cases {
        let err = inject_stream(&read(file), &Settings::default())
            .expect_err(&format!("{file} must be rejected"));
        let msg = err.to_string();
        assert!(msg.contains(annotation), "{file}: {msg}");
        assert!(msg.contains(&format!("{value:?}")), "{file}: {msg}");
        assert!(msg.contains("Deployment/traffic"), "{file}: {msg}");
        assert_eq!(err.index, 0);
    }
}
