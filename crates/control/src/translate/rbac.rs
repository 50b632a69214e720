//! One AuthorizationPolicy rule → one Envoy RBAC `Policy`, with Istio's
//! semantics:
//!
//! - each `from` entry is one principal (an AND of its conditions), each
//!   `to` entry one permission; no `from`/`to` means any;
//! - `when` conditions are added to every principal (source/request
//!   attributes) or permission (destination attributes);
//! - a field's `values` are ORed; `notValues`/`not*` become NOT(OR);
//! - values with `*`: `*` alone means present/any, `*x` suffix, `x*`
//!   prefix; principals are matched as `spiffe://VALUE`, namespaces as the
//!   regex `.*/ns/NS/.*`;
//! - on a TCP chain the HTTP-only fields (hosts, methods, paths,
//!   request.headers, request.auth.*) cannot be evaluated: an ALLOW rule
//!   using them is dropped (less is allowed), while for DENY and AUDIT only
//!   the offending condition is dropped (more is denied/audited).
//!
//! Input is validated (weft-api's `validate`), but this module does not
//! rely on it: a value it cannot translate is handled like Istio's
//! generator errors above.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::permission::{Rule as PRule, Set as PSet};
use envoy_types::pb::envoy::config::rbac::v3::principal::{
    Authenticated, Identifier, Set as IdSet,
};
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{PathMatcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::UInt32Value;
use weft_api::security::Rule;

/// Whether errors drop the whole rule (ALLOW) or only the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// ALLOW: a condition that cannot be translated drops the rule.
    DropRule,
    /// DENY/AUDIT: it drops only that condition.
    DropCondition,
}

/// Why a condition cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError(pub String);

type R<T> = Result<T, RuleError>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(RuleError(msg.into()))
}

// === matchers ===

