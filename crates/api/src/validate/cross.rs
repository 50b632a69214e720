//! Cross-object rules, as `istioctl analyze` checks them: destination
//! subsets that no DestinationRule defines, and gateways that do not exist.

use std::collections::{BTreeMap, BTreeSet};

use super::{FieldError, at, idx};
use crate::networking::{Destination, VirtualService};
use crate::registry::{host_matches, resolve_config_host};
use crate::{Object, Resource};

/// A DestinationRule (`ns/name`) and the subset names it defines.
type RuleSubsets<'a> = (String, BTreeSet<&'a str>);

/// Checks references between objects. Returns `(index into objects, problem)`.
/// `domain` is the cluster domain (`cluster.local`) used to resolve short
/// host names relative to each object's namespace.
pub fn validate_cross(objects: &[&Object], domain: &str) -> Vec<(usize, FieldError)> {
    // host (resolved) -> [(rule "ns/name", subsets)]
    let mut rules: BTreeMap<String, Vec<RuleSubsets<'_>>> = BTreeMap::new();
    let mut gateways = BTreeSet::new();
    for o in objects {
        match &o.spec {
            Resource::DestinationRule(dr) => {
                let host = resolve_config_host(&dr.host, o.namespace(), domain);
                let subsets = dr.subsets.iter().map(|s| s.name.as_str()).collect();
                rules
                    .entry(host)
                    .or_default()
                    .push((format!("{}/{}", o.namespace(), o.name()), subsets));
            }
            Resource::Gateway(_) => {
                gateways.insert((o.namespace().to_string(), o.name().to_string()));
            }
            _ => {}
        }
    }
    let wildcard_rules: Vec<(&String, &Vec<RuleSubsets<'_>>)> =
        rules.iter().filter(|(h, _)| h.starts_with('*')).collect();
    let mut out = Vec::new();
    mesh_host_conflicts(objects, domain, &mut out);
    for (i, o) in objects.iter().enumerate() {
        let Resource::VirtualService(vs) = &o.spec else {
            continue;
        };
        let mut push = |path: String, msg: String| out.push((i, FieldError::error(path, msg)));
        for (dest, path) in destinations(vs) {
            let Some(subset) = dest.subset.as_deref() else {
                continue;
            };
            let host = resolve_config_host(&dest.host, o.namespace(), domain);
            // Exact host first, then wildcard rule hosts covering it.
            let matching: Vec<&RuleSubsets<'_>> = rules
                .get(&host)
                .into_iter()
                .chain(
                    wildcard_rules
                        .iter()
                        .filter(|(h, _)| host_matches(h, &host))
                        .map(|(_, v)| *v),
                )
                .flatten()
                .collect();
            let subset_path = at(&path, "subset");
            if matching.is_empty() {
                push(
                    subset_path,
                    format!(
                        "subset {subset:?} of host {host} is not defined: no DestinationRule exists for that host"
                    ),
                );
            } else if !matching.iter().any(|(_, s)| s.contains(subset)) {
                let names: Vec<&str> = matching.iter().map(|(n, _)| n.as_str()).collect();
                push(
                    subset_path,
                    format!(
                        "subset {subset:?} of host {host} is not defined by DestinationRule {}",
                        names.join(", ")
                    ),
                );
            }
        }
        let mut check_gw = |gw: &str, path: String| {
            if gw == "mesh" {
                return;
            }
            let (ns, name) = match gw.split_once('/') {
                Some((ns, name)) => (ns.to_string(), name.to_string()),
                None => match gw.split_once('.') {
                    Some((name, ns)) => (ns.to_string(), name.to_string()),
                    None => (o.namespace().to_string(), gw.to_string()),
                },
            };
            if !gateways.contains(&(ns.clone(), name.clone())) {
                push(path, format!("gateway {ns}/{name} is not defined"));
            }
        };
        for (j, gw) in vs.gateways.iter().enumerate() {
            check_gw(gw, idx("spec.gateways", j));
        }
        for (j, r) in vs.http.iter().enumerate() {
            for (k, m) in r.matches.iter().enumerate() {
                for (l, gw) in m.gateways.iter().enumerate() {
                    check_gw(gw, idx(&format!("spec.http[{j}].match[{k}].gateways"), l));
                }
            }
        }
    }
    out
}

/// Every destination of a VirtualService with its path.
pub(crate) fn destinations(vs: &VirtualService) -> Vec<(&Destination, String)> {
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        let p = idx("spec.http", i);
        for (j, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((dest, format!("{p}.route[{j}].destination")));
            }
        }
        if let Some(m) = &r.mirror {
            out.push((m, at(&p, "mirror")));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                out.push((dest, format!("{p}.mirrors[{j}].destination")));
            }
        }
    }
    for (field, routes) in [
        (
            "spec.tcp",
            vs.tcp.iter().map(|r| &r.route).collect::<Vec<_>>(),
        ),
        (
            "spec.tls",
            vs.tls.iter().map(|r| &r.route).collect::<Vec<_>>(),
        ),
    ] {
        for (i, route) in routes.into_iter().enumerate() {
            for (j, d) in route.iter().enumerate() {
                if let Some(dest) = &d.destination {
                    out.push((dest, format!("{field}[{i}].route[{j}].destination")));
                }
            }
        }
    }
    out
}

/// Mesh-bound VirtualServices claiming the same host: Istio merges them
/// unpredictably (`istioctl analyze` IST0109); every later claim is reported.
fn mesh_host_conflicts(objects: &[&Object], domain: &str, out: &mut Vec<(usize, FieldError)>) {
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        let Resource::VirtualService(vs) = &o.spec else {
            continue;
        };
        if !(vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")) {
            continue;
        }
        let me = format!("{}/{}", o.namespace(), o.name());
        for (j, h) in vs.hosts.iter().enumerate() {
            let host = resolve_config_host(h, o.namespace(), domain);
            match claimed.get(&host) {
                Some(first) if *first != me => out.push((
                    i,
                    FieldError::error(
                        idx("spec.hosts", j),
                        format!(
                            "host {host} is also claimed by VirtualService {first} on the mesh gateway; merge them into one"
                        ),
                    ),
                )),
                Some(_) => {}
                None => {
                    claimed.insert(host, me.clone());
                }
            }
        }
    }
}
