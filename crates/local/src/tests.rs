//! Planner tests: the demo manifests, replicas and names, injection,
//! image mapping, probes, VIPs, and precise errors for bad input.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::container::{EnvValue, ProbeAction, Role};
use crate::image::Program;
use crate::plan::{PlanOptions, plan_files};

fn opts() -> PlanOptions {
    PlanOptions::local("10.88.0.1:15012", "10.88.0.1:15012", true)
}

fn demo_files() -> BTreeMap<String, String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/demo");
    let (files, errors) = crate::manifest::read_dir(std::path::Path::new(dir)).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    files
}

fn one(name: &str, text: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(name.to_owned(), text.to_owned())])
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {istio-injection: enabled}\n";

fn deployment(name: &str, replicas: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, version: v1}}}}
    spec:
      containers:
      - name: main
        image: {image}
        args: [--listen, 0.0.0.0:8080]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: http}}}}
"
    )
}

#[test]
fn demo_plans_every_pod_injected_with_mapped_programs() {
    let plan = plan_files(&demo_files(), &opts());
    assert!(plan.errors.is_empty(), "{:#?}", plan.errors);
    let names: Vec<String> = plan.pods.iter().map(|p| p.key()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    for prefix in [
        "demo/client-",
        "demo/frontend-v1-",
        "demo/ratings-v1-",
        "demo/reviews-v1-",
        "demo/reviews-v2-",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "{prefix} in {names:?}"
        );
    }
    let reviews = plan
        .pods
        .iter()
        .find(|p| p.name.starts_with("reviews-v2-"))
        .unwrap();
    assert!(reviews.injected);
    assert_eq!(reviews.service_account, "reviews");
    assert_eq!(reviews.labels["version"], "v2");
    assert_eq!(reviews.labels["security.istio.io/tlsMode"], "istio");
    assert!(reviews.labels.contains_key("pod-template-hash"));

    let init = reviews.container("istio-init").unwrap();
    assert_eq!(init.role, Role::Init);
    assert_eq!(init.argv.program, Program::Weft("weft-proxy".into()));
    assert_eq!(init.argv.args[0], "iptables");
    assert!(init.env.contains(&(
        "ISTIO_META_DNS_CAPTURE".into(),
        EnvValue::Literal("true".into())
    )));

    let proxy = reviews.container("istio-proxy").unwrap();
    assert_eq!(proxy.role, Role::Sidecar);
    assert_eq!(proxy.run_as, Some((1337, 1337)));
    let env: BTreeMap<_, _> = proxy.env.iter().cloned().collect();
    assert_eq!(env["POD_NAME"], EnvValue::Literal(reviews.name.clone()));
    assert_eq!(env["POD_NAMESPACE"], EnvValue::Literal("demo".into()));
    assert_eq!(env["SERVICE_ACCOUNT"], EnvValue::Literal("reviews".into()));
    assert_eq!(env["INSTANCE_IP"], EnvValue::PodIp);
    assert_eq!(env["CA_ADDR"], EnvValue::Literal("10.88.0.1:15012".into()));
    let EnvValue::Literal(pc) = &env["PROXY_CONFIG"] else {
        panic!("PROXY_CONFIG")
    };
    assert!(
        pc.contains("\"discoveryAddress\":\"10.88.0.1:15012\""),
        "{pc}"
    );

    let app = reviews.container("reviews").unwrap();
    assert_eq!(app.role, Role::App);
    assert_eq!(app.run_as, None);
    assert_eq!(app.argv.program, Program::Weft("weft".into()));
    assert_eq!(app.argv.args[..2], ["app", "http"]);
    // Istio rewrote the probe to the agent; the plan probes the app itself.
    let probe = app.readiness.as_ref().unwrap();
    assert_eq!(
        probe.action,
        ProbeAction::Http {
            port: 9080,
            path: "/healthz".into()
        }
    );

    // Services get VIPs in the local range; weftd's copy carries them.
    let svc = plan.service("demo", "reviews").unwrap();
    let vip = svc.vip.unwrap();
    assert!(vip.octets()[..2] == [10, 96], "{vip}");
    let copy = plan
        .config
        .iter()
        .find(|d| d.kind() == "Service" && d.name() == "reviews")
        .unwrap();
    assert_eq!(copy.value["spec"]["clusterIP"], vip.to_string());
    // Workloads are not handed to weftd; Istio resources are.
    assert!(!plan.config.iter().any(|d| d.kind() == "Deployment"));
    assert!(plan.config.iter().any(|d| d.kind() == "VirtualService"));
}

