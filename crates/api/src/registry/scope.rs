//! What a proxy may see: `exportTo` visibility, Sidecar egress hosts
//! (`namespace/dnsName`) and which Sidecar applies to a workload.
//!
//! Pure helpers for translation's Sidecar scoping; no I/O.

use std::collections::BTreeMap;

use super::{host_matches, labels_match};
use crate::{Object, Resource};

/// Whether an object exported with `export_to` (falling back to the mesh
/// default `default_export_to`, then to public) from `owner_ns` is visible
/// in `client_ns`. `.` is the owner's namespace, `*` everyone, `~` no one.
pub fn export_visible(
    export_to: &[String],
    owner_ns: &str,
    client_ns: &str,
    default_export_to: &[String],
) -> bool {
    let list = if export_to.is_empty() {
        default_export_to
    } else {
        export_to
    };
    if list.is_empty() {
        return true;
    }
    list.iter()
        .any(|x| x == "*" || x == client_ns || (x == "." && owner_ns == client_ns))
}

/// The namespace part of a Sidecar egress host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceSelector {
    /// `*`: every namespace.
    Any,
    /// A namespace (`.` is resolved to the Sidecar's own namespace).
    Named(String),
    /// `~`: no namespace (imports nothing).
    None,
}

/// One `namespace/dnsName` entry of `egress.hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressHost {
    pub namespace: NamespaceSelector,
    /// `*`, `*.suffix` or a host name.
    pub host: String,
}

impl EgressHost {
    /// Parses an egress host of a Sidecar in `sidecar_ns`; `None` when it
    /// has no `/` (validation rejects such entries).
    pub fn parse(entry: &str, sidecar_ns: &str) -> Option<EgressHost> {
        let (ns, host) = entry.split_once('/')?;
        let namespace = match ns {
            "*" => NamespaceSelector::Any,
            "~" => NamespaceSelector::None,
            "." => NamespaceSelector::Named(sidecar_ns.to_string()),
            other => NamespaceSelector::Named(other.to_string()),
        };
        Some(EgressHost {
            namespace,
            host: host.to_string(),
        })
    }

    /// Whether a service `hostname` defined in `service_ns` is imported.
    pub fn matches(&self, service_ns: &str, hostname: &str) -> bool {
        let ns_ok = match &self.namespace {
            NamespaceSelector::Any => true,
            NamespaceSelector::Named(n) => n == service_ns,
            NamespaceSelector::None => false,
        };
        ns_ok && (self.host == "*" || host_matches(&self.host, hostname))
    }
}

/// The Sidecar that applies to a workload in `namespace` with `labels`, as
/// Istio chooses it: a Sidecar in that namespace whose `workloadSelector`
/// matches (the first by name when several do), else that namespace's
/// Sidecar without selector, else the root namespace's Sidecar without
/// selector (the mesh-wide default).
pub fn sidecar_for_workload<'a>(
    objects: impl IntoIterator<Item = &'a Object>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<&'a Object> {
    let mut selected: Option<&Object> = None;
    let mut ns_default: Option<&Object> = None;
    let mut root_default: Option<&Object> = None;
    for o in objects {
        let Resource::Sidecar(sc) = &o.spec else {
            continue;
        };
        let by_name = |cur: Option<&'a Object>| match cur {
            Some(c) if c.name() <= o.name() => Some(c),
            _ => Some(o),
        };
        let selector = sc
            .workload_selector
            .as_ref()
            .filter(|ws| !ws.labels.is_empty());
        if let Some(ws) = selector {
            if o.namespace() == namespace && labels_match(&ws.labels, labels) {
                selected = by_name(selected);
            }
        } else if o.namespace() == namespace {
            ns_default = by_name(ns_default);
        } else if o.namespace() == root_namespace {
            root_default = by_name(root_default);
        }
    }
    selected.or(ns_default).or(root_default)
}

/// The DestinationRule that applies when a proxy in `client_ns` calls
/// `hostname` (a service defined in `service_ns`), as Istio looks it up:
/// a rule in the client's namespace first, then in the service's
/// namespace, then in the root namespace; only rules visible to the client
/// (`exportTo`, else `default_export_to`); within a namespace the most
/// specific host wins (exact before wildcards, longer wildcards first), then
/// the first by name. Short rule hosts resolve relative to the rule's
/// namespace. Rules with a `workloadSelector` are skipped here (they apply
/// only to the selected workloads' own outbound traffic); Istio's merging of
/// several rules for one host is not modelled.
pub fn destination_rule_for<'a>(
    objects: impl IntoIterator<Item = &'a Object>,
    hostname: &str,
    client_ns: &str,
    service_ns: &str,
    root_ns: &str,
    domain: &str,
    default_export_to: &[String],
) -> Option<&'a Object> {
    let mut best: Option<(usize, usize, &'a Object)> = None; // (ns rank, specificity rank, rule)
    for o in objects {
        let Resource::DestinationRule(dr) = &o.spec else {
            continue;
        };
        if dr
            .workload_selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
        {
            continue;
        }
        let ns = o.namespace();
        let ns_rank = if ns == client_ns {
            0
        } else if ns == service_ns {
            1
        } else if ns == root_ns {
            2
        } else {
            continue;
        };
        if !export_visible(&dr.export_to, ns, client_ns, default_export_to) {
            continue;
        }
        let host = super::resolve_config_host(&dr.host, ns, domain);
        if !host_matches(&host, hostname) {
            continue;
        }
        // Exact match ranks 0; wildcards rank by how little they cover.
        let specificity = if host.eq_ignore_ascii_case(hostname) {
            0
        } else {
            usize::MAX - host.len()
        };
        let better = match best {
            None => true,
            Some((bn, bs, b)) => (ns_rank, specificity, o.name()) < (bn, bs, b.name()),
        };
        if better {
            best = Some((ns_rank, specificity, o));
        }
    }
    best.map(|(_, _, o)| o)
}
