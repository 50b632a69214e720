//! A compiled `http_connection_manager`: codec, route table, HTTP filters
//! (fault, local rate limit, router), request-id and forwarding-header
//! behaviour, timeouts and access logs.

use super::cluster::Cluster;
use super::common::{Ctx, Fraction, duration, opt_duration};
use super::route::RouteTable;
use super::token_bucket::TokenBucket;
use crate::accesslog::AccessLog;
use crate::config::ConfigError;
use crate::stats::{HttpStats, Stats};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter::ConfigType,
};
use http::{HeaderValue, StatusCode};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug)]
pub struct Fault {
    pub delay: Option<(Duration, Fraction)>,
    pub abort: Option<(StatusCode, Fraction)>,
}

/// `envoy.filters.http.local_ratelimit`: a token bucket shared by the
/// workers (lock-free, see [`TokenBucket`]). Without a bucket the filter
/// only defers to route-level configuration.
#[derive(Debug)]
pub struct LocalRateLimit {
    pub bucket: Option<TokenBucket>,
    pub response_headers: super::common::HeaderOps,
    pub enabled: Fraction,
    pub enforced: Fraction,
    pub status: StatusCode,
}

impl LocalRateLimit {
    /// Takes a token; false when the bucket is empty.
    pub fn take(&self) -> bool {
        self.bucket.as_ref().is_none_or(TokenBucket::take)
    }
}

#[derive(Debug)]
pub enum HttpFilter {
    Fault(Fault),
    LocalRateLimit(LocalRateLimit),
    /// The CORS filter: None on the HCM, a route's policy per route.
    Cors(Option<Arc<super::cors::CorsPolicy>>),
    /// `envoy.filters.http.rbac` (or a route's `RBACPerRoute`).
    Rbac(Box<crate::rbac::HttpRbac>),
}

/// An HTTP filter with the name routes use in `typed_per_filter_config`.
#[derive(Debug)]
pub struct NamedFilter {
    pub name: String,
    pub filter: HttpFilter,
}

#[derive(Debug)]
pub struct HttpManager {
    pub stat_prefix: Arc<str>,
    pub codec: Codec,
    pub routes: Arc<RouteTable>,
    /// In sidecar (xDS) mode: the newest route table of this name, shared
    /// across config versions, so requests on connections accepted under
    /// an older listener config route by the newest RDS routes, as Envoy's
    /// do (set by `crate::xds`; unset for static bootstraps).
    pub rds: std::sync::OnceLock<Arc<arc_swap::ArcSwap<RouteTable>>>,
    pub filters: Vec<NamedFilter>,
    pub access_logs: Vec<AccessLog>,
    pub use_remote_address: bool,
    pub skip_xff_append: bool,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub stream_idle_timeout: Option<Duration>,
    /// Downstream HTTP/2 settings (max concurrent streams, windows).
    pub http2: super::cluster::HttpSettings,
    pub idle_timeout: Option<Duration>,
    pub websocket: bool,
    pub server_name: HeaderValue,
    pub stats: HttpStats,
    /// Istio metrics scope, set by the listener (crate::istio_metrics).
    pub istio: std::sync::OnceLock<Arc<crate::istio_metrics::Scope>>,
    /// `x-forwarded-client-cert` handling (forward_client_cert_details).
    pub xfcc: crate::tls::xfcc::Xfcc,
}

