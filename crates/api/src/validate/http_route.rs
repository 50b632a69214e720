//! HTTP route rules of a VirtualService: matches, actions, header
//! manipulation, CORS, fault injection, retries, rewrite and redirect.

use super::common::*;
use super::virtual_service::{destination, http_destinations};
use super::{Errs, at, idx};
use crate::networking::*;

pub(super) fn http_route(r: &HttpRoute, p: &str, delegate_vs: bool, e: &mut Errs) {
    // Exactly one action.
    if r.delegate.is_some() {
        if delegate_vs {
            e.err(
                at(p, "delegate"),
                "delegate HTTP route cannot contain delegate",
            );
        }
        if r.redirect.is_some() {
            e.err(
                at(p, "redirect"),
                "root HTTP route must not specify redirect",
            );
        }
        if !r.route.is_empty() {
            e.err(at(p, "route"), "root HTTP route must not specify route");
        }
    } else if r.redirect.is_some() {
        for (field, set) in [
            ("route", !r.route.is_empty()),
            ("fault", r.fault.is_some()),
            ("rewrite", r.rewrite.is_some()),
            ("directResponse", r.direct_response.is_some()),
        ] {
            if set {
                e.err(
                    at(p, field),
                    format!("HTTP route cannot contain both {field} and redirect"),
                );
            }
        }
    } else if r.direct_response.is_some() {
        for (field, set) in [
            ("route", !r.route.is_empty()),
            ("fault", r.fault.is_some()),
            ("rewrite", r.rewrite.is_some()),
        ] {
            if set {
                e.err(
                    at(p, field),
                    format!("HTTP route cannot contain both {field} and directResponse"),
                );
            }
        }
    } else if r.route.is_empty() {
        e.err(
            at(p, "route"),
            "HTTP route, redirect or directResponse is required",
        );
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        e.err(
            at(p, "mirrors"),
            "HTTP route cannot contain both mirror and mirrors",
        );
    }

    for (j, m) in r.matches.iter().enumerate() {
        http_match(m, &idx(&at(p, "match"), j), e);
    }
    headers(&r.headers, &at(p, "headers"), e);
    if let Some(c) = &r.cors_policy {
        cors(c, &at(p, "corsPolicy"), e);
    }
    if let Some(f) = &r.fault {
        fault(f, &at(p, "fault"), e);
    }
    if let Some(v) = r.mirror_percent {
        if v > 100 {
            e.err(
                at(p, "mirrorPercent"),
                format!("mirrorPercent must have a max value of 100 (it has {v})"),
            );
        }
        e.warn(
            at(p, "mirrorPercent"),
            "deprecated: use mirrorPercentage instead",
        );
    }
    if let Some(mp) = &r.mirror_percentage
        && !(0.0..=100.0).contains(&mp.value)
    {
        e.err(
            at(p, "mirrorPercentage.value"),
            format!(
                "mirrorPercentage must be within 0..100 (it has {})",
                mp.value
            ),
        );
    }
    if let Some(d) = &r.mirror {
        destination(d, &at(p, "mirror"), e);
    }
    for (j, m) in r.mirrors.iter().enumerate() {
        let mp = idx(&at(p, "mirrors"), j);
        match &m.destination {
            None => e.err(
                at(&mp, "destination"),
                "destination is required for mirrors",
            ),
            Some(d) => destination(d, &at(&mp, "destination"), e),
        }
        if let Some(pc) = &m.percentage
            && !(0.0..=100.0).contains(&pc.value)
        {
            e.err(
                at(&mp, "percentage.value"),
                format!(
                    "mirror percentage must be within 0..100 (it has {})",
                    pc.value
                ),
            );
        }
    }
    if let Some(rd) = &r.redirect {
        redirect(rd, &r.matches, &at(p, "redirect"), e);
    }
    if let Some(dr) = &r.direct_response {
        let dp = at(p, "directResponse");
        check_http_status(dr.status as i64, &at(&dp, "status"), e);
        if let Some(b) = &dr.body {
            if b.string.is_some() && b.bytes.is_some() {
                e.err(at(&dp, "body"), "only one of string or bytes may be set");
            }
            let size = b
                .string
                .as_ref()
                .or(b.bytes.as_ref())
                .map_or(0, String::len);
            if size > 1024 * 1024 {
                e.err(
                    at(&dp, "body"),
                    "direct response body must be less than 1MB",
                );
            } else if size > 100 * 1024 {
                e.warn(
                    at(&dp, "body"),
                    "large direct responses may impact control plane performance",
                );
            }
        }
    }
    if let Some(rt) = &r.retries {
        retries(rt, &at(p, "retries"), e);
    }
    if let Some(rw) = &r.rewrite {
        rewrite(rw, r.headers.as_ref(), &at(p, "rewrite"), e);
    }
    check_duration(&r.timeout, &at(p, "timeout"), e);
    http_destinations(&r.route, &at(p, "route"), e);
}

