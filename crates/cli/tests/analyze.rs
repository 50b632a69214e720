//! `weft analyze` end to end: runs the real `weft` binary on the demo mesh,
//! on the whole `examples/` tree, on each deliberately broken manifest from
//! `tests/analyze/broken` (alone in a temp dir) and on a few hand-written
//! cases, and checks exit codes, text and JSON output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The deliberately broken manifests. They live outside `examples/` so that
/// `weft analyze examples/` stays clean.
fn broken_dir() -> PathBuf {
    repo_root().join("tests/analyze/broken")
}

fn weft_analyze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("analyze")
        .args(args)
        .output()
        .expect("run weft analyze")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A temp dir holding copies of `files` (name → contents).
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).expect("write manifest");
    }
    d
}

#[test]
fn demo_mesh_is_clean() {
    let demo = repo_root().join("examples/demo");
    let out = weft_analyze(&[demo.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{text}");
    assert!(!text.contains("error:"), "{text}");
    assert!(!text.contains("warning:"), "{text}");
    // namespace + 3 × (ServiceAccount, Service) + 4 Deployments + DR, VS,
    // PeerAuthentication, AuthorizationPolicy + the client (ServiceAccount,
    // Deployment).
    assert!(
        text.contains("No validation issues found (7 files, 17 objects)."),
        "{text}"
    );
}

/// Issue 5's done-when: the whole `examples/` tree (read recursively, so it
/// covers the demo and any example added later) analyzes clean.
#[test]
fn whole_examples_directory_is_clean() {
    let examples = repo_root().join("examples");
    let out = weft_analyze(&[examples.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("error: ")),
        "examples/ must hold no broken manifests:\n{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("warning: ")), "{text}");
    assert!(text.contains("No validation issues found ("), "{text}");
    // The demo alone is 7 files / 17 objects; examples/ holds at least that.
    let summary = text.lines().last().unwrap_or_default();
    let files: usize = summary
        .trim_start_matches("No validation issues found (")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read file count from {summary:?}"));
    assert!(files >= 6, "{summary}");
}

/// One broken manifest: file name, object, field path, reason substring.
struct Broken {
    file: &'static str,
    object: &'static str,
    path: &'static str,
    reason: &'static str,
}

const BROKEN: &[Broken] = &[
    Broken {
        file: "weights-not-100.yaml",
        object: "VirtualService broken/weights",
        path: "spec.http[0].route",
        reason: "weights sum to 80, must be 100",
    },
    Broken {
        file: "bad-regex.yaml",
        object: "VirtualService broken/bad-regex",
        path: "spec.http[0].match[0].uri.regex",
        reason: "invalid regex \"/api/(v1|v2\"",
    },
    Broken {
        file: "bad-duration.yaml",
        object: "VirtualService broken/bad-duration",
        path: "spec.http[0].timeout",
        reason: "invalid duration \"10 seconds\"",
    },
    Broken {
        file: "unknown-subset.yaml",
        object: "VirtualService broken/unknown-subset",
        path: "spec.http[0].route[0].destination.subset",
        reason: "subset \"v3\" of host reviews.broken.svc.cluster.local is not defined by DestinationRule broken/reviews",
    },
    Broken {
        file: "serviceentry-short-host.yaml",
        object: "ServiceEntry broken/external-api",
        path: "spec.hosts[0]",
        reason: "host \"api\" is not fully qualified",
    },
    Broken {
        file: "unknown-field.yaml",
        object: "DestinationRule broken/unknown-field",
        path: "spec.trafficPolicy.loadBalancer.simpel",
        reason: "unknown field",
    },
    Broken {
        file: "yaml-syntax.yaml",
        object: "",
        path: "",
        reason: "invalid YAML (line 10)",
    },
    Broken {
        file: "bad-port.yaml",
        object: "Service broken/reviews",
        path: "spec.ports[0].port",
        reason: "port number 70000 must be in the range 1..65535",
    },
    Broken {
        file: "negative-retries.yaml",
        object: "VirtualService broken/negative-retries",
        path: "spec.http[0].retries.attempts",
        reason: "attempts cannot be negative (got -1)",
    },
    Broken {
        file: "fault-percentage.yaml",
        object: "VirtualService broken/fault-percentage",
        path: "spec.http[0].fault.abort.percentage.value",
        reason: "percentage 150 is neither 0.0, nor in range [0.0001, 100.0]",
    },
];

#[test]
fn every_broken_file_is_listed_in_this_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(broken_dir())
        .expect("read tests/analyze/broken")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = BROKEN.iter().map(|b| b.file.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn each_broken_file_reports_its_problem_precisely() {
    for b in BROKEN {
        let src = broken_dir().join(b.file);
        let text = std::fs::read_to_string(&src).expect("read broken example");
        assert!(
            text.starts_with("# Expected error:"),
            "{}: must start with a comment naming the expected error",
            b.file
        );
        let dir = dir_with(&[(b.file, &text)]);
        let out = weft_analyze(&[dir.path().to_str().unwrap()]);
        let s = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{}: stdout:\n{s}", b.file);
        let errors: Vec<&str> = s.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(
            errors.len(),
            1,
            "{}: exactly one error expected:\n{s}",
            b.file
        );
        let line = errors[0];
        let file = dir.path().join(b.file);
        assert!(line.contains(file.to_str().unwrap()), "{}: {line}", b.file);
        let tail = if b.object.is_empty() {
            format!(": {}", b.reason)
        } else {
            format!(" {}: {}: {}", b.object, b.path, b.reason)
        };
        assert!(
            line.contains(&tail),
            "{}: expected {tail:?} in\n{line}",
            b.file
        );
        assert!(
            s.lines()
                .last()
                .unwrap()
                .starts_with("1 error, 0 warnings (1 file,"),
            "{}: summary:\n{s}",
            b.file
        );
    }
}

#[test]
fn json_output_parses_and_names_the_field() {
    let src = broken_dir().join("negative-retries.yaml");
    let text = std::fs::read_to_string(src).unwrap();
    let dir = dir_with(&[("vs.yaml", &text)]);
    let out = weft_analyze(&[dir.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["errors"], 1);
    assert_eq!(v["warnings"], 0);
    assert_eq!(v["files"], 1);
    assert_eq!(v["objects"], 1);
    let p = &v["problems"][0];
    assert_eq!(p["severity"], "error");
    assert_eq!(p["kind"], "VirtualService");
    assert_eq!(p["namespace"], "broken");
    assert_eq!(p["name"], "negative-retries");
    assert_eq!(p["path"], "spec.http[0].retries.attempts");
    assert_eq!(p["message"], "attempts cannot be negative (got -1)");
    assert_eq!(p["document"], 1);
    assert_eq!(p["line"], 13);
    assert!(p["file"].as_str().unwrap().ends_with("vs.yaml"));

    let demo = repo_root().join("examples/demo");
    let out = weft_analyze(&["--output", "json", demo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["objects"], 17);
}

const SHADOWED_RULE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shadowed
  namespace: demo
spec:
  hosts: [reviews.demo.svc.cluster.local]
  http:
    - route:
        - destination:
            host: reviews.demo.svc.cluster.local
    - match:
        - uri:
            prefix: /never
      route:
        - destination:
            host: reviews.demo.svc.cluster.local
";

#[test]
fn warnings_are_printed_but_do_not_fail() {
    let dir = dir_with(&[("vs.yaml", SHADOWED_RULE)]);
    let out = weft_analyze(&[dir.path().to_str().unwrap()]);
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert!(
        s.contains("warning: ")
            && s.contains("VirtualService demo/shadowed: spec.http[1]: rule is never used"),
        "{s}"
    );
    assert!(s.contains("0 errors, 1 warning (1 file, 1 object)."), "{s}");
}

const REVIEWS_DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: demo}
spec:
  host: reviews.demo.svc.cluster.local
  subsets:
    - {name: v1, labels: {version: v1}}
";

fn reviews_vs(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: demo}}
spec:
  hosts: [reviews.demo.svc.cluster.local]
  http:
    - route:
        - destination: {{host: reviews.demo.svc.cluster.local, subset: {subset}}}
"
    )
}

#[test]
fn several_directories_are_analyzed_together() {
    let rules = dir_with(&[("dr.yaml", REVIEWS_DR)]);
    let good = dir_with(&[("vs.yaml", &reviews_vs("v1"))]);
    let bad = dir_with(&[("vs.yaml", &reviews_vs("v9"))]);

    let out = weft_analyze(&[
        rules.path().to_str().unwrap(),
        good.path().to_str().unwrap(),
    ]);
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert!(
        s.contains("No validation issues found (2 files, 2 objects)."),
        "{s}"
    );

    let out = weft_analyze(&[rules.path().to_str().unwrap(), bad.path().to_str().unwrap()]);
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(
        s.contains("spec.http[0].route[0].destination.subset: subset \"v9\""),
        "{s}"
    );
}

#[test]
fn missing_directory_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-dir");
    let out = weft_analyze(&[missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot analyze {}: no such directory",
            missing.display()
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let file = d.path().join("file.yaml");
    std::fs::write(&file, "").unwrap();
    let out = weft_analyze(&[file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("it is not a directory"), "{err}");
}

#[test]
fn help_documents_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["analyze", "--help"])
        .output()
        .unwrap();
    let s = stdout(&out);
    assert!(out.status.success());
    assert!(s.contains("2 when a directory cannot be read"), "{s}");
}

#[test]
fn broken_examples_together_report_one_error_per_file() {
    let broken = broken_dir();
    let out = weft_analyze(&[broken.to_str().unwrap()]);
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    for b in BROKEN {
        let in_file: Vec<&str> = s
            .lines()
            .filter(|l| l.contains(&format!("/{}:", b.file)))
            .collect();
        assert_eq!(in_file.len(), 1, "{}: one problem expected:\n{s}", b.file);
        assert!(in_file[0].contains(b.reason), "{}: {}", b.file, in_file[0]);
    }
    assert!(
        s.contains(&format!(
            "{n} errors, 0 warnings ({n} files, 10 objects).",
            n = BROKEN.len()
        )),
        "{s}"
    );
}

/// All documents of the demo, as `(kind, name) → document`.
fn demo_objects() -> std::collections::BTreeMap<(String, String), serde_yaml::Value> {
    use serde::Deserialize;
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(repo_root().join("examples/demo")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap().to_string();
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            out.insert((kind, name), v);
        }
    }
    out
}

#[test]
fn demo_mesh_has_the_documented_shape() {
    let objs = demo_objects();
    let get = |k: &str, n: &str| {
        objs.get(&(k.to_string(), n.to_string()))
            .unwrap_or_else(|| panic!("examples/demo has no {k} {n}"))
    };
    assert_eq!(
        get("Namespace", "demo")["metadata"]["labels"]["istio-injection"],
        "enabled"
    );
    for (app, version, port) in [
        ("frontend", "v1", 8080),
        ("reviews", "v1", 9080),
        ("reviews", "v2", 9080),
        ("ratings", "v1", 9080),
    ] {
        get("ServiceAccount", app);
        let svc = get("Service", app);
        assert_eq!(svc["spec"]["ports"][0]["name"], "http");
        assert_eq!(svc["spec"]["ports"][0]["port"], port);
        let dep = get("Deployment", &format!("{app}-{version}"));
        let pod = &dep["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["app"], app);
        assert_eq!(pod["metadata"]["labels"]["version"], version);
        assert_eq!(pod["spec"]["serviceAccountName"], app);
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "weft/demo-http:latest");
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2).any(|w| w == ["--version", version]),
            "{args:?}"
        );
    }
    let vs = &get("VirtualService", "reviews")["spec"]["http"];
    assert_eq!(vs[0]["match"][0]["headers"]["end-user"]["exact"], "jason");
    assert_eq!(vs[0]["route"][0]["destination"]["subset"], "v2");
    assert_eq!(vs[1]["route"][0]["destination"]["subset"], "v1");
    assert_eq!(vs[1]["route"][0]["weight"], 90);
    assert_eq!(vs[1]["route"][1]["destination"]["subset"], "v2");
    assert_eq!(vs[1]["route"][1]["weight"], 10);
    let dr = &get("DestinationRule", "reviews")["spec"]["subsets"];
    assert_eq!(dr[0]["labels"]["version"], "v1");
    assert_eq!(dr[1]["labels"]["version"], "v2");
    assert_eq!(
        get("PeerAuthentication", "default")["spec"]["mtls"]["mode"],
        "STRICT"
    );
    let ap = &get("AuthorizationPolicy", "reviews-from-frontend")["spec"];
    assert_eq!(ap["selector"]["matchLabels"]["app"], "reviews");
    assert_eq!(
        ap["rules"][0]["from"][0]["source"]["principals"][0],
        "cluster.local/ns/demo/sa/frontend"
    );
}
