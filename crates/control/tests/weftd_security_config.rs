//! The real `weftd` with security policies weft cannot enforce: an
//! AuthorizationPolicy with action CUSTOM (external authorization) and one
//! using JWT attributes are rejected with their field paths on
//! `/debug/config_errors` (and counted by `weft_config_errors`), while the
//! valid policies next to them in the same file are served.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to:
    - operation: {paths: [/admin/*]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: default}
spec:
  rules:
  - when:
    - key: request.auth.claims[groups]
      values: [admins]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: [/admin/*]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"#;

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to weftd's monitoring port");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: weftd\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

#[test]
fn unenforceable_policies_are_reported_and_valid_ones_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("security.yaml"), POLICIES).expect("write policies");
    let weftd = support::Weftd::start(dir.path(), ["--debounce-ms", "10"]);
    let monitoring = weftd.addr("monitoring-addr");

    // The config is loaded before the address line is printed; allow for a
    // slow first scan anyway (a liveness bound, not a timing claim).
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let resp = http_get(monitoring, "/debug/config_errors");
        let body = resp
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        if body.contains("ext-authz") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let doc: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("config_errors is JSON ({e}): {body}"));
    let problems = doc["problems"].as_array().expect("problems list");
    let find = |needle: &str| {
        problems
            .iter()
            .map(|p| p.to_string())
            .find(|p| p.contains(needle))
            .unwrap_or_else(|| panic!("no problem mentioning {needle:?} in {problems:#?}"))
    };
    let custom = find("ext-authz");
    assert!(
        custom.contains("spec.action") && custom.contains("not supported by weft"),
        "{custom}"
    );
    let jwt = find("jwt-only");
    assert!(
        jwt.contains("spec.rules[0].when[0].key") && jwt.contains("RequestAuthentication"),
        "{jwt}"
    );
    assert!(
        !problems
            .iter()
            .any(|p| p.to_string().contains("deny-admin")),
        "the valid DENY policy has no problem: {problems:#?}"
    );
    // The two valid objects are served; the two invalid ones are not.
    assert_eq!(doc["objects"], 2, "{doc}");
    let metrics = http_get(monitoring, "/metrics");
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("weft_config_errors"))
        .unwrap_or_else(|| panic!("weft_config_errors in /metrics:\n{metrics}"));
    assert!(
        errors.trim_end().ends_with(" 2"),
        "two errors counted: {errors}"
    );
}
