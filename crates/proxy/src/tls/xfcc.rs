//! `x-forwarded-client-cert` as Envoy's HTTP connection manager handles it
//! (`forward_client_cert_details`, `set_current_client_cert_details`).
//!
//! Istio's inbound HCM uses `APPEND_FORWARD` with subject, DNS and URI, so
//! the app behind a sidecar sees e.g.
//! `By=spiffe://cluster.local/ns/a/sa/server;Hash=<sha256>;Subject="";URI=spiffe://cluster.local/ns/b/sa/client`.
//! Without mutual TLS on the downstream connection the header is removed
//! (except `ALWAYS_FORWARD_ONLY`), as in Envoy; `SANITIZE` (the default)
//! always removes it.

use super::TlsInfo;
use crate::config::ConfigError;
use crate::model::common::Ctx;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::ForwardClientCertDetails,
};
use http::{HeaderMap, HeaderValue};

/// The XFCC header name.
pub const XFCC: &str = "x-forwarded-client-cert";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// A compiled XFCC policy of one HCM.
#[derive(Debug, Clone, Default)]
pub struct Xfcc {
    pub mode: Mode,
    pub subject: bool,
    pub dns: bool,
    pub uri: bool,
}

impl Xfcc {
    pub fn compile(ctx: &Ctx<'_>, m: &HttpConnectionManager) -> Result<Xfcc, ConfigError> {
        let mode = match m.forward_client_cert_details() {
            ForwardClientCertDetails::Sanitize => Mode::Sanitize,
            ForwardClientCertDetails::ForwardOnly => Mode::ForwardOnly,
            ForwardClientCertDetails::AppendForward => Mode::AppendForward,
            ForwardClientCertDetails::SanitizeSet => Mode::SanitizeSet,
            ForwardClientCertDetails::AlwaysForwardOnly => Mode::AlwaysForwardOnly,
        };
        let mut x = Xfcc {
            mode,
            ..Xfcc::default()
        };
        if let Some(s) = &m.set_current_client_cert_details {
            let c = ctx.field("set_current_client_cert_details");
            if s.cert || s.chain {
                return Err(c.unsupported("cert and chain (only subject, dns and uri)"));
            }
            x.subject = s.subject.is_some_and(|b| b.value);
            x.dns = s.dns;
            x.uri = s.uri;
        }
        Ok(x)
    }

    /// This hop's element: `By`, `Hash`, then the configured details.
    pub fn element(&self, tls: &TlsInfo) -> String {
        let mut parts: Vec<String> = tls
            .local_uri_sans
            .iter()
            .map(|u| format!("By={u}"))
            .collect();
        if let Some(h) = &tls.peer_cert_sha256 {
            parts.push(format!("Hash={h}"));
        }
        if self.subject {
            parts.push(format!(
                "Subject=\"{}\"",
                tls.peer_subject.as_deref().unwrap_or_default()
            ));
        }
        if self.uri {
            parts.extend(tls.peer_uri_sans.iter().map(|u| format!("URI={u}")));
        }
        if self.dns {
            parts.extend(tls.peer_dns_sans.iter().map(|d| format!("DNS={d}")));
        }
        parts.join(";")
    }

    /// Rewrites the request's XFCC header for a connection with `tls`.
    pub fn apply(&self, tls: Option<&TlsInfo>, headers: &mut HeaderMap) {
        if self.mode == Mode::AlwaysForwardOnly {
            return;
        }
        let mutual = tls.filter(|t| t.is_mutual());
        let Some(tls) = mutual else {
            headers.remove(XFCC);
            return;
        };
        match self.mode {
            Mode::Sanitize => {
                headers.remove(XFCC);
            }
            Mode::ForwardOnly | Mode::AlwaysForwardOnly => {}
            Mode::AppendForward | Mode::SanitizeSet => {
                let mine = self.element(tls);
                let value = match headers.get(XFCC).and_then(|v| v.to_str().ok()) {
                    Some(old) if self.mode == Mode::AppendForward && !old.is_empty() => {
                        format!("{old},{mine}")
                    }
                    _ => mine,
                };
                match HeaderValue::from_str(&value) {
                    Ok(v) => {
                        headers.insert(XFCC, v);
                    }
                    Err(_) => {
                        headers.remove(XFCC);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtls() -> TlsInfo {
        TlsInfo {
            version: "TLSv1_3",
            peer_uri_sans: vec!["spiffe://cluster.local/ns/b/sa/client".into()],
            peer_subject: Some(String::new()),
            peer_cert_sha256: Some("ab12".into()),
            local_uri_sans: vec!["spiffe://cluster.local/ns/a/sa/server".into()],
            ..TlsInfo::default()
        }
    }

    fn istio() -> Xfcc {
        Xfcc {
            mode: Mode::AppendForward,
            subject: true,
            dns: true,
            uri: true,
        }
    }

    #[test]
    fn append_forward_adds_this_hop() {
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("By=x;URI=y"));
        istio().apply(Some(&mtls()), &mut h);
        assert_eq!(
            h[XFCC],
            "By=x;URI=y,By=spiffe://cluster.local/ns/a/sa/server;Hash=ab12;Subject=\"\";URI=spiffe://cluster.local/ns/b/sa/client"
        );
    }

    #[test]
    fn plaintext_and_sanitize_remove_the_header() {
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("By=forged"));
        istio().apply(None, &mut h);
        assert!(h.get(XFCC).is_none());
        h.insert(XFCC, HeaderValue::from_static("By=forged"));
        Xfcc::default().apply(Some(&mtls()), &mut h);
        assert!(h.get(XFCC).is_none());
        h.insert(XFCC, HeaderValue::from_static("By=kept"));
        Xfcc {
            mode: Mode::AlwaysForwardOnly,
            ..Xfcc::default()
        }
        .apply(None, &mut h);
        assert_eq!(h[XFCC], "By=kept");
    }

    #[test]
    fn sanitize_set_replaces() {
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("By=forged"));
        Xfcc {
            mode: Mode::SanitizeSet,
            uri: true,
            ..Xfcc::default()
        }
        .apply(Some(&mtls()), &mut h);
        assert_eq!(
            h[XFCC],
            "By=spiffe://cluster.local/ns/a/sa/server;Hash=ab12;URI=spiffe://cluster.local/ns/b/sa/client"
        );
    }
}
