//! A keep-alive HTTPS client for the webhook, trusting a given CA bundle.
//! Used by the tests (webhook against kube-inject) and the load benchmark;
//! it speaks exactly what the API server speaks to `/inject`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Client errors.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The CA bundle is not PEM certificates.
    #[error("CA bundle: {0}")]
    Ca(String),
    /// Connecting or the TLS handshake failed.
    #[error("connecting to {addr}: {message}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// Building the request failed.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One keep-alive HTTPS connection to the webhook.
pub struct WebhookClient {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl WebhookClient {
    /// Connect to `addr`, verifying the server as `server_name` against `ca_pem`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &str,
    ) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| ClientError::Ca(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Ca("no CERTIFICATE block".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connect_err = |message: String| ClientError::Connect { addr, message };
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| connect_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| connect_err(format!("server name {server_name:?}: {e}")))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(WebhookClient {
            sender,
            authority: format!("{server_name}:{}", addr.port()),
        })
    }

    /// Send a request on the kept-alive connection.
    pub async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POST an AdmissionReview to `/inject`.
    pub async fn review(&mut self, body: Vec<u8>) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(hyper::Method::POST, "/inject", body).await
    }
}
