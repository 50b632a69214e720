//! The CORS filter (`envoy.filters.http.cors`): the HCM filter itself
//! carries no settings; a route's `typed_per_filter_config` CorsPolicy
//! says which origins are allowed. Compiled here; `server::http` answers
//! preflights and adds the response headers.

use super::common::{Ctx, Fraction, StringMatch};
use crate::config::ConfigError;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as PbCorsPolicy;
use http::HeaderValue;

/// A route's compiled CorsPolicy.
#[derive(Debug)]
pub struct CorsPolicy {
    pub origins: Vec<StringMatch>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// filter_enabled (default: always).
    pub enabled: Fraction,
}

impl CorsPolicy {
    pub fn compile(ctx: &Ctx<'_>, p: &PbCorsPolicy) -> Result<CorsPolicy, ConfigError> {
        let value = |field: &str, v: &str| {
            if v.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(v).map(Some).map_err(|_| {
                ctx.field(field)
                    .invalid(format!("{v:?} is not a header value"))
            })
        };
        let mut origins = Vec::new();
        for (i, m) in p.allow_origin_string_match.iter().enumerate() {
            origins.push(StringMatch::compile(
                &ctx.index("allow_origin_string_match", i),
                m,
            )?);
        }
        Ok(CorsPolicy {
            origins,
            allow_methods: value("allow_methods", &p.allow_methods)?,
            allow_headers: value("allow_headers", &p.allow_headers)?,
            expose_headers: value("expose_headers", &p.expose_headers)?,
            max_age: value("max_age", &p.max_age)?,
            allow_credentials: p.allow_credentials.as_ref().is_some_and(|b| b.value),
            enabled: p
                .filter_enabled
                .as_ref()
                .map(|r| Fraction::compile(r.default_value.as_ref()))
                .unwrap_or(Fraction::ALWAYS),
        })
    }

    /// Whether `origin` is allowed (Envoy also accepts `*` as an exact pattern
    /// matching any origin).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| matches!(m, StringMatch::Exact(s, _) if s == "*") || m.matches(origin))
    }
}
