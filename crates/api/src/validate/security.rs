//! PeerAuthentication and AuthorizationPolicy structural rules.

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
                        if name.ends_with("pBlocks") || name.ends_with("IpBlocks") {
                            for (k, v) in values.iter().enumerate() {
                                e.check(idx(&at(&sp, name), k), validate_ip_subnet(v));
                            }
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