impl HttpManager {
    pub fn compile(
        ctx: &Ctx<'_>,
        m: &HttpConnectionManager,
        clusters: &HashMap<String, Arc<Cluster>>,
        stats: &Stats,
    ) -> Result<Self, ConfigError> {
        let codec = match m.codec_type() {
            CodecType::Auto => Codec::Auto,
            CodecType::Http1 => Codec::Http1,
            CodecType::Http2 => Codec::Http2,
            CodecType::Http3 => return Err(ctx.field("codec_type").unsupported("HTTP3")),
        };
        let routes = match &m.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => {
                RouteTable::compile(&ctx.field("route_config"), rc, clusters)?
            }
            Some(RouteSpecifier::Rds(_)) => {
                return Err(ctx.field("rds").unsupported("RDS needs the xDS client"));
            }
            Some(RouteSpecifier::ScopedRoutes(_)) => {
                return Err(ctx.field("scoped_routes").unsupported(""));
            }
            None => return Err(ctx.invalid("route_config is required")),
        };
        let mut filters = Vec::new();
        let mut saw_router = false;
        for (i, f) in m.http_filters.iter().enumerate() {
            let c = ctx.index("http_filters", i);
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(c
                    .field("typed_config")
                    .invalid(format!("filter {:?} needs a typed_config", f.name)));
            };
            if saw_router {
                return Err(c.invalid("the router must be the last HTTP filter"));
            }
            match compile_typed(&c.field("typed_config"), any)? {
                Some(HttpFilter::Rbac(mut r)) => {
                    r.bind_stats(stats, &m.stat_prefix);
                    filters.push(NamedFilter {
                        name: f.name.clone(),
                        filter: HttpFilter::Rbac(r),
                    })
                }
                Some(filter) => filters.push(NamedFilter {
                    name: f.name.clone(),
                    filter,
                }),
                None => saw_router = true,
            }
        }
        if !saw_router {
            return Err(ctx
                .field("http_filters")
                .invalid("envoy.filters.http.router is required as the last filter"));
        }
        let mut websocket = false;
        for (i, u) in m.upgrade_configs.iter().enumerate() {
            if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
                return Err(ctx
                    .index("upgrade_configs", i)
                    .unsupported(format!("upgrade_type {:?}", u.upgrade_type)));
            }
            websocket = u.enabled.as_ref().map(|b| b.value).unwrap_or(true);
        }
        let server_name = if m.server_name.is_empty() {
            "envoy"
        } else {
            m.server_name.as_str()
        };
        let stat_prefix: Arc<str> = m.stat_prefix.as_str().into();
        Ok(HttpManager {
            istio: Default::default(),
            xfcc: crate::tls::xfcc::Xfcc::compile(ctx, m)?,
            stats: stats.http(&stat_prefix),
            stat_prefix,
            codec,
            routes: Arc::new(routes),
            rds: std::sync::OnceLock::new(),
            filters,
            access_logs: super::access_logs(ctx, &m.access_log)?,
            use_remote_address: m.use_remote_address.as_ref().is_some_and(|b| b.value),
            skip_xff_append: m.skip_xff_append,
            generate_request_id: m
                .generate_request_id
                .as_ref()
                .map(|b| b.value)
                .unwrap_or(true),
            preserve_external_request_id: m.preserve_external_request_id,
            always_set_request_id_in_response: m.always_set_request_id_in_response,
            stream_idle_timeout: opt_duration(
                &ctx.field("stream_idle_timeout"),
                m.stream_idle_timeout.as_ref(),
            )?
            .or(Some(Duration::from_secs(300)))
            .filter(|d| !d.is_zero()),
            http2: {
                let mut h = super::cluster::HttpSettings::default();
                if let Some(o) = &m.http2_protocol_options {
                    h.max_concurrent_streams = o.max_concurrent_streams.map(|v| v.value);
                    h.initial_stream_window = o.initial_stream_window_size.map(|v| v.value);
                    h.initial_connection_window = o.initial_connection_window_size.map(|v| v.value);
                }
                h
            },
            idle_timeout: m
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout.as_ref())
                .map(|d| duration(&ctx.field("common_http_protocol_options.idle_timeout"), d))
                .transpose()?
                .or(Some(Duration::from_secs(3600)))
                .filter(|d| !d.is_zero()),
            websocket,
            server_name: HeaderValue::from_str(server_name).map_err(|_| {
                ctx.field("server_name")
                    .invalid(format!("bad server name {server_name:?}"))
            })?,
        })
    }
}

