//! CA key material on disk and CSR signing.

mod common;

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use weft_identity::CertificateAuthority;
use weft_identity::ca::{self, CaError};
use weft_identity::spiffe::spiffe_id_from_cert_der;
use weft_identity::workload::generate_key_and_csr;
use x509_parser::prelude::{FromDer, X509Certificate};

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn generated_root_persists_and_reloads_to_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let first = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
    for name in [
        ca::CA_CERT_FILE,
        ca::CA_KEY_FILE,
        ca::ROOT_CERT_FILE,
        ca::CERT_CHAIN_FILE,
    ] {
        assert!(dir.path().join(name).exists(), "{name} written");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(ca::CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "ca-key.pem must be private");

    let again = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
    assert_eq!(first.root_cert_der(), again.root_cert_der());

    // A leaf signed after the restart chains to the root from before it.
    let (root_der, leaf_chain) = {
        let id = common::id("default", "reviews");
        let (_key, csr) = generate_key_and_csr(&id).unwrap();
        (
            first.root_cert_der().to_vec(),
            again
                .sign_csr(&csr, &id, Duration::from_secs(3600))
                .unwrap(),
        )
    };
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let leaf_der = der(&leaf_chain.chain_pem[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf_chain.chain_pem.len(), 2, "self-signed: leaf then root");
    assert_eq!(der(&leaf_chain.chain_pem[1]), root_der);

    // Root is 10 years, a CA.
    assert!(root.is_ca());
    let lifetime = root.validity().not_after.timestamp() - root.validity().not_before.timestamp();
    assert!(
        lifetime >= 10 * 365 * 24 * 3600,
        "root lifetime {lifetime}s"
    );
}

#[test]
fn csr_is_signed_with_the_authorized_uri_san_and_ttl() {
    let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
    let id = common::id("bookinfo", "bookinfo-ratings");
    let (key, csr) = generate_key_and_csr(&id).unwrap();
    let issued = ca
        .sign_csr(&csr, &id, Duration::from_secs(5 * 3600))
        .unwrap();
    let leaf_der = der(&issued.chain_pem[0]);
    assert_eq!(spiffe_id_from_cert_der(&leaf_der).unwrap(), id);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let v = leaf.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 5 * 3600);
    assert_eq!(
        issued.not_after.duration_since(issued.not_before).unwrap(),
        Duration::from_secs(5 * 3600)
    );
    assert!(!leaf.is_ca());
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
}

#[test]
fn csr_without_san_gets_the_authorized_identity() {
    let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let id = common::id("default", "sleep");
    let issued = ca.sign_csr(&csr, &id, Duration::from_secs(60)).unwrap();
    assert_eq!(
        spiffe_id_from_cert_der(&der(&issued.chain_pem[0])).unwrap(),
        id
    );
}

