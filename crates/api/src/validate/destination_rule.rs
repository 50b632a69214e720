//! DestinationRule rules (host, subsets, traffic policy).

use std::collections::BTreeSet;

use super::common::*;
use super::{Errs, at, idx};
use crate::networking::*;

pub(super) fn validate(dr: &DestinationRule, ns: &str, e: &mut Errs) {
    if dr.host.is_empty() {
        e.err("spec.host", "required field is missing");
    } else {
        e.check("spec.host", validate_wildcard_domain(&dr.host));
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(tp, "spec.trafficPolicy", e);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let p = idx("spec.subsets", i);
        if s.name.is_empty() {
            e.err(at(&p, "name"), "subset name cannot be empty");
        } else if !is_dns1123_label(&s.name) {
            e.err(
                at(&p, "name"),
                format!("invalid subset name {:?}: must be a DNS label", s.name),
            );
        } else if !names.insert(s.name.as_str()) {
            e.err(
                at(&p, "name"),
                format!("duplicate subset name {:?}", s.name),
            );
        }
        check_labels(&s.labels, &at(&p, "labels"), e);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(tp, &at(&p, "trafficPolicy"), e);
        }
    }
    check_export_to(&dr.export_to, ns, false, "spec.exportTo", e);
    if let Some(ws) = &dr.workload_selector {
        check_labels(&ws.match_labels, "spec.workloadSelector.matchLabels", e);
        if dr.export_to.iter().any(|x| x != "." && x != ns) {
            e.err("spec.exportTo", "destination rule with workload selector cannot have exportTo beyond current namespace");
        }
    }
}

pub(crate) fn traffic_policy(tp: &TrafficPolicy, p: &str, e: &mut Errs) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        e.err(p, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        e.err(p, "tunnel and proxyProtocol must not be set together");
    }
    common_policy(
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        p,
        e,
    );
    if let Some(t) = &tp.tunnel {
        let tp_ = at(p, "tunnel");
        if let Some(proto) = &t.protocol
            && proto != "CONNECT"
            && proto != "POST"
        {
            e.err(
                at(&tp_, "protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if validate_fqdn(&t.target_host).is_err() && validate_ip(&t.target_host).is_err() {
            e.err(
                at(&tp_, "targetHost"),
                format!(
                    "tunnel target host {:?} must be a valid FQDN or IP address",
                    t.target_host
                ),
            );
        }
        e.check(at(&tp_, "targetPort"), validate_port(t.target_port));
    }
    if let Some(pp) = &tp.proxy_protocol
        && let Some(v) = &pp.version
        && v != "V1"
        && v != "V2"
    {
        e.err(
            at(p, "proxyProtocol.version"),
            format!("proxy protocol version {v:?} is invalid (V1 or V2)"),
        );
    }
    if let Some(rb) = &tp.retry_budget {
        let rp = at(p, "retryBudget");
        if rb.percent.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
            e.err(at(&rp, "percent"), "percent must be within 0..100");
        }
        check_duration(&rb.budget_interval, &at(&rp, "budgetInterval"), e);
    }
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = idx(&at(p, "portLevelSettings"), i);
        match &pl.port {
            None => e.err(at(&pp, "port"), "portTrafficPolicy must have a valid port"),
            Some(port) => {
                e.check(at(&pp, "port.number"), validate_port(port.number));
                if !ports.insert(port.number) {
                    e.err(
                        at(&pp, "port.number"),
                        format!("duplicate port level settings for port {}", port.number),
                    );
                }
            }
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            e.err(&pp, "port traffic policy must have at least one field");
        } else {
            common_policy(
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
                pl.tls.as_ref(),
                &pp,
                e,
            );
        }
    }
}

fn common_policy(
    lb: Option<&LoadBalancerSettings>,
    cp: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
    p: &str,
    e: &mut Errs,
) {
    if let Some(lb) = lb {
        load_balancer(lb, od.is_some(), &at(p, "loadBalancer"), e);
    }
    if let Some(cp) = cp {
        connection_pool(cp, &at(p, "connectionPool"), e);
    }
    if let Some(od) = od {
        outlier_detection(od, &at(p, "outlierDetection"), e);
    }
    if let Some(t) = tls {
        client_tls(t, &at(p, "tls"), e);
    }
}

