//! One VirtualService HTTP route → Envoy routes: matches (uri, headers,
//! queryParams, method, authority, scheme, withoutHeaders), the action
//! (weighted clusters, redirect, direct response), rewrites, header
//! operations, timeout, retries (Istio's default when unset), fault and
//! CORS as per-route filter config, mirrors, and consistent-hash policy.

use std::collections::HashMap;

use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::retry_policy::{RetryBackOff, RetryHostPredicate};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster, retry_policy,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use weft_api::networking::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRetry, HttpRoute, StringMatch,
    StringMatchKind,
};
use weft_api::registry::labels_match;

use super::cluster::outbound_name;
use super::node::ProxyNode;
use super::scope::ProxyScope;
use super::{pb, policy};

/// HTTP filter name of the fault filter (per-route config key).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// HTTP filter name of the CORS filter (per-route config key).
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
/// Istio's default `retry_on`.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// What an HTTP route needs to know about where it is translated.
pub struct RouteContext<'s, 'a> {
    pub scope: &'s ProxyScope<'a>,
    pub node: &'s ProxyNode,
    /// Namespace of the VirtualService (for short host names).
    pub namespace: &'s str,
    /// The listener/service port the route config is for.
    pub port: u32,
    /// MeshConfig `defaultHttpRetryPolicy`.
    pub default_retry: Option<&'s HttpRetry>,
}

/// Whether a match block applies to this proxy and port.
fn applies(m: &HttpMatchRequest, cx: &RouteContext<'_, '_>) -> bool {
    m.port.is_none_or(|p| p == cx.port)
        && (m.source_labels.is_empty() || labels_match(&m.source_labels, &cx.node.labels))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == cx.node.namespace)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
}

/// The Envoy routes of one HTTP rule: one per applicable match block (one
/// catch-all when it has none); none when match blocks exist and none
/// applies to this proxy and port.
pub fn http_routes(rule: &HttpRoute, cx: &RouteContext<'_, '_>) -> Vec<Route> {
    let matches: Vec<Option<&HttpMatchRequest>> = if rule.matches.is_empty() {
        vec![None]
    } else {
        rule.matches
            .iter()
            .filter(|m| applies(m, cx))
            .map(Some)
            .collect()
    };
    matches
        .into_iter()
        .map(|m| build_route(rule, m, cx))
        .collect()
}

fn build_route(rule: &HttpRoute, m: Option<&HttpMatchRequest>, cx: &RouteContext<'_, '_>) -> Route {
    let mut route = Route {
        name: m
            .and_then(|m| m.name.clone())
            .or_else(|| rule.name.clone())
            .unwrap_or_default(),
        r#match: Some(m.map_or_else(catch_all, route_match)),
        ..Route::default()
    };
    if let Some(h) = &rule.headers {
        add_headers(&mut route, h);
    }
    route.action = Some(if let Some(r) = &rule.redirect {
        Action::Redirect(redirect(r))
    } else if let Some(d) = &rule.direct_response {
        Action::DirectResponse(direct_response(d))
    } else {
        let (action, headers) = route_action(rule, m, cx);
        if let Some(h) = headers {
            add_headers(&mut route, h);
        }
        Action::Route(action)
    });
    let mut per_filter: HashMap<String, Any> = HashMap::new();
    if let Some(f) = &rule.fault {
        per_filter.insert(FAULT_FILTER.to_string(), pb::any(&fault(f)));
    }
    if let Some(c) = &rule.cors_policy {
        per_filter.insert(CORS_FILTER.to_string(), pb::any(&cors(c)));
    }
    route.typed_per_filter_config = per_filter;
    route
}

/// `prefix: /`.
pub fn catch_all() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
        ..RouteMatch::default()
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..RegexMatcher::default()
    }
}

fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = match m.kind()? {
        StringMatchKind::Exact(s) => MatchPattern::Exact(s.to_string()),
        StringMatchKind::Prefix(s) => MatchPattern::Prefix(s.to_string()),
        StringMatchKind::Regex(s) => MatchPattern::SafeRegex(regex(s)),
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..StringMatcher::default()
    })
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    let spec = match string_matcher(m) {
        Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
        // `{}`: the header is present.
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..HeaderMatcher::default()
    }
}

fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let path = match m.uri.as_ref().and_then(StringMatch::kind) {
        Some(StringMatchKind::Exact(p)) => PathSpecifier::Path(p.to_string()),
        Some(StringMatchKind::Prefix(p)) => PathSpecifier::Prefix(p.to_string()),
        Some(StringMatchKind::Regex(r)) => PathSpecifier::SafeRegex(regex(r)),
        None => PathSpecifier::Prefix("/".to_string()),
    };
    let mut headers: Vec<HeaderMatcher> = Vec::new();
    for (pseudo, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo, sm, false));
        }
    }
    headers.extend(m.headers.iter().map(|(k, v)| header_matcher(k, v, false)));
    headers.extend(
        m.without_headers
            .iter()
            .map(|(k, v)| header_matcher(k, v, true)),
    );
    let query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| QueryParameterMatcher {
            name: k.clone(),
            query_parameter_match_specifier: Some(match string_matcher(v) {
                Some(sm) => QueryParameterMatchSpecifier::StringMatch(sm),
                None => QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters,
        ..RouteMatch::default()
    }
}

fn header_options(ops: &HeaderOperations) -> (Vec<HeaderValueOption>, Vec<String>) {
    let opt = |k: &String, v: &String, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..HeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, v)| opt(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| opt(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    (add, ops.remove.clone())
}

fn add_headers(route: &mut Route, h: &Headers) {
    if let Some(req) = &h.request {
        let (add, remove) = header_options(req);
        route.request_headers_to_add.extend(add);
        route.request_headers_to_remove.extend(remove);
    }
    if let Some(resp) = &h.response {
        let (add, remove) = header_options(resp);
        route.response_headers_to_add.extend(add);
        route.response_headers_to_remove.extend(remove);
    }
}

/// The cluster a destination names, for a route on `cx.port`: the
/// destination's port, else the service's only port, else the route port.
pub fn destination_cluster(d: &Destination, cx: &RouteContext<'_, '_>) -> String {
    let svc = cx.scope.service(&d.host, cx.namespace);
    let port = d
        .port
        .as_ref()
        .map(|p| p.number)
        .unwrap_or_else(|| match svc {
            Some(s) if s.ports.len() == 1 => s.ports[0].port,
            _ => cx.port,
        });
    let host = cx.scope.fqdn(&d.host, cx.namespace);
    outbound_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

/// The route action, and the header operations of a single destination
/// (which apply to the whole route).
fn route_action<'r>(
    rule: &'r HttpRoute,
    m: Option<&HttpMatchRequest>,
    cx: &RouteContext<'_, '_>,
) -> (RouteAction, Option<&'r Headers>) {
    let mut single_headers = None;
    let mut action = RouteAction {
        timeout: Some(
            rule.timeout
                .as_ref()
                .and_then(pb::api_duration)
                .unwrap_or_else(|| pb::secs(0)),
        ),
        retry_policy: retry_policy(rule.retries.as_ref().or(cx.default_retry)),
        ..RouteAction::default()
    };
    let dests: Vec<_> = rule
        .route
        .iter()
        .filter_map(|d| Some((d.destination.as_ref()?, d.weight.unwrap_or(0), d)))
        .filter(|(_, w, _)| rule.route.len() == 1 || *w > 0)
        .collect();
    if let [(d, _, hd)] = dests[..] {
        action.cluster_specifier = Some(ClusterSpecifier::Cluster(destination_cluster(d, cx)));
        single_headers = hd.headers.as_ref();
    } else if !dests.is_empty() {
        let clusters = dests
            .iter()
            .map(|(d, w, hd)| {
                let mut cw = ClusterWeight {
                    name: destination_cluster(d, cx),
                    weight: Some(UInt32Value {
                        value: u32::try_from(*w).unwrap_or(0),
                    }),
                    ..ClusterWeight::default()
                };
                if let Some(h) = &hd.headers {
                    if let Some(req) = &h.request {
                        let (add, remove) = header_options(req);
                        cw.request_headers_to_add = add;
                        cw.request_headers_to_remove = remove;
                    }
                    if let Some(resp) = &h.response {
                        let (add, remove) = header_options(resp);
                        cw.response_headers_to_add = add;
                        cw.response_headers_to_remove = remove;
                    }
                }
                cw
            })
            .collect();
        action.cluster_specifier = Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..WeightedCluster::default()
        }));
    }
    if let Some((d, _, _)) = dests.first() {
        let host = cx.scope.fqdn(&d.host, cx.namespace);
        let ns = cx
            .scope
            .service(&d.host, cx.namespace)
            .map_or("", |s| s.namespace.as_str());
        if let Some((_, dr)) = cx.scope.destination_rule_for(&host, ns) {
            let port = d.port.as_ref().map_or(cx.port, |p| p.number);
            let eff = policy::effective(Some(dr), port, d.subset.as_deref().unwrap_or(""));
            action.hash_policy = policy::hash_policy(eff.load_balancer.as_ref());
        }
    }
    if let Some(rw) = &rule.rewrite {
        if let Some(uri) = &rw.uri {
            let exact = matches!(
                m.and_then(|m| m.uri.as_ref()).and_then(StringMatch::kind),
                Some(StringMatchKind::Exact(_))
            );
            if exact {
                // An exact path is replaced as a whole.
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex(".*")),
                    substitution: uri.clone(),
                });
            } else {
                action.prefix_rewrite = uri.clone();
            }
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&rr.pattern)),
                substitution: rr.rewrite.clone(),
            });
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
        }
    }
    let mut mirrors: Vec<(&Destination, f64)> = Vec::new();
    if let Some(d) = &rule.mirror {
        let pct = rule
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(rule.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        mirrors.push((d, pct));
    }
    for mp in &rule.mirrors {
        if let Some(d) = &mp.destination {
            mirrors.push((d, mp.percentage.as_ref().map_or(100.0, |p| p.value)));
        }
    }
    action.request_mirror_policies = mirrors
        .into_iter()
        .map(|(d, pct)| RequestMirrorPolicy {
            cluster: destination_cluster(d, cx),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(pb::percent(pct)),
                ..RuntimeFractionalPercent::default()
            }),
            ..RequestMirrorPolicy::default()
        })
        .collect();
    (action, single_headers)
}

