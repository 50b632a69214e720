//! Compiled HTTP route tables: virtual hosts selected by domain, routes
//! matched in order on the path, headers and query parameters, and the
//! action each route takes. Matching borrows the request's `&str`s and
//! allocates nothing in the common case.

use super::cluster::Cluster;
use super::common::{Ctx, HeaderOps, StringMatch, full_regex, opt_duration, plain_regex};
use crate::config::ConfigError;
use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route::Action, route_action, route_match::PathSpecifier,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A compiled `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    pub name: Arc<str>,
    vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.suffix` domains as `.suffix` (and `-suffix` forms), longest first.
    suffixes: Vec<(String, usize)>,
    /// `prefix.*` domains as `prefix.`, longest first.
    prefixes: Vec<(String, usize)>,
    wildcard: Option<usize>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// The parts of a request that routing reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub retry: Option<Arc<RetryPolicy>>,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// `typed_per_filter_config`: filter name -> the route's own configuration.
    pub per_filter: Vec<(String, super::http::HttpFilter)>,
    matcher: RouteMatch,
    pub action: RouteActionKind,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Path(String),
    Separated(String),
    Regex(Regex),
}

#[derive(Debug)]
struct RouteMatch {
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
struct HeaderMatch {
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

#[derive(Debug)]
pub enum RouteActionKind {
    Forward(Box<ForwardAction>),
    Redirect(Redirect),
    Direct {
        status: StatusCode,
        body: Option<Bytes>,
    },
}

#[derive(Debug)]
pub enum Target {
    Cluster(Arc<Cluster>),
    /// A cluster that does not exist (accepted with `validate_clusters: false`): 503 NC.
    Missing(Arc<str>),
    Weighted(WeightedTargets),
}

#[derive(Debug)]
pub struct WeightedTargets {
    /// Cumulative weights, for a binary search on one random number.
    cumulative: Vec<u64>,
    pub entries: Vec<WeightedEntry>,
}

#[derive(Debug)]
pub struct WeightedEntry {
    pub cluster: Arc<Cluster>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

impl WeightedTargets {
    /// Plain weighted clusters (tcp_proxy), without header mutations.
    pub fn plain(entries: Vec<(Arc<Cluster>, u32)>) -> Option<Self> {
        let mut cumulative = Vec::new();
        let mut sum = 0u64;
        let mut out = Vec::new();
        for (c, w) in entries {
            sum += w as u64;
            cumulative.push(sum);
            out.push(WeightedEntry {
                cluster: c,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            });
        }
        (sum > 0).then_some(WeightedTargets {
            cumulative,
            entries: out,
        })
    }

    pub fn pick(&self) -> &WeightedEntry {
        let total = *self.cumulative.last().unwrap_or(&1);
        let r = fastrand::u64(0..total.max(1));
        let i = self.cumulative.partition_point(|&c| c <= r);
        &self.entries[i.min(self.entries.len() - 1)]
    }
}

#[derive(Debug)]
pub struct ForwardAction {
    pub target: Target,
    /// The status for a `Target::Missing` cluster (cluster_not_found_response_code).
    pub not_found_status: StatusCode,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<HeaderValue>,
    /// None: no timeout (Envoy's `0s`).
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub hash_policy: Vec<HashPolicy>,
    pub websocket: bool,
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub status: StatusCode,
    pub strip_query: bool,
}

/// When a retry is attempted (Envoy's `retry_on` conditions).
#[derive(Debug, Default, Clone)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    pub retriable_status_codes: bool,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub status_codes: Vec<u16>,
}

#[derive(Debug)]
pub enum HashPolicy {
    Header { name: HeaderName, terminal: bool },
    Cookie { name: String, terminal: bool },
    SourceIp { terminal: bool },
    Query { name: String, terminal: bool },
}

// === impl RouteTable ===

impl RouteTable {
    pub fn compile(
        ctx: &Ctx<'_>,
        rc: &pb::RouteConfiguration,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<Self, ConfigError> {
        let allow_missing = rc.validate_clusters.as_ref().is_some_and(|v| !v.value);
        let mut t = RouteTable {
            name: rc.name.as_str().into(),
            vhosts: Vec::new(),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            wildcard: None,
            request_headers: HeaderOps::compile(
                ctx,
                "request_headers_to_add",
                &rc.request_headers_to_add,
                "request_headers_to_remove",
                &rc.request_headers_to_remove,
            )?,
            response_headers: HeaderOps::compile(
                ctx,
                "response_headers_to_add",
                &rc.response_headers_to_add,
                "response_headers_to_remove",
                &rc.response_headers_to_remove,
            )?,
        };
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let c = ctx.index("virtual_hosts", i);
            for (j, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                let dup = if d == "*" {
                    t.wildcard.replace(i).is_some()
                } else if let Some(s) = d.strip_prefix('*') {
                    t.suffixes.push((s.to_owned(), i));
                    false
                } else if let Some(p) = d.strip_suffix('*') {
                    t.prefixes.push((p.to_owned(), i));
                    false
                } else {
                    t.exact.insert(d.clone(), i).is_some()
                };
                if dup {
                    return Err(c
                        .index("domains", j)
                        .invalid(format!("domain {d:?} is used by two virtual hosts")));
                }
            }
            t.vhosts
                .push(VirtualHost::compile(&c, vh, clusters, allow_missing)?);
        }
        t.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        t.prefixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Ok(t)
    }