fn load_balancer(lb: &LoadBalancerSettings, has_outlier: bool, p: &str, e: &mut Errs) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        e.err(p, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cp = at(p, "consistentHash");
        match ch.hash_keys().len() {
            0 => e.err(&cp, "consistentHash requires one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"),
            1 => {}
            _ => e.err(&cp, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set"),
        }
        if let Some(h) = &ch.http_header_name
            && validate_match_header_name(h).is_err()
        {
            e.err(
                at(&cp, "httpHeaderName"),
                format!("invalid header name {h:?}"),
            );
        }
        if let Some(q) = &ch.http_query_parameter_name
            && q.is_empty()
        {
            e.err(
                at(&cp, "httpQueryParameterName"),
                "query parameter name must not be empty",
            );
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                e.err(at(&cp, "httpCookie.name"), "name required for httpCookie");
            }
            if let Some(ttl) = &c.ttl
                && let Err(m) = ttl.value()
            {
                e.err(at(&cp, "httpCookie.ttl"), m);
            }
            let mut seen = BTreeSet::new();
            for (i, a) in c.attributes.iter().enumerate() {
                let ap = idx(&at(&cp, "httpCookie.attributes"), i);
                if a.name.is_empty() {
                    e.err(at(&ap, "name"), "cookie attribute name cannot be empty");
                } else if !seen.insert(a.name.as_str()) {
                    e.err(
                        at(&ap, "name"),
                        format!("duplicate cookie attribute name {:?}", a.name),
                    );
                }
            }
        }
        if ch.minimum_ring_size.is_some() {
            e.warn(
                at(&cp, "minimumRingSize"),
                "deprecated: use ringHash.minimumRingSize",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                e.err(
                    &cp,
                    "only one of minimumRingSize or maglev/ringHash can be specified",
                );
            }
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            e.err(&cp, "only one of ringHash or maglev may be set");
        }
        if let Some(m) = &ch.maglev {
            let mp = at(&cp, "maglev.tableSize");
            match m.table_size {
                None | Some(0) => e.err(&mp, "tableSize must be set for maglev"),
                Some(t) if t >= 5_000_011 => {
                    e.err(&mp, format!("tableSize {t} must be less than 5000011"))
                }
                Some(t) if !is_prime(t) => e.err(
                    &mp,
                    format!("tableSize {t} must be a prime number for maglev"),
                ),
                _ => {}
            }
        }
    }
    if let Some(loc) = &lb.locality_lb_setting {
        locality_lb(loc, has_outlier, &at(p, "localityLbSetting"), e);
    }
    check_duration(&lb.warmup_duration_secs, &at(p, "warmupDurationSecs"), e);
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        e.err(
            p,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(w) = &lb.warmup {
        let wp = at(p, "warmup");
        match &w.duration {
            None => e.err(at(&wp, "duration"), "duration is required"),
            Some(d) => e.check(at(&wp, "duration"), validate_duration(d)),
        }
        if w.minimum_percent
            .is_some_and(|m| !(0.0..=100.0).contains(&m))
        {
            e.err(
                at(&wp, "minimumPercent"),
                "minimumPercent must be within 0..100",
            );
        }
        if w.aggression.is_some_and(|a| a <= 0.0) {
            e.err(at(&wp, "aggression"), "aggression must be greater than 0");
        }
    }
}

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return false;
    }
    if x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