#[test]
fn replicas_and_names_follow_the_controllers() {
    let sts = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: weft/demo-tcp}]
";
    let text = format!(
        "{NS}---\n{}---\n{sts}",
        deployment("web", "2", "weft/demo-http")
    );
    let plan = plan_files(&one("a.yaml", &text), &opts());
    assert!(plan.errors.is_empty(), "{:#?}", plan.errors);
    let names: Vec<&str> = plan.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 5);
    assert_eq!(names[..3], ["db-0", "db-1", "db-2"]);
    assert_eq!(
        plan.pods[1].labels["statefulset.kubernetes.io/pod-name"],
        "db-1"
    );
    let web: Vec<&str> = names[3..].to_vec();
    let hash = &plan.pods[3].labels["pod-template-hash"];
    assert_eq!(web, [format!("web-{hash}-0"), format!("web-{hash}-1")]);

    // Scaling keeps names; a template change renames (a new ReplicaSet).
    let scaled = plan_files(
        &one(
            "a.yaml",
            &format!("{NS}---\n{}", deployment("web", "3", "weft/demo-http")),
        ),
        &opts(),
    );
    assert_eq!(scaled.pods[0].name, plan.pods[3].name);
    assert_eq!(scaled.pods[0].fingerprint, plan.pods[3].fingerprint);
    let changed = plan_files(
        &one(
            "a.yaml",
            &format!("{NS}---\n{}", deployment("web", "1", "weft/demo-tcp")),
        ),
        &opts(),
    );
    assert_ne!(changed.pods[0].name, plan.pods[3].name);

    let zero = plan_files(
        &one(
            "a.yaml",
            &format!("{NS}---\n{}", deployment("web", "0", "weft/demo-http")),
        ),
        &opts(),
    );
    assert!(zero.pods.is_empty() && zero.errors.is_empty());
}

#[test]
fn injection_follows_the_namespace_label() {
    let plain =
        deployment("web", "1", "weft/demo-http").replace("namespace: shop", "namespace: plain");
    let plan = plan_files(&one("a.yaml", &plain), &opts());
    assert!(plan.errors.is_empty(), "{:#?}", plan.errors);
    assert!(!plan.pods[0].injected);
    assert_eq!(plan.pods[0].containers.len(), 1);
    // Probes that were not rewritten keep their named port.
    assert_eq!(
        plan.pods[0].containers[0]
            .readiness
            .as_ref()
            .unwrap()
            .action,
        ProbeAction::Http {
            port: 8080,
            path: "/healthz".into()
        }
    );
    // The pod annotation opts out inside an injected namespace.
    let out = format!("{NS}---\n{}", deployment("web", "1", "weft/demo-http")).replace(
        "metadata: {labels: {app: web, version: v1}}",
        "metadata: {labels: {app: web, version: v1}, annotations: {sidecar.istio.io/inject: \"false\"}}",
    );
    let plan = plan_files(&one("a.yaml", &out), &opts());
    assert!(plan.errors.is_empty(), "{:#?}", plan.errors);
    assert!(!plan.pods[0].injected);
}

