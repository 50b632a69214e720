//! Route matching: the path (prefix, exact, path-separated prefix,
//! regex; case-insensitive when asked), headers (Envoy's `HeaderMatcher`,
//! also used by the RBAC filters) and query parameters.

use super::RequestView;
use crate::config::ConfigError;
use crate::model::common::{Ctx, StringMatch, full_regex};
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route_match::PathSpecifier,
};
use http::{HeaderName, HeaderValue};
use regex::Regex;

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Path(String),
    Separated(String),
    Regex(Regex),
}

#[derive(Debug)]
pub(super) struct RouteMatch {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

#[derive(Debug)]
enum HeaderTest {
    Str(StringMatch),
    Present(bool),
}

#[derive(Debug)]
enum HeaderKey {
    Name(HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
}

#[derive(Debug)]
pub(crate) struct HeaderMatch {
    name: HeaderKey,
    test: HeaderTest,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    test: Option<StringMatch>,
}

// === impl RouteMatch ===

impl RouteMatch {
    pub(super) fn compile(ctx: &Ctx<'_>, m: &pb::RouteMatch) -> Result<Self, ConfigError> {
        let case_sensitive = m.case_sensitive.as_ref().map(|b| b.value).unwrap_or(true);
        let fold = |s: &str| {
            if case_sensitive {
                s.to_owned()
            } else {
                s.to_ascii_lowercase()
            }
        };
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(fold(p)),
            Some(PathSpecifier::Path(p)) => PathMatch::Path(fold(p)),
            Some(PathSpecifier::PathSeparatedPrefix(p)) => {
                if p.contains(['?', '#']) || (p.ends_with('/') && p.len() > 1) {
                    return Err(ctx
                        .field("path_separated_prefix")
                        .invalid(format!("bad prefix {p:?}")));
                }
                PathMatch::Separated(fold(p))
            }
            Some(PathSpecifier::SafeRegex(r)) => {
                let re = if case_sensitive {
                    full_regex(&ctx.field("safe_regex"), r)?
                } else {
                    Regex::new(&format!("(?i)^(?:{})$", r.regex))
                        .map_err(|e| ctx.field("safe_regex").invalid(e.to_string()))?
                };
                PathMatch::Regex(re)
            }
            Some(_) => return Err(ctx.unsupported("this path specifier is not implemented")),
            None => {
                return Err(ctx.invalid(
                    "one of prefix, path, safe_regex, path_separated_prefix is required",
                ));
            }
        };
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            headers.push(HeaderMatch::compile(&ctx.index("headers", i), h)?);
        }
        let mut query = Vec::new();
        for (i, q) in m.query_parameters.iter().enumerate() {
            let c = ctx.index("query_parameters", i);
            let test = match &q.query_parameter_match_specifier {
                Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                    Some(StringMatch::compile(&c.field("string_match"), s)?)
                }
                Some(QueryParameterMatchSpecifier::PresentMatch(true)) => None,
                Some(QueryParameterMatchSpecifier::PresentMatch(false)) | None => {
                    return Err(c.invalid("string_match or present_match: true is required"));
                }
            };
            query.push(QueryMatch {
                name: q.name.clone(),
                test,
            });
        }
        Ok(RouteMatch {
            path,
            case_sensitive,
            headers,
            query,
        })
    }

    /// How many leading path bytes `prefix_rewrite` replaces.
    pub(super) fn rewrite_len(&self, path: &str) -> usize {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::Separated(p) => p.len().min(path.len()),
            PathMatch::Path(_) | PathMatch::Regex(_) => path.len(),
        }
    }

    pub(super) fn matches(&self, path: &str, query: &str, req: &RequestView<'_>) -> bool {
        let cs = self.case_sensitive;
        let ok = match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, cs),
            PathMatch::Path(p) => {
                if cs {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Separated(p) => {
                starts_with(path, p, cs)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        ok && self.headers.iter().all(|h| h.matches(req))
            && self.query.iter().all(|q| q.matches(query))
    }
}

fn starts_with(s: &str, p: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(p)
    } else {
        s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    }
}

impl HeaderMatch {
    #[allow(deprecated)]
    pub(crate) fn compile(ctx: &Ctx<'_>, h: &pb::HeaderMatcher) -> Result<Self, ConfigError> {
        let name = match h.name.to_ascii_lowercase().as_str() {
            ":method" => HeaderKey::Method,
            ":path" => HeaderKey::Path,
            ":authority" | "host" => HeaderKey::Authority,
            ":scheme" => HeaderKey::Scheme,
            _ => HeaderKey::Name(HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                ctx.field("name")
                    .invalid(format!("bad header name {:?}", h.name))
            })?),
        };
        let s = |m: StringMatch| Ok::<_, ConfigError>(HeaderTest::Str(m));
        let test = match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(v)) => s(StringMatch::Exact(v.clone(), false))?,
            Some(HeaderMatchSpecifier::PrefixMatch(v)) => s(StringMatch::Prefix(v.clone(), false))?,
            Some(HeaderMatchSpecifier::SuffixMatch(v)) => s(StringMatch::Suffix(v.clone(), false))?,
            Some(HeaderMatchSpecifier::ContainsMatch(v)) => {
                s(StringMatch::Contains(v.clone(), false))?
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => s(StringMatch::Regex(full_regex(
                &ctx.field("safe_regex_match"),
                r,
            )?))?,
            Some(HeaderMatchSpecifier::StringMatch(m)) => {
                s(StringMatch::compile(&ctx.field("string_match"), m)?)?
            }
            Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderTest::Present(*p),
            Some(HeaderMatchSpecifier::RangeMatch(_)) => {
                return Err(ctx.field("range_match").unsupported(""));
            }
            None => HeaderTest::Present(true),
        };
        Ok(HeaderMatch {
            name,
            test,
            invert: h.invert_match,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        let pseudo = match &self.name {
            HeaderKey::Name(_) => None,
            HeaderKey::Method => Some(req.method),
            HeaderKey::Path => Some(req.path_and_query),
            HeaderKey::Scheme => Some("http"),
            HeaderKey::Authority => req
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok()),
        };
        if !matches!(self.name, HeaderKey::Name(_)) {
            let result = match (&self.test, pseudo) {
                (HeaderTest::Present(want), v) => v.is_some() == *want,
                // A missing header never matches a value test, inverted or not.
                (HeaderTest::Str(m), None) => {
                    return self.missing_as_empty && m.matches("") != self.invert;
                }
                (HeaderTest::Str(m), Some(v)) => m.matches(v),
            };
            return result != self.invert;
        }
        let HeaderKey::Name(name) = &self.name else {
            return false;
        };
        let headers = req.headers;
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        let result = match (&self.test, first) {
            (HeaderTest::Present(want), v) => v.is_some() == *want,
            (HeaderTest::Str(m), None) => {
                return self.missing_as_empty && m.matches("") != self.invert;
            }
            (HeaderTest::Str(m), Some(v)) => {
                let rest: Vec<&HeaderValue> = values.collect();
                if rest.is_empty() {
                    v.to_str().map(|v| m.matches(v)).unwrap_or(false)
                } else {
                    // Envoy joins repeated headers with ','.
                    let mut joined = v.to_str().unwrap_or("").to_owned();
                    for r in rest {
                        joined.push(',');
                        joined.push_str(r.to_str().unwrap_or(""));
                    }
                    m.matches(&joined)
                }
            }
        };
        result != self.invert
    }
}

impl QueryMatch {
    fn matches(&self, query: &str) -> bool {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == self.name {
                return match &self.test {
                    None => true,
                    Some(m) => m.matches(v),
                };
            }
        }
        false
    }
}
