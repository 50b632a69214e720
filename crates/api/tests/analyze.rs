//! `analyze_dir` over a temporary directory of good and broken files, and
//! the cross-object rules (unknown subsets, missing gateways).

mod common;

use common::{files, fixture};
use weft_api::{analyze_dir, analyze_files};

const REVIEWS_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

const BAD_VS: &str = "# two documents; the second one is broken
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v3}
      weight: 10
";

#[test]
fn good_fixtures_are_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in [
        "bookinfo.yaml",
        "routing.yaml",
        "egress.yaml",
        "security.yaml",
        "mesh.yaml",
    ] {
        std::fs::write(dir.path().join(f), fixture(f)).expect("write");
    }
    let report = analyze_dir(dir.path()).expect("analyze");
    assert_eq!(report.files, 5);
    assert_eq!(report.objects, 25);
    assert!(!report.has_errors(), "unexpected errors:\n{report}");
}

#[test]
fn broken_files_are_reported_one_line_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("bad")).expect("mkdir");
    std::fs::write(dir.path().join("dr.yaml"), REVIEWS_DR).expect("write");
    std::fs::write(dir.path().join("bad/vs.yaml"), BAD_VS).expect("write");
    std::fs::write(
        dir.path().join("bad/syntax.yml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n   bad: indent\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
    std::fs::write(dir.path().join(".hidden.yaml"), "not yaml: [").expect("write");

    let report = analyze_dir(dir.path()).expect("analyze");
    assert!(report.has_errors());
    let d = dir.path().display();
    let text = report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.contains(&format!("{d}/bad/vs.yaml[doc 2] VirtualService default/reviews: spec.http[0].route: weights sum to 90, must be 100").as_str()), "{text}");
    assert!(lines.contains(&format!("{d}/bad/vs.yaml[doc 2] VirtualService default/reviews: spec.http[0].route[1].destination.subset: subset \"v3\" of host reviews.default.svc.cluster.local is not defined by DestinationRule default/reviews").as_str()), "{text}");
    // The alternate form leads with the line of the field.
    let with_lines: Vec<String> = report.problems.iter().map(|p| format!("{p:#}")).collect();
    assert!(with_lines.contains(&format!("{d}/bad/vs.yaml:17 [doc 2] VirtualService default/reviews: spec.http[0].route: weights sum to 90, must be 100")), "{with_lines:#?}");
    assert!(
        with_lines
            .iter()
            .any(|l| l.starts_with(&format!("{d}/bad/vs.yaml:20 [doc 2]"))
                && l.contains("subset \"v3\"")),
        "{with_lines:#?}"
    );
    assert!(
        with_lines
            .iter()
            .any(|l| l.starts_with(&format!("{d}/bad/syntax.yml:5 [doc 1]"))),
        "{with_lines:#?}"
    );
    let syntax = lines
        .iter()
        .find(|l| l.contains("syntax.yml"))
        .expect("syntax line");
    assert!(
        syntax.starts_with(&format!("{d}/bad/syntax.yml[doc 1]: invalid YAML (line 5)")),
        "{syntax}"
    );
}

#[test]
fn missing_directory_is_an_error() {
    let err = analyze_dir("/nonexistent/weft-config").expect_err("missing dir");
    assert!(err.to_string().contains("/nonexistent/weft-config"));
}

#[test]
fn unknown_subset_without_any_destination_rule() {
    let report = analyze_files(&files(&[(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: cart, subset: v9}\n    mirror: {host: cart.shop.svc.cluster.local, subset: v1}\n",
    )]));
    let errs: Vec<String> = report
        .errors()
        .map(|p| format!("{}: {}", p.error.path, p.error.message))
        .collect();
    assert_eq!(
        errs,
        [
            "spec.http[0].mirror.subset: subset \"v1\" of host cart.shop.svc.cluster.local is not defined: no DestinationRule exists for that host",
            "spec.http[0].route[0].destination.subset: subset \"v9\" of host cart.shop.svc.cluster.local is not defined: no DestinationRule exists for that host",
        ]
    );
}

#[test]
fn subsets_resolve_across_namespaces_and_wildcards() {
    let dr_other_ns = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}]\n";
    let dr_wild = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ext, namespace: default}\nspec:\n  host: \"*.example.com\"\n  subsets: [{name: eu, labels: {region: eu}}]\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: front, namespace: web}\nspec:\n  hosts: [front.example.com]\n  http:\n  - route:\n    - destination: {host: reviews.bookinfo.svc.cluster.local, subset: v1}\n      weight: 50\n    - destination: {host: api.example.com, subset: eu}\n      weight: 50\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    let report = analyze_files(&files(&[
        ("a.yaml", dr_other_ns),
        ("b.yaml", dr_wild),
        ("c.yaml", vs),
    ]));
    let errs: Vec<String> = report.errors().map(|p| p.error.path.clone()).collect();
    // `reviews` in namespace web means reviews.web.svc.cluster.local: no rule.
    assert_eq!(
        errs,
        ["spec.http[1].route[0].destination.subset"],
        "{report}"
    );
}

#[test]
fn missing_gateway_and_duplicate_objects() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: front, namespace: web}\nspec:\n  hosts: [front.example.com]\n  gateways: [mesh, istio-system/ingress, web-gw]\n  http:\n  - route:\n    - destination: {host: front}\n";
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: web-gw, namespace: web}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
    let report = analyze_files(&files(&[("a.yaml", vs), ("b.yaml", gw), ("c.yaml", gw)]));
    let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "a.yaml[doc 1] VirtualService web/front: spec.gateways[1]: gateway istio-system/ingress is not defined",
            "c.yaml[doc 1] Gateway web/web-gw: metadata.name: duplicate object: already defined at b.yaml[doc 1]",
        ]
    );
}

#[test]
fn two_virtual_services_for_one_host_on_the_mesh() {
    let a = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, namespace: shop}\nspec:\n  hosts: [cart]\n  http:\n  - route:\n    - destination: {host: cart}\n";
    let b = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b, namespace: shop}\nspec:\n  hosts: [other.example.com, cart.shop.svc.cluster.local]\n  http:\n  - route:\n    - destination: {host: cart}\n";
    let report = analyze_files(&files(&[("a.yaml", a), ("b.yaml", b)]));
    let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "b.yaml[doc 1] VirtualService shop/b: spec.hosts[1]: host cart.shop.svc.cluster.local is also claimed by VirtualService shop/a on the mesh gateway; merge them into one"
        ]
    );
}

#[test]
fn unimplemented_istio_kinds_are_warned_about_and_other_kinds_ignored() {
    let ef = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: default}\nspec: {configPatches: []}\n";
    let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n";
    let report = analyze_files(&files(&[("ef.yaml", ef), ("dep.yaml", dep)]));
    assert!(!report.has_errors());
    let warnings: Vec<String> = report.warnings().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "ef.yaml[doc 1] EnvoyFilter default/f: warning: kind: networking.istio.io/v1alpha3 EnvoyFilter is not implemented by Weft and is ignored"
        ]
    );
}