fn sm(pattern: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn regex(r: String) -> StringMatcher {
    sm(
        MatchPattern::SafeRegex(RegexMatcher {
            regex: r,
            ..RegexMatcher::default()
        }),
        false,
    )
}

/// RE2 escaping of a literal.
pub fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Istio's value matching with an optional prefix (`spiffe://` for
/// principals): `*` any non-empty, `*x` suffix, `x*` prefix, else exact.
pub fn string_match(v: &str, prefix: &str) -> StringMatcher {
    if v == "*" {
        regex(".+".to_string())
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            sm(MatchPattern::Suffix(rest.to_string()), false)
        } else {
            regex(format!("{}.*{}", quote_meta(prefix), quote_meta(rest)))
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        sm(MatchPattern::Prefix(format!("{prefix}{rest}")), false)
    } else {
        sm(MatchPattern::Exact(format!("{prefix}{v}")), false)
    }
}

/// A header matcher with Istio's `*` rules (`*` alone: present).
pub fn header_match(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else if let Some(rest) = v.strip_prefix('*') {
        HeaderMatchSpecifier::StringMatch(sm(MatchPattern::Suffix(rest.to_string()), ignore_case))
    } else if let Some(rest) = v.strip_suffix('*') {
        HeaderMatchSpecifier::StringMatch(sm(MatchPattern::Prefix(rest.to_string()), ignore_case))
    } else {
        HeaderMatchSpecifier::StringMatch(sm(MatchPattern::Exact(v.to_string()), ignore_case))
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        ..HeaderMatcher::default()
    }
}

/// An IP or CIDR as a range (`10.0.0.1` → /32, `fd00::1` → /128).
pub fn cidr(v: &str) -> R<CidrRange> {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (v, None),
    };
    let addr: std::net::IpAddr = ip
        .parse()
        .map_err(|_| RuleError(format!("invalid IP address {v:?}")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| RuleError(format!("invalid prefix length in {v:?}")))?,
    };
    Ok(CidrRange {
        address_prefix: addr.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

fn port(v: &str) -> R<u32> {
    v.parse::<u32>()
        .ok()
        .filter(|p| *p <= 65535)
        .ok_or_else(|| RuleError(format!("invalid port {v:?}")))
}

// === permission and principal shapes ===

fn p_rule(rule: PRule) -> Permission {
    Permission { rule: Some(rule) }
}

fn p_and(rules: Vec<Permission>) -> Permission {
    p_rule(PRule::AndRules(PSet { rules }))
}

fn p_or(rules: Vec<Permission>) -> Permission {
    p_rule(PRule::OrRules(PSet { rules }))
}

fn p_not(p: Permission) -> Permission {
    p_rule(PRule::NotRule(Box::new(p)))
}

fn id(identifier: Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn id_and(ids: Vec<Principal>) -> Principal {
    id(Identifier::AndIds(IdSet { ids }))
}

fn id_or(ids: Vec<Principal>) -> Principal {
    id(Identifier::OrIds(IdSet { ids }))
}

fn id_not(p: Principal) -> Principal {
    id(Identifier::NotId(Box::new(p)))
}

fn authenticated(m: StringMatcher) -> Principal {
    id(Identifier::Authenticated(Authenticated {
        principal_name: Some(m),
    }))
}

/// An RBAC policy that never matches (a policy without rules).
pub fn match_never() -> Policy {
    Policy {
        permissions: vec![p_not(p_rule(PRule::Any(true)))],
        principals: vec![id_not(id(Identifier::Any(true)))],
        ..Policy::default()
    }
}

// === conditions ===

/// One attribute of a rule, in the order Istio emits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    // principals
    Principal,
    RequestPrincipal,
    ServiceAccount,
    TrustDomain,
    Namespace,
    RemoteIp,
    SourceIp,
    RequestHeader,
    RequestAuth,
    // permissions
    Host,
    Method,
    Path,
    DestPort,
    DestIp,
    Sni,
}

struct Cond<'a> {
    attr: Attr,
    key: &'a str,
    values: &'a [String],
    not_values: &'a [String],
}

fn principal_of(c: &Cond<'_>, v: &str, tcp: bool, policy_ns: &str) -> R<Principal> {
    let http_only = || err(format!("{:?} is HTTP only", c.key));
    Ok(match c.attr {
        Attr::Principal => authenticated(string_match(v, "spiffe://")),
        Attr::Namespace => {
            let ns = v.split('*').map(quote_meta).collect::<Vec<_>>().join(".*");
            authenticated(regex(format!(".*/ns/{ns}/.*")))
        }
        Attr::ServiceAccount => {
            let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
            authenticated(regex(format!(
                "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                quote_meta(ns),
                quote_meta(sa)
            )))
        }
        Attr::TrustDomain => {
            let m = if v == "*" {
                sm(MatchPattern::Prefix("spiffe://".into()), false)
            } else if !v.contains('*') {
                sm(MatchPattern::Prefix(format!("spiffe://{v}/")), false)
            } else {
                let (a, b) = v.split_once('*').unwrap_or((v, ""));
                regex(format!(
                    "spiffe://{}[^/]*{}/.*",
                    quote_meta(a),
                    quote_meta(b)
                ))
            };
            authenticated(m)
        }
        Attr::SourceIp => id(Identifier::DirectRemoteIp(cidr(v)?)),
        Attr::RemoteIp => id(Identifier::RemoteIp(cidr(v)?)),
        Attr::RequestHeader => {
            if tcp {
                return http_only();
            }
            let name = c
                .key
                .strip_prefix("request.headers[")
                .and_then(|r| r.strip_suffix(']'))
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    RuleError(format!(
                        "expecting request.headers[NAME], found {:?}",
                        c.key
                    ))
                })?;
            id(Identifier::Header(header_match(name, v, false)))
        }
        Attr::RequestPrincipal | Attr::RequestAuth => {
            return err(format!(
                "{:?} needs JWT authentication (RequestAuthentication), which weft does not implement",
                c.key
            ));
        }
        _ => return err(format!("{:?} is not a source attribute", c.key)),
    })
}

