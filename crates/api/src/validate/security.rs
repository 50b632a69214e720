//! PeerAuthentication and AuthorizationPolicy rules: Istio's validating
//! webhook (structure, IPs, ports, `when` attributes, path templates), plus
//! what weft cannot enforce and therefore rejects rather than silently
//! ignoring: action CUSTOM (external authorization), JWT attributes
//! (`requestPrincipals`, `request.auth.*`: weft has no
//! RequestAuthentication), `experimental.envoy.filters.*` keys and path
//! templates (`{*}`, `{**}`).

use std::collections::BTreeMap;

use super::common::*;
use super::{Errs, at, idx};
use crate::networking::LabelSelector;
use crate::security::*;

fn selector(sel: &Option<LabelSelector>, p: &str, e: &mut Errs) {
    if let Some(s) = sel {
        check_labels(&s.match_labels, &at(p, "matchLabels"), e);
        if s.match_labels.is_empty() {
            e.warn(
                p,
                "selector without matchLabels selects every workload in the namespace",
            );
        }
    }
}

pub(super) fn validate_peer_authentication(pa: &PeerAuthentication, e: &mut Errs) {
    selector(&pa.selector, "spec.selector", e);
    let empty_selector = pa
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    let ports = pa.port_level_mtls.as_ref();
    if ports.is_some_and(BTreeMap::is_empty) {
        e.err(
            "spec.portLevelMtls",
            "port level mTLS, if defined, must have at least one element",
        );
    }
    if empty_selector && ports.is_some_and(|p| !p.is_empty()) {
        e.err(
            "spec.portLevelMtls",
            "mesh/namespace peer authentication cannot have port level mTLS",
        );
    }
    for port in ports.into_iter().flat_map(BTreeMap::keys) {
        e.check(
            at("spec.portLevelMtls", &port.0.to_string()),
            validate_port(port.0),
        );
    }
}

