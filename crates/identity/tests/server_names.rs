//! The control plane's serving certificate: DNS and IP SANs next to the
//! SPIFFE ID (`ServerSan`, `sign_server_csr`), never granted to a CSR.

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use weft_identity::ca::CaError;
use weft_identity::{CertificateAuthority, ServerSan, SpiffeId};
use x509_parser::prelude::{FromDer, X509Certificate};

#[test]
fn server_names_parse_as_ip_or_dns() {
    assert_eq!(
        ServerSan::parse("10.88.0.1"),
        Ok(ServerSan::Ip("10.88.0.1".parse().unwrap()))
    );
    assert_eq!(
        ServerSan::parse("[::1]"),
        Ok(ServerSan::Ip("::1".parse().unwrap()))
    );
    assert_eq!(
        ServerSan::parse("Weftd.weft-system.svc"),
        Ok(ServerSan::Dns("weftd.weft-system.svc".into()))
    );
    let e = ServerSan::parse("not a name!").unwrap_err();
    assert!(e.contains("\"not a name!\""), "{e}");
}

#[test]
fn server_certificates_carry_dns_and_ip_names_but_workload_csrs_cannot() {
    let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
    let id = SpiffeId::new("cluster.local", "istio-system", "istiod").unwrap();
    let (key, csr) = weft_identity::workload::generate_key_and_csr(&id).unwrap();
    let names = [
        ServerSan::parse("istiod.istio-system.svc").unwrap(),
        ServerSan::parse("127.0.0.1").unwrap(),
    ];
    let issued = ca
        .sign_server_csr(&csr, &id, Duration::from_secs(3600), &names)
        .unwrap();
    let der = CertificateDer::from_pem_slice(issued.chain_pem[0].as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    assert_eq!(sans.len(), 3, "{sans:?}");
    assert!(sans.iter().any(|s| s.contains(&id.uri())), "{sans:?}");
    assert!(
        sans.iter().any(|s| s.contains("istiod.istio-system.svc")),
        "{sans:?}"
    );
    // x509-parser prints IP SANs as hex bytes.
    assert!(
        sans.iter().any(|s| s == "IPAddress(7f:00:00:01)"),
        "{sans:?}"
    );
    drop(key);
    // The same names asked for in a CSR are refused.
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(id.uri().try_into().unwrap()),
        SanType::DnsName("istiod.istio-system.svc".try_into().unwrap()),
    ];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let e = ca
        .sign_csr(&csr, &id, Duration::from_secs(3600))
        .unwrap_err();
    assert!(matches!(e, CaError::IdentityNotAuthorized { .. }), "{e}");
}
