//! Unit tests of RBAC compilation and evaluation against Envoy's semantics.

use super::matcher::{Attrs, PeerCert};
use super::*;
use crate::config::pool;
use prost_reflect::DynamicMessage;

/// Parses an `envoy.config.rbac.v3.RBAC` from YAML.
fn engine(yaml: &str) -> Result<Engine, ConfigError> {
    let desc = pool()
        .get_message_by_name("envoy.config.rbac.v3.RBAC")
        .expect("RBAC descriptor");
    let de = serde_yaml::Deserializer::from_str(yaml);
    let msg = DynamicMessage::deserialize(desc, de).expect("valid RBAC yaml");
    let pb: PbRules = msg.transcode_to().expect("transcode");
    Engine::compile(&Ctx::new("test", "rules"), &pb)
}

struct Req {
    method: &'static str,
    path: &'static str,
    headers: http::HeaderMap,
    remote: &'static str,
    xff_remote: Option<&'static str>,
    dest: &'static str,
    sni: &'static str,
    uri_sans: Vec<String>,
}

impl Req {
    fn new(method: &'static str, path: &'static str) -> Req {
        Req {
            method,
            path,
            headers: http::HeaderMap::new(),
            remote: "10.0.0.5",
            xff_remote: None,
            dest: "10.0.0.9:8080",
            sni: "",
            uri_sans: Vec::new(),
        }
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.append(k, http::HeaderValue::from_static(v));
        self
    }
    fn principal(mut self, p: &str) -> Req {
        self.uri_sans = vec![p.to_owned()];
        self
    }
    fn allowed(&self, e: &Engine) -> (bool, Option<String>) {
        let view = RequestView {
            method: self.method,
            path_and_query: self.path,
            headers: &self.headers,
        };
        let remote = self.remote.parse().unwrap();
        let attrs = Attrs {
            request: Some(&view),
            direct_remote: remote,
            remote: self
                .xff_remote
                .map(|r| r.parse().unwrap())
                .unwrap_or(remote),
            destination: self.dest.parse().unwrap(),
            server_name: self.sni,
            peer: (!self.uri_sans.is_empty()).then_some(PeerCert {
                uri_sans: &self.uri_sans,
                dns_sans: &[],
                subject: "",
            }),
        };
        let v = e.evaluate(&attrs);
        (v.allowed, v.policy.map(|p| p.name.to_string()))
    }
}

#[test]
fn allow_policy_matches_method_and_path_prefix_ignoring_query() {
    let e = engine(
        r#"
action: ALLOW
policies:
  get-api:
    permissions:
    - and_rules: {rules: [{header: {name: ":method", string_match: {exact: GET}}}, {url_path: {path: {prefix: /api/}}}]}
    principals: [{any: true}]
"#,
    )
    .unwrap();
    assert_eq!(
        Req::new("GET", "/api/x?q=/admin").allowed(&e),
        (true, Some("get-api".into()))
    );
    assert_eq!(Req::new("POST", "/api/x").allowed(&e), (false, None));
    // The query string is not part of url_path.
    assert_eq!(Req::new("GET", "/other?p=/api/").allowed(&e), (false, None));
}

#[test]
fn deny_action_and_first_policy_in_name_order_is_reported() {
    let e = engine(
        r#"
action: DENY
policies:
  zeta: {permissions: [{any: true}], principals: [{any: true}]}
  alpha: {permissions: [{destination_port: 8080}], principals: [{any: true}]}
"#,
    )
    .unwrap();
    let (allowed, policy) = Req::new("GET", "/").allowed(&e);
    assert!(!allowed);
    assert_eq!(policy.as_deref(), Some("alpha"));
    let v = e.policies.first().unwrap();
    assert_eq!(v.denied_details, "rbac_access_denied_matched_policy[alpha]");
}

