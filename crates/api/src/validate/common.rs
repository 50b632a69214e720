//! Checks shared by several kinds: DNS names and hosts, ports, labels,
//! durations, regexes, IPs, percentages, protocols.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use super::{Errs, at};
use crate::duration::Duration;
use crate::networking::{Percent, StringMatch, StringMatchKind};

/// RFC 1123 label: 1-63 chars of `a-z0-9-`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    label_ok(s, false)
}

fn label_ok(s: &str, allow_upper: bool) -> bool {
    let b = s.as_bytes();
    let ok = |c: u8| {
        c.is_ascii_digit() || c.is_ascii_lowercase() || (allow_upper && c.is_ascii_uppercase())
    };
    !b.is_empty()
        && b.len() <= 63
        && ok(b[0])
        && ok(b[b.len() - 1])
        && b.iter().all(|&c| ok(c) || c == b'-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 chars.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Istio's wildcard DNS label: `*`, `*foo`, `*-foo` or a DNS label (case-insensitive).
fn is_wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    s.len() <= 63 && label_ok(rest, true)
}

fn check_dns_preconditions(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    Ok(())
}

fn check_labels_of(domain: &str, labels: &str) -> Result<(), String> {
    let parts: Vec<&str> = labels.split('.').collect();
    let tld = parts[parts.len() - 1];
    if !tld.is_empty() && tld.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() && parts.len() > 1 {
            return Ok(());
        }
        if !label_ok(label, true) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// A fully qualified domain name (no wildcards).
pub fn validate_fqdn(name: &str) -> Result<(), String> {
    check_dns_preconditions(name)?;
    check_labels_of(name, name)
}

/// A domain name that may start with a wildcard label (`*.example.com`).
pub fn validate_wildcard_domain(name: &str) -> Result<(), String> {
    check_dns_preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!(
            "domain name {name:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(r) => check_labels_of(name, r),
        None => Ok(()),
    }
}

/// A partial wildcard (`foo*.com`, `*foo.com`) is not allowed; `*` and `*.x` are.
pub fn validate_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host != "*" && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

/// A port number in 1..=65535.
pub fn validate_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// A duration as Istio accepts it: parsable, at least 1ms, whole milliseconds.
pub fn validate_duration(d: &Duration) -> Result<(), String> {
    let v = d.value().map_err(str::to_string)?;
    if v < std::time::Duration::from_millis(1) {
        return Err(format!("duration {:?} must be at least 1ms", d.raw()));
    }
    if v.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "duration {:?}: only millisecond precision is supported",
            d.raw()
        ));
    }
    Ok(())
}

/// Checks an optional duration field.
pub(crate) fn check_duration(d: &Option<Duration>, path: &str, e: &mut Errs) {
    if let Some(d) = d {
        e.check(path, validate_duration(d));
    }
}

/// A regular expression as Envoy would accept it. Envoy uses RE2; Weft checks
/// with Rust's `regex` crate, which implements the same syntax family (no
/// backreferences, no look-around). Known differences: `regex` rejects a few
/// RE2-only escapes (`\C`, `\pN` written as `\p{N}` is fine) and its default
/// size limits differ; Istio also caps patterns at 1024 bytes, as here.
pub fn validate_regex(re: &str) -> Result<(), String> {
    if re.is_empty() {
        return Err("regex must not be empty".into());
    }
    if re.len() > 1024 {
        return Err(format!(
            "regex is too large ({} bytes), max length allowed is 1024",
            re.len()
        ));
    }
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        let detail = e.to_string();
        let last = detail
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        format!("invalid regex {re:?}: {last} (Istio uses RE2 syntax)")
    })
}

/// Compiles a regex with Envoy's semantics: the whole input must match
/// (RE2 `FullMatch`), so the pattern is anchored as `^(?:pattern)$`.
pub fn full_match_regex(re: &str) -> Result<regex::Regex, String> {
    validate_regex(re)?;
    regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("invalid regex {re:?}: {e}"))
}

/// Checks a `StringMatch`: exactly one of exact/prefix/regex; non-empty prefix
/// (except for uri), valid regex.
pub(crate) fn check_string_match(
    m: &StringMatch,
    path: &str,
    allow_empty_prefix: bool,
    e: &mut Errs,
) {
    if m.variants_set() > 1 {
        e.err(path, "only one of exact, prefix or regex may be set");
        return;
    }
    match m.kind() {
        Some(StringMatchKind::Prefix(p)) if p.is_empty() && !allow_empty_prefix => {
            e.err(
                at(path, "prefix"),
                "prefix string match should not be empty",
            );
        }
        Some(StringMatchKind::Regex(r)) => e.check(at(path, "regex"), validate_regex(r)),
        _ => {}
    }
}

/// Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name.
fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !is_dns1123_subdomain(p))
    {
        return Err(format!(
            "invalid label key {key:?}: prefix must be a DNS subdomain"
        ));
    }
    if !label_value_ok(name) || name.is_empty() {
        return Err(format!(
            "invalid label key {key:?}: name must be 1-63 chars of [A-Za-z0-9_.-], starting and ending alphanumeric"
        ));
    }
    Ok(())
}

fn label_value_ok(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Validates a label map (keys and values as Kubernetes requires).
pub(crate) fn check_labels(labels: &BTreeMap<String, String>, path: &str, e: &mut Errs) {
    for (k, v) in labels {
        let p = at(path, k);
        if let Err(m) = validate_label_key(k) {
            e.err(&p, m);
        }
        if !label_value_ok(v) {
            e.err(
                &p,
                format!("invalid label value {v:?}: must be at most 63 chars of [A-Za-z0-9_.-], starting and ending alphanumeric"),
            );
        }
        if k.contains('*') || v.contains('*') {
            e.err(
                &p,
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
}

/// A label selector (match labels) for public callers.
pub fn validate_label_selector(labels: &BTreeMap<String, String>) -> Result<(), String> {
    let mut e = Errs::default();
    check_labels(labels, "", &mut e);
    match e.list.into_iter().next() {
        Some(f) => Err(f.to_string()),
        None => Ok(()),
    }
}

/// An IP address.
pub(crate) fn validate_ip(s: &str) -> Result<(), String> {
    IpAddr::from_str(s)
        .map(|_| ())
        .map_err(|_| format!("{s:?} is not a valid IP address"))
}

/// An IP address or CIDR block.
pub(crate) fn validate_ip_subnet(s: &str) -> Result<(), String> {
    if s.contains('/') {
        ipnet::IpNet::from_str(s)
            .map(|_| ())
            .map_err(|_| format!("{s:?} is not a valid CIDR block"))
    } else {
        validate_ip(s)
    }
}

/// A fractional percentage: 0, or within [0.0001, 100].
pub(crate) fn check_percentage(p: &Option<Percent>, path: &str, e: &mut Errs) {
    if let Some(p) = p {
        let v = p.value;
        if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) || v.is_nan() {
            e.err(
                at(path, "value"),
                format!("percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"),
            );
        }
    }
}

/// An integer percentage in 0..=100.
pub(crate) fn check_percent_int(v: Option<i32>, path: &str, e: &mut Errs) {
    if let Some(v) = v
        && !(0..=100).contains(&v)
    {
        e.err(path, format!("percentage {v} is not in range 0..100"));
    }
}

/// A port name (DNS label).
pub(crate) fn validate_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid port name {name:?}: must be a lowercase DNS label"
        ))
    }
}

/// Application protocols Istio understands, from port names
/// (`http-web` → HTTP), `appProtocol` or the `protocol` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Redis,
    Mysql,
    /// Not recognised: the proxy sniffs the protocol.
    Unsupported,
}

impl Protocol {
    /// Parses a protocol name case-insensitively, as Istio's `protocol.Parse`.
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "http_proxy" => Protocol::HttpProxy,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => Protocol::Unsupported,
        }
    }

    /// Protocol from a Kubernetes port: `appProtocol` first (including the
    /// `kubernetes.io/h2c`, `kubernetes.io/ws`, `kubernetes.io/wss` values),
    /// then the port name's prefix before the first `-` (`http-web`, `grpc`).
    pub fn from_port(name: Option<&str>, app_protocol: Option<&str>) -> Protocol {
        if let Some(ap) = app_protocol {
            let p = match ap {
                "kubernetes.io/h2c" => Protocol::Http2,
                "kubernetes.io/ws" => Protocol::Http,
                "kubernetes.io/wss" => Protocol::Https,
                other => Protocol::parse(other),
            };
            if p != Protocol::Unsupported {
                return p;
            }
        }
        match name {
            Some(n) => Protocol::parse(n.split('-').next().unwrap_or(n)),
            None => Protocol::Unsupported,
        }
    }

    /// Istio's canonical name (`HTTP`, `GRPC-Web`, `TCP`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Unsupported => "UnsupportedProtocol",
        }
    }

    /// HTTP-family (routed by HTTP rules).
    pub fn is_http(&self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::HttpProxy
        )
    }

    /// TLS-family (routed by SNI).
    pub fn is_tls(&self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Opaque TCP-family.
    pub fn is_tcp(&self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::Mysql
        )
    }
}