    /// Picks the virtual host for a Host header (already without nothing stripped).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let idx = self
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|x| x.1)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|x| x.1)
            })
            .or(self.wildcard)
            .or_else(|| {
                // Envoy retries without the port when nothing matched with it.
                let (h, _) = host
                    .rsplit_once(':')
                    .filter(|(h, p)| !h.ends_with(']') || p.is_empty())?;
                if h.is_empty() || h.contains(':') && !h.starts_with('[') {
                    return None;
                }
                self.exact.get(h).copied()
            })?;
        self.vhosts.get(idx)
    }
}

// === impl VirtualHost ===

impl VirtualHost {
    fn compile(
        ctx: &Ctx<'_>,
        vh: &pb::VirtualHost,
        clusters: &HashMap<String, Arc<Cluster>>,
        allow_missing: bool,
    ) -> Result<Self, ConfigError> {
        let retry = vh
            .retry_policy
            .as_ref()
            .map(|r| RetryPolicy::compile(&ctx.field("retry_policy"), r))
            .transpose()?
            .map(Arc::new);
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (i, r) in vh.routes.iter().enumerate() {
            routes.push(Route::compile(
                &ctx.index("routes", i),
                r,
                clusters,
                retry.as_ref(),
                allow_missing,
            )?);
        }
        Ok(VirtualHost {
            name: vh.name.as_str().into(),
            routes,
            request_headers: HeaderOps::compile(
                ctx,
                "request_headers_to_add",
                &vh.request_headers_to_add,
                "request_headers_to_remove",
                &vh.request_headers_to_remove,
            )?,
            response_headers: HeaderOps::compile(
                ctx,
                "response_headers_to_add",
                &vh.response_headers_to_add,
                "response_headers_to_remove",
                &vh.response_headers_to_remove,
            )?,
            retry,
        })
    }

    /// The first route whose match holds.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        let (path, query) = match req.path_and_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (req.path_and_query, ""),
        };
        let path = path.split('#').next().unwrap_or(path);
        self.routes
            .iter()
            .find(|r| r.matcher.matches(path, query, req))
    }
}

// === impl Route ===

impl Route {
    /// How many leading path bytes `prefix_rewrite` replaces.
    pub fn rewrite_len(&self, path: &str) -> usize {
        match &self.matcher.path {
            PathMatch::Prefix(p) | PathMatch::Separated(p) => p.len().min(path.len()),
            PathMatch::Path(_) | PathMatch::Regex(_) => path.len(),
        }
    }

