//! Sidecar and Gateway rules.

use std::collections::BTreeSet;

use super::common::*;
use super::{Errs, at, idx};
use crate::networking::*;

pub(super) fn validate_sidecar(sc: &Sidecar, e: &mut Errs) {
    if let Some(ws) = &sc.workload_selector {
        check_labels(&ws.labels, "spec.workloadSelector.labels", e);
        if ws.labels.is_empty() {
            e.warn(
                "spec.workloadSelector",
                "workload selector without labels: applies to every workload in the namespace",
            );
        }
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        e.err("spec", "sidecar: empty configuration provided");
        return;
    }
    let mut ports = BTreeSet::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let p = idx("spec.ingress", i);
        let Some(port) = &ing.port else {
            e.err(at(&p, "port"), "port is required for ingress listeners");
            continue;
        };
        sidecar_port(port, &at(&p, "port"), e);
        if !ports.insert(port.number) {
            e.err(
                at(&p, "port.number"),
                "ports on IP bound listeners must be unique",
            );
        }
        if let Some(b) = &ing.bind {
            e.check(at(&p, "bind"), validate_ip(b));
        }
        if let Some(de) = &ing.default_endpoint {
            check_default_endpoint(de, &at(&p, "defaultEndpoint"), e);
        }
        if let Some(tls) = &ing.tls {
            if matches!(
                tls.mode,
                Some(ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough)
            ) {
                e.err(
                    at(&p, "tls.mode"),
                    "cannot set mode ISTIO_MUTUAL or AUTO_PASSTHROUGH in sidecar ingress tls",
                );
            }
            if !Protocol::parse(&port.protocol).is_tls() {
                e.err(
                    at(&p, "tls"),
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                );
            }
        }
    }
    let mut ports = BTreeSet::new();
    for (i, eg) in sc.egress.iter().enumerate() {
        let p = idx("spec.egress", i);
        match &eg.port {
            None => {
                if i != sc.egress.len() - 1 {
                    e.err(&p, "the egress listener with empty port should be the last listener in the list");
                }
            }
            Some(port) => {
                if port.number == 0 {
                    if !eg.bind.as_deref().is_some_and(|b| b.starts_with("unix://")) {
                        e.err(
                            at(&p, "bind"),
                            "ports with 0 value must have a unix domain socket bind address",
                        );
                    }
                    if !port.name.is_empty() {
                        e.check(at(&p, "port.name"), validate_port_name(&port.name));
                    }
                    e.check(at(&p, "port.protocol"), validate_protocol(&port.protocol));
                } else {
                    sidecar_port(port, &at(&p, "port"), e);
                    if !ports.insert(port.number) {
                        e.err(
                            at(&p, "port.number"),
                            "ports on IP bound listeners must be unique",
                        );
                    }
                    if let Some(b) = &eg.bind {
                        e.check(at(&p, "bind"), validate_ip(b));
                    }
                }
            }
        }
        if eg.hosts.is_empty() {
            e.err(
                at(&p, "hosts"),
                "egress listener must contain at least one host",
            );
        }
        for (j, h) in eg.hosts.iter().enumerate() {
            namespace_slash_host(h, false, &idx(&at(&p, "hosts"), j), e);
        }
    }
    if let Some(otp) = &sc.outbound_traffic_policy {
        let p = "spec.outboundTrafficPolicy";
        if otp.mode == Some(OutboundTrafficMode::AllowAnyDynamicDns) {
            e.err(
                at(p, "mode"),
                "ALLOW_ANY_DYNAMIC_DNS is only supported in MeshConfig, not in Sidecar",
            );
        }
        if let Some(proxy) = &otp.egress_proxy {
            if otp.mode != Some(OutboundTrafficMode::AllowAny) {
                e.err(
                    at(p, "egressProxy"),
                    "egressProxy may be set only with mode ALLOW_ANY",
                );
            }
            super::virtual_service::destination(proxy, &at(p, "egressProxy"), e);
            if proxy.port.is_none() {
                e.err(at(p, "egressProxy.port"), "egressProxy port is required");
            }
        }
    }
}

fn sidecar_port(port: &Port, p: &str, e: &mut Errs) {
    if !port.name.is_empty() {
        e.check(at(p, "name"), validate_port_name(&port.name));
    }
    e.check(at(p, "protocol"), validate_protocol(&port.protocol));
    e.check(at(p, "number"), validate_port(port.number));
    if port.target_port.is_some() {
        e.err(at(p, "targetPort"), "targetPort has no impact on Sidecars");
    }
}

fn check_default_endpoint(de: &str, p: &str, e: &mut Errs) {
    if de.starts_with("unix://") {
        return;
    }
    let Some((host, port)) = de.rsplit_once(':') else {
        e.err(p, format!("defaultEndpoint {de:?} must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix://path"));
        return;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        e.err(p, format!("defaultEndpoint {de:?} must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix://path"));
    }
    match port.parse::<u32>() {
        Ok(n) => e.check(p, validate_port(n)),
        Err(_) => e.err(p, format!("defaultEndpoint port {port:?} is not a number")),
    }
}

