//! Envoy's gRPC retry conditions (`cancelled`, `deadline-exceeded`,
//! `internal`, `resource-exhausted`, `unavailable`), which Istio's default
//! retry policy uses (`connect-failure,refused-stream,unavailable,
//! cancelled,retriable-status-codes`): a trailers-only gRPC error whose
//! `grpc-status` is listed is retried; other statuses are not.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// An upstream answering every request with HTTP 200 and the `grpc-status`
/// named by the path (`/grpc/14`), counting requests.
async fn grpc_upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let code = req.uri().path().trim_start_matches("/grpc/").to_owned();
                    async move {
                        let mut r = http::Response::new(Full::new(Bytes::new()));
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        r.headers_mut().insert("grpc-status", code.parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, hits)
}

const ROUTES: &str = r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: grpc
                  retry_policy:
                    retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                    num_retries: 2
                    retry_back_off: { base_interval: 0.001s }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_grpc_statuses_are_retried() {
    let (port, hits) = grpc_upstream().await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        "",
        "",
        &[cluster("grpc", &[port], "")],
    ));
    let addr = p.listener_address("http").expect("bound");

    // unavailable (14): 1 try + 2 retries.
    let g = get(addr, "svc", "/grpc/14").await;
    assert_eq!(g.header("grpc-status"), Some("14"));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // cancelled (1): retried too.
    let _ = get(addr, "svc", "/grpc/1").await;
    assert_eq!(hits.load(Ordering::SeqCst), 3 + 3);
    // internal (13) is not in this policy; OK (0) never is.
    let _ = get(addr, "svc", "/grpc/13").await;
    let _ = get(addr, "svc", "/grpc/0").await;
    assert_eq!(hits.load(Ordering::SeqCst), 6 + 2);
    p.shutdown();
}
