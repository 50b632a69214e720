//! The HTTP/1 request head as weft-proxy receives it: arbitrary bytes go
//! through hyper's server codec (what the connection manager uses) and,
//! when they parse, through route selection of a compiled route table with
//! header, query and regex matchers. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proxy::model::Snapshot;
use weft_proxy::model::listener::ChainKind;
use weft_proxy::model::route::RequestView;

const BOOTSTRAP: &str = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 1 } }
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: f
          route_config:
            virtual_hosts:
            - name: a
              domains: ["a.example", "*.wild", "pre.*"]
              routes:
              - match: { safe_regex: { regex: "/r/[a-z]+" } }
                direct_response: { status: 200 }
              - match: { prefix: "/h", headers: [{ name: x-k, string_match: { prefix: "v", ignore_case: true } }] }
                direct_response: { status: 201 }
              - match: { path_separated_prefix: "/s", query_parameters: [{ name: q, present_match: true }] }
                direct_response: { status: 202 }
            - name: any
              domains: ["*"]
              routes:
              - match: { prefix: "/", case_sensitive: false }
                direct_response: { status: 204 }
          http_filters:
          - name: router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let loaded = weft_proxy::config::load_str(BOOTSTRAP, "fuzz").expect("bootstrap");
        Snapshot::compile(&loaded, &weft_proxy::stats::Stats::new()).expect("compile")
    })
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let snap = snapshot();
        let ChainKind::Http(hcm) = &snap.listeners[0].chains[0].kind else { unreachable!() };
        let hcm = Arc::clone(hcm);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let hcm = hcm.clone();
            async move {
                let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
                let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let view = RequestView { method: req.method().as_str(), path_and_query: pq, headers: req.headers() };
                let status = match hcm.routes.virtual_host(host).and_then(|vh| vh.route(&view)) {
                    Some(_) => 200,
                    None => 404,
                };
                let mut r = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let drive = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async { tokio::join!(conn, drive) }).await;
    });
});