pub(crate) fn locality_lb(l: &LocalityLbSetting, has_outlier: bool, p: &str, e: &mut Errs) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        e.err(
            p,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let dp = idx(&at(p, "distribute"), i);
        check_locality(&d.from, &at(&dp, "from"), e);
        let mut total = 0u64;
        for (loc, w) in &d.to {
            let tp = at(&at(&dp, "to"), loc);
            check_locality(loc, &tp, e);
            if *w == 0 || *w > 100 {
                e.err(
                    &tp,
                    format!("locality weight {w} must be in range [1, 100]"),
                );
            }
            total += u64::from(*w);
        }
        if total != 100 {
            e.err(
                at(&dp, "to"),
                format!("locality weights sum to {total}, must be 100"),
            );
        }
    }
    for (i, f) in l.failover.iter().enumerate() {
        let fp = idx(&at(p, "failover"), i);
        if f.from == f.to {
            e.err(
                &fp,
                "locality lb failover settings must specify different regions",
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            e.err(&fp, "locality lb failover only specifies regions");
        }
        if f.from.contains('*') || f.to.contains('*') {
            e.err(
                &fp,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        e.warn(p, "outlier detection policy must be provided for failover");
    }
}

/// `region/zone/subzone`, each part non-empty; a single `*` only at the end.
fn check_locality(loc: &str, p: &str, e: &mut Errs) {
    let stars = loc.matches('*').count();
    if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
        e.err(
            p,
            format!("locality {loc:?}: wildcard '*' may appear once, at the end"),
        );
    }
    if loc.splitn(3, '/').any(str::is_empty) {
        e.err(
            p,
            format!("locality {loc:?} must not contain empty region/zone/subzone"),
        );
    }
}

fn connection_pool(cp: &ConnectionPoolSettings, p: &str, e: &mut Errs) {
    if cp.tcp.is_none() && cp.http.is_none() {
        e.err(p, "connection pool must have at least one field");
    }
    if let Some(h) = &cp.http {
        let hp = at(p, "http");
        for (field, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            if let Some(v) = v
                && v < 0
            {
                e.err(
                    at(&hp, field),
                    format!("{field} must be non-negative (got {v})"),
                );
            }
        }
        check_duration(&h.idle_timeout, &at(&hp, "idleTimeout"), e);
        if let Some(ka) = &h.http2_keep_alive {
            let kp = at(&hp, "http2KeepAlive");
            for (field, d) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                match d {
                    None => e.err(
                        at(&kp, field),
                        format!("http2 keepalive {field} is required"),
                    ),
                    Some(d) => e.check(at(&kp, field), validate_duration(d)),
                }
            }
        }
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && h.use_client_protocol == Some(true)
        {
            e.err(
                at(&hp, "useClientProtocol"),
                "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
    }
    if let Some(t) = &cp.tcp {
        let tp = at(p, "tcp");
        if let Some(v) = t.max_connections
            && v < 0
        {
            e.err(
                at(&tp, "maxConnections"),
                format!("maxConnections must be non-negative (got {v})"),
            );
        }
        check_duration(&t.connect_timeout, &at(&tp, "connectTimeout"), e);
        check_duration(
            &t.max_connection_duration,
            &at(&tp, "maxConnectionDuration"),
            e,
        );
        if let Some(idle) = &t.idle_timeout
            && idle.value() != Ok(std::time::Duration::ZERO)
        {
            e.check(at(&tp, "idleTimeout"), validate_duration(idle));
        }
        if let Some(ka) = &t.tcp_keepalive {
            check_duration(&ka.time, &at(&tp, "tcpKeepalive.time"), e);
            check_duration(&ka.interval, &at(&tp, "tcpKeepalive.interval"), e);
        }
    }
}

fn outlier_detection(od: &OutlierDetection, p: &str, e: &mut Errs) {
    check_duration(&od.base_ejection_time, &at(p, "baseEjectionTime"), e);
    check_duration(&od.interval, &at(p, "interval"), e);
    if od.consecutive_errors.is_some() {
        e.warn(
            at(p, "consecutiveErrors"),
            "deprecated: use consecutiveGatewayErrors or consecutive5xxErrors",
        );
    }
    if !od.split_external_local_origin_errors
        && od.consecutive_local_origin_failures.is_some_and(|v| v > 0)
    {
        e.err(
            at(p, "consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures is set but splitExternalLocalOriginErrors is false",
        );
    }
    check_percent_int(od.max_ejection_percent, &at(p, "maxEjectionPercent"), e);
    check_percent_int(od.min_health_percent, &at(p, "minHealthPercent"), e);
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            e.err(
                idx(&at(p, "outlierDetectionHttpErrorCodes"), i),
                format!("HTTP status {code} is not in range 100-599"),
            );
        }
    }
}

fn client_tls(t: &ClientTlsSettings, p: &str, e: &mut Errs) {
    let has = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    if t.insecure_skip_verify == Some(true) {
        match t.mode {
            Some(ClientTlsMode::Simple)
                if has(&t.ca_certificates)
                    || has(&t.credential_name)
                    || !t.subject_alt_names.is_empty() =>
            {
                e.err(p, "cannot specify caCertificates, credentialName or subjectAltNames when insecureSkipVerify is true");
            }
            Some(ClientTlsMode::Mutual)
                if has(&t.ca_certificates) || !t.subject_alt_names.is_empty() =>
            {
                e.err(p, "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true");
            }
            _ => {}
        }
    }
    let simple_or_mutual = matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual));
    if simple_or_mutual && has(&t.credential_name) {
        if has(&t.client_certificate)
            || has(&t.ca_certificates)
            || has(&t.private_key)
            || has(&t.ca_crl)
        {
            e.err(p, "cannot specify client certificates, CA certificate or CA CRL if credentialName is set");
        }
        return;
    }
    if t.mode == Some(ClientTlsMode::Mutual) {
        if !has(&t.client_certificate) {
            e.err(
                at(p, "clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if !has(&t.private_key) {
            e.err(at(p, "privateKey"), "private key required for mutual tls");
        }
    }
}
