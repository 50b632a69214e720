//! Header handling of the HTTP connection manager: Envoy's sidecar
//! treatment of forwarding headers (`x-forwarded-for`/`-proto`, trusted and
//! external clients, `x-envoy-*`), the request id, and response header
//! mutations from route to route table.

use super::ConnMeta;
use crate::Body;
use crate::model::http::HttpManager;
use crate::model::route::{Route, RouteTable, VirtualHost};
use http::Response;
use http::header::HeaderValue;

/// A random UUID v4, as Envoy generates for `x-request-id`.
pub fn uuid4() -> HeaderValue {
    let r = fastrand::u128(..);
    let b = r.to_be_bytes();
    let mut s = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut j = 0;
    for (i, mut byte) in b.into_iter().enumerate() {
        if i == 6 {
            byte = (byte & 0x0f) | 0x40;
        }
        if i == 8 {
            byte = (byte & 0x3f) | 0x80;
        }
        if matches!(i, 4 | 6 | 8 | 10) {
            s[j] = b'-';
            j += 1;
        }
        s[j] = hex[(byte >> 4) as usize];
        s[j + 1] = hex[(byte & 15) as usize];
        j += 2;
    }
    HeaderValue::from_bytes(&s).expect("uuid is a valid header value")
}

/// Envoy's sidecar treatment of forwarding headers and the request id.
pub(super) fn prepare_headers(hcm: &HttpManager, meta: &ConnMeta, h: &mut http::HeaderMap) {
    // A loopback peer is reported by the host's first non-loopback address, as Envoy does.
    let remote = meta.remote.ip();
    let client = if remote.is_loopback() {
        host_address(remote.is_ipv4()).unwrap_or(remote)
    } else {
        remote
    };
    let external = hcm.use_remote_address && !is_internal(client);
    if hcm.use_remote_address && !hcm.skip_xff_append {
        let ip = client.to_string();
        let v = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(old) if !old.is_empty() => format!("{old},{ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert("x-forwarded-for", v);
        }
    }
    if hcm.use_remote_address || !h.contains_key("x-forwarded-proto") {
        // The downstream connection's scheme, as Envoy sets it.
        let scheme = if meta.tls.is_some() { "https" } else { "http" };
        h.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    }
    if hcm.generate_request_id {
        let keep =
            h.contains_key("x-request-id") && (!external || hcm.preserve_external_request_id);
        if !keep {
            h.insert("x-request-id", uuid4());
        }
    }
    if external {
        // Envoy drops x-envoy-* control headers from untrusted clients.
        let drop: Vec<_> = h
            .keys()
            .filter(|k| k.as_str().starts_with("x-envoy-"))
            .cloned()
            .collect();
        for k in drop {
            h.remove(k);
        }
        if let Ok(v) = HeaderValue::from_str(&remote.to_string()) {
            h.insert("x-envoy-external-address", v);
        }
    } else if hcm.use_remote_address {
        h.insert("x-envoy-internal", HeaderValue::from_static("true"));
    }
}

/// The first non-loopback address of this host (cached).
fn host_address(v4: bool) -> Option<std::net::IpAddr> {
    static ADDRS: std::sync::OnceLock<(Option<std::net::IpAddr>, Option<std::net::IpAddr>)> =
        std::sync::OnceLock::new();
    let (a4, a6) = ADDRS.get_or_init(|| {
        let mut a4 = None;
        let mut a6 = None;
        if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
            for i in ifs {
                let Some(addr) = i.address else { continue };
                if let Some(v) = addr.as_sockaddr_in() {
                    let ip = std::net::IpAddr::V4(v.ip());
                    if !ip.is_loopback() && a4.is_none() {
                        a4 = Some(ip);
                    }
                } else if let Some(v) = addr.as_sockaddr_in6() {
                    let ip = std::net::IpAddr::V6(v.ip());
                    if !ip.is_loopback()
                        && a6.is_none()
                        && (v.ip().segments()[0] & 0xffc0) != 0xfe80
                    {
                        a6 = Some(ip);
                    }
                }
            }
        }
        (a4, a6)
    });
    if v4 { *a4 } else { *a6 }
}

fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Response header mutations from the most specific level to the least.
pub fn response_headers(
    r: &mut Response<Body>,
    route: &Route,
    vh: &VirtualHost,
    table: &RouteTable,
    weighted: Option<&crate::model::common::HeaderOps>,
) {
    if let Some(w) = weighted {
        w.apply(r.headers_mut());
    }
    route.response_headers.apply(r.headers_mut());
    vh.response_headers.apply(r.headers_mut());
    table.response_headers.apply(r.headers_mut());
}
