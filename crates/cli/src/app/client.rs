//! The small HTTP/1.1 client shared by the HTTP app's downstream calls and
//! the load generator.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// An HTTP client for plain `http://` URLs (the sidecar does TLS).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds a pooled HTTP/1.1 client.
pub fn new_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Parses a `--url`/`--call` value; only `http://` with a host is accepted.
pub fn parse_url(flag: &str, url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{flag} {url:?}: not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "{flag} {url:?}: must be an http://host[:port]/path URL"
        ));
    }
    Ok(uri)
}

/// One completed exchange.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends a GET with the given extra headers, bounded by `timeout`.
pub async fn get(
    client: &HttpClient,
    uri: &Uri,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Reply, String> {
    let mut builder = Request::get(uri.clone());
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("building request to {uri}: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{uri}: reading body: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{uri}: no reply within {timeout:?}"))?
}
