//! ServiceEntry and WorkloadEntry rules.

use std::collections::BTreeSet;

use super::common::*;
use super::{Errs, at, idx};
use crate::networking::*;

pub(super) fn validate_service_entry(se: &ServiceEntry, ns: &str, e: &mut Errs) {
    if let Some(ws) = &se.workload_selector {
        check_labels(&ws.labels, "spec.workloadSelector.labels", e);
        if ws.labels.is_empty() {
            e.warn(
                "spec.workloadSelector",
                "workload selector without labels selects every workload in the namespace",
            );
        }
        if !se.endpoints.is_empty() {
            e.err(
                "spec",
                "only one of workloadSelector or endpoints is allowed in a service entry",
            );
        }
    }
    if se.hosts.is_empty() {
        e.err("spec.hosts", "service entry must have at least one host");
    }
    let resolution = se.resolution.unwrap_or(Resolution::None);
    for (i, h) in se.hosts.iter().enumerate() {
        let p = idx("spec.hosts", i);
        if h == "*" {
            e.err(&p, "invalid host *");
            continue;
        }
        if let Err(m) = validate_wildcard_domain(h) {
            e.err(&p, m);
            continue;
        }
        if resolution != Resolution::DynamicDns
            && let Err(m) = validate_partial_wildcard(h)
        {
            e.warn(&p, m);
        }
        // Hosts are looked up as written: a short name never resolves.
        if !h.contains('.') && !h.starts_with('*') {
            e.err(&p, format!("host {h:?} is not fully qualified (service entry hosts must be FQDNs such as api.example.com)"));
        }
    }
    let mut cidr = false;
    for (i, a) in se.addresses.iter().enumerate() {
        cidr |= a.contains('/');
        e.check(idx("spec.addresses", i), validate_ip_subnet(a));
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        e.err(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution",
        );
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let p = idx("spec.ports", i);
        if !names.insert(port.name.as_str()) {
            e.err(
                at(&p, "name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            e.err(
                at(&p, "number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        e.check(at(&p, "name"), validate_port_name(&port.name));
        e.check(at(&p, "number"), validate_port(port.number));
        if let Some(tp) = port.target_port {
            e.check(at(&p, "targetPort"), validate_port(tp));
        }
        if let Some(proto) = &port.protocol {
            e.check(at(&p, "protocol"), validate_protocol(proto));
        }
    }
    let port_names: BTreeSet<&str> = se.ports.iter().map(|p| p.name.as_str()).collect();
    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                e.err(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                validate_workload_entry(ep, &idx("spec.endpoints", i), Some(&port_names), false, e);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty() {
                for (i, h) in se.hosts.iter().enumerate() {
                    if validate_fqdn(h).is_err()
                        && validate_wildcard_domain(h).is_ok()
                        && h.starts_with('*')
                    {
                        e.err(
                            idx("spec.hosts", i),
                            "hosts must be FQDNs without wildcards when resolution is DNS and no endpoints are given",
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                e.err(
                    "spec.endpoints",
                    "there must be 0 or 1 endpoint for resolution DNS_ROUND_ROBIN",
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                validate_workload_entry(ep, &idx("spec.endpoints", i), Some(&port_names), true, e);
            }
        }
        Resolution::DynamicDns => {
            for (i, h) in se.hosts.iter().enumerate() {
                if !h.starts_with('*') {
                    e.err(
                        idx("spec.hosts", i),
                        "host must be wildcarded for resolution DYNAMIC_DNS",
                    );
                }
            }
            if !se.addresses.is_empty() {
                e.err(
                    "spec.addresses",
                    "addresses cannot be set for resolution DYNAMIC_DNS",
                );
            }
            if !se.endpoints.is_empty() {
                e.err(
                    "spec.endpoints",
                    "endpoints cannot be set for resolution DYNAMIC_DNS",
                );
            }
        }
    }
    if resolution != Resolution::None && se.hosts.len() > 1 {
        let opaque = se.ports.iter().any(|p| {
            let proto = Protocol::parse(p.protocol.as_deref().unwrap_or(""));
            !proto.is_http() && !proto.is_tls()
        });
        if opaque {
            e.err(
                "spec.hosts",
                "multiple hosts provided with non-HTTP, non-TLS ports",
            );
        }
    }
    check_export_to(&se.export_to, ns, true, "spec.exportTo", e);
}

/// Validates a WorkloadEntry at `p` (`spec` for the kind, or
/// `spec.endpoints[i]` inside a ServiceEntry whose port names are given).
pub(super) fn validate_workload_entry(
    we: &WorkloadEntry,
    p: &str,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
    e: &mut Errs,
) {
    let ap = at(p, "address");
    if we.address.is_empty() {
        if we.network.is_none() {
            e.err(&ap, "address is required");
        }
    } else if let Some(path) = we.address.strip_prefix("unix://") {
        if !(path.starts_with('/') || path.starts_with('@')) {
            e.err(
                &ap,
                format!(
                    "unix address {:?} must be an absolute path or an abstract socket (@name)",
                    we.address
                ),
            );
        } else if path.ends_with('/') {
            e.err(
                &ap,
                format!("unix address {:?} may not be a directory", we.address),
            );
        }
        if !we.ports.is_empty() {
            e.err(
                at(p, "ports"),
                format!("unix endpoint {} must not include ports", we.address),
            );
        }
    } else if validate_ip(&we.address).is_err() {
        if !allow_fqdn {
            e.err(
                &ap,
                format!(
                    "endpoint address {:?} is not a valid IP address",
                    we.address
                ),
            );
        } else if validate_fqdn(&we.address).is_err() {
            e.err(
                &ap,
                format!(
                    "endpoint address {:?} is not a valid FQDN or IP address",
                    we.address
                ),
            );
        }
    }
    for (name, port) in &we.ports {
        let pp = at(&at(p, "ports"), name);
        if let Some(sp) = service_ports
            && !sp.contains(name.as_str())
        {
            e.err(
                &pp,
                format!("endpoint port {name:?} is not defined by the service entry"),
            );
        }
        e.check(&pp, validate_port_name(name));
        e.check(&pp, validate_port(*port));
    }
    check_labels(&we.labels, &at(p, "labels"), e);
    if let Some(loc) = &we.locality
        && loc.split('/').count() > 3
    {
        e.err(
            at(p, "locality"),
            format!("locality {loc:?} must be region/zone/subzone"),
        );
    }
    if let Some(sa) = &we.service_account
        && !is_dns1123_subdomain(sa)
    {
        e.err(
            at(p, "serviceAccount"),
            format!("invalid service account name {sa:?}"),
        );
    }
}
