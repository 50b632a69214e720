//! How the sidecar secures its xDS connection, decided as Istio's agent
//! decides it, from the discovery address and the environment (pure; the
//! connection itself is [`super::relay`]'s).
//!
//! - TLS or plaintext: an explicit `https://`/`http://` scheme on the
//!   address wins; else `PROXY_CONFIG`'s `controlPlaneAuthPolicy`
//!   (`MUTUAL_TLS` or `NONE`, Istio's switch); else the port: 15012
//!   (istiod's and weftd's xDS-over-mTLS port) is TLS and anything else,
//!   such as 15010, plaintext. (pilot-agent defaults to `MUTUAL_TLS` on
//!   every port; weft-proxy keeps plaintext for other ports because weftd's
//!   plaintext ADS port may be any port.)
//! - The name weftd's certificate must carry: `ISTIOD_SAN` when set, else
//!   the host of the discovery address (a DNS name or an IP address); a
//!   host containing `localhost` expects `istiod.istio-system.svc`, as
//!   pilot-agent does for port-forwarded debugging.
//! - The roots weftd's certificate must chain to: `XDS_ROOT_CA` (a PEM
//!   file, or `SYSTEM` for the host's bundle), else the mesh root in
//!   `WEFT_ROOT_CERT_FILE`.
//! - The client certificate: the workload certificate from
//!   [`crate::identity`], the one current at each handshake (none before
//!   the first is issued; weftd then serves xDS without client
//!   authentication, as istiod does for token-authenticated agents).

use std::collections::HashMap;
use std::path::PathBuf;

/// istiod's (and weftd's) port for xDS and the CA over mutual TLS.
pub const XDS_TLS_PORT: u16 = 15012;

/// The host's CA bundle `XDS_ROOT_CA=SYSTEM` stands for (Debian's path;
/// `SSL_CERT_FILE` overrides it).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to reach weftd's ADS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsTransport {
    /// gRPC over plain HTTP/2 to this URL (`http://HOST:PORT`).
    Plaintext { url: String },
    /// gRPC over mutual TLS.
    MutualTls(TlsSettings),
}

/// The TLS side of an xDS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `HOST:PORT` dialled.
    pub address: String,
    /// The DNS name or IP address weftd's certificate must be valid for.
    pub server_name: String,
    /// Where [`Self::server_name`] came from (`ISTIOD_SAN`, or the discovery
    /// address), for error messages.
    pub server_name_from: String,
    /// PEM file of the trusted roots.
    pub roots_file: PathBuf,
    /// The variable that named [`Self::roots_file`] (`XDS_ROOT_CA` or
    /// `WEFT_ROOT_CERT_FILE`).
    pub roots_from: &'static str,
}

fn get<'a>(env: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// `controlPlaneAuthPolicy` of `PROXY_CONFIG`: `Some(true)` for
/// `MUTUAL_TLS`, `Some(false)` for `NONE`, `None` when unset.
pub fn auth_policy(env: &HashMap<String, String>) -> Result<Option<bool>, String> {
    let Some(pc) = get(env, "PROXY_CONFIG") else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(pc).map_err(|e| format!("PROXY_CONFIG: not JSON ({e}): {pc:?}"))?;
    match v.get("controlPlaneAuthPolicy") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(p)) if p == "MUTUAL_TLS" => Ok(Some(true)),
        Some(serde_json::Value::String(p)) if p == "NONE" => Ok(Some(false)),
        Some(other) => Err(format!(
            "PROXY_CONFIG controlPlaneAuthPolicy: {other} is not MUTUAL_TLS or NONE"
        )),
    }
}

/// `HOST:PORT` split into the host (IPv6 brackets removed) and the port.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("discovery address {address:?}: {why} (expected HOST:PORT)");
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = port.parse().map_err(|_| bad("the port is not a number"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port))
}

/// The name weftd's certificate must be valid for, and where it came from.
pub fn expected_server_name(host: &str, istiod_san: Option<&str>) -> (String, String) {
    if let Some(san) = istiod_san.map(str::trim).filter(|s| !s.is_empty()) {
        return (san.to_owned(), "ISTIOD_SAN".to_owned());
    }
    if host.contains("localhost") {
        return (
            "istiod.istio-system.svc".to_owned(),
            format!("the discovery host {host:?} (localhost expects istiod's name)"),
        );
    }
    (host.to_owned(), format!("the discovery host {host:?}"))
}