fn http_match(m: &HttpMatchRequest, p: &str, e: &mut Errs) {
    if let Some(u) = &m.uri {
        check_string_match(u, &at(p, "uri"), true, e);
    }
    for (field, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(sm, &at(p, field), false, e);
        }
    }
    for (name, sm) in &m.headers {
        let hp = at(&at(p, "headers"), name);
        e.check(&hp, validate_match_header_name(name));
        check_string_match(sm, &hp, false, e);
    }
    for (name, sm) in &m.without_headers {
        let hp = at(&at(p, "withoutHeaders"), name);
        e.check(&hp, validate_match_header_name(name));
        if sm.regex.as_deref() != Some("*") {
            check_string_match(sm, &hp, false, e);
        }
    }
    for (name, sm) in &m.query_params {
        check_string_match(sm, &at(&at(p, "queryParams"), name), false, e);
    }
    if let Some(port) = m.port {
        e.check(at(p, "port"), validate_port(port));
    }
    check_labels(&m.source_labels, &at(p, "sourceLabels"), e);
    check_gateway_names(&m.gateways, &at(p, "gateways"), e);
    if let Some(sn) = &m.source_namespace
        && !is_dns1123_label(sn)
    {
        e.err(
            at(p, "sourceNamespace"),
            format!("sourceNamespace match {sn:?} is invalid"),
        );
    }
}

pub(super) fn headers(h: &Option<Headers>, p: &str, e: &mut Errs) {
    let Some(h) = h else { return };
    for (dir, ops, allow_authority) in [
        ("request", &h.request, true),
        ("response", &h.response, false),
    ] {
        let Some(ops) = ops else { continue };
        let dp = at(p, dir);
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                let hp = at(&at(&dp, op), name);
                e.check(&hp, validate_header_op_name(name, allow_authority));
                e.check(&hp, validate_header_value(value));
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            e.check(
                idx(&at(&dp, "remove"), i),
                validate_header_op_name(name, false),
            );
        }
    }
}

const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

fn cors(c: &CorsPolicy, p: &str, e: &mut Errs) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        let op = idx(&at(p, "allowOrigins"), i);
        let empty = match o.kind() {
            Some(
                StringMatchKind::Exact(s) | StringMatchKind::Prefix(s) | StringMatchKind::Regex(s),
            ) => s.is_empty(),
            None => true,
        };
        if empty {
            e.err(
                &op,
                "allowOrigins entries need exactly one non-empty exact, prefix or regex",
            );
        } else {
            check_string_match(o, &op, false, e);
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            e.err(
                idx(&at(p, "allowMethods"), i),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':')) {
                e.err(idx(&at(p, field), i), format!("invalid header name {h:?}"));
            }
        }
    }
    if let Some(ma) = &c.max_age {
        let mp = at(p, "maxAge");
        match validate_duration(ma) {
            Err(m) => e.err(&mp, m),
            Ok(()) => {
                if ma.value().is_ok_and(|d| d.subsec_nanos() != 0) {
                    e.err(&mp, "maxAge is accurate only to seconds precision");
                }
            }
        }
    }
}

const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn check_http_status(status: i64, p: &str, e: &mut Errs) {
    if !(200..=599).contains(&status) {
        e.err(p, format!("HTTP status {status} is not in range 200-599"));
    }
}

