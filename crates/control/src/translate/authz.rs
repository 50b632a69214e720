//! AuthorizationPolicy → Envoy RBAC filters for a workload's inbound
//! chains, in Istio's order and shapes:
//!
//! - policies apply from the root namespace (mesh-wide) and the workload's
//!   namespace, when their `selector` (none = all) matches the workload's
//!   labels; policies with `targetRef(s)` are for gateways/waypoints and
//!   never apply to sidecars;
//! - one filter per action: AUDIT (`LOG`), then DENY, then ALLOW; policies
//!   annotated `istio.io/dry-run: "true"` go to `shadow_rules` (stat
//!   prefix `istio_dry_run_allow_`/`istio_dry_run_deny_`);
//! - RBAC policy names `ns[NS]-policy[NAME]-rule[INDEX]`; a policy without
//!   rules becomes one policy that never matches (an ALLOW policy without
//!   rules allows nothing);
//! - principals written with `cluster.local` or one of the mesh's trust
//!   domain aliases match every trust domain of the mesh (Istio's trust
//!   domain migration);
//! - HTTP chains get `envoy.filters.http.rbac`, TCP chains
//!   `envoy.filters.network.rbac` (stat prefix `tcp.`), see [`rbac`] for
//!   what HTTP-only fields do on TCP;
//! - CUSTOM (external authorization) is not implemented: validation rejects
//!   it, and one that reaches translation anyway fails closed as Istio does
//!   for an unknown provider: a DENY filter, placed first, denies every
//!   request its rules match.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::rbac::v3::Rbac;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfig;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use weft_api::registry::labels_match;
use weft_api::security::{AuthorizationAction, AuthorizationPolicy};
use weft_api::{Object, Resource};

use super::node::ProxyNode;
use super::pb;
use super::rbac::{self, Strictness};
use super::trustdomain;

/// HTTP filter name of RBAC.
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
/// Network filter name of RBAC.
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Annotation turning a policy into a dry run.
pub const DRY_RUN: &str = "istio.io/dry-run";

fn spec(o: &Object) -> Option<&AuthorizationPolicy> {
    match &o.spec {
        Resource::AuthorizationPolicy(ap) => Some(ap),
        _ => None,
    }
}

/// The policies that apply to `node`, in key order.
pub fn policies_for<'a>(
    all: &'a [Arc<Object>],
    root_namespace: &str,
    node: &ProxyNode,
) -> Vec<&'a Object> {
    all.iter()
        .filter(|o| o.namespace() == root_namespace || o.namespace() == node.namespace)
        .filter(|o| {
            spec(o).is_some_and(|ap| {
                ap.target_ref.is_none()
                    && ap.target_refs.is_empty()
                    && ap
                        .selector
                        .as_ref()
                        .is_none_or(|s| labels_match(&s.match_labels, &node.labels))
            })
        })
        .map(Arc::as_ref)
        .collect()
}

/// The RBAC filters of one workload: built once, cloned into each chain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthzFilters {
    /// For HTTP connection managers, before the router.
    pub http: Vec<HttpFilter>,
    /// For TCP chains, before the TCP proxy.
    pub tcp: Vec<Filter>,
}

impl AuthzFilters {
    /// Builds the filters for the policies that apply to a workload;
    /// `trust_domains` are the mesh's trust domain then its aliases.
    pub fn new(policies: &[&Object], trust_domains: &[String]) -> AuthzFilters {
        let mut out = AuthzFilters::default();
        let groups: [(AuthorizationAction, Action); 4] = [
            (AuthorizationAction::Custom, Action::Deny),
            (AuthorizationAction::Audit, Action::Log),
            (AuthorizationAction::Deny, Action::Deny),
            (AuthorizationAction::Allow, Action::Allow),
        ];
        for (kind, action) in groups {
            let group: Vec<&Object> = policies
                .iter()
                .copied()
                .filter(|o| {
                    spec(o)
                        .is_some_and(|ap| ap.action.unwrap_or(AuthorizationAction::Allow) == kind)
                })
                .collect();
            if group.is_empty() {
                continue;
            }
            let custom = kind == AuthorizationAction::Custom;
            if custom {
                tracing::warn!(
                    policies = ?group.iter().map(|o| format!("{}/{}", o.namespace(), o.name())).collect::<Vec<_>>(),
                    "AuthorizationPolicy action CUSTOM is not supported; denying the requests its rules match"
                );
            }
            let (rules, shadow) = build_rules(&group, action, false, custom, trust_domains);
            out.http.push(HttpFilter {
                name: HTTP_RBAC.to_string(),
                config_type: Some(HttpConfig::TypedConfig(pb::any(&HttpRbac {
                    shadow_rules_stat_prefix: shadow_prefix(shadow.as_ref()),
                    rules,
                    shadow_rules: shadow,
                    ..HttpRbac::default()
                }))),
                ..HttpFilter::default()
            });
            let (rules, shadow) = build_rules(&group, action, true, custom, trust_domains);
            out.tcp.push(Filter {
                name: NETWORK_RBAC.to_string(),
                config_type: Some(ConfigType::TypedConfig(pb::any(&NetworkRbac {
                    stat_prefix: "tcp.".to_string(),
                    shadow_rules_stat_prefix: shadow_prefix(shadow.as_ref()),
                    rules,
                    shadow_rules: shadow,
                    ..NetworkRbac::default()
                }))),
            });
        }
        out
    }
}