/// Decides how to reach `address` (`HOST:PORT`, or a URL with `http://` or
/// `https://`) from the environment; see the module docs for the rules.
/// The error names the variable or the address at fault.
pub fn transport_from_env(
    address: &str,
    env: &HashMap<String, String>,
) -> Result<XdsTransport, String> {
    let (scheme, hostport) = match address.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest.trim_end_matches('/')),
        None => (None, address),
    };
    let (host, port) = split_host_port(hostport)?;
    let tls = match scheme {
        Some("https") => true,
        Some("http") => false,
        Some(other) => {
            return Err(format!(
                "discovery address {address:?}: scheme {other:?} is not http or https"
            ));
        }
        None => auth_policy(env)?.unwrap_or(port == XDS_TLS_PORT),
    };
    if !tls {
        return Ok(XdsTransport::Plaintext {
            url: format!("http://{hostport}"),
        });
    }
    let (roots_file, roots_from) = match get(env, "XDS_ROOT_CA") {
        Some("SYSTEM") => (
            PathBuf::from(get(env, "SSL_CERT_FILE").unwrap_or(SYSTEM_ROOTS)),
            "XDS_ROOT_CA",
        ),
        Some(path) => (PathBuf::from(path), "XDS_ROOT_CA"),
        None => match get(env, "WEFT_ROOT_CERT_FILE") {
            Some(path) => (PathBuf::from(path), "WEFT_ROOT_CERT_FILE"),
            None => {
                return Err(format!(
                    "xDS to {hostport} is over mutual TLS and needs the mesh root to verify weftd: set WEFT_ROOT_CERT_FILE (or XDS_ROOT_CA), or use weftd's plaintext port 15010"
                ));
            }
        },
    };
    let (server_name, server_name_from) = expected_server_name(&host, get(env, "ISTIOD_SAN"));
    Ok(XdsTransport::MutualTls(TlsSettings {
        address: hostport.to_owned(),
        server_name,
        server_name_from,
        roots_file,
        roots_from,
    }))
}