fn permission_of(c: &Cond<'_>, v: &str, tcp: bool) -> R<Permission> {
    let http_only = || err(format!("{:?} is HTTP only", c.key));
    Ok(match c.attr {
        Attr::Host if tcp => return http_only(),
        Attr::Host => p_rule(PRule::Header(header_match(":authority", v, true))),
        Attr::Method if tcp => return http_only(),
        Attr::Method => p_rule(PRule::Header(header_match(":method", v, false))),
        Attr::Path if tcp => return http_only(),
        Attr::Path => {
            if v.contains("{*}") || v.contains("{**}") {
                return err(format!("path template {v:?} is not supported"));
            }
            p_rule(PRule::UrlPath(PathMatcher {
                rule: Some(PathRule::Path(string_match(v, ""))),
            }))
        }
        Attr::DestPort => p_rule(PRule::DestinationPort(port(v)?)),
        Attr::DestIp => p_rule(PRule::DestinationIp(cidr(v)?)),
        Attr::Sni => p_rule(PRule::RequestedServerName(string_match(v, ""))),
        _ => return err(format!("{:?} is not a destination attribute", c.key)),
    })
}

/// The AND-list entries of one condition: OR(values), NOT(OR(notValues)).
fn expand<T>(
    c: &Cond<'_>,
    strict: Strictness,
    one: impl Fn(&str) -> R<T>,
    or: impl Fn(Vec<T>) -> T,
    not: impl Fn(T) -> T,
) -> R<Vec<T>> {
    let mut out = Vec::new();
    for (values, negate) in [(c.values, false), (c.not_values, true)] {
        let mut any = Vec::new();
        for v in values {
            match one(v) {
                Ok(t) => any.push(t),
                Err(e) if strict == Strictness::DropRule => return Err(e),
                Err(_) => {}
            }
        }
        if !any.is_empty() {
            let t = or(any);
            out.push(if negate { not(t) } else { t });
        }
    }
    Ok(out)
}

fn when_attr(key: &str) -> R<Attr> {
    Ok(match key {
        "source.ip" => Attr::SourceIp,
        "remote.ip" => Attr::RemoteIp,
        "source.namespace" => Attr::Namespace,
        "source.principal" => Attr::Principal,
        "source.serviceAccount" => Attr::ServiceAccount,
        "source.trustDomain" => Attr::TrustDomain,
        "destination.port" => Attr::DestPort,
        "destination.ip" => Attr::DestIp,
        "connection.sni" => Attr::Sni,
        k if k.starts_with("request.headers") => Attr::RequestHeader,
        k if k.starts_with("request.auth.") => Attr::RequestAuth,
        other => return err(format!("unknown attribute {other:?}")),
    })
}

fn is_permission(a: Attr) -> bool {
    matches!(
        a,
        Attr::Host | Attr::Method | Attr::Path | Attr::DestPort | Attr::DestIp | Attr::Sni
    )
}