/// Compiles an HTTP filter's `typed_config`; `None` for the router.
pub fn compile_typed(
    tc: &Ctx<'_>,
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<Option<HttpFilter>, ConfigError> {
    let decode_err = |e: prost::DecodeError| tc.invalid(e.to_string());
    Ok(match any.type_url.rsplit('/').next().unwrap_or_default() {
        "envoy.extensions.filters.http.router.v3.Router" => None,
        "envoy.extensions.filters.http.fault.v3.HTTPFault" => {
            let pbf = HttpFault::decode(any.value.as_slice()).map_err(decode_err)?;
            Some(HttpFilter::Fault(compile_fault(tc, &pbf)?))
        }
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
            let pbl = PbLocalRateLimit::decode(any.value.as_slice()).map_err(decode_err)?;
            Some(HttpFilter::LocalRateLimit(compile_rate_limit(tc, &pbl)?))
        }
        "envoy.extensions.filters.http.cors.v3.Cors" => Some(HttpFilter::Cors(None)),
        "envoy.extensions.filters.http.cors.v3.CorsPolicy" => {
            let p =
                envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy::decode(
                    any.value.as_slice(),
                )
                .map_err(decode_err)?;
            Some(HttpFilter::Cors(Some(Arc::new(
                super::cors::CorsPolicy::compile(tc, &p)?,
            ))))
        }
        "envoy.extensions.filters.http.rbac.v3.RBAC" => {
            use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
            let r = Rbac::decode(any.value.as_slice()).map_err(decode_err)?;
            Some(HttpFilter::Rbac(Box::new(crate::rbac::HttpRbac::compile(
                tc, &r,
            )?)))
        }
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => {
            use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
            let r = RbacPerRoute::decode(any.value.as_slice()).map_err(decode_err)?;
            Some(HttpFilter::Rbac(Box::new(
                crate::rbac::HttpRbac::compile_per_route(tc, &r)?,
            )))
        }
        other => return Err(tc.unsupported(format!("HTTP filter {other}"))),
    })
}

fn compile_fault(ctx: &Ctx<'_>, f: &HttpFault) -> Result<Fault, ConfigError> {
    let delay = match &f.delay {
        Some(d) => {
            let c = ctx.field("delay");
            let fixed = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(fd)) => duration(&c.field("fixed_delay"), fd)?,
                _ => return Err(c.unsupported("only fixed_delay is implemented")),
            };
            Some((fixed, Fraction::compile(d.percentage.as_ref())))
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let c = ctx.field("abort");
            let status = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => u16::try_from(*s)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| (200..600).contains(&s.as_u16()))
                    .ok_or_else(|| c.field("http_status").invalid(format!("bad status {s}")))?,
                _ => return Err(c.unsupported("only http_status is implemented")),
            };
            Some((status, Fraction::compile(a.percentage.as_ref())))
        }
        None => None,
    };
    Ok(Fault { delay, abort })
}

fn compile_rate_limit(ctx: &Ctx<'_>, l: &PbLocalRateLimit) -> Result<LocalRateLimit, ConfigError> {
    let bucket = l
        .token_bucket
        .as_ref()
        .map(|tb| {
            let c = ctx.field("token_bucket");
            let fill_interval = tb
                .fill_interval
                .as_ref()
                .map(|d| duration(&c.field("fill_interval"), d))
                .transpose()?
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    c.field("fill_interval")
                        .invalid("fill_interval must be positive")
                })?;
            let tokens_per_fill = tb.tokens_per_fill.map(|v| v.value).unwrap_or(1);
            if tokens_per_fill == 0 {
                return Err(c
                    .field("tokens_per_fill")
                    .invalid("tokens_per_fill must be positive"));
            }
            Ok(TokenBucket::new(
                tb.max_tokens,
                tokens_per_fill,
                fill_interval,
            ))
        })
        .transpose()?;
    // Envoy: both fractions default to 0% when unset.
    let frac =
        |f: Option<&envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>| match f {
            Some(r) => Fraction::compile(r.default_value.as_ref()),
            None => Fraction::compile(Some(&Default::default())),
        };
    let status = match &l.status {
        Some(s) if s.code != 0 => StatusCode::from_u16(s.code as u16).map_err(|_| {
            ctx.field("status")
                .invalid(format!("bad status {}", s.code))
        })?,
        _ => StatusCode::TOO_MANY_REQUESTS,
    };
    Ok(LocalRateLimit {
        bucket,
        response_headers: super::common::HeaderOps::compile(
            ctx,
            "response_headers_to_add",
            &l.response_headers_to_add,
            "",
            &[],
        )?,
        enabled: frac(l.filter_enabled.as_ref()),
        enforced: frac(l.filter_enforced.as_ref()),
        status,
    })
}
