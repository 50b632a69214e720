//! Access logs in Envoy's format-string language. A format is compiled once
//! into literal and operator segments; a finished request or connection
//! fills an `Entry` (only the headers the format names are captured) and the
//! line is formatted on the worker and written by a background thread per
//! file. JSON formats (`json_format`) live in `json`, response flags in
//! `flags`, and the loggers with their writer threads in `sink`; this file
//! owns formats and entries.

use crate::config::ConfigError;
use crate::model::common::{Ctx, split_format};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

mod flags;
mod json;
mod sink;
pub use flags::{Flag, Flags};
pub use json::JsonTemplate;
pub use sink::AccessLog;

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

// === format ===

#[derive(Debug, Clone)]
enum Op {
    StartTime,
    Req(usize, Option<usize>, Option<usize>),
    Resp(usize, Option<usize>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressNoPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressNoPort,
    DownstreamPeerAddress,
    RequestedServerName,
    DownstreamPeerUriSan,
    DownstreamLocalUriSan,
    DownstreamPeerDnsSan,
    DownstreamPeerSubject,
    DownstreamTlsVersion,
    DownstreamPeerCertSha256,
    RouteName,
    Method,
    Hostname,
}

#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    Op(Op),
}

/// A compiled format plus the header names it reads.
#[derive(Debug, Clone)]
pub struct Format {
    segs: Vec<Seg>,
    /// Set for a `json_format`: each line is this object, its values filled in.
    json: Option<JsonTemplate>,
    pub req_headers: Vec<HeaderName>,
    pub resp_headers: Vec<HeaderName>,
}

fn header_index(list: &mut Vec<HeaderName>, name: &str) -> Option<usize> {
    let n = match name.to_ascii_lowercase().as_str() {
        ":authority" => "host".to_owned(),
        other => other.to_owned(),
    };
    let h = HeaderName::from_bytes(n.as_bytes()).ok()?;
    if let Some(i) = list.iter().position(|x| *x == h) {
        return Some(i);
    }
    list.push(h);
    Some(list.len() - 1)
}

/// Pseudo headers are kept in fixed slots ahead of real headers.
const PSEUDO: [&str; 4] = [":method", ":path", ":scheme", ":authority"];

impl Format {
    /// A format with no segments yet and these header slots.
    fn empty(req_headers: Vec<HeaderName>, resp_headers: Vec<HeaderName>) -> Format {
        Format {
            segs: Vec::new(),
            json: None,
            req_headers,
            resp_headers,
        }
    }

    pub fn compile(ctx: &Ctx<'_>, text: &str) -> Result<Format, ConfigError> {
        Self::compile_with(ctx, text, Vec::new(), Vec::new())
    }

    /// Compiles a format whose header slots extend `req`/`resp`, so that
    /// several loggers of one connection manager share one capture.
    pub fn compile_with(
        ctx: &Ctx<'_>,
        text: &str,
        req: Vec<HeaderName>,
        resp: Vec<HeaderName>,
    ) -> Result<Format, ConfigError> {
        let mut f = Format::empty(req, resp);
        f.segs = f.parse(ctx, text)?;
        Ok(f)
    }

    /// Compiles a `json_format` object (string values are format strings).
    pub fn compile_json(
        ctx: &Ctx<'_>,
        object: &serde_json::Map<String, serde_json::Value>,
        req: Vec<HeaderName>,
        resp: Vec<HeaderName>,
    ) -> Result<Format, ConfigError> {
        let mut f = Format::empty(req, resp);
        f.json = Some(JsonTemplate::compile(&mut f, ctx, object)?);
        Ok(f)
    }

    /// Splits a format string into literal and operator segments.
    fn parse(&mut self, ctx: &Ctx<'_>, text: &str) -> Result<Vec<Seg>, ConfigError> {
        split_format(ctx, text, Seg::Lit, |op| {
            self.operator(ctx, op).map(Seg::Op)
        })
    }