/// `namespace/dnsName` hosts of Sidecar egress and Gateway servers.
fn namespace_slash_host(h: &str, gateway: bool, p: &str, e: &mut Errs) {
    let Some((ns, host)) = h.split_once('/') else {
        if gateway {
            host_part(h, true, p, e);
        } else {
            e.err(p, format!("host {h:?} must be of form namespace/dnsName"));
        }
        return;
    };
    if ns.is_empty() || host.is_empty() {
        e.err(
            p,
            format!("config namespace and dnsName in host {h:?} cannot be empty"),
        );
        return;
    }
    let ns_body = if gateway {
        ns
    } else {
        ns.strip_prefix('~').unwrap_or(ns)
    };
    if !ns_body.is_empty() && !matches!(ns_body, "*" | ".") && !is_dns1123_label(ns_body) {
        e.err(p, format!("invalid namespace value {ns:?} in host {h:?}"));
    }
    host_part(host, gateway, p, e);
}

fn host_part(host: &str, gateway: bool, p: &str, e: &mut Errs) {
    if host != "*" && !host.contains('.') {
        e.err(p, format!("short name {host:?} is not allowed: use a fully qualified host such as {host}.default.svc.cluster.local"));
        return;
    }
    if let Err(m) = validate_wildcard_domain(host)
        && !(gateway && validate_ip(host).is_ok())
    {
        e.err(p, m);
    }
    e.check(p, validate_partial_wildcard(host));
}

pub(super) fn validate_gateway(gw: &Gateway, e: &mut Errs) {
    if gw.servers.is_empty() {
        e.err("spec.servers", "gateway must have at least one server");
    }
    check_labels(&gw.selector, "spec.selector", e);
    let mut names = BTreeSet::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let p = idx("spec.servers", i);
        if s.hosts.is_empty() {
            e.err(
                at(&p, "hosts"),
                "server config must contain at least one host",
            );
        }
        for (j, h) in s.hosts.iter().enumerate() {
            namespace_slash_host(h, true, &idx(&at(&p, "hosts"), j), e);
        }
        let Some(port) = &s.port else {
            e.err(at(&p, "port"), "port is required");
            continue;
        };
        let pp = at(&p, "port");
        let proto = Protocol::parse(&port.protocol);
        if proto == Protocol::Unsupported {
            e.err(
                at(&pp, "protocol"),
                format!("invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, HTTPS, TLS, MONGO, REDIS, MYSQL, TCP", port.protocol),
            );
        }
        e.check(at(&pp, "number"), validate_port(port.number));
        if port.target_port.is_some() {
            e.err(
                at(&pp, "targetPort"),
                "targetPort has no impact on Gateways",
            );
        }
        if port.name.is_empty() {
            e.err(at(&pp, "name"), "port name must be set");
        } else if !names.insert(port.name.as_str()) {
            e.err(
                at(&pp, "name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        if let Some(b) = &s.bind
            && !b.starts_with("unix://")
        {
            e.check(at(&p, "bind"), validate_ip(b));
        }
        match &s.tls {
            None if proto.is_tls() => e.err(
                at(&p, "tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ),
            Some(tls) if !proto.is_tls() && proto != Protocol::Unsupported => {
                let redirect_only = proto.is_http()
                    && tls.https_redirect
                    && tls.server_certificate.is_none()
                    && tls.private_key.is_none()
                    && tls.ca_certificates.is_none()
                    && tls.mode.is_none_or(|m| m == ServerTlsMode::Passthrough);
                if !redirect_only {
                    e.err(
                        at(&p, "tls"),
                        "server cannot have TLS settings for plain text ports (only httpsRedirect)",
                    );
                }
            }
            Some(tls) => server_tls(tls, &at(&p, "tls"), e),
            None => {}
        }
    }
}

fn server_tls(tls: &ServerTlsSettings, p: &str, e: &mut Errs) {
    let has = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    for (i, c) in tls.tls_certificates.iter().enumerate() {
        let cp = idx(&at(p, "tlsCertificates"), i);
        if !has(&c.server_certificate) {
            e.err(
                at(&cp, "serverCertificate"),
                "server certificate is required",
            );
        }
        if !has(&c.private_key) {
            e.err(at(&cp, "privateKey"), "private key is required");
        }
    }
    if tls.tls_certificates.len() > 2 {
        e.warn(
            at(p, "tlsCertificates"),
            "at most 2 server certificates are supported",
        );
    }
    if matches!(
        tls.mode,
        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
    ) && !has(&tls.credential_name)
        && tls.credential_names.is_empty()
        && tls.tls_certificates.is_empty()
    {
        let which = if tls.mode == Some(ServerTlsMode::Simple) {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if !has(&tls.server_certificate) {
            e.err(
                at(p, "serverCertificate"),
                format!("{which} requires a server certificate"),
            );
        }
        if !has(&tls.private_key) {
            e.err(
                at(p, "privateKey"),
                format!("{which} requires a private key"),
            );
        }
        if which == "MUTUAL TLS" && !has(&tls.ca_certificates) {
            e.err(
                at(p, "caCertificates"),
                "MUTUAL TLS requires a client CA bundle",
            );
        }
    }
    if has(&tls.ca_crl) {
        if has(&tls.credential_name) {
            e.err(at(p, "caCrl"), "CRL is not supported with credentialName");
        }
        if tls.mode == Some(ServerTlsMode::Simple) {
            e.err(at(p, "caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
    for (field, v) in [
        ("minProtocolVersion", &tls.min_protocol_version),
        ("maxProtocolVersion", &tls.max_protocol_version),
    ] {
        if let Some(v) = v
            && !matches!(
                v.as_str(),
                "TLS_AUTO" | "TLSV1_0" | "TLSV1_1" | "TLSV1_2" | "TLSV1_3"
            )
        {
            e.err(at(p, field), format!("unknown TLS version {v:?}"));
        }
    }
}
