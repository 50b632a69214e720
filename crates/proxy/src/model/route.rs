//! Compiled HTTP route tables: virtual hosts selected by domain, routes
//! matched in order on the path, headers and query parameters, and the
//! action each route takes. Matching borrows the request's `&str`s and
//! allocates nothing in the common case.
//!
//! This file owns the table, virtual host selection and the route and
//! action types; the route match (path, headers, query parameters) is in
//! `matcher`, and actions are compiled in `super::action`.

mod matcher;

pub(crate) use matcher::HeaderMatch;

use super::cluster::Cluster;
use super::common::{Ctx, HeaderOps};
use crate::config::ConfigError;
use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use matcher::RouteMatch;
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
    pub(super) cumulative: Vec<u64>,
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
    /// request_mirror_policies: copies sent fire-and-forget.
    pub mirrors: Vec<Mirror>,
}

/// One request_mirror_policy.
#[derive(Debug)]
pub struct Mirror {
    /// None: a cluster not (yet) known over xDS; nothing is mirrored.
    pub cluster: Option<Arc<Cluster>>,
    pub cluster_name: Arc<str>,
    /// runtime_fraction's default_value (all requests when unset).
    pub fraction: super::common::Fraction,
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
    /// gRPC conditions (`cancelled`, `deadline-exceeded`,
    /// `resource-exhausted`, `internal`, `unavailable`) as the
    /// `grpc-status` codes they retry on.
    pub grpc_status: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub status_codes: Vec<u16>,
    /// Envoy's previous_hosts retry host predicate: a retry avoids hosts
    /// already tried when it can.
    pub previous_hosts: bool,
    /// host_selection_retry_max_attempts: how many times a retry re-picks
    /// a host the predicate rejects before taking the last pick.
    pub host_selection_attempts: u32,
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
        self.matcher.rewrite_len(path)
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
