//! Kubernetes Service / EndpointSlice sanity rules and MeshConfig rules.

use std::collections::BTreeSet;

use super::common::*;
use super::{Errs, at, idx};
use crate::k8s::*;
use crate::mesh::MeshConfig;

pub(super) fn validate_service(svc: &ServiceSpec, e: &mut Errs) {
    let mut names = BTreeSet::new();
    for (i, port) in svc.ports.iter().enumerate() {
        let p = idx("spec.ports", i);
        e.check(at(&p, "port"), validate_port(port.port));
        if let Some(IntOrString::Int(t)) = port.target_port {
            e.check(at(&p, "targetPort"), validate_port(t));
        }
        match &port.name {
            Some(n) => {
                e.check(at(&p, "name"), validate_port_name(n));
                if !names.insert(n.as_str()) {
                    e.err(at(&p, "name"), format!("duplicate port name {n:?}"));
                }
            }
            None if svc.ports.len() > 1 => e.err(
                at(&p, "name"),
                "ports must be named when a service has more than one",
            ),
            None => {}
        }
    }
    if let Some(sel) = &svc.selector {
        check_labels(sel, "spec.selector", e);
    }
    if let Some(ip) = &svc.cluster_ip
        && ip != "None"
        && !ip.is_empty()
    {
        e.check("spec.clusterIP", validate_ip(ip));
    }
}

pub(super) fn validate_endpoint_slice(es: &EndpointSlice, e: &mut Errs) {
    for (i, ep) in es.endpoints.iter().enumerate() {
        for (j, a) in ep.addresses.iter().enumerate() {
            let p = idx(&at(&idx("endpoints", i), "addresses"), j);
            if es.address_type.as_deref() != Some("FQDN") {
                e.check(p, validate_ip(a));
            }
        }
    }
    for (i, port) in es.ports.iter().enumerate() {
        if let Some(n) = port.port {
            e.check(at(&idx("ports", i), "port"), validate_port(n));
        }
    }
}

pub(crate) fn validate_mesh_config(mc: &MeshConfig, p: &str, e: &mut Errs) {
    if let Some(dc) = &mc.default_config {
        let dp = at(p, "defaultConfig");
        if let Some(c) = dc.concurrency
            && c < 0
        {
            e.err(
                at(&dp, "concurrency"),
                format!("concurrency must be non-negative (got {c})"),
            );
        }
        for (field, d) in [
            ("drainDuration", &dc.drain_duration),
            ("terminationDrainDuration", &dc.termination_drain_duration),
            ("parentShutdownDuration", &dc.parent_shutdown_duration),
        ] {
            check_duration(d, &at(&dp, field), e);
        }
        for (field, port) in [
            ("proxyAdminPort", dc.proxy_admin_port),
            ("statusPort", dc.status_port),
        ] {
            if let Some(port) = port {
                e.check(at(&dp, field), validate_port(port));
            }
        }
        if let Some(addr) = &dc.discovery_address {
            match addr.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty()
                        && port.parse::<u32>().is_ok_and(|n| validate_port(n).is_ok()) => {}
                _ => e.err(
                    at(&dp, "discoveryAddress"),
                    format!("discoveryAddress {addr:?} must be host:port"),
                ),
            }
        }
    }
    if let Some(f) = &mc.access_log_format
        && mc.access_log_encoding == Some(crate::mesh::AccessLogEncoding::Json)
        && serde_json::from_str::<serde_json::Value>(f)
            .map(|v| !v.is_object())
            .unwrap_or(true)
    {
        e.err(
            at(p, "accessLogFormat"),
            "with accessLogEncoding JSON the format must be a JSON object of field: %COMMAND%",
        );
    }
    if let Some(td) = &mc.trust_domain
        && (td.is_empty() || validate_fqdn(td).is_err())
    {
        e.err(at(p, "trustDomain"), format!("invalid trust domain {td:?}"));
    }
    for (field, d) in [
        ("connectTimeout", &mc.connect_timeout),
        ("protocolDetectionTimeout", &mc.protocol_detection_timeout),
        ("dnsRefreshRate", &mc.dns_refresh_rate),
    ] {
        check_duration(d, &at(p, field), e);
    }
    for (field, list) in [
        (
            "defaultDestinationRuleExportTo",
            &mc.default_destination_rule_export_to,
        ),
        (
            "defaultVirtualServiceExportTo",
            &mc.default_virtual_service_export_to,
        ),
        ("defaultServiceExportTo", &mc.default_service_export_to),
    ] {
        for (i, x) in list.iter().enumerate() {
            if x != "." && x != "*" && x != "~" && !is_dns1123_label(x) {
                e.err(
                    idx(&at(p, field), i),
                    format!("invalid exportTo value {x:?}"),
                );
            }
        }
    }
    if let Some(l) = &mc.locality_lb_setting {
        super::destination_rule::locality_lb(l, true, &at(p, "localityLbSetting"), e);
    }
    if let Some(r) = &mc.default_http_retry_policy {
        let rp = at(p, "defaultHttpRetryPolicy");
        if r.attempts < 0 {
            e.err(
                at(&rp, "attempts"),
                format!("attempts cannot be negative (got {})", r.attempts),
            );
        }
        check_duration(&r.per_try_timeout, &at(&rp, "perTryTimeout"), e);
    }
}