    fn compile(
        ctx: &Ctx<'_>,
        r: &pb::Route,
        clusters: &HashMap<String, Arc<Cluster>>,
        vh_retry: Option<&Arc<RetryPolicy>>,
        allow_missing: bool,
    ) -> Result<Self, ConfigError> {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| ctx.invalid("match is required"))?;
        let matcher = RouteMatch::compile(&ctx.field("match"), m)?;
        let action = match &r.action {
            Some(Action::Route(a)) => RouteActionKind::Forward(Box::new(ForwardAction::compile(
                &ctx.field("route"),
                a,
                clusters,
                vh_retry,
                allow_missing,
            )?)),
            Some(Action::Redirect(a)) => {
                RouteActionKind::Redirect(Redirect::compile(&ctx.field("redirect"), a)?)
            }
            Some(Action::DirectResponse(d)) => {
                let c = ctx.field("direct_response");
                let status = u16::try_from(d.status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| s.as_u16() >= 200)
                    .ok_or_else(|| {
                        c.field("status")
                            .invalid(format!("bad status {}", d.status))
                    })?;
                let body = d
                    .body
                    .as_ref()
                    .map(|b| super::data_source(&c.field("body"), b))
                    .transpose()?;
                RouteActionKind::Direct { status, body }
            }
            _ => return Err(ctx.invalid("one of route, redirect, direct_response is required")),
        };
        let mut per_filter = Vec::new();
        let mut names: Vec<&String> = r.typed_per_filter_config.keys().collect();
        names.sort();
        for name in names {
            let c = ctx.field("typed_per_filter_config").field(name);
            match super::http::compile_typed(&c, &r.typed_per_filter_config[name])? {
                Some(f) => per_filter.push((name.clone(), f)),
                None => return Err(c.unsupported("per-route router configuration")),
            }
        }
        Ok(Route {
            per_filter,
            name: r.name.as_str().into(),
            matcher,
            action,
            request_headers: HeaderOps::compile(
                ctx,
                "request_headers_to_add",
                &r.request_headers_to_add,
                "request_headers_to_remove",
                &r.request_headers_to_remove,
            )?,
            response_headers: HeaderOps::compile(
                ctx,
                "response_headers_to_add",
                &r.response_headers_to_add,
                "response_headers_to_remove",
                &r.response_headers_to_remove,
            )?,
        })
    }
}

// === impl RouteMatch ===