/// Why a TLS connection to weftd failed, in words an operator can act on.
/// `presented_cert` says whether the proxy had a workload certificate to
/// present.
pub fn explain_failure(error: &rustls::Error, s: &TlsSettings, presented_cert: bool) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    let addr = &s.address;
    let name = &s.server_name;
    let roots = format!("{} ({})", s.roots_file.display(), s.roots_from);
    match error {
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            let presented = match error {
                Error::InvalidCertificate(Cert::NotValidForNameContext { presented, .. }) => {
                    format!(" (it is valid for {})", presented.join(", "))
                }
                _ => String::new(),
            };
            format!(
                "name mismatch: weftd at {addr} presented a certificate that is not valid for {name:?}, the name expected from {}{presented}; set ISTIOD_SAN to a name in it, or start weftd with --tls-san {name}",
                s.server_name_from
            )
        }
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => format!(
            "unknown CA: the certificate of weftd at {addr} does not chain to the root in {roots}"
        ),
        Error::InvalidCertificate(
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. },
        ) => format!("the certificate of weftd at {addr} is expired or not yet valid"),
        Error::InvalidCertificate(other) => {
            format!("the certificate of weftd at {addr} is not acceptable: {other:?}")
        }
        Error::AlertReceived(
            Alert::CertificateRequired | Alert::HandshakeFailure | Alert::BadCertificate,
        ) if !presented_cert => format!(
            "no client certificate: weftd at {addr} requires one and the proxy has no workload certificate yet"
        ),
        Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::AccessDenied),
        ) => format!("weftd at {addr} refused the proxy's client certificate ({alert:?})"),
        other => format!("TLS with weftd at {addr} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tls(t: XdsTransport) -> TlsSettings {
        match t {
            XdsTransport::MutualTls(s) => s,
            other => panic!("expected TLS, got {other:?}"),
        }
    }

    const ROOT: (&str, &str) = ("WEFT_ROOT_CERT_FILE", "/var/run/weft/root-cert.pem");

    #[test]
    fn port_15012_is_mutual_tls_and_15010_plaintext() {
        let e = env(&[ROOT]);
        let s = tls(transport_from_env("10.88.0.1:15012", &e).unwrap());
        assert_eq!(s.address, "10.88.0.1:15012");
        assert_eq!(s.server_name, "10.88.0.1");
        assert_eq!(s.roots_file, PathBuf::from("/var/run/weft/root-cert.pem"));
        assert_eq!(s.roots_from, "WEFT_ROOT_CERT_FILE");
        assert_eq!(
            transport_from_env("10.88.0.1:15010", &e).unwrap(),
            XdsTransport::Plaintext {
                url: "http://10.88.0.1:15010".into()
            }
        );
        assert_eq!(
            transport_from_env("127.0.0.1:40123", &env(&[])).unwrap(),
            XdsTransport::Plaintext {
                url: "http://127.0.0.1:40123".into()
            }
        );
    }

    #[test]
    fn the_auth_policy_and_an_explicit_scheme_win_over_the_port() {
        let mtls = env(&[
            ROOT,
            ("PROXY_CONFIG", r#"{"controlPlaneAuthPolicy":"MUTUAL_TLS"}"#),
        ]);
        let s = tls(transport_from_env("weftd.weft-system.svc:40123", &mtls).unwrap());
        assert_eq!(s.server_name, "weftd.weft-system.svc");
        let none = env(&[
            ROOT,
            ("PROXY_CONFIG", r#"{"controlPlaneAuthPolicy":"NONE"}"#),
        ]);
        assert!(matches!(
            transport_from_env("weftd:15012", &none).unwrap(),
            XdsTransport::Plaintext { .. }
        ));
        assert!(matches!(
            transport_from_env("https://weftd:9000", &env(&[ROOT])).unwrap(),
            XdsTransport::MutualTls(_)
        ));
        assert_eq!(
            transport_from_env("http://weftd:15012", &env(&[ROOT])).unwrap(),
            XdsTransport::Plaintext {
                url: "http://weftd:15012".into()
            }
        );
        let bad = env(&[("PROXY_CONFIG", r#"{"controlPlaneAuthPolicy":"TLS"}"#)]);
        let e = transport_from_env("weftd:15012", &bad).unwrap_err();
        assert!(
            e.contains("controlPlaneAuthPolicy") && e.contains("TLS"),
            "{e}"
        );
    }

    #[test]
    fn the_expected_name_follows_istiod_san_then_the_host() {
        let e = env(&[ROOT, ("ISTIOD_SAN", "istiod.istio-system.svc")]);
        let s = tls(transport_from_env("10.0.0.7:15012", &e).unwrap());
        assert_eq!(s.server_name, "istiod.istio-system.svc");
        assert_eq!(s.server_name_from, "ISTIOD_SAN");
        let s = tls(transport_from_env("localhost:15012", &env(&[ROOT])).unwrap());
        assert_eq!(s.server_name, "istiod.istio-system.svc");
        let s = tls(transport_from_env("[::1]:15012", &env(&[ROOT])).unwrap());
        assert_eq!(s.server_name, "::1");
        assert_eq!(s.address, "[::1]:15012");
    }

    #[test]
    fn roots_come_from_xds_root_ca_then_the_mesh_root() {
        let e = env(&[ROOT, ("XDS_ROOT_CA", "/etc/xds/root.pem")]);
        let s = tls(transport_from_env("weftd:15012", &e).unwrap());
        assert_eq!(s.roots_file, PathBuf::from("/etc/xds/root.pem"));
        assert_eq!(s.roots_from, "XDS_ROOT_CA");
        let s = tls(transport_from_env("weftd:15012", &env(&[("XDS_ROOT_CA", "SYSTEM")])).unwrap());
        assert_eq!(s.roots_file, PathBuf::from(SYSTEM_ROOTS));
        let e = transport_from_env("weftd:15012", &env(&[])).unwrap_err();
        assert!(e.contains("WEFT_ROOT_CERT_FILE"), "{e}");
    }

    #[test]
    fn bad_addresses_are_named() {
        for bad in ["weftd", "weftd:port", ":15012", "ftp://weftd:15012"] {
            let e = transport_from_env(bad, &env(&[ROOT])).unwrap_err();
            assert!(e.contains(bad.trim_start_matches("ftp://")), "{bad}: {e}");
        }
    }

    #[test]
    fn failures_are_explained() {
        let s = tls(transport_from_env(
            "127.0.0.1:15012",
            &env(&[ROOT, ("ISTIOD_SAN", "wrong.example")]),
        )
        .unwrap());
        let mismatch =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: rustls_pki_types::ServerName::try_from("wrong.example").unwrap(),
                presented: vec!["DnsName(\"istiod.istio-system.svc\")".into()],
            });
        let m = explain_failure(&mismatch, &s, true);
        assert!(m.starts_with("name mismatch"), "{m}");
        assert!(
            m.contains("127.0.0.1:15012") && m.contains("wrong.example"),
            "{m}"
        );
        assert!(
            m.contains("ISTIOD_SAN") && m.contains("istiod.istio-system.svc"),
            "{m}"
        );
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let m = explain_failure(&unknown, &s, true);
        assert!(
            m.starts_with("unknown CA") && m.contains("root-cert.pem"),
            "{m}"
        );
        let required = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let m = explain_failure(&required, &s, false);
        assert!(m.starts_with("no client certificate"), "{m}");
        let m = explain_failure(&required, &s, true);
        assert!(m.contains("127.0.0.1:15012"), "{m}");
    }
}
