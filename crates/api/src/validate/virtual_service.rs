//! VirtualService rules.

use super::common::*;
use super::{Errs, at, idx};
use crate::networking::*;

pub(super) fn validate(vs: &VirtualService, ns: &str, e: &mut Errs) {
    let delegate = vs.hosts.is_empty();
    if delegate {
        if !vs.gateways.is_empty() {
            e.err(
                "spec.gateways",
                "delegate virtual service (no hosts) must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            e.err(
                "spec.tls",
                "delegate virtual service (no hosts) must have no tls route specified",
            );
        }
        if !vs.tcp.is_empty() {
            e.err(
                "spec.tcp",
                "delegate virtual service (no hosts) must have no tcp route specified",
            );
        }
    }
    check_gateway_names(&vs.gateways, "spec.gateways", e);
    let applies_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    let mut all_hosts_valid = true;
    for (i, host) in vs.hosts.iter().enumerate() {
        let p = idx("spec.hosts", i);
        if let Err(m) = validate_wildcard_domain(host) {
            if validate_ip(host).is_err() {
                e.err(&p, m);
                all_hosts_valid = false;
            }
        } else if applies_to_mesh && host == "*" {
            e.err(
                &p,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
            all_hosts_valid = false;
        }
    }
    if all_hosts_valid {
        for i in 0..vs.hosts.len() {
            for j in i + 1..vs.hosts.len() {
                if hosts_overlap(&vs.hosts[i], &vs.hosts[j]) {
                    e.err(
                        idx("spec.hosts", j),
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            vs.hosts[i], vs.hosts[j]
                        ),
                    );
                }
            }
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        e.err(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, r) in vs.http.iter().enumerate() {
        super::http_route::http_route(r, &idx("spec.http", i), delegate, e);
    }
    // A rule without match conditions takes every request: later rules are
    // never used (Istio warns: "virtualService rule not used").
    if let Some(catch_all) = vs
        .http
        .iter()
        .position(|r| r.matches.is_empty() || r.matches.iter().any(is_match_all))
    {
        for j in catch_all + 1..vs.http.len() {
            e.warn(
                idx("spec.http", j),
                format!(
                    "rule is never used: spec.http[{catch_all}] matches every request before it"
                ),
            );
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        tls_route(r, vs, &idx("spec.tls", i), e);
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let p = idx("spec.tcp", i);
        for (j, m) in r.matches.iter().enumerate() {
            let mp = idx(&at(&p, "match"), j);
            l4_match(
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &m.gateways,
                &mp,
                e,
            );
            if let Some(s) = &m.source_subnet {
                e.check(at(&mp, "sourceSubnet"), validate_ip_subnet(s));
            }
        }
        if r.route.is_empty() {
            e.err(at(&p, "route"), "TCP route is required");
        }
        route_destinations(&r.route, &at(&p, "route"), e);
    }
    check_export_to(&vs.export_to, ns, false, "spec.exportTo", e);
}

/// A match block with no conditions (or only `prefix: /` on the uri).
fn is_match_all(m: &HttpMatchRequest) -> bool {
    let uri_all = m.uri.as_ref().is_none_or(|u| {
        u.variants_set() == 0 || matches!(u.kind(), Some(StringMatchKind::Prefix("/")))
    });
    uri_all
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.gateways.is_empty()
        && m.query_params.is_empty()
        && m.without_headers.is_empty()
        && m.source_namespace.is_none()
}

/// Istio's host matching: equal, or one wildcard covers the other.
fn hosts_overlap(a: &str, b: &str) -> bool {
    let covers = |w: &str, h: &str| match w.strip_prefix('*') {
        Some(suffix) => h.ends_with(suffix),
        None => false,
    };
    a.eq_ignore_ascii_case(b) || covers(a, b) || covers(b, a)
}

pub(super) fn http_destinations(route: &[HttpRouteDestination], p: &str, e: &mut Errs) {
    for (i, d) in route.iter().enumerate() {
        let dp = idx(p, i);
        match &d.destination {
            None => e.err(at(&dp, "destination"), "destination is required"),
            Some(dest) => destination(dest, &at(&dp, "destination"), e),
        }
        super::http_route::headers(&d.headers, &at(&dp, "headers"), e);
    }
    check_weights(route.iter().map(|d| d.weight), p, e);
}

fn route_destinations(route: &[RouteDestination], p: &str, e: &mut Errs) {
    for (i, d) in route.iter().enumerate() {
        let dp = idx(p, i);
        match &d.destination {
            None => e.err(at(&dp, "destination"), "destination is required"),
            Some(dest) => destination(dest, &at(&dp, "destination"), e),
        }
    }
    check_weights(route.iter().map(|d| d.weight), p, e);
}

/// Weights: none negative; with more than one destination they must sum to
/// 100. (Istio before 1.12 enforced the sum; later Istio normalises weights and
/// only rejects a zero total. Weft keeps the strict rule: a sum other than 100
/// is almost always a typo in a canary split.)
fn check_weights(weights: impl Iterator<Item = Option<i32>>, p: &str, e: &mut Errs) {
    let weights: Vec<Option<i32>> = weights.collect();
    let mut total: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = *w {
            if w < 0 {
                e.err(
                    at(&idx(p, i), "weight"),
                    format!("weight {w} must not be negative"),
                );
            }
            total += i64::from(w);
        }
    }
    if weights.len() > 1 && total != 100 {
        e.err(p, format!("weights sum to {total}, must be 100"));
    }
    if weights.len() == 1 && weights[0].is_some_and(|w| w != 100 && w != 0) {
        e.warn(
            at(&idx(p, 0), "weight"),
            "a single destination always receives 100% of traffic",
        );
    }
}

pub(super) fn destination(d: &Destination, p: &str, e: &mut Errs) {
    let hp = at(p, "host");
    if d.host == "*" {
        e.err(&hp, "invalid destination host *");
    } else {
        e.check(&hp, validate_wildcard_domain(&d.host));
    }
    if let Some(s) = &d.subset
        && !is_dns1123_label(s)
    {
        e.err(
            at(p, "subset"),
            format!("invalid subset name {s:?}: must be a DNS label"),
        );
    }
    if let Some(port) = &d.port {
        e.check(at(p, "port.number"), validate_port(port.number));
    }
}

fn tls_route(r: &TlsRoute, vs: &VirtualService, p: &str, e: &mut Errs) {
    if r.matches.is_empty() {
        e.err(
            at(p, "match"),
            "TLS route must have at least one match condition",
        );
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mp = idx(&at(p, "match"), j);
        if m.sni_hosts.is_empty() {
            e.err(
                at(&mp, "sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let sp = idx(&at(&mp, "sniHosts"), k);
            if let Err(msg) = validate_wildcard_domain(sni) {
                if validate_ip(sni).is_ok() {
                    e.warn(
                        &sp,
                        format!("using an IP address ({sni:?}) goes against the SNI spec"),
                    );
                } else {
                    e.err(&sp, msg);
                }
                continue;
            }
            let covered = vs.hosts.iter().any(|h| {
                h.eq_ignore_ascii_case(sni)
                    || h.strip_prefix('*')
                        .is_some_and(|suffix| sni.ends_with(suffix))
            });
            if !covered {
                e.err(
                    &sp,
                    format!(
                        "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                        vs.hosts.join(", ")
                    ),
                );
            }
        }
        l4_match(
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
            &mp,
            e,
        );
    }
    if r.route.is_empty() {
        e.err(at(p, "route"), "TLS route is required");
    }
    route_destinations(&r.route, &at(p, "route"), e);
}

fn l4_match(
    subnets: &[String],
    port: Option<u32>,
    labels: &std::collections::BTreeMap<String, String>,
    gateways: &[String],
    p: &str,
    e: &mut Errs,
) {
    for (k, s) in subnets.iter().enumerate() {
        e.check(idx(&at(p, "destinationSubnets"), k), validate_ip_subnet(s));
    }
    if let Some(port) = port {
        e.check(at(p, "port"), validate_port(port));
    }
    check_labels(labels, &at(p, "sourceLabels"), e);
    check_gateway_names(gateways, &at(p, "gateways"), e);
}