impl RouteMatch {
    fn compile(ctx: &Ctx<'_>, m: &pb::RouteMatch) -> Result<Self, ConfigError> {
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

    fn matches(&self, path: &str, query: &str, req: &RequestView<'_>) -> bool {
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
    fn compile(ctx: &Ctx<'_>, h: &pb::HeaderMatcher) -> Result<Self, ConfigError> {
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

    fn matches(&self, req: &RequestView<'_>) -> bool {
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

// === impl ForwardAction ===

impl ForwardAction {
    fn compile(
        ctx: &Ctx<'_>,
        a: &pb::RouteAction,
        clusters: &HashMap<String, Arc<Cluster>>,
        vh_retry: Option<&Arc<RetryPolicy>>,
        allow_missing: bool,
    ) -> Result<Self, ConfigError> {
        let lookup = |c: &Ctx<'_>, name: &str| {
            clusters
                .get(name)
                .cloned()
                .ok_or_else(|| c.invalid(format!("unknown cluster {name:?}")))
        };
        let target = match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(name))
                if allow_missing && !clusters.contains_key(name) =>
            {
                Target::Missing(name.as_str().into())
            }
            Some(route_action::ClusterSpecifier::Cluster(name)) => {
                Target::Cluster(lookup(&ctx.field("cluster"), name)?)
            }
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                let wc = ctx.field("weighted_clusters");
                let mut cumulative = Vec::new();
                let mut entries = Vec::new();
                let mut sum = 0u64;
                for (i, cw) in w.clusters.iter().enumerate() {
                    let c = wc.index("clusters", i);
                    sum += cw.weight.as_ref().map(|w| w.value as u64).unwrap_or(0);
                    cumulative.push(sum);
                    entries.push(WeightedEntry {
                        cluster: lookup(&c.field("name"), &cw.name)?,
                        request_headers: HeaderOps::compile(
                            &c,
                            "request_headers_to_add",
                            &cw.request_headers_to_add,
                            "request_headers_to_remove",
                            &cw.request_headers_to_remove,
                        )?,
                        response_headers: HeaderOps::compile(
                            &c,
                            "response_headers_to_add",
                            &cw.response_headers_to_add,
                            "response_headers_to_remove",
                            &cw.response_headers_to_remove,
                        )?,
                    });
                }
                if sum == 0 {
                    return Err(wc.invalid("the weights add up to 0"));
                }
                Target::Weighted(WeightedTargets {
                    cumulative,
                    entries,
                })
            }
            Some(_) => {
                return Err(ctx.unsupported("only cluster and weighted_clusters are implemented"));
            }
            None => return Err(ctx.invalid("cluster or weighted_clusters is required")),
        };
        let regex_rewrite = a
            .regex_rewrite
            .as_ref()
            .map(|r| {
                let c = ctx.field("regex_rewrite");
                let p = r
                    .pattern
                    .as_ref()
                    .ok_or_else(|| c.invalid("pattern is required"))?;
                Ok::<_, ConfigError>((
                    plain_regex(&c.field("pattern"), p)?,
                    envoy_substitution(&r.substitution),
                ))
            })
            .transpose()?;
        let host_rewrite = match &a.host_rewrite_specifier {
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                Some(HeaderValue::from_str(h).map_err(|_| {
                    ctx.field("host_rewrite_literal")
                        .invalid(format!("bad host {h:?}"))
                })?)
            }
            Some(_) => return Err(ctx.unsupported("only host_rewrite_literal is implemented")),
            None => None,
        };
        let timeout = match &a.timeout {
            None => Some(Duration::from_secs(15)),
            Some(d) => {
                Some(super::common::duration(&ctx.field("timeout"), d)?).filter(|d| !d.is_zero())
            }
        };
        let retry = match &a.retry_policy {
            Some(r) => Some(Arc::new(RetryPolicy::compile(
                &ctx.field("retry_policy"),
                r,
            )?)),
            None => vh_retry.cloned(),
        };
        let mut hash_policy = Vec::new();
        for (i, h) in a.hash_policy.iter().enumerate() {
            hash_policy.push(HashPolicy::compile(&ctx.index("hash_policy", i), h)?);
        }
        let mut websocket = false;
        for (i, u) in a.upgrade_configs.iter().enumerate() {
            if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
                return Err(ctx
                    .index("upgrade_configs", i)
                    .unsupported(format!("upgrade_type {:?}", u.upgrade_type)));
            }
            websocket = u.enabled.as_ref().map(|b| b.value).unwrap_or(true);
        }
        Ok(ForwardAction {
            not_found_status: match a.cluster_not_found_response_code() {
                route_action::ClusterNotFoundResponseCode::ServiceUnavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                route_action::ClusterNotFoundResponseCode::NotFound => StatusCode::NOT_FOUND,
                route_action::ClusterNotFoundResponseCode::InternalServerError => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            target,
            prefix_rewrite: Some(a.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
            regex_rewrite,
            host_rewrite,
            timeout,
            idle_timeout: opt_duration(&ctx.field("idle_timeout"), a.idle_timeout.as_ref())?
                .filter(|d| !d.is_zero()),
            retry,
            hash_policy,
            websocket,
        })
    }
}

/// Envoy writes capture groups as `\1`; the regex crate wants `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                out.push_str("${");
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

impl RetryPolicy {
    fn compile(ctx: &Ctx<'_>, r: &pb::RetryPolicy) -> Result<Self, ConfigError> {
        let mut on = RetryOn::default();
        for cond in r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match cond {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "reset" => on.reset = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                other => {
                    return Err(ctx
                        .field("retry_on")
                        .unsupported(format!("condition {other:?}")));
                }
            }
        }
        let (base, max) = match &r.retry_back_off {
            Some(b) => {
                let c = ctx.field("retry_back_off");
                let base = opt_duration(&c.field("base_interval"), b.base_interval.as_ref())?
                    .unwrap_or(Duration::from_millis(25));
                let max = opt_duration(&c.field("max_interval"), b.max_interval.as_ref())?
                    .unwrap_or(base * 10);
                (base, max)
            }
            None => (Duration::from_millis(25), Duration::from_millis(250)),
        };
        Ok(RetryPolicy {
            on,
            num_retries: r.num_retries.as_ref().map(|n| n.value).unwrap_or(1),
            per_try_timeout: opt_duration(
                &ctx.field("per_try_timeout"),
                r.per_try_timeout.as_ref(),
            )?
            .filter(|d| !d.is_zero()),
            base_interval: base,
            max_interval: max,
            status_codes: r.retriable_status_codes.iter().map(|&c| c as u16).collect(),
        })
    }

