//! Upstream HTTP connections: one keep-alive pool per cluster (keyed by
//! endpoint inside), HTTP/1.1 or HTTP/2 as the cluster says. Upstream TLS
//! (the identity issue) plugs in here as another connector; `Transport`
//! is the seam.

use crate::Body;
use crate::model::cluster::HttpSettings;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// How bytes reach the upstream. Only plaintext today; mTLS arrives with
/// the identity issue as a second variant wrapping a TLS connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
}

/// Why an upstream request produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failure: {0}")]
    Connect(String),
    #[error("connection reset before the response: {0}")]
    Reset(String),
    #[error("refused stream: {0}")]
    Refused(String),
}

#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Body>,
    pub transport: Transport,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration, http: &HttpSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(http.idle_timeout.unwrap_or(Duration::from_secs(3600)))
            .pool_max_idle_per_host(usize::MAX);
        if http.http2 {
            b.http2_only(true);
            if let Some(w) = http.initial_stream_window {
                b.http2_initial_stream_window_size(w);
            }
            if let Some(w) = http.initial_connection_window {
                b.http2_initial_connection_window_size(w);
            }
        }
        UpstreamClient {
            client: b.build(connector),
            transport: Transport::Plain,
        }
    }

    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        self.client.request(req).await.map_err(classify)
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    let text = error_chain(&e);
    if e.is_connect() {
        return UpstreamError::Connect(text);
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return UpstreamError::Refused(text);
        }
        src = s.source();
    }
    UpstreamError::Reset(text)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