fn shadow_prefix(shadow: Option<&Rbac>) -> String {
    match shadow.map(|r| r.action) {
        Some(a) if a == Action::Allow as i32 => "istio_dry_run_allow_".to_string(),
        Some(a) if a == Action::Deny as i32 => "istio_dry_run_deny_".to_string(),
        _ => String::new(),
    }
}

/// `(rules, shadow_rules)` of one action's policies for HTTP or TCP.
fn build_rules(
    group: &[&Object],
    action: Action,
    tcp: bool,
    custom: bool,
    trust_domains: &[String],
) -> (Option<Rbac>, Option<Rbac>) {
    let strict = if action == Action::Allow {
        Strictness::DropRule
    } else {
        Strictness::DropCondition
    };
    let mut enforce: Option<HashMap<String, _>> = None;
    let mut shadow: Option<HashMap<String, _>> = None;
    for o in group {
        let Some(ap) = spec(o) else { continue };
        let dry_run = o
            .meta
            .annotations
            .get(DRY_RUN)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let target = if dry_run { &mut shadow } else { &mut enforce };
        let target = target.get_or_insert_with(HashMap::new);
        let name = |i: usize| {
            let base = format!("ns[{}]-policy[{}]-rule[{i}]", o.namespace(), o.name());
            if custom {
                format!("istio-ext-authz-{base}-deny-due-to-bad-CUSTOM-action")
            } else {
                base
            }
        };
        let rules = ap.rules.as_deref().unwrap_or_default();
        if rules.is_empty() {
            target.insert(name(0), rbac::match_never());
        }
        for (i, rule) in rules.iter().enumerate() {
            let rule = trustdomain::migrate_trust_domain(rule, trust_domains);
            match rbac::policy(&rule, tcp, strict, o.namespace()) {
                Ok(p) => {
                    target.insert(name(i), p);
                }
                Err(e) => tracing::debug!(
                    policy = %name(i),
                    tcp,
                    reason = %e.0,
                    "AuthorizationPolicy rule skipped on this filter chain"
                ),
            }
        }
    }
    let wrap = |policies: Option<HashMap<String, _>>| {
        policies.map(|policies| Rbac {
            action: action as i32,
            policies,
            ..Rbac::default()
        })
    };
    (wrap(enforce), wrap(shadow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use weft_api::{Kind, ObjectMeta, Origin};

    fn policy(ns: &str, name: &str, annotations: &[(&str, &str)], spec: &str) -> Arc<Object> {
        Arc::new(Object {
            api_version: "security.istio.io/v1".into(),
            kind: Kind::AuthorizationPolicy,
            meta: ObjectMeta {
                name: name.into(),
                namespace: Some(ns.into()),
                annotations: annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
                ..ObjectMeta::default()
            },
            spec: Resource::AuthorizationPolicy(serde_yaml::from_str(spec).expect("spec")),
            origin: Origin::default(),
        })
    }

    fn http_rbac(f: &HttpFilter) -> HttpRbac {
        match &f.config_type {
            Some(HttpConfig::TypedConfig(any)) => HttpRbac::decode(any.value.as_slice()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn node(labels: &[(&'static str, &'static str)]) -> ProxyNode {
        ProxyNode::sidecar("default", "web-1", "10.0.0.1", labels.iter().copied())
    }

    #[test]
    fn selection_scope_and_order() {
        let all = vec![
            policy(
                "istio-system",
                "mesh-audit",
                &[],
                "action: AUDIT\nrules: [{}]\n",
            ),
            policy(
                "default",
                "allow-web",
                &[],
                "selector: {matchLabels: {app: web}}\nrules: [{}]\n",
            ),
            policy("default", "deny-all", &[], "action: DENY\nrules: [{}]\n"),
            policy(
                "default",
                "other-app",
                &[],
                "selector: {matchLabels: {app: db}}\nrules: [{}]\n",
            ),
            policy("other", "other-ns", &[], "rules: [{}]\n"),
            policy(
                "default",
                "gateway",
                &[],
                "targetRefs: [{kind: Gateway, name: gw}]\nrules: [{}]\n",
            ),
        ];
        let picked = policies_for(&all, "istio-system", &node(&[("app", "web")]));
        let names: Vec<&str> = picked.iter().map(|o| o.name()).collect();
        assert_eq!(names, ["mesh-audit", "allow-web", "deny-all"]);
        let f = AuthzFilters::new(&picked, &["cluster.local".to_string()]);
        let actions: Vec<i32> = f
            .http
            .iter()
            .map(|f| http_rbac(f).rules.unwrap().action)
            .collect();
        assert_eq!(
            actions,
            [
                Action::Log as i32,
                Action::Deny as i32,
                Action::Allow as i32
            ],
            "AUDIT, then DENY, then ALLOW"
        );
        assert_eq!(f.tcp.len(), 3);
    }

    #[test]
    fn dry_run_goes_to_shadow_rules_and_no_rules_allow_nothing() {
        let all = vec![
            policy("default", "nothing", &[], "{}\n"),
            policy("default", "try", &[(DRY_RUN, "true")], "rules: [{}]\n"),
        ];
        let f = AuthzFilters::new(
            &policies_for(&all, "istio-system", &node(&[])),
            &["cluster.local".to_string()],
        );
        let rbac = http_rbac(&f.http[0]);
        let rules = rbac.rules.unwrap();
        assert_eq!(rules.action, Action::Allow as i32);
        let never = &rules.policies["ns[default]-policy[nothing]-rule[0]"];
        assert_eq!(never, &rbac::match_never());
        let shadow = rbac.shadow_rules.unwrap();
        assert!(
            shadow
                .policies
                .contains_key("ns[default]-policy[try]-rule[0]")
        );
        assert_eq!(rbac.shadow_rules_stat_prefix, "istio_dry_run_allow_");
    }

    #[test]
    fn custom_fails_closed_as_a_deny_filter_first() {
        let all = vec![
            policy("default", "allow", &[], "rules: [{}]\n"),
            policy(
                "default",
                "ext",
                &[],
                "action: CUSTOM\nprovider: {name: opa}\nrules:\n- to:\n  - operation: {paths: [/admin/*]}\n",
            ),
        ];
        let f = AuthzFilters::new(
            &policies_for(&all, "istio-system", &node(&[])),
            &["cluster.local".to_string()],
        );
        let first = http_rbac(&f.http[0]).rules.unwrap();
        assert_eq!(first.action, Action::Deny as i32);
        let (name, p) = first.policies.iter().next().unwrap();
        assert_eq!(
            name,
            "istio-ext-authz-ns[default]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"
        );
        assert!(
            format!("{:?}", p.permissions).contains("/admin/"),
            "the CUSTOM rule's match is what is denied: {p:?}"
        );
        assert_eq!(
            http_rbac(&f.http[1]).rules.unwrap().action,
            Action::Allow as i32
        );
    }

    #[test]
    fn http_only_fields_on_tcp() {
        let all = vec![
            policy(
                "default",
                "allow",
                &[],
                "rules:\n- to:\n  - operation: {methods: [GET]}\n- to:\n  - operation: {ports: [\"80\"]}\n",
            ),
            policy(
                "default",
                "deny",
                &[],
                "action: DENY\nrules:\n- to:\n  - operation: {methods: [POST], ports: [\"81\"]}\n",
            ),
        ];
        let f = AuthzFilters::new(
            &policies_for(&all, "istio-system", &node(&[])),
            &["cluster.local".to_string()],
        );
        let tcp = |i: usize| match &f.tcp[i].config_type {
            Some(ConfigType::TypedConfig(any)) => {
                NetworkRbac::decode(any.value.as_slice()).unwrap()
            }
            other => panic!("{other:?}"),
        };
        // DENY: the method condition is dropped, the port kept (wider).
        let deny = tcp(0).rules.unwrap();
        let p = &deny.policies["ns[default]-policy[deny]-rule[0]"];
        let text = format!("{:?}", p.permissions);
        assert!(
            text.contains("DestinationPort(81)") && !text.contains("POST"),
            "{text}"
        );
        // ALLOW: the rule using methods is dropped entirely (narrower).
        let allow = tcp(1).rules.unwrap();
        assert!(
            !allow
                .policies
                .contains_key("ns[default]-policy[allow]-rule[0]")
        );
        assert!(
            allow
                .policies
                .contains_key("ns[default]-policy[allow]-rule[1]")
        );
        let http = http_rbac(&f.http[1]).rules.unwrap();
        assert_eq!(http.policies.len(), 2, "both ALLOW rules apply to HTTP");
    }
}