/// A protocol field; empty means "sniff".
pub(crate) fn validate_protocol(p: &str) -> Result<(), String> {
    if !p.is_empty() && Protocol::parse(p) == Protocol::Unsupported {
        return Err(format!(
            "unsupported protocol {p:?}; supported: HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, UDP, MONGO, REDIS, MYSQL"
        ));
    }
    Ok(())
}

/// Checks `exportTo` entries: `.`, `*`, `~` (ServiceEntry only) or a namespace.
pub(crate) fn check_export_to(
    export_to: &[String],
    namespace: &str,
    service_entry: bool,
    path: &str,
    e: &mut Errs,
) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, x) in export_to.iter().enumerate() {
        let p = super::idx(path, i);
        let key = if x == "." { namespace } else { x.as_str() };
        if !seen.insert(key.to_string()) {
            e.err(&p, format!("duplicate entries in exportTo: {x:?}"));
            continue;
        }
        let ok = x == "." || x == "*" || (x == "~" && service_entry) || is_dns1123_label(x);
        if !ok {
            e.err(
                &p,
                format!("invalid exportTo value {x:?}: must be \".\", \"*\" or a namespace"),
            );
        }
    }
    if export_to.len() > 1 && seen.contains("*") {
        e.err(
            path,
            "cannot have both public (*) and non-public exportTo values",
        );
    }
    if export_to.len() > 1 && seen.contains("~") {
        e.err(
            path,
            "cannot export service entry to no one (~) and someone",
        );
    }
}

/// Header names for header manipulation: not empty, lowercase-insensitive
/// token characters, no pseudo-headers (`:path`) and not `host`.
pub(crate) fn validate_header_op_name(name: &str, allow_authority: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    let lower = name.to_ascii_lowercase();
    let is_authority = lower == ":authority" || lower == "host";
    if is_authority && allow_authority {
        return Ok(());
    }
    if lower.starts_with(':') || lower == "host" {
        return Err(format!(
            "invalid header {name:?}: pseudo-headers and host cannot be modified here"
        ));
    }
    if !name.bytes().all(is_token_char) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok(())
}

/// Header names in matches (`headers`, `withoutHeaders`).
pub(crate) fn validate_match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    let body = name.strip_prefix(':').unwrap_or(name);
    if body.is_empty() || !body.bytes().all(is_token_char) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok(())
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Gateway references (`namespace/name`, legacy `name` or `name.namespace`,
/// or the reserved `mesh`).
pub(crate) fn check_gateway_names(gws: &[String], path: &str, e: &mut Errs) {
    for (i, gw) in gws.iter().enumerate() {
        let p = super::idx(path, i);
        if gw == "mesh" {
            continue;
        }
        match gw.split_once('/') {
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    e.err(&p, "config namespace and gateway name cannot be empty");
                } else {
                    if !is_dns1123_label(ns) {
                        e.err(&p, format!("invalid value for namespace: {ns:?}"));
                    }
                    if !is_dns1123_label(name) {
                        e.err(&p, format!("invalid value for gateway name: {name:?}"));
                    }
                }
            }
            None => e.check(&p, validate_fqdn(gw)),
        }
    }
}

/// A header value for header manipulation: no control characters, and
/// every `%` either escaped (`%%`) or opening a `%VARIABLE%` / `%VAR(args)%`
/// that is closed, as Envoy's header formatter requires.
pub(crate) fn validate_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "header value {value:?} contains control characters"
        ));
    }
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        // %VAR% or %VAR(...)%: find the closing '%' outside parentheses.
        let mut depth = 0usize;
        let mut j = i + 1;
        let mut closed = false;
        while j < b.len() {
            match b[j] {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b'%' if depth == 0 => {
                    closed = true;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        if !closed || j == i + 1 {
            return Err(format!(
                "header value {value:?}: un-escaped % (write %% for a literal percent sign)"
            ));
        }
        i = j + 1;
    }
    Ok(())
}
