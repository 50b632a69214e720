//! Small compiled pieces shared by routes, listeners and clusters: durations,
//! string matchers, header mutations, percentages, the compile context that
//! carries the error path.

use crate::config::ConfigError;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use std::time::Duration;

/// Where in the configuration we are, for error messages.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub origin: &'a str,
    pub path: String,
}

impl<'a> Ctx<'a> {
    pub fn new(origin: &'a str, path: impl Into<String>) -> Self {
        Ctx {
            origin,
            path: path.into(),
        }
    }
    /// A child path `self.field`.
    pub fn field(&self, name: &str) -> Ctx<'a> {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Ctx {
            origin: self.origin,
            path,
        }
    }
    /// A child path `self.field[i]`.
    pub fn index(&self, name: &str, i: usize) -> Ctx<'a> {
        let mut c = self.field(name);
        c.path.push_str(&format!("[{i}]"));
        c
    }
    pub fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.origin, self.path.clone(), message)
    }
    pub fn unsupported(&self, detail: impl AsRef<str>) -> ConfigError {
        ConfigError::unsupported(self.origin, self.path.clone(), detail)
    }
}

/// Converts a protobuf duration; negative durations are refused.
pub fn duration(ctx: &Ctx<'_>, d: &PbDuration) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ctx.invalid(format!("negative duration {}s", d.seconds)));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration field.
pub fn opt_duration(
    ctx: &Ctx<'_>,
    d: Option<&PbDuration>,
) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| duration(ctx, d)).transpose()
}

/// Compiles a regex anchored at both ends (Envoy's `safe_regex` matches the whole input).
pub fn full_regex(ctx: &Ctx<'_>, m: &RegexMatcher) -> Result<Regex, ConfigError> {
    Regex::new(&format!("^(?:{})$", m.regex))
        .map_err(|e| ctx.invalid(format!("bad regex {:?}: {e}", m.regex)))
}

/// Compiles a regex as written (for rewrites, which substitute every match).
pub fn plain_regex(ctx: &Ctx<'_>, m: &RegexMatcher) -> Result<Regex, ConfigError> {
    Regex::new(&m.regex).map_err(|e| ctx.invalid(format!("bad regex {:?}: {e}", m.regex)))
}

// === impl StringMatch ===

/// Envoy's `StringMatcher`, compiled.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(Regex),
}

impl StringMatch {
    pub fn compile(ctx: &Ctx<'_>, m: &StringMatcher) -> Result<Self, ConfigError> {
        let ic = m.ignore_case;
        let low = |s: &str| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        Ok(match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatch::Exact(low(s), ic),
            Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(low(s), ic),
            Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(low(s), ic),
            Some(MatchPattern::Contains(s)) => StringMatch::Contains(low(s), ic),
            Some(MatchPattern::SafeRegex(r)) => {
                StringMatch::Regex(full_regex(&ctx.field("safe_regex"), r)?)
            }
            Some(MatchPattern::Custom(_)) => return Err(ctx.field("custom").unsupported("")),
            None => {
                return Err(
                    ctx.invalid("one of exact, prefix, suffix, contains, safe_regex is required")
                );
            }
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(s, false) => v == s,
            StringMatch::Exact(s, true) => v.eq_ignore_ascii_case(s),
            StringMatch::Prefix(s, false) => v.starts_with(s.as_str()),
            StringMatch::Prefix(s, true) => {
                v.len() >= s.len() && v.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            StringMatch::Suffix(s, false) => v.ends_with(s.as_str()),
            StringMatch::Suffix(s, true) => {
                v.len() >= s.len()
                    && v.as_bytes()[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StringMatch::Contains(s, false) => v.contains(s.as_str()),
            StringMatch::Contains(s, true) => v.to_ascii_lowercase().contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

// === impl HeaderOps ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendAction {
    Append,
    AddIfAbsent,
    Overwrite,
    OverwriteIfExists,
}

/// Headers to add and remove, compiled once (names validated, values built).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    add: Vec<(HeaderName, HeaderVal, AppendAction, bool)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn compile(
        ctx: &Ctx<'_>,
        add_field: &str,
        add: &[HeaderValueOption],
        remove_field: &str,
        remove: &[String],
    ) -> Result<Self, ConfigError> {
        let mut ops = HeaderOps::default();
        for (i, opt) in add.iter().enumerate() {
            let c = ctx.index(add_field, i);
            let Some(h) = &opt.header else {
                return Err(c.invalid("header is required"));
            };
            let name = HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| {
                c.field("header.key")
                    .invalid(format!("bad header name {:?}", h.key))
            })?;
            let value = if h.value.contains('%') {
                HeaderVal::Dynamic(compile_template(&c.field("header.value"), &h.value)?)
            } else {
                HeaderVal::Static(HeaderValue::from_str(&h.value).map_err(|_| {
                    c.field("header.value")
                        .invalid(format!("bad header value {:?}", h.value))
                })?)
            };
            #[allow(deprecated)]
            let action = match (opt.append.as_ref().map(|b| b.value), opt.append_action()) {
                (Some(true), _) => AppendAction::Append,
                (Some(false), _) => AppendAction::Overwrite,
                (None, HeaderAppendAction::AppendIfExistsOrAdd) => AppendAction::Append,
                (None, HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
                (None, HeaderAppendAction::OverwriteIfExistsOrAdd) => AppendAction::Overwrite,
                (None, HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
            };
            ops.add.push((name, value, action, opt.keep_empty_value));
        }
        for (i, r) in remove.iter().enumerate() {
            let name = HeaderName::from_bytes(r.as_bytes()).map_err(|_| {
                ctx.index(remove_field, i)
                    .invalid(format!("bad header name {r:?}"))
            })?;
            ops.remove.push(name);
        }
        Ok(ops)
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies removals, then additions (Envoy's order); format operators
    /// in values print `-` without a connection.
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.apply_ctx(headers, None)
    }

    /// Like `apply`, with the connection that format operators read.
    pub fn apply_ctx(&self, headers: &mut HeaderMap, conn: Option<&ValueCtx>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, action, keep_empty) in &self.add {
            let value = match value {
                HeaderVal::Static(v) => v.clone(),
                HeaderVal::Dynamic(segs) => match HeaderValue::from_str(&render(segs, conn)) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            if value.is_empty() && !keep_empty {
                continue;
            }
            match action {
                AppendAction::Append => {
                    headers.append(name.clone(), value);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value);
                    }
                }
                AppendAction::Overwrite => {
                    headers.insert(name.clone(), value);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value);
                    }
                }
            }
        }
    }
}

/// A header value: literal, or with Envoy format operators.
#[derive(Debug, Clone)]
enum HeaderVal {
    Static(HeaderValue),
    Dynamic(Vec<ValueSeg>),
}

#[derive(Debug, Clone)]
enum ValueSeg {
    Lit(String),
    RemoteAddr(bool),
    LocalAddr(bool),
    Hostname,
}

/// What header format operators read.
#[derive(Debug, Clone, Copy)]
pub struct ValueCtx {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
}

/// Splits an Envoy format string (access logs, header values) into its
/// literal text, made into segments by `lit`, and its `%OPERATOR%`s, made
/// by `op` from the text between the `%`s; `%%` is a literal `%`.
pub fn split_format<T>(
    ctx: &Ctx<'_>,
    text: &str,
    lit: impl Fn(String) -> T,
    mut op: impl FnMut(&str) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    let mut segs = Vec::new();
    let mut rest = text;
    let mut pending = String::new();
    while let Some(i) = rest.find('%') {
        pending.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            pending.push('%');
            rest = r;
            continue;
        }
        let end = rest
            .find('%')
            .ok_or_else(|| ctx.invalid(format!("unterminated operator in {text:?}")))?;
        let op_text = &rest[..end];
        rest = &rest[end + 1..];
        if !pending.is_empty() {
            segs.push(lit(std::mem::take(&mut pending)));
        }
        segs.push(op(op_text)?);
    }
    pending.push_str(rest);
    if !pending.is_empty() {
        segs.push(lit(pending));
    }
    Ok(segs)
}