fn fault(f: &HttpFaultInjection, p: &str, e: &mut Errs) {
    if f.delay.is_none() && f.abort.is_none() {
        e.err(p, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        let ap = at(p, "abort");
        check_percentage(&a.percentage, &at(&ap, "percentage"), e);
        let set = usize::from(a.http_status.is_some())
            + usize::from(a.grpc_status.is_some())
            + usize::from(a.http2_error.is_some());
        if set > 1 {
            e.err(
                &ap,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            );
        }
        if let Some(s) = a.http_status {
            check_http_status(i64::from(s), &at(&ap, "httpStatus"), e);
        }
        if let Some(g) = &a.grpc_status
            && !GRPC_STATUS.contains(&g.as_str())
        {
            e.err(
                at(&ap, "grpcStatus"),
                format!("gRPC status {g:?} is not supported (e.g. NOT_FOUND, UNAVAILABLE)"),
            );
        }
        if a.http2_error.is_some() {
            e.err(
                at(&ap, "http2Error"),
                "HTTP/2 abort fault injection is not supported",
            );
        }
        if set == 0 {
            e.warn(&ap, "abort configured, but error type not set");
        }
    }
    if let Some(d) = &f.delay {
        let dp = at(p, "delay");
        check_percentage(&d.percentage, &at(&dp, "percentage"), e);
        check_percent_int(d.percent, &at(&dp, "percent"), e);
        match (&d.fixed_delay, &d.exponential_delay) {
            (Some(fd), None) => e.check(at(&dp, "fixedDelay"), validate_duration(fd)),
            (None, Some(_)) => e.err(
                at(&dp, "exponentialDelay"),
                "exponentialDelay is not supported",
            ),
            (Some(_), Some(_)) => {
                e.err(&dp, "only one of fixedDelay or exponentialDelay may be set")
            }
            (None, None) => e.err(at(&dp, "fixedDelay"), "delay requires fixedDelay"),
        }
    }
}

fn redirect(r: &HttpRedirect, matches: &[HttpMatchRequest], p: &str, e: &mut Errs) {
    if r.uri.is_some() && r.prefix_rewrite.is_some() {
        e.err(p, "redirect may only specify one of uri or prefixRewrite");
    }
    if r.prefix_rewrite.is_some()
        && matches.iter().any(|m| {
            m.uri
                .as_ref()
                .is_some_and(|u| !matches!(u.kind(), Some(StringMatchKind::Prefix(_))))
        })
    {
        e.err(
            at(p, "prefixRewrite"),
            "prefixRewrite requires all URI matches to use prefix match type",
        );
    }
    if r.uri.is_none()
        && r.prefix_rewrite.is_none()
        && r.authority.is_none()
        && r.port.is_none()
        && r.scheme.is_none()
        && r.derive_port.is_none()
    {
        e.err(p, "redirect must specify uri, authority, scheme, or port");
    }
    if let Some(code) = r.redirect_code
        && !(300..=399).contains(&code)
    {
        e.err(
            at(p, "redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
    if let Some(s) = &r.scheme
        && s != "http"
        && s != "https"
    {
        e.err(
            at(p, "scheme"),
            format!("invalid redirect scheme {s:?}, must be \"http\" or \"https\""),
        );
    }
    if let Some(port) = r.port {
        e.check(at(p, "port"), validate_port(port));
    }
    if r.port.is_some() && r.derive_port.is_some() {
        e.err(p, "only one of port or derivePort may be set");
    }
    if let Some(dp) = &r.derive_port
        && dp != "FROM_PROTOCOL_DEFAULT"
        && dp != "FROM_REQUEST_PORT"
    {
        e.err(at(p, "derivePort"), format!("unknown derivePort {dp:?}"));
    }
}

fn retries(r: &HttpRetry, p: &str, e: &mut Errs) {
    if r.attempts < 0 {
        e.err(
            at(p, "attempts"),
            format!("attempts cannot be negative (got {})", r.attempts),
        );
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || r.retry_on.is_some()
            || r.retry_remote_localities.is_some())
    {
        e.err(
            at(p, "attempts"),
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    check_duration(&r.per_try_timeout, &at(p, "perTryTimeout"), e);
    check_duration(&r.backoff, &at(p, "backoff"), e);
    if let Some(on) = &r.retry_on {
        for policy in on.split(',') {
            let policy = policy.trim();
            let is_status = policy
                .parse::<u16>()
                .is_ok_and(|c| (100..=599).contains(&c));
            if !is_status && !RETRY_ON.contains(&policy) {
                e.err(
                    at(p, "retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn rewrite(r: &HttpRewrite, hdrs: Option<&Headers>, p: &str, e: &mut Errs) {
    if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
        e.err(p, "rewrite may only contain one of uri or uriRegexRewrite");
    }
    if r.uri.is_none() && r.uri_regex_rewrite.is_none() && r.authority.is_none() {
        e.err(
            p,
            "rewrite must specify at least one of uri, uriRegexRewrite or authority",
        );
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        let rp = at(p, "uriRegexRewrite");
        if rr.pattern.is_empty() || rr.rewrite.is_empty() {
            e.err(&rp, "uriRegexRewrite requires both match and rewrite");
        } else {
            e.check(at(&rp, "match"), validate_regex(&rr.pattern));
        }
    }
    if r.authority.is_some()
        && let Some(req) = hdrs.and_then(|h| h.request.as_ref())
        && req.set.keys().chain(req.add.keys()).any(|k| {
            let k = k.to_ascii_lowercase();
            k == ":authority" || k == "host"
        })
    {
        e.err(
            at(p, "authority"),
            "authority header cannot be set multiple times (rewrite and headers)",
        );
    }
}