#[test]
fn csr_for_another_identity_or_a_dns_name_is_refused() {
    let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
    let authorized = common::id("default", "sleep");
    let (_k, csr) = generate_key_and_csr(&common::id("kube-system", "admin")).unwrap();
    let err = ca
        .sign_csr(&csr, &authorized, Duration::from_secs(60))
        .unwrap_err();
    assert!(
        matches!(err, CaError::IdentityNotAuthorized { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("spiffe://cluster.local/ns/kube-system/sa/admin"),
        "{err}"
    );

    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec!["istiod.istio-system.svc".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let err = ca
        .sign_csr(&csr, &authorized, Duration::from_secs(60))
        .unwrap_err();
    assert!(
        err.to_string().contains("DNS:istiod.istio-system.svc"),
        "{err}"
    );

    let err = ca
        .sign_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &authorized,
            Duration::from_secs(60),
        )
        .unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");
}

#[test]
fn csr_with_a_forged_self_signature_is_refused() {
    let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
    let id = common::id("default", "sleep");
    let (_k, csr) = generate_key_and_csr(&id).unwrap();
    use rustls_pki_types::pem::PemObject;
    let mut bytes = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // flip a bit of the signature
    let tampered = rcgen::CertificateSigningRequestParams::from_der(&bytes.as_slice().into());
    assert!(tampered.is_err(), "rcgen verifies the self-signature");
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64(&bytes)
    );
    let err = ca.sign_csr(&pem, &id, Duration::from_secs(60)).unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

/// A root and an intermediate made with rcgen, written as Istio's `cacerts`.
fn write_plugged_in(dir: &std::path::Path) -> (String, String) {
    write_plugged_in_until(dir, None)
}

fn write_plugged_in_until(
    dir: &std::path::Path,
    int_not_after: Option<time::OffsetDateTime>,
) -> (String, String) {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Intermediate");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Some(t) = int_not_after {
        int_params.not_after = t;
    }
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();

    std::fs::write(dir.join(ca::CA_CERT_FILE), int.pem()).unwrap();
    std::fs::write(dir.join(ca::CA_KEY_FILE), int_key.serialize_pem()).unwrap();
    std::fs::write(dir.join(ca::ROOT_CERT_FILE), root.pem()).unwrap();
    std::fs::write(
        dir.join(ca::CERT_CHAIN_FILE),
        format!("{}{}", int.pem(), root.pem()),
    )
    .unwrap();
    (int.pem(), root.pem())
}

#[test]
fn plugged_in_intermediate_signs_and_returns_leaf_intermediate_root() {
    let dir = tempfile::tempdir().unwrap();
    let (int_pem, root_pem) = write_plugged_in(dir.path());
    let ca = CertificateAuthority::load(dir.path()).unwrap();
    assert_eq!(ca.root_cert_der().to_vec(), der(&root_pem));
    let id = common::id("default", "reviews");
    let (_k, csr) = generate_key_and_csr(&id).unwrap();
    let issued = ca.sign_csr(&csr, &id, Duration::from_secs(3600)).unwrap();
    assert_eq!(issued.chain_pem.len(), 3);
    assert_eq!(der(&issued.chain_pem[1]), der(&int_pem));
    assert_eq!(der(&issued.chain_pem[2]), der(&root_pem));
    let int_der = der(&int_pem);
    let (_, int) = X509Certificate::from_der(&int_der).unwrap();
    let leaf_der = der(&issued.chain_pem[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    leaf.verify_signature(Some(int.public_key())).unwrap();
    assert_eq!(leaf.issuer(), int.subject());
    // load_or_generate uses the plugged-in files rather than replacing them.
    let again = CertificateAuthority::load_or_generate(dir.path(), "ignored").unwrap();
    assert_eq!(again.root_cert_der(), ca.root_cert_der());
}

#[test]
fn broken_cacerts_are_rejected_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_plugged_in(dir.path());
    std::fs::remove_file(dir.path().join(ca::CERT_CHAIN_FILE)).unwrap();
    let err = CertificateAuthority::load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not cert-chain.pem"), "{err}");

    // Key from another pair.
    write_plugged_in(dir.path());
    std::fs::write(
        dir.path().join(ca::CA_KEY_FILE),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = CertificateAuthority::load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ca-key.pem") && err.contains("does not match"),
        "{err}"
    );

    // Root that did not sign the intermediate.
    write_plugged_in(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_root) = write_plugged_in(other.path());
    std::fs::write(dir.path().join(ca::ROOT_CERT_FILE), other_root).unwrap();
    let err = CertificateAuthority::load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cert-chain.pem") && err.contains("is not signed by"),
        "{err}"
    );
}

#[test]
fn leaves_never_outlive_the_issuing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let int_end = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let int_end = int_end.replace_nanosecond(0).unwrap();
    write_plugged_in_until(dir.path(), Some(int_end));
    let ca = CertificateAuthority::load(dir.path()).unwrap();
    let id = common::id("default", "reviews");
    let (_k, csr) = generate_key_and_csr(&id).unwrap();
    let issued = ca
        .sign_csr(&csr, &id, Duration::from_secs(24 * 3600))
        .unwrap();
    let leaf_der = der(&issued.chain_pem[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        int_end.unix_timestamp()
    );
}