    fn operator(&mut self, ctx: &Ctx<'_>, op: &str) -> Result<Op, ConfigError> {
        let (name, arg, max) = match op.split_once('(') {
            Some((n, a)) => {
                let Some((a, tail)) = a.split_once(')') else {
                    return Err(ctx.invalid(format!("bad operator %{op}%")));
                };
                let max = tail.strip_prefix(':').and_then(|m| m.parse().ok());
                (n, Some(a), max)
            }
            None => (op, None, None),
        };
        let bad = || ctx.unsupported(format!("format operator %{op}%"));
        Ok(match (name, arg) {
            ("START_TIME", None) => Op::StartTime,
            ("REQ", Some(a)) => {
                let (main, alt) = match a.split_once('?') {
                    Some((m, al)) => (m, Some(al)),
                    None => (a, None),
                };
                let idx = |s: &str, me: &mut Self| -> Option<usize> {
                    let low = s.to_ascii_lowercase();
                    if let Some(p) = PSEUDO.iter().position(|x| *x == low) {
                        return Some(usize::MAX - p);
                    }
                    header_index(&mut me.req_headers, s)
                };
                let m = idx(main, self).ok_or_else(bad)?;
                let al = match alt {
                    Some(al) => Some(idx(al, self).ok_or_else(bad)?),
                    None => None,
                };
                Op::Req(m, al, max)
            }
            ("RESP", Some(a)) => Op::Resp(
                header_index(&mut self.resp_headers, a).ok_or_else(bad)?,
                max,
            ),
            ("PROTOCOL", None) => Op::Protocol,
            ("RESPONSE_CODE", None) => Op::ResponseCode,
            ("RESPONSE_FLAGS", None) => Op::ResponseFlags,
            ("RESPONSE_CODE_DETAILS", None) => Op::ResponseCodeDetails,
            ("CONNECTION_TERMINATION_DETAILS", None) => Op::ConnectionTerminationDetails,
            ("UPSTREAM_TRANSPORT_FAILURE_REASON", None) => Op::UpstreamTransportFailureReason,
            ("BYTES_RECEIVED", None) => Op::BytesReceived,
            ("BYTES_SENT", None) => Op::BytesSent,
            ("DURATION", None) => Op::Duration,
            ("UPSTREAM_HOST", None) => Op::UpstreamHost,
            ("UPSTREAM_CLUSTER", None) => Op::UpstreamCluster,
            ("UPSTREAM_LOCAL_ADDRESS", None) => Op::UpstreamLocalAddress,
            ("DOWNSTREAM_LOCAL_ADDRESS", None) => Op::DownstreamLocalAddress,
            ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", None) => Op::DownstreamLocalAddressNoPort,
            ("DOWNSTREAM_REMOTE_ADDRESS", None) => Op::DownstreamRemoteAddress,
            ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", None) => Op::DownstreamRemoteAddressNoPort,
            ("DOWNSTREAM_PEER_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", None) => {
                Op::DownstreamPeerAddress
            }
            ("REQUESTED_SERVER_NAME", None) => Op::RequestedServerName,
            ("DOWNSTREAM_PEER_URI_SAN", None) => Op::DownstreamPeerUriSan,
            ("DOWNSTREAM_LOCAL_URI_SAN", None) => Op::DownstreamLocalUriSan,
            ("DOWNSTREAM_PEER_DNS_SAN", None) => Op::DownstreamPeerDnsSan,
            ("DOWNSTREAM_PEER_SUBJECT", None) => Op::DownstreamPeerSubject,
            ("DOWNSTREAM_TLS_VERSION", None) => Op::DownstreamTlsVersion,
            ("DOWNSTREAM_PEER_FINGERPRINT_256", None) => Op::DownstreamPeerCertSha256,
            ("ROUTE_NAME", None) => Op::RouteName,
            ("METHOD", None) => Op::Method,
            ("HOSTNAME", None) => Op::Hostname,
            _ => return Err(bad()),
        })
    }

    /// Formats one entry into `out` (which the caller reuses).
    pub fn write(&self, e: &Entry, out: &mut String) {
        if let Some(j) = &self.json {
            return j.write(e, out);
        }
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.push_str(s),
                Seg::Op(op) => write_op(op, e, out),
            }
        }
    }
}

fn dash_or(out: &mut String, v: Option<&str>, max: Option<usize>) {
    match v {
        Some(s) if !s.is_empty() => {
            let s = match max {
                Some(m) if s.len() > m => &s[..s.floor_char_boundary(m)],
                _ => s,
            };
            out.push_str(s)
        }
        _ => out.push('-'),
    }
}

fn write_addr(out: &mut String, a: Option<SocketAddr>, port: bool) {
    match a {
        Some(a) if port => {
            let _ = write!(out, "{a}");
        }
        Some(a) => {
            let _ = write!(out, "{}", a.ip());
        }
        None => out.push('-'),
    }
}

