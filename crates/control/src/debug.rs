//! weftd's monitoring and debug HTTP server (Istio serves both on 15014):
//!
//! - `/metrics`: Prometheus text (the `pilot_*` xDS metrics and
//!   `weft_config_*`);
//! - `/debug/syncz`: every ADS stream in Istio's syncz shape, with weft's
//!   sent/ACKed versions and last NACK per type;
//! - `/debug/config_dump?proxyID=ID`: for a connected proxy (full node id
//!   or `pod.namespace`), what weftd serves it under the current config, in
//!   Envoy's admin `config_dump` format (`envoy.admin.v3.ConfigDump` with
//!   Listeners/Clusters/Routes/EndpointsConfigDump, proto3 JSON with proto
//!   field names, every resource a dynamic one with its version), as
//!   istiod's same endpoint answers and `weft proxy-config` reads;
//! - `/debug/configz` and `/debug/config_errors`: the config source's state
//!   (version, problems, objects served from their last good version);
//! - `/debug/cachez`: what weftd keeps per proxy and per Sidecar scope
//!   (connected proxies, per-proxy entries, scope parts, name tables, sets
//!   shared per cache key); every figure falls back as proxies leave;
//! - `/ready`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use weft_xds::json::DumpSection;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

use crate::discovery::Discovery;

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `wanted` names the proxy `id`: the full node id, or its
/// `pod.namespace` part (what `istioctl` passes).
fn proxy_matches(id: &str, wanted: &str) -> bool {
    id == wanted || id.split('~').nth(2) == Some(wanted)
}

fn syncz(d: &Discovery) -> Value {
    Value::Array(
        d.server()
            .sync_status()
            .iter()
            .map(weft_xds::ProxySyncStatus::istio_syncz)
            .collect(),
    )
}

fn config_dump(d: &Discovery, wanted: &str) -> Response<Full<Bytes>> {
    let status = d.server().sync_status();
    let Some(stream) = status.iter().find(|s| proxy_matches(&s.proxy_id, wanted)) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("proxyID {wanted:?}: no connected proxy with this id")}),
        );
    };
    let Some(node) = d.server().node(&stream.proxy_id) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("proxyID {wanted:?}: the proxy disconnected")}),
        );
    };
    if let Err(e) = crate::translate::ProxyNode::from_node(&node.node) {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": format!("proxyID {wanted:?}: {e}")}),
        );
    }
    let section = |type_url: &str| {
        let set = weft_xds::Generator::generate(d.generator().as_ref(), &node, type_url);
        DumpSection {
            version_info: set.version(),
            resources: set,
        }
    };
    match weft_xds::json::config_dump(
        &section(LISTENER),
        &section(ROUTE),
        &section(CLUSTER),
        &section(ENDPOINT),
    ) {
        Ok(dump) => json_response(StatusCode::OK, &dump),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": format!("proxyID {wanted:?}: rendering the config dump: {e}")}),
        ),
    }
}

fn cachez(d: &Discovery) -> Value {
    let c = d.generator().cache().detail();
    json!({
        "connectedProxies": d.server().connected_proxies(),
        "streams": d.server().sync_status().len(),
        "proxies": c.scope_keys,
        "proxyParts": c.proxies,
        "scopes": c.scopes,
        "computedScopes": c.computed_scopes,
        "nameTables": c.name_tables,
        "sharedSets": d.server().cached_sets(),
    })
}

fn metrics(d: &Discovery) -> Response<Full<Bytes>> {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, d.metrics()) {
        Ok(()) => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        ),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// Answers one debug request.
pub fn handle(d: &Discovery, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let q = req.uri().query();
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => metrics(d),
        "/ready" => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/debug/syncz" => json_response(StatusCode::OK, &syncz(d)),
        "/debug/cachez" => json_response(StatusCode::OK, &cachez(d)),
        "/debug/config_dump" => match query_param(q, "proxyID") {
            Some(id) if !id.is_empty() => config_dump(d, &id),
            _ => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "config_dump needs ?proxyID=ID (node id or pod.namespace)"}),
            ),
        },
        "/debug/configz" | "/debug/config_errors" => {
            json_response(StatusCode::OK, &d.store().snapshot().debug_json())
        }
        "/debug" | "/debug/" => respond(
            StatusCode::OK,
            "text/plain",
            "/metrics\n/debug/syncz\n/debug/cachez\n/debug/config_dump?proxyID=\n/debug/configz\n/debug/config_errors\n",
        ),
        other => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("{other}: not found; see /debug\n"),
        ),
    }
}

/// Serves the monitoring/debug endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, d: Arc<Discovery>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "monitoring accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let d = d.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let d = d.clone();
                async move { Ok::<_, Infallible>(handle(&d, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "monitoring connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_proxy_ids() {
        assert_eq!(
            query_param(Some("a=1&proxyID=reviews-v1.default"), "proxyID").as_deref(),
            Some("reviews-v1.default")
        );
        assert_eq!(
            query_param(
                Some("proxyID=sidecar%7E10.0.0.1%7Ep.ns%7Ens.svc.cluster.local"),
                "proxyID"
            )
            .as_deref(),
            Some("sidecar~10.0.0.1~p.ns~ns.svc.cluster.local")
        );
        assert_eq!(query_param(Some("x=1"), "proxyID"), None);
        assert_eq!(percent_decode("50%"), "50%");
        let id = "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local";
        assert!(proxy_matches(id, id));
        assert!(proxy_matches(id, "p.ns"));
        assert!(!proxy_matches(id, "q.ns"));
    }
}
