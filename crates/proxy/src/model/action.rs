//! Compiling route actions: forwarding (cluster or weighted clusters,
//! rewrites, timeouts, retry and hash policies, upgrades) and redirects.
//! The types live in `route`; this module only builds them from the protos.

use super::cluster::Cluster;
use super::common::{Ctx, HeaderOps, opt_duration, plain_regex};
use super::route::{
    ForwardAction, HashPolicy, Mirror, Redirect, RetryOn, RetryPolicy, Target, WeightedEntry,
    WeightedTargets,
};
use crate::config::ConfigError;
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::config::route::v3::{redirect_action, route_action};
use http::{HeaderName, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

// === impl ForwardAction ===

impl ForwardAction {
    pub(super) fn compile(
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
        let mut mirrors = Vec::new();
        for (i, m) in a.request_mirror_policies.iter().enumerate() {
            let c = ctx.index("request_mirror_policies", i);
            if m.cluster.is_empty() {
                return Err(c.field("cluster").invalid("a mirror needs a cluster"));
            }
            let cluster = match clusters.get(&m.cluster) {
                Some(cl) => Some(cl.clone()),
                None if allow_missing => None,
                None => {
                    return Err(c
                        .field("cluster")
                        .invalid(format!("unknown cluster {:?}", m.cluster)));
                }
            };
            mirrors.push(Mirror {
                cluster,
                cluster_name: m.cluster.as_str().into(),
                fraction: super::common::Fraction::compile(
                    m.runtime_fraction
                        .as_ref()
                        .and_then(|r| r.default_value.as_ref()),
                ),
            });
        }
        Ok(ForwardAction {
            mirrors,
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
    pub(super) fn compile(ctx: &Ctx<'_>, r: &pb::RetryPolicy) -> Result<Self, ConfigError> {
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
                // gRPC: retried when the response's grpc-status says so.
                "cancelled" => on.grpc_status.push(1),
                "deadline-exceeded" => on.grpc_status.push(4),
                "resource-exhausted" => on.grpc_status.push(8),
                "internal" => on.grpc_status.push(13),
                "unavailable" => on.grpc_status.push(14),
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
        let mut previous_hosts = false;
        for (i, p) in r.retry_host_predicate.iter().enumerate() {
            let type_url = p
                .config_type
                .as_ref()
                .map(
                    |pb::retry_policy::retry_host_predicate::ConfigType::TypedConfig(a)| {
                        a.type_url.as_str()
                    },
                )
                .unwrap_or("");
            if p.name == "envoy.retry_host_predicates.previous_hosts"
                || type_url.ends_with(
                    "/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
                )
            {
                previous_hosts = true;
            } else {
                return Err(ctx
                    .index("retry_host_predicate", i)
                    .unsupported(format!("predicate {:?} (only previous_hosts)", p.name)));
            }
        }
        let host_selection_attempts = match r.host_selection_retry_max_attempts {
            0 => 1,
            n if n < 0 => {
                return Err(ctx
                    .field("host_selection_retry_max_attempts")
                    .invalid(format!("{n} is negative")));
            }
            n => u32::try_from(n).unwrap_or(u32::MAX),
        };
        Ok(RetryPolicy {
            previous_hosts,
            host_selection_attempts,
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
    pub(super) fn compile(
        ctx: &Ctx<'_>,
        h: &pb::route_action::HashPolicy,
    ) -> Result<Self, ConfigError> {
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
    pub(super) fn compile(ctx: &Ctx<'_>, r: &pb::RedirectAction) -> Result<Self, ConfigError> {
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