#[test]
fn bad_objects_are_named_precisely_and_the_rest_still_plans() {
    let text = format!(
        "{NS}---\n{}---\n{}---\n{}---\n{}",
        deployment("good", "1", "weft/demo-http"),
        deployment("nginx", "1", "nginx:1.25"),
        deployment("many", "900", "weft/demo-http"),
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop}
spec:
  hosts: [good]
  http:
  - route:
    - {destination: {host: good}, weight: 80}
    - {destination: {host: good}, weight: 10}
"
    );
    let mut files = one("shop.yaml", &text);
    files.insert("broken.yaml".into(), "kind: [oops\n".into());
    let plan = plan_files(&files, &opts());
    let errors: Vec<String> = plan.errors.iter().map(ToString::to_string).collect();
    assert_eq!(plan.pods.len(), 1, "{errors:#?}");
    assert!(plan.pods[0].name.starts_with("good-"));
    let find = |needle: &str| {
        errors
            .iter()
            .find(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no error with {needle:?} in {errors:#?}"))
            .clone()
    };
    assert!(find("broken.yaml[doc 1]: not valid YAML").starts_with("broken.yaml[doc 1]"));
    assert_eq!(
        find("nginx:1.25").split(": image \"").next().unwrap(),
        "shop.yaml[doc 3] Deployment shop/nginx: spec.template.spec.containers[0].image"
    );
    assert!(
        find("replica count")
            .starts_with("shop.yaml[doc 4] Deployment shop/many: spec.replicas: 900 is not")
    );
    let vs = find("weights sum to 90");
    assert!(
        vs.starts_with("shop.yaml:")
            && vs.contains("[doc 5] VirtualService shop/vs: spec.http[0].route:"),
        "{vs}"
    );
}

#[test]
fn selector_must_match_the_template() {
    let text = format!("{NS}---\n{}", deployment("web", "1", "weft/demo-http")).replace(
        "selector: {matchLabels: {app: web}}",
        "selector: {matchLabels: {app: other}}",
    );
    let plan = plan_files(&one("a.yaml", &text), &opts());
    assert!(plan.pods.is_empty());
    assert_eq!(plan.errors.len(), 1);
    assert_eq!(plan.errors[0].field, "spec.selector");
    assert!(plan.errors[0].message.contains("app=other"));
}

#[test]
fn unsupported_env_and_kinds_are_refused() {
    let text = format!("{NS}---\n{}", deployment("web", "1", "weft/demo-http")).replace(
        "ports: [{name: http",
        "env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: k}}}]\n        ports: [{name: http",
    );
    let plan = plan_files(&one("a.yaml", &text), &opts());
    assert_eq!(plan.errors.len(), 1, "{:#?}", plan.errors);
    assert!(
        plan.errors[0].field.ends_with("containers[1].env[0]")
            || plan.errors[0].field.ends_with("containers[0].env[0]"),
        "{}",
        plan.errors[0]
    );
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      containers: [{name: c, image: weft/weft}]\n";
    let plan = plan_files(&one("j.yaml", job), &opts());
    assert_eq!(plan.errors[0].field, "kind");
    assert!(
        plan.errors[0]
            .to_string()
            .starts_with("j.yaml[doc 1] Job default/j: kind: Job is not run")
    );
}

#[test]
fn vips_are_stable_and_unique() {
    let svc = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: http}}]\n"
        )
    };
    let text = format!("{}---\n{}---\n{}", svc("a"), svc("b"), svc("c"));
    let first = plan_files(&one("s.yaml", &text), &opts());
    assert!(first.errors.is_empty(), "{:#?}", first.errors);
    let vips = first.vips();
    assert_eq!(vips.len(), 3);
    let unique: std::collections::BTreeSet<_> = vips.values().collect();
    assert_eq!(unique.len(), 3);
    // A later plan with a new service keeps the old VIPs.
    let mut o = opts();
    o.previous_vips = vips.clone();
    let second = plan_files(&one("s.yaml", &format!("{text}---\n{}", svc("d"))), &o);
    for (k, v) in &vips {
        assert_eq!(second.vips()[k], *v);
    }
    // Headless services get none; an explicit clusterIP is kept.
    let text = format!(
        "{}---\n{}",
        svc("h").replace("spec:\n", "spec:\n  clusterIP: None\n"),
        svc("e").replace("spec:\n", "spec:\n  clusterIP: 10.96.7.7\n")
    );
    let plan = plan_files(&one("s.yaml", &text), &opts());
    assert_eq!(plan.service("shop", "h").unwrap().vip, None);
    assert_eq!(
        plan.service("shop", "e").unwrap().vip,
        Some(Ipv4Addr::new(10, 96, 7, 7))
    );
}
