//! What one request looked like from every side (client, upstreams, access
//! log), reduced to comparable fields; checks of a scenario's expectations on
//! those fields; and the Envoy-vs-weft comparison. Pure: no I/O.

use std::collections::BTreeMap;

use crate::client::ClientResult;
use crate::proxy::LogLine;
use crate::scenario::{Expect, Protocol, RequestSpec};
use crate::upstream::{Seen, TEST_ID};

/// Header values that legitimately differ between runs; their names are
/// still compared.
const VOLATILE: &[&str] = &[
    TEST_ID,
    "x-request-id",
    "date",
    "x-envoy-upstream-service-time",
];

/// Names of every compared field (what `deviations` may name, besides
/// `access_log.NAME` for an extra access log).
pub const FIELDS: &[&str] = &[
    "status",
    "upstream",
    "attempts",
    "upstream_method",
    "upstream_path",
    "upstream_host",
    "upstream_version",
    "upstream_headers",
    "response_headers",
    "body",
    "trailers",
    "echo",
    "transport_error",
    "flags",
    "cluster",
    "route",
    "log_upstream_host",
    "log_code",
    "log_protocol",
    "bytes_received",
    "bytes_sent",
    "upstream_connections",
];

/// Everything observed about one request instance.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub test_id: String,
    pub protocol: Protocol,
    pub client: ClientResult,
    pub seen: Vec<Seen>,
    pub log: Option<LogLine>,
}

impl Observation {
    /// The upstream that served the last attempt (`none` if none did).
    pub fn upstream(&self) -> String {
        match self.protocol {
            Protocol::Tcp | Protocol::TlsHello | Protocol::ServerFirst => self
                .client
                .echo
                .as_deref()
                .and_then(|e| e.lines().next())
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("none")
                .to_string(),
            _ => self
                .seen
                .last()
                .map(|s| s.upstream.clone())
                .unwrap_or_else(|| "none".into()),
        }
    }

    fn status(&self) -> String {
        match (&self.client.status, &self.client.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(_)) => "transport-error".into(),
            (None, None) => "no-status".into(),
        }
    }

    /// The comparable fields, by name (the names `deviations` refer to).
    pub fn fields(&self) -> BTreeMap<&'static str, String> {
        let mut f = BTreeMap::new();
        let served_by_upstream = self
            .client
            .headers
            .iter()
            .any(|(k, _)| k == "x-echo-upstream");
        match self.protocol {
            Protocol::Tcp | Protocol::TlsHello | Protocol::ServerFirst => {
                f.insert("upstream", self.upstream());
                f.insert("echo", self.client.echo.clone().unwrap_or_default());
                f.insert("transport_error", self.client.error.is_some().to_string());
            }
            Protocol::Raw => {
                f.insert("status", self.status());
            }
            Protocol::Http1 | Protocol::H2c | Protocol::Websocket => {
                f.insert("status", self.status());
                f.insert("upstream", self.upstream());
                f.insert("attempts", self.seen.len().to_string());
                if let Some(last) = self.seen.last() {
                    f.insert("upstream_method", last.method.clone());
                    f.insert("upstream_path", last.path.clone());
                    f.insert("upstream_host", last.authority.clone());
                    f.insert("upstream_version", last.version.clone());
                    // A retry's expected timeout is what is left of the
                    // route timeout, which depends on elapsed time.
                    let retried: &[&str] = if self.seen.len() > 1 {
                        &["x-envoy-expected-rq-timeout-ms"]
                    } else {
                        &[]
                    };
                    f.insert("upstream_headers", header_set(&last.headers, retried));
                }
                let mut volatile: Vec<&str> = Vec::new();
                if !served_by_upstream {
                    // Local replies: the body text (and so its length) is
                    // not part of the comparison unless a scenario expects it.
                    volatile.push("content-length");
                    volatile.push("content-type");
                }
                f.insert(
                    "response_headers",
                    header_set(&self.client.headers, &volatile),
                );
                if served_by_upstream {
                    f.insert("body", self.client.body.clone());
                }
                if !self.client.trailers.is_empty() {
                    f.insert("trailers", header_set(&self.client.trailers, &[]));
                }
                if let Some(e) = &self.client.echo {
                    f.insert("echo", e.clone());
                }
            }
        }
        match &self.log {
            Some(l) => {
                f.insert("flags", l.flags.clone());
                f.insert("cluster", l.cluster.clone());
                f.insert("route", l.route.clone());
                f.insert("log_upstream_host", l.upstream_host.clone());
                f.insert("log_code", l.code.clone());
                f.insert("log_protocol", l.protocol.clone());
                if matches!(
                    self.protocol,
                    Protocol::Tcp | Protocol::TlsHello | Protocol::ServerFirst
                ) {
                    f.insert("bytes_received", l.bytes_received.clone());
                    f.insert("bytes_sent", l.bytes_sent.clone());
                }
            }
            None => {
                f.insert("flags", "<no access log line>".into());
            }
        }
        assert!(
            f.keys().all(|k| FIELDS.contains(k)),
            "observe::FIELDS lacks one of {:?}",
            f.keys().collect::<Vec<_>>()
        );
        f
    }
}