fn write_op(op: &Op, e: &Entry, out: &mut String) {
    match op {
        Op::StartTime => write_rfc3339(out, e.start),
        Op::Req(m, alt, max) => {
            let v = e.req(*m).or_else(|| alt.and_then(|a| e.req(a)));
            dash_or(out, v, *max)
        }
        Op::Resp(i, max) => dash_or(
            out,
            e.resp_headers
                .get(*i)
                .and_then(|v| v.as_ref())
                .and_then(|v| v.to_str().ok()),
            *max,
        ),
        Op::Protocol => dash_or(out, Some(e.protocol), None),
        Op::ResponseCode => {
            let _ = write!(out, "{}", e.status);
        }
        Op::ResponseFlags => e.flags.write(out),
        Op::ResponseCodeDetails => dash_or(out, Some(e.details), None),
        Op::ConnectionTerminationDetails => out.push_str(e.termination_details),
        Op::UpstreamTransportFailureReason => dash_or(out, e.upstream_failure.as_deref(), None),
        Op::BytesReceived => {
            let _ = write!(out, "{}", e.bytes_received);
        }
        Op::BytesSent => {
            let _ = write!(out, "{}", e.bytes_sent);
        }
        Op::Duration => {
            let _ = write!(out, "{}", e.duration_ms);
        }
        Op::UpstreamHost => write_addr(out, e.upstream_host, true),
        Op::UpstreamCluster => dash_or(out, e.upstream_cluster.as_deref(), None),
        Op::UpstreamLocalAddress => write_addr(out, e.upstream_local, true),
        Op::DownstreamLocalAddress => write_addr(out, e.downstream_local, true),
        Op::DownstreamLocalAddressNoPort => write_addr(out, e.downstream_local, false),
        Op::DownstreamRemoteAddress | Op::DownstreamPeerAddress => {
            write_addr(out, e.downstream_remote, true)
        }
        Op::DownstreamRemoteAddressNoPort => write_addr(out, e.downstream_remote, false),
        Op::RequestedServerName => dash_or(out, e.sni.as_deref(), None),
        Op::DownstreamPeerUriSan => write_list(out, e.tls.as_ref().map(|t| &t.peer_uri_sans)),
        Op::DownstreamLocalUriSan => write_list(out, e.tls.as_ref().map(|t| &t.local_uri_sans)),
        Op::DownstreamPeerDnsSan => write_list(out, e.tls.as_ref().map(|t| &t.peer_dns_sans)),
        Op::DownstreamPeerSubject => dash_or(
            out,
            e.tls
                .as_ref()
                .and_then(|t| t.peer_subject.as_deref())
                .filter(|s| !s.is_empty()),
            None,
        ),
        Op::DownstreamTlsVersion => dash_or(out, e.tls.as_ref().map(|t| t.version), None),
        Op::DownstreamPeerCertSha256 => dash_or(
            out,
            e.tls.as_ref().and_then(|t| t.peer_cert_sha256.as_deref()),
            None,
        ),
        Op::RouteName => dash_or(out, e.route_name.as_deref(), None),
        Op::Method => dash_or(out, e.method.as_deref(), None),
        Op::Hostname => dash_or(out, Some(&hostname()), None),
    }
}

/// A comma-separated list (Envoy's rendering of several SANs), `-` if empty.
fn write_list(out: &mut String, v: Option<&Vec<String>>) {
    match v {
        Some(l) if !l.is_empty() => out.push_str(&l.join(",")),
        _ => out.push('-'),
    }
}

fn hostname() -> String {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    })
    .clone()
}

/// `2026-11-21T10:00:00.123Z`, as Envoy prints `%START_TIME%`.
pub fn write_rfc3339(out: &mut String, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
}

// === entries ===

/// What a finished request or connection reports to its access logs.
#[derive(Debug, Clone)]
pub struct Entry {
    pub start: SystemTime,
    pub method: Option<String>,
    pub path: Option<String>,
    pub scheme: &'static str,
    pub authority: Option<String>,
    pub protocol: &'static str,
    pub status: u16,
    pub flags: Flags,
    pub details: &'static str,
    /// `%CONNECTION_TERMINATION_DETAILS%` (e.g. a network RBAC denial), `-` if none.
    pub termination_details: &'static str,
    pub upstream_failure: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    pub sni: Option<Arc<str>>,
    /// The downstream connection's TLS details (peer and local SANs, version).
    pub tls: Option<Arc<crate::tls::TlsInfo>>,
    pub route_name: Option<Arc<str>>,
    pub req_headers: Vec<Option<HeaderValue>>,
    pub resp_headers: Vec<Option<HeaderValue>>,
}

impl Entry {
    pub fn new(start: SystemTime) -> Self {
        Entry {
            start,
            method: None,
            path: None,
            scheme: "http",
            authority: None,
            protocol: "-",
            status: 0,
            flags: Flags::default(),
            details: "-",
            termination_details: "-",
            upstream_failure: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0,
            upstream_host: None,
            upstream_local: None,
            upstream_cluster: None,
            downstream_local: None,
            downstream_remote: None,
            sni: None,
            tls: None,
            route_name: None,
            req_headers: Vec::new(),
            resp_headers: Vec::new(),
        }
    }

    fn req(&self, i: usize) -> Option<&str> {
        if i > usize::MAX - PSEUDO.len() {
            return match usize::MAX - i {
                0 => self.method.as_deref(),
                1 => self.path.as_deref(),
                2 => Some(self.scheme),
                _ => self.authority.as_deref(),
            };
        }
        self.req_headers
            .get(i)
            .and_then(|v| v.as_ref())
            .and_then(|v| v.to_str().ok())
    }

    pub fn capture_request(&mut self, names: &[HeaderName], headers: &HeaderMap) {
        self.req_headers = names.iter().map(|n| headers.get(n).cloned()).collect();
    }
    pub fn capture_response(&mut self, names: &[HeaderName], headers: &HeaderMap) {
        self.resp_headers = names.iter().map(|n| headers.get(n).cloned()).collect();
    }
}