#[test]
fn principals_ip_blocks_remote_ip_and_spiffe_namespaces() {
    let e = engine(
        r#"
action: ALLOW
policies:
  ns-foo:
    permissions: [{any: true}]
    principals: [{authenticated: {principal_name: {safe_regex: {regex: ".*/ns/foo/.*"}}}}]
  office:
    permissions: [{any: true}]
    principals: [{and_ids: {ids: [{direct_remote_ip: {address_prefix: 10.0.0.0, prefix_len: 24}}, {not_id: {remote_ip: {address_prefix: 192.168.1.7, prefix_len: 32}}}]}}]
"#,
    )
    .unwrap();
    assert!(
        Req::new("GET", "/").allowed(&e).0,
        "10.0.0.5 is in 10.0.0.0/24"
    );
    let mut far = Req::new("GET", "/");
    far.remote = "10.1.0.5";
    assert!(!far.allowed(&e).0);
    let mut blocked = Req::new("GET", "/");
    blocked.xff_remote = Some("192.168.1.7");
    assert!(!blocked.allowed(&e).0, "remote_ip 192.168.1.7 is excluded");
    let mtls = far.principal("spiffe://cluster.local/ns/foo/sa/client");
    assert_eq!(mtls.allowed(&e), (true, Some("ns-foo".into())));
    let other = Req::new("GET", "/").principal("spiffe://cluster.local/ns/bar/sa/client");
    // Allowed by the IP policy only.
    assert_eq!(other.allowed(&e), (true, Some("office".into())));
}

#[test]
fn repeated_headers_are_joined_with_commas() {
    let e = engine(
        r#"
action: ALLOW
policies:
  both:
    permissions: [{header: {name: x-team, string_match: {exact: "a,b"}}}]
    principals: [{any: true}]
"#,
    )
    .unwrap();
    let r = Req::new("GET", "/")
        .header("x-team", "a")
        .header("x-team", "b");
    assert!(r.allowed(&e).0);
    assert!(!Req::new("GET", "/").header("x-team", "a").allowed(&e).0);
}

#[test]
fn log_action_allows_everything() {
    let e = engine(
        r#"
action: LOG
policies:
  p: {permissions: [{any: true}], principals: [{any: true}]}
"#,
    )
    .unwrap();
    assert_eq!(Req::new("GET", "/").allowed(&e), (true, Some("p".into())));
}

#[test]
fn ports_ranges_and_sni() {
    let e = engine(
        r#"
action: ALLOW
policies:
  p:
    permissions:
    - or_rules: {rules: [{destination_port_range: {start: 9000, end: 9100}}, {requested_server_name: {exact: a.example}}]}
    principals: [{any: true}]
"#,
    )
    .unwrap();
    let mut r = Req::new("GET", "/");
    assert!(!r.allowed(&e).0);
    r.dest = "10.0.0.9:9099";
    assert!(r.allowed(&e).0);
    r.dest = "10.0.0.9:9100";
    assert!(!r.allowed(&e).0, "the range end is exclusive");
    r.sni = "a.example";
    assert!(r.allowed(&e).0);
}

#[test]
fn authenticated_needs_a_tls_peer() {
    let e = engine(
        r#"
action: ALLOW
policies:
  any-peer: {permissions: [{any: true}], principals: [{authenticated: {}}]}
"#,
    )
    .unwrap();
    assert!(!Req::new("GET", "/").allowed(&e).0);
    assert!(
        Req::new("GET", "/")
            .principal("spiffe://cluster.local/ns/a/sa/b")
            .allowed(&e)
            .0
    );
}

#[test]
fn unsupported_fields_are_refused_with_their_path() {
    let err = engine(
        r#"
action: ALLOW
policies:
  p:
    permissions: [{any: true}]
    principals: [{filter_state: {key: k, string_match: {exact: v}}}]
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("rules.policies.p.principals[0].filter_state"),
        "{err}"
    );
    let err = engine("action: ALLOW\npolicies:\n  p: {permissions: [{any: true}]}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("principals"), "{err}");
}
