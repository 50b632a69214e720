//! The `/inject` admission webhook over HTTPS (hyper 1 + tokio-rustls):
//! `POST /inject` takes an AdmissionReview and answers with one; `GET
//! /ready` answers 200 once serving. Connections are kept alive; each runs
//! on its own task. The review logic lives in [`admission`], certificates in
//! [`tls`].

pub mod admission;
pub mod client;
pub mod tls;

use crate::namespaces::NamespaceStore;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use weft_inject::Settings;

/// Largest AdmissionReview accepted (the API server's own limit is ~3 MiB).
pub const MAX_BODY: usize = 8 << 20;

/// Time allowed for a TLS handshake and for a request's headers; a client
/// that stalls longer is dropped (the API server's own webhook timeout is
/// at most 30 s).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the webhook needs to answer reviews.
pub struct WebhookState {
    /// Injection settings (templates, values, mesh config, revision).
    pub settings: Settings,
    /// Namespace labels.
    pub namespaces: NamespaceStore,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Route one HTTP request.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<WebhookState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read request body (limit {MAX_BODY} bytes): {e}\n"),
                    ));
                }
            };
            match admission::review(&body, &state.settings, &state.namespaces) {
                Ok((resp, decision)) => {
                    tracing::debug!(?decision, "admission review");
                    let bytes = serde_json::to_vec(&resp).unwrap_or_default();
                    let mut r = Response::new(Full::new(Bytes::from(bytes)));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rejected request");
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
            }
        }
        (_, "/inject") | (_, "/ready") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, format!("no handler for {path}\n")),
    })
}

/// Serve HTTPS on `listener` until the task is dropped.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<WebhookState>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serve plain HTTP (only `/ready` is useful there) on `listener`.
pub async fn serve_http(listener: TcpListener, state: Arc<WebhookState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    if req.uri().path() == "/ready" {
                        handle(req, state).await
                    } else {
                        Ok(text(
                            StatusCode::NOT_FOUND,
                            "only /ready is served over plain HTTP\n",
                        ))
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