    /// Envoy's fully jittered exponential back-off before retry number `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .base_interval
            .saturating_mul(1u32 << n.min(16))
            .min(self.max_interval);
        let ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(0..ms))
    }
}

impl HashPolicy {
    fn compile(ctx: &Ctx<'_>, h: &pb::route_action::HashPolicy) -> Result<Self, ConfigError> {
        use route_action::hash_policy::PolicySpecifier as P;
        let terminal = h.terminal;
        Ok(match &h.policy_specifier {
            Some(P::Header(x)) => HashPolicy::Header {
                name: HeaderName::from_bytes(x.header_name.as_bytes()).map_err(|_| ctx.field("header.header_name").invalid(format!("bad header name {:?}", x.header_name)))?,
                terminal,
            },
            Some(P::Cookie(c)) => {
                if c.ttl.is_some() {
                    return Err(ctx.field("cookie.ttl").unsupported("generating hash cookies is not implemented"));
                }
                HashPolicy::Cookie { name: c.name.clone(), terminal }
            }
            Some(P::ConnectionProperties(p)) if p.source_ip => HashPolicy::SourceIp { terminal },
            Some(P::QueryParameter(q)) => HashPolicy::Query { name: q.name.clone(), terminal },
            _ => return Err(ctx.unsupported("only header, cookie, connection_properties.source_ip and query_parameter are implemented")),
        })
    }
}

impl Redirect {
    fn compile(ctx: &Ctx<'_>, r: &pb::RedirectAction) -> Result<Self, ConfigError> {
        use redirect_action::{
            PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
        };
        let scheme = match &r.scheme_rewrite_specifier {
            Some(S::HttpsRedirect(true)) => Some("https".to_owned()),
            Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
            _ => None,
        };
        let (mut path, mut prefix_rewrite, mut regex_rewrite) = (None, None, None);
        match &r.path_rewrite_specifier {
            Some(P::PathRedirect(p)) => path = Some(p.clone()),
            Some(P::PrefixRewrite(p)) => prefix_rewrite = Some(p.clone()),
            Some(P::RegexRewrite(rr)) => {
                let c = ctx.field("regex_rewrite");
                let p = rr
                    .pattern
                    .as_ref()
                    .ok_or_else(|| c.invalid("pattern is required"))?;
                regex_rewrite = Some((
                    plain_regex(&c.field("pattern"), p)?,
                    envoy_substitution(&rr.substitution),
                ));
            }
            Some(P::PathRewrite(_)) => return Err(ctx.field("path_rewrite").unsupported("")),
            None => {}
        }
        let status = match r.response_code() {
            C::MovedPermanently => StatusCode::MOVED_PERMANENTLY,
            C::Found => StatusCode::FOUND,
            C::SeeOther => StatusCode::SEE_OTHER,
            C::TemporaryRedirect => StatusCode::TEMPORARY_REDIRECT,
            C::PermanentRedirect => StatusCode::PERMANENT_REDIRECT,
        };
        Ok(Redirect {
            scheme,
            host: Some(r.host_redirect.clone()).filter(|h| !h.is_empty()),
            port: Some(r.port_redirect).filter(|&p| p != 0),
            path,
            prefix_rewrite,
            regex_rewrite,
            status,
            strip_query: r.strip_query,
        })
    }
}