fn compile_template(ctx: &Ctx<'_>, text: &str) -> Result<Vec<ValueSeg>, ConfigError> {
    split_format(ctx, text, ValueSeg::Lit, |op| {
        Ok(match op {
            "DOWNSTREAM_REMOTE_ADDRESS" => ValueSeg::RemoteAddr(true),
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => ValueSeg::RemoteAddr(false),
            "DOWNSTREAM_LOCAL_ADDRESS" => ValueSeg::LocalAddr(true),
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => ValueSeg::LocalAddr(false),
            "HOSTNAME" => ValueSeg::Hostname,
            other => return Err(ctx.unsupported(format!("header format operator %{other}%"))),
        })
    })
}

fn render(segs: &[ValueSeg], conn: Option<&ValueCtx>) -> String {
    let mut out = String::new();
    let addr = |out: &mut String, a: Option<std::net::SocketAddr>, port: bool| match a {
        Some(a) if port => out.push_str(&a.to_string()),
        Some(a) => out.push_str(&a.ip().to_string()),
        None => out.push('-'),
    };
    for s in segs {
        match s {
            ValueSeg::Lit(l) => out.push_str(l),
            ValueSeg::RemoteAddr(p) => addr(&mut out, conn.map(|c| c.remote), *p),
            ValueSeg::LocalAddr(p) => addr(&mut out, conn.map(|c| c.local), *p),
            ValueSeg::Hostname => out.push_str(
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim(),
            ),
        }
    }
    out
}

// === impl Fraction ===

/// A percentage as parts per million, decided with one random number.
#[derive(Debug, Clone, Copy)]
pub struct Fraction {
    per_million: u32,
}

impl Fraction {
    pub const ALWAYS: Fraction = Fraction {
        per_million: 1_000_000,
    };

    pub fn compile(p: Option<&FractionalPercent>) -> Fraction {
        let Some(p) = p else { return Fraction::ALWAYS };
        let scale = match p.denominator() {
            DenominatorType::Hundred => 10_000u64,
            DenominatorType::TenThousand => 100,
            DenominatorType::Million => 1,
        };
        Fraction {
            per_million: (p.numerator as u64 * scale).min(1_000_000) as u32,
        }
    }

    pub fn hit(&self) -> bool {
        self.per_million >= 1_000_000
            || (self.per_million > 0 && fastrand::u32(0..1_000_000) < self.per_million)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Piece {
        Lit(String),
        Op(String),
    }

    fn split(text: &str) -> Result<Vec<Piece>, String> {
        let ctx = Ctx::new("test.yaml", "log_format");
        split_format(&ctx, text, Piece::Lit, |op| Ok(Piece::Op(op.to_owned())))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn format_strings_split_into_literals_and_operators() {
        use Piece::{Lit, Op};
        assert_eq!(
            split("[%START_TIME%] 100%% %REQ(:PATH)%\n"),
            Ok(vec![
                Lit("[".into()),
                Op("START_TIME".into()),
                Lit("] 100% ".into()),
                Op("REQ(:PATH)".into()),
                Lit("\n".into()),
            ])
        );
        assert_eq!(split("%A%%B%"), Ok(vec![Op("A".into()), Op("B".into())]));
        assert_eq!(split(""), Ok(vec![]));
        assert_eq!(
            split("x %OPEN"),
            Err("test.yaml: log_format: unterminated operator in \"x %OPEN\"".into())
        );
    }
}