/// Istio's retry policy: the default (2 attempts on connect-failure,
/// refused-stream, unavailable, cancelled and 503, other hosts preferred)
/// when `retries` is unset, none when `attempts` is 0.
pub fn retry_policy(retries: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let mut policy = RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pb::any(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..RetryPolicy::default()
    };
    let Some(r) = retries else {
        return Some(policy);
    };
    if r.attempts <= 0 {
        return None;
    }
    policy.num_retries = Some(UInt32Value {
        value: u32::try_from(r.attempts).unwrap_or(0),
    });
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut kinds: Vec<String> = Vec::new();
        let mut codes: Vec<u32> = Vec::new();
        for part in on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) => codes.push(code),
                Err(_) => kinds.push(part.to_string()),
            }
        }
        if !codes.is_empty() && !kinds.iter().any(|k| k == "retriable-status-codes") {
            kinds.push("retriable-status-codes".to_string());
        }
        policy.retry_on = kinds.join(",");
        policy.retriable_status_codes = codes;
    }
    policy.per_try_timeout = r.per_try_timeout.as_ref().and_then(pb::api_duration);
    if let Some(b) = r.backoff.as_ref().and_then(pb::api_duration) {
        policy.retry_back_off = Some(RetryBackOff {
            base_interval: Some(b),
            ..RetryBackOff::default()
        });
    }
    if r.retry_ignore_previous_hosts == Some(false) {
        policy.retry_host_predicate.clear();
        policy.host_selection_retry_max_attempts = 0;
    }
    Some(policy)
}

fn redirect(r: &weft_api::networking::HttpRedirect) -> RedirectAction {
    let code = match r.redirect_code.unwrap_or(301) {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: r.port.unwrap_or(0),
        response_code: code as i32,
        scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: r
            .uri
            .clone()
            .map(PathRewriteSpecifier::PathRedirect)
            .or_else(|| {
                r.prefix_rewrite
                    .clone()
                    .map(PathRewriteSpecifier::PrefixRewrite)
            }),
        ..RedirectAction::default()
    }
}

fn direct_response(d: &weft_api::networking::HttpDirectResponse) -> DirectResponseAction {
    let body = d.body.as_ref().and_then(|b| {
        let specifier = if let Some(s) = &b.string {
            data_source::Specifier::InlineString(s.clone())
        } else {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.bytes.as_deref()?)
                .ok()?;
            data_source::Specifier::InlineBytes(bytes)
        };
        Some(DataSource {
            specifier: Some(specifier),
            ..DataSource::default()
        })
    });
    DirectResponseAction {
        status: d.status,
        body,
        ..DirectResponseAction::default()
    }
}

fn fault(f: &weft_api::networking::HttpFaultInjection) -> HttpFault {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_ref().and_then(pb::api_duration)?;
        let pct = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent.map(f64::from))
            .unwrap_or(100.0);
        Some(FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(fixed)),
            percentage: Some(pb::percent(pct)),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let status = u32::try_from(a.http_status?).ok()?;
        Some(FaultAbort {
            error_type: Some(ErrorType::HttpStatus(status)),
            percentage: Some(pb::percent(
                a.percentage.as_ref().map_or(100.0, |p| p.value),
            )),
            ..FaultAbort::default()
        })
    });
    HttpFault {
        delay,
        abort,
        ..HttpFault::default()
    }
}

fn cors(c: &weft_api::networking::CorsPolicy) -> CorsPolicy {
    let mut origins: Vec<StringMatcher> =
        c.allow_origins.iter().filter_map(string_matcher).collect();
    origins.extend(c.allow_origin.iter().map(|o| StringMatcher {
        match_pattern: Some(MatchPattern::Exact(o.clone())),
        ..StringMatcher::default()
    }));
    CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_ref()
            .and_then(|d| d.value().ok())
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        ..CorsPolicy::default()
    }
}