/// The RBAC policy of one rule; `Err` when the rule is dropped for this
/// chain (ALLOW with an untranslatable condition, or an unknown `when`
/// key for any action, as in Istio). Principals are taken as written:
/// apply [`super::trustdomain::migrate_trust_domain`] first.
pub fn policy(rule: &Rule, tcp: bool, strict: Strictness, policy_ns: &str) -> R<Policy> {
    let mut base_principal: Vec<Cond<'_>> = Vec::new();
    let mut base_permission: Vec<Cond<'_>> = Vec::new();
    for w in &rule.when {
        let attr = when_attr(&w.key)?;
        let c = Cond {
            attr,
            key: &w.key,
            values: &w.values,
            not_values: &w.not_values,
        };
        if is_permission(attr) {
            base_permission.push(c);
        } else {
            base_principal.push(c);
        }
    }
    let cond = |attr, key, values, not_values| Cond {
        attr,
        key,
        values,
        not_values,
    };
    let mut principals = Vec::new();
    let sources: Vec<Option<&weft_api::security::Source>> = if rule.from.is_empty() {
        vec![None]
    } else {
        rule.from.iter().map(|f| f.source.as_ref()).collect()
    };
    for s in sources {
        let mut conds: Vec<Cond<'_>> = Vec::new();
        if let Some(s) = s {
            conds.push(cond(
                Attr::Principal,
                "source.principal",
                &s.principals,
                &s.not_principals,
            ));
            conds.push(cond(
                Attr::RequestPrincipal,
                "request.auth.principal",
                &s.request_principals,
                &s.not_request_principals,
            ));
            conds.push(cond(
                Attr::ServiceAccount,
                "source.serviceAccount",
                &s.service_accounts,
                &s.not_service_accounts,
            ));
            conds.push(cond(
                Attr::TrustDomain,
                "source.trustDomain",
                &s.trust_domains,
                &s.not_trust_domains,
            ));
            conds.push(cond(
                Attr::Namespace,
                "source.namespace",
                &s.namespaces,
                &s.not_namespaces,
            ));
            conds.push(cond(
                Attr::RemoteIp,
                "remote.ip",
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
            ));
            conds.push(cond(
                Attr::SourceIp,
                "source.ip",
                &s.ip_blocks,
                &s.not_ip_blocks,
            ));
        }
        let mut and = Vec::new();
        for c in conds.iter().chain(base_principal.iter()) {
            if c.values.is_empty() && c.not_values.is_empty() {
                continue;
            }
            and.extend(expand(
                c,
                strict,
                |v| principal_of(c, v, tcp, policy_ns),
                id_or,
                id_not,
            )?);
        }
        if and.is_empty() {
            and.push(id(Identifier::Any(true)));
        }
        principals.push(id_and(and));
    }
    let mut permissions = Vec::new();
    let ops: Vec<Option<&weft_api::security::Operation>> = if rule.to.is_empty() {
        vec![None]
    } else {
        rule.to.iter().map(|t| t.operation.as_ref()).collect()
    };
    for o in ops {
        let mut conds: Vec<Cond<'_>> = Vec::new();
        if let Some(o) = o {
            conds.push(cond(Attr::Host, "hosts", &o.hosts, &o.not_hosts));
            conds.push(cond(Attr::Method, "methods", &o.methods, &o.not_methods));
            conds.push(cond(Attr::Path, "paths", &o.paths, &o.not_paths));
            conds.push(cond(Attr::DestPort, "ports", &o.ports, &o.not_ports));
        }
        let mut and = Vec::new();
        for c in conds.iter().chain(base_permission.iter()) {
            if c.values.is_empty() && c.not_values.is_empty() {
                continue;
            }
            and.extend(expand(
                c,
                strict,
                |v| permission_of(c, v, tcp),
                p_or,
                p_not,
            )?);
        }
        if and.is_empty() {
            and.push(p_rule(PRule::Any(true)));
        }
        permissions.push(p_and(and));
    }
    Ok(Policy {
        permissions,
        principals,
        ..Policy::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_wildcards() {
        let exact = string_match("cluster.local/ns/a/sa/b", "spiffe://");
        assert_eq!(
            exact.match_pattern,
            Some(MatchPattern::Exact(
                "spiffe://cluster.local/ns/a/sa/b".into()
            ))
        );
        assert_eq!(
            string_match("*/sa/b", "spiffe://").match_pattern,
            Some(MatchPattern::SafeRegex(RegexMatcher {
                regex: "spiffe://.*/sa/b".into(),
                ..RegexMatcher::default()
            }))
        );
        assert_eq!(
            string_match("/api/*", "").match_pattern,
            Some(MatchPattern::Prefix("/api/".into()))
        );
        assert_eq!(
            string_match("*.json", "").match_pattern,
            Some(MatchPattern::Suffix(".json".into()))
        );
        assert_eq!(
            header_match(":authority", "*", true).header_match_specifier,
            Some(HeaderMatchSpecifier::PresentMatch(true))
        );
        assert_eq!(quote_meta("a.b*c"), "a\\.b\\*c");
        assert_eq!(cidr("10.1.0.0/16").unwrap().prefix_len.unwrap().value, 16);
        assert_eq!(cidr("fd00::1").unwrap().prefix_len.unwrap().value, 128);
        assert!(cidr("10.0.0.300").is_err());
    }
}
