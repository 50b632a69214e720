//! The CORS filter at request time: a route's policy answers allowed
//! preflights itself and marks responses to allowed origins (the policy is
//! compiled in `model::cors`).

use super::http::{Exchange, empty};
use crate::Body;
use crate::model::cors::CorsPolicy;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response};
use std::sync::Arc;

/// The CORS filter with a route's policy: answers an allowed preflight
/// (returned), or remembers an allowed origin for `finish`. Requests
/// without an Origin, or from an origin not allowed, pass untouched.
pub fn check(
    x: &mut Exchange,
    p: &Arc<CorsPolicy>,
    parts: &http::request::Parts,
) -> Option<Response<Body>> {
    let origin = parts.headers.get(header::ORIGIN)?;
    if !p.enabled.hit() || !origin.to_str().is_ok_and(|o| p.allows(o)) {
        return None;
    }
    let preflight = parts.method == http::Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !preflight {
        x.cors = Some((origin.clone(), p.clone()));
        return None;
    }
    x.details = "cors_response";
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if p.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    for (name, v) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, &p.allow_methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, &p.allow_headers),
        (header::ACCESS_CONTROL_MAX_AGE, &p.max_age),
    ] {
        if let Some(v) = v {
            h.insert(name, v.clone());
        }
    }
    Some(r)
}

/// Adds the Access-Control-* headers of a non-preflight response.
pub fn mark_response(h: &mut HeaderMap, origin: HeaderValue, p: &CorsPolicy) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if p.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(e) = &p.expose_headers {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
    }
}