pub(super) fn validate_authorization_policy(ap: &AuthorizationPolicy, e: &mut Errs) {
    selector(&ap.selector, "spec.selector", e);
    let refs = usize::from(ap.target_ref.is_some()) + usize::from(!ap.target_refs.is_empty());
    if ap.selector.is_some() && refs > 0 {
        e.err(
            "spec",
            "only one of selector, targetRef or targetRefs may be set",
        );
    }
    if ap.target_ref.is_some() && !ap.target_refs.is_empty() {
        e.err("spec", "only one of targetRef or targetRefs may be set");
    }
    let mut all_refs: Vec<(String, &PolicyTargetReference)> = Vec::new();
    if let Some(r) = &ap.target_ref {
        all_refs.push(("spec.targetRef".into(), r));
    }
    for (i, r) in ap.target_refs.iter().enumerate() {
        all_refs.push((idx("spec.targetRefs", i), r));
    }
    for (p, r) in all_refs {
        if r.kind.is_empty() {
            e.err(at(&p, "kind"), "required field is missing");
        }
        if r.name.is_empty() {
            e.err(at(&p, "name"), "required field is missing");
        }
    }
    let action = ap.action.unwrap_or(AuthorizationAction::Allow);
    if action == AuthorizationAction::Custom {
        e.err(
            "spec.action",
            "CUSTOM (external authorization through an ext_authz provider) is not supported by weft; \
             use ALLOW/DENY rules instead (a CUSTOM policy that reaches a proxy anyway denies the requests its rules match)",
        );
    }
    if action == AuthorizationAction::Deny && ap.rules.is_none() {
        e.err(
            "spec.rules",
            "DENY action without rules is never triggered; add an empty rule {} to deny every request",
        );
    }
    if action == AuthorizationAction::Custom {
        match &ap.rules {
            None => e.err(
                "spec.rules",
                "CUSTOM action without rules is never triggered; add an empty rule {} to match every request",
            ),
            Some(_) => {
                if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                    e.err("spec.provider.name", "provider.name must not be empty for CUSTOM action");
                }
            }
        }
    } else if ap.provider.is_some() {
        e.err(
            "spec.provider",
            "provider may only be set with action CUSTOM",
        );
    }
    for (i, rule) in ap.rules.iter().flatten().enumerate() {
        let rp = idx("spec.rules", i);
        for (j, from) in rule.from.iter().enumerate() {
            let fp = idx(&at(&rp, "from"), j);
            match &from.source {
                None => e.err(at(&fp, "source"), "source is required"),
                Some(src) => {
                    let sp = at(&fp, "source");
                    if !src.service_accounts.is_empty()
                        && (!src.namespaces.is_empty() || !src.principals.is_empty())
                    {
                        e.err(
                            &sp,
                            "cannot set serviceAccounts with namespaces or principals",
                        );
                    }
                    if src.fields().iter().all(|(_, v)| v.is_empty()) {
                        e.err(&sp, "source must have at least one field");
                    }
                    for (name, values) in src.fields() {
                        empty_values(values, &at(&sp, name), e);
                        let vp = at(&sp, name);
                        for (k, v) in values.iter().enumerate() {
                            let r = match name {
                                "ipBlocks" | "notIpBlocks" | "remoteIpBlocks"
                                | "notRemoteIpBlocks" => validate_ip_subnet(v),
                                "requestPrincipals" | "notRequestPrincipals" => Err(no_jwt(name)),
                                "serviceAccounts" | "notServiceAccounts" => service_account(v),
                                _ => wildcard(v),
                            };
                            e.check(idx(&vp, k), r);
                        }
                    }
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let tp = idx(&at(&rp, "to"), j);
            match &to.operation {
                None => e.err(at(&tp, "operation"), "operation is required"),
                Some(op) => {
                    let op_p = at(&tp, "operation");
                    if op.fields().iter().all(|(_, v)| v.is_empty()) {
                        e.err(&op_p, "operation must have at least one field");
                    }
                    for (name, values) in op.fields() {
                        empty_values(values, &at(&op_p, name), e);
                        if !matches!(name, "ports" | "notPorts") {
                            for (k, v) in values.iter().enumerate() {
                                let r = if name.ends_with("aths") {
                                    path(v)
                                } else {
                                    wildcard(v)
                                };
                                e.check(idx(&at(&op_p, name), k), r);
                            }
                        }
                    }
                    for (name, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                        for (k, v) in values.iter().enumerate() {
                            let ok = v.parse::<u32>().is_ok_and(|n| validate_port(n).is_ok());
                            if !ok {
                                e.err(
                                    idx(&at(&op_p, name), k),
                                    format!("invalid port {v:?}: must be 1..65535"),
                                );
                            }
                        }
                    }
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let cp = idx(&at(&rp, "when"), j);
            if cond.key.is_empty() {
                e.err(at(&cp, "key"), "key must not be empty");
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                e.err(&cp, "at least one of values or notValues must be set");
            }
            if !cond.key.is_empty() {
                e.check(at(&cp, "key"), when_key(&cond.key));
            }
            for (field, values) in [("values", &cond.values), ("notValues", &cond.not_values)] {
                empty_values(values, &at(&cp, field), e);
                for (k, v) in values.iter().enumerate() {
                    e.check(idx(&at(&cp, field), k), when_value(&cond.key, v));
                }
            }
            if action == AuthorizationAction::Custom
                && (cond.key.starts_with("source.") || cond.key.starts_with("request.auth."))
            {
                e.err(
                    at(&cp, "key"),
                    format!("{} is not supported with CUSTOM action", cond.key),
                );
            }
        }
    }
}

fn empty_values(values: &[String], p: &str, e: &mut Errs) {
    for (k, v) in values.iter().enumerate() {
        if v.is_empty() {
            e.err(idx(p, k), "empty value is not allowed");
        }
    }
}

fn no_jwt(what: &str) -> String {
    format!(
        "{what} needs JWT authentication (RequestAuthentication), which weft does not implement"
    )
}

/// Istio's `*` forms: alone, leading or trailing; anywhere else it would be
/// matched literally, which is never what was meant.
fn wildcard(v: &str) -> Result<(), String> {
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') {
        return Err(format!(
            "{v:?}: '*' is only supported alone, as a prefix or as a suffix"
        ));
    }
    Ok(())
}

fn path(v: &str) -> Result<(), String> {
    if v.contains('{') || v.contains('}') {
        return Err(format!(
            "{v:?}: path templates ({{*}}, {{**}}) are not supported by weft"
        ));
    }
    wildcard(v)
}

/// `NAME` or `NAMESPACE/NAME`, no wildcards.
fn service_account(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty() || p.contains('*')) {
        return Err(format!(
            "{v:?}: service account must be NAME or NAMESPACE/NAME, without wildcards"
        ));
    }
    Ok(())
}

/// `a[b]` (Istio's map keys such as `request.headers[x-user]`).
fn map_key(key: &str) -> Result<(), String> {
    match key.find('[') {
        Some(open) if key.ends_with(']') && open > 0 && open < key.len() - 2 => Ok(()),
        _ => Err(format!("bad key {key:?}: should have the form {key}[NAME]")),
    }
}

/// The attributes a `when` condition may name (Istio's list), minus what
/// weft cannot evaluate.
fn when_key(key: &str) -> Result<(), String> {
    match key {
        "source.ip"
        | "remote.ip"
        | "source.namespace"
        | "source.principal"
        | "source.serviceAccount"
        | "source.trustDomain"
        | "destination.ip"
        | "destination.port"
        | "connection.sni" => Ok(()),
        k if k.starts_with("request.headers") => map_key(k),
        k if k.starts_with("request.auth.") => Err(no_jwt(k)),
        k if k.starts_with("experimental.envoy.filters.") => Err(format!(
            "{k}: experimental Envoy metadata attributes are not supported by weft"
        )),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the policy's metadata.namespace"
        )),
        k if k.starts_with("destination.labels") => Err(format!(
            "attribute {k} is replaced by the workload selector"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        other => Err(format!("unknown attribute {other:?}")),
    }
}

fn when_value(key: &str, v: &str) -> Result<(), String> {
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => validate_ip_subnet(v),
        "destination.port" => v
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= 65535)
            .map(|_| ())
            .ok_or_else(|| format!("bad port {v:?}: must be 0..65535")),
        "source.serviceAccount" => service_account(v),
        _ => wildcard(v),
    }
}