/// `name=value` lines, sorted; volatile values replaced by `*`.
fn header_set(headers: &[(String, String)], extra_volatile: &[&str]) -> String {
    let mut v: Vec<String> = headers
        .iter()
        .map(|(k, val)| {
            let k = k.to_ascii_lowercase();
            if VOLATILE.contains(&k.as_str()) || extra_volatile.contains(&k.as_str()) {
                format!("{k}=*")
            } else {
                format!("{k}={val}")
            }
        })
        .collect();
    v.sort();
    v.join("\n")
}

fn header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    let vals: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    if vals.is_empty() {
        None
    } else {
        Some(vals.join(","))
    }
}

/// Checks one instance against the non-group expectations.
pub fn check_instance(e: &Expect, o: &Observation, group: bool, errs: &mut Vec<String>) {
    let f = o.fields();
    let mut want = |field: &str, expected: Option<String>| {
        if let Some(exp) = expected {
            let got = f.get(field).cloned().unwrap_or_else(|| "<absent>".into());
            if got != exp {
                errs.push(format!(
                    "{}: {field}: expected {exp:?}, got {got:?}",
                    o.test_id
                ));
            }
        }
    };
    if !group {
        want("upstream", e.upstream.clone());
        want("attempts", e.attempts.map(|a| a.to_string()));
        want("status", e.status.map(|s| s.to_string()));
    }
    want("upstream_path", e.upstream_path.clone());
    want("upstream_host", e.upstream_host.clone());
    want("upstream_method", e.upstream_method.clone());
    want("flags", e.flags.clone());
    want("cluster", e.cluster.clone());
    want("route", e.route.clone());
    want("echo", e.echo.clone());
    want("bytes_received", e.bytes_received.map(|b| b.to_string()));
    want("bytes_sent", e.bytes_sent.map(|b| b.to_string()));
    if let Some(body) = &e.body
        && &o.client.body != body
    {
        errs.push(format!(
            "{}: body: expected {body:?}, got {:?}",
            o.test_id, o.client.body
        ));
    }
    let upstream_headers = o.seen.last().map(|s| s.headers.clone()).unwrap_or_default();
    for (k, v) in &e.upstream_headers {
        let got = header_value(&upstream_headers, k);
        // `*` only asks for presence.
        if got.as_deref() != Some(v.as_str()) && !(v == "*" && got.is_some()) {
            errs.push(format!(
                "{}: upstream header {k}: expected {v:?}, got {got:?}",
                o.test_id
            ));
        }
    }
    for k in &e.upstream_headers_absent {
        if let Some(got) = header_value(&upstream_headers, k) {
            errs.push(format!(
                "{}: upstream header {k} should be absent, got {got:?}",
                o.test_id
            ));
        }
    }
    for (k, v) in &e.response_headers {
        let got = header_value(&o.client.headers, k);
        if got.as_deref() != Some(v.as_str()) {
            errs.push(format!(
                "{}: response header {k}: expected {v:?}, got {got:?}",
                o.test_id
            ));
        }
    }
    for k in &e.response_headers_absent {
        if let Some(got) = header_value(&o.client.headers, k) {
            errs.push(format!(
                "{}: response header {k} should be absent, got {got:?}",
                o.test_id
            ));
        }
    }
    for (k, v) in &e.trailers {
        let got = header_value(&o.client.trailers, k);
        if got.as_deref() != Some(v.as_str()) {
            errs.push(format!(
                "{}: trailer {k}: expected {v:?}, got {got:?}",
                o.test_id
            ));
        }
    }
}

fn counts<F: Fn(&Observation) -> String>(obs: &[Observation], key: F) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for o in obs {
        *m.entry(key(o)).or_insert(0) += 1;
    }
    m
}

