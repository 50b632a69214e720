//! Request mirroring (a route's request_mirror_policies): a copy of the
//! request, its Host with `-shadow` appended as Envoy does, goes to a host of
//! the mirror cluster. Fire and forget: the response is read and dropped,
//! failures only count in the mirror cluster's stats, and the client's
//! response never waits for it.

use crate::model::route::Mirror;
use crate::{Body, server::http::full};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::BodyExt;
use std::time::Duration;

/// `host` with `-shadow` before its port, if any (`a.b:80` -> `a.b-shadow:80`).
pub fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{h}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

/// Sends the copies that this request's dice roll selects.
#[allow(clippy::too_many_arguments)]
pub fn send(
    mirrors: &[Mirror],
    method: &Method,
    pq: &str,
    headers: &HeaderMap,
    body: &Bytes,
    hash: Option<u64>,
    timeout: Option<Duration>,
) {
    for m in mirrors {
        let Some(cluster) = m.cluster.clone() else {
            continue;
        };
        if !m.fraction.hit() {
            continue;
        }
        let Some(host) = cluster.pick(hash) else {
            cluster.stats.rq_total.inc();
            continue;
        };
        let Ok(uri) = format!("http://{}{pq}", host.address).parse::<Uri>() else {
            continue;
        };
        let mut req: Request<Body> = Request::new(full(body.clone()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = if cluster.http.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        *req.headers_mut() = headers.clone();
        let shadow = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(shadow_host)
            .and_then(|h| HeaderValue::from_str(&h).ok());
        if let Some(h) = shadow {
            req.headers_mut().insert(header::HOST, h);
        }
        cluster.stats.rq_total.inc();
        let limit = timeout.unwrap_or(Duration::from_secs(15));
        tokio::spawn(async move {
            host.begin();
            let sent = tokio::time::timeout(limit, async {
                match cluster.client.send(host.address, req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        Some(status)
                    }
                    Err(_) => None,
                }
            })
            .await;
            host.end();
            match sent {
                Ok(Some(status)) => cluster.stats.response(status, 0.0),
                _ => tracing::debug!(cluster = %cluster.name, "mirrored request failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::shadow_host;

    #[test]
    fn shadow_goes_before_the_port() {
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(
            shadow_host("reviews.default:9080"),
            "reviews.default-shadow:9080"
        );
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }
}