/// Checks a request's expectations on all its instances.
pub fn check(spec: &RequestSpec, obs: &[Observation], errs: &mut Vec<String>) {
    let e = &spec.expect;
    let group = e.is_group();
    for o in obs {
        check_instance(e, o, group, errs);
    }
    if !group {
        return;
    }
    let label = obs.first().map(|o| o.test_id.as_str()).unwrap_or("?");
    let by_upstream = counts(obs, Observation::upstream);
    if !e.statuses.is_empty() {
        let got = counts(obs, Observation::status);
        let want: BTreeMap<String, u32> = e
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        if got != want {
            errs.push(format!(
                "{label}..: statuses: expected {want:?}, got {got:?}"
            ));
        }
    }
    for (code, min) in &e.min_statuses {
        let got = obs
            .iter()
            .filter(|o| o.status() == code.to_string())
            .count() as u32;
        if got < *min {
            errs.push(format!(
                "{label}..: expected at least {min} x {code}, got {got}"
            ));
        }
    }
    if let Some(s) = e.status {
        let bad: Vec<String> = obs
            .iter()
            .map(Observation::status)
            .filter(|x| *x != s.to_string())
            .collect();
        if !bad.is_empty() {
            errs.push(format!(
                "{label}..: every status should be {s}, got {bad:?}"
            ));
        }
    }
    for (up, n) in &e.upstream_counts {
        let got = by_upstream.get(up).copied().unwrap_or(0);
        if got != *n {
            errs.push(format!(
                "{label}..: upstream {up} served {got}, expected {n} (all: {by_upstream:?})"
            ));
        }
    }
    let total = obs.len().max(1) as f64;
    for (up, [lo, hi]) in &e.upstream_share {
        let share = by_upstream.get(up).copied().unwrap_or(0) as f64 / total;
        if share < *lo || share > *hi {
            errs.push(format!(
                "{label}..: upstream {up} share {share:.3} outside [{lo}, {hi}] (all: {by_upstream:?})"
            ));
        }
    }
    if e.same_upstream && by_upstream.len() != 1 {
        errs.push(format!(
            "{label}..: expected one upstream for all, got {by_upstream:?}"
        ));
    }
    if let Some(want) = e.upstream_connections {
        let got = connections(obs);
        if got != want {
            errs.push(format!(
                "{label}..: expected {want} upstream connections, got {got}"
            ));
        }
    }
    if let Some(min) = e.min_distinct_upstreams
        && by_upstream.keys().filter(|k| k.as_str() != "none").count() < min
    {
        errs.push(format!(
            "{label}..: expected at least {min} distinct upstreams, got {by_upstream:?}"
        ));
    }
}

/// Distinct upstream connections that carried any attempt of the group.
fn connections(obs: &[Observation]) -> usize {
    let set: std::collections::BTreeSet<(String, u64)> = obs
        .iter()
        .flat_map(|o| o.seen.iter().map(|s| (s.upstream.clone(), s.conn)))
        .collect();
    set.len()
}

/// Compares Envoy's and weft-proxy's observations of one request. Fields
/// named in `deviations` are skipped (the caller prints that visibly).
pub fn compare(
    spec: &RequestSpec,
    envoy: &[Observation],
    weft: &[Observation],
    deviations: &BTreeMap<String, String>,
    errs: &mut Vec<String>,
) {
    let skip = |f: &str| deviations.contains_key(f);
    if spec.expect.is_group() {
        // Instances differ one by one (weighted, random, hashing, overflow):
        // compare the distributions of outcomes instead.
        for (field, key) in [
            ("status", Observation::status as fn(&Observation) -> String),
            ("flags", |o: &Observation| {
                o.fields().get("flags").cloned().unwrap_or_default()
            }),
        ] {
            if skip(field) {
                continue;
            }
            let (a, b) = (counts(envoy, key), counts(weft, key));
            if a != b {
                errs.push(format!(
                    "request {:?}: {field} counts differ: envoy {a:?}, weft {b:?}",
                    label(spec)
                ));
            }
        }
        if spec.expect.upstream_connections.is_some() && !skip("upstream_connections") {
            let (a, b) = (connections(envoy), connections(weft));
            if a != b {
                errs.push(format!(
                    "request {:?}: upstream connections differ: envoy {a}, weft {b}",
                    label(spec)
                ));
            }
        }
        return;
    }
    for (i, (a, b)) in envoy.iter().zip(weft.iter()).enumerate() {
        let (fa, fb) = (a.fields(), b.fields());
        let names: std::collections::BTreeSet<&str> = fa.keys().chain(fb.keys()).copied().collect();
        for name in names {
            if skip(name) {
                continue;
            }
            let (va, vb) = (fa.get(name), fb.get(name));
            if va != vb {
                errs.push(format!(
                    "request {:?} #{i}: {name} differs\n    envoy: {}\n    weft:  {}",
                    label(spec),
                    show(va),
                    show(vb)
                ));
            }
        }
    }
}

fn show(v: Option<&String>) -> String {
    match v {
        None => "<absent>".into(),
        Some(s) if s.contains('\n') => format!("\n        {}", s.replace('\n', "\n        ")),
        Some(s) => format!("{s:?}"),
    }
}

/// A readable name for a request.
pub fn label(spec: &RequestSpec) -> String {
    spec.name
        .clone()
        .unwrap_or_else(|| format!("{} {} {}", spec.method, spec.host, spec.path))
}

/// An extra access-log line (fields separated by `|`) with what legitimately
/// differs between runs replaced: the fields listed as volatile become `*`
/// and a trailing `:PORT` of an address becomes `:PORT`.
pub fn normalize_log_line(line: &str, volatile: &[usize]) -> String {
    line.split('|')
        .enumerate()
        .map(|(i, f)| {
            if volatile.contains(&i) {
                return "*".to_string();
            }
            match f.rsplit_once(':') {
                Some((host, port))
                    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    format!("{host}:PORT")
                }
                _ => f.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}
