//! The mesh certificate authority: root or intermediate key material in
//! Istio's `cacerts` layout, and signing of workload CSRs into SPIFFE leaves.
//!
//! Owns key material on disk (generated self-signed root, or a plugged-in
//! root/intermediate) and the X.509 shape of issued leaves. It decides
//! nothing about *who* may get which identity: the caller passes the
//! authorized [`SpiffeId`] (see `service`), and a CSR asking for any other
//! identity is refused here as a second line of defence.

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::SpiffeId;

/// File names of Istio's `cacerts` secret / directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// Lifetime of a generated self-signed root (Istio: 10 years).
pub const SELF_SIGNED_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Errors of loading, generating or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error(
        "CA directory {dir}: has {present} but not {missing}; a plugged-in CA needs ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem"
    )]
    Incomplete {
        dir: PathBuf,
        present: String,
        missing: String,
    },
    #[error("CSR: {0}")]
    BadCsr(String),
    #[error(
        "CSR asks for identity {requested:?} but the caller is authorized only for {authorized}"
    )]
    IdentityNotAuthorized {
        requested: String,
        authorized: String,
    },
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A DNS name or IP address a control-plane serving certificate carries
/// besides its SPIFFE ID, so clients that verify host names (Istio's agent
/// dialing `istiod.istio-system.svc:15012`, or an IP) accept it. Only the
/// control plane's own certificate gets these, through
/// [`CertificateAuthority::sign_server_csr`]; names in a workload CSR are
/// always refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerSan {
    Dns(String),
    Ip(IpAddr),
}

impl ServerSan {
    /// An IP address (`10.88.0.1`, `::1`, `[::1]`) or a DNS name
    /// (`weftd.weft-system.svc`); the error says why `value` is neither.
    pub fn parse(value: &str) -> Result<ServerSan, String> {
        let v = value.trim();
        let unbracketed = v
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(v);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(ServerSan::Ip(ip));
        }
        rustls_pki_types::DnsName::try_from(v)
            .map(|_| ServerSan::Dns(v.to_ascii_lowercase()))
            .map_err(|_| format!("{value:?} is neither an IP address nor a DNS name"))
    }

    fn san_type(&self) -> Result<SanType, CaError> {
        match self {
            ServerSan::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            ServerSan::Dns(name) => name
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| CaError::Signing(format!("DNS SAN {name:?}: {e}"))),
        }
    }
}

impl fmt::Display for ServerSan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerSan::Dns(name) => write!(f, "DNS:{name}"),
            ServerSan::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// A leaf certificate chain as the CA returns it.
#[derive(Clone, Debug)]
pub struct IssuedChain {
    /// Leaf first, then intermediates, root last; one PEM certificate each.
    pub chain_pem: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The CA: an issuing certificate and key, the chain up to the root, the root.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
    /// Certificates between the issuing CA (included) and the root
    /// (excluded); empty when the issuing CA is the root.
    intermediates_pem: Vec<String>,
    root_pem: String,
    root_der: CertificateDer<'static>,
    /// notAfter of the issuing certificate: no leaf outlives its issuer.
    ca_not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("intermediates", &self.intermediates_pem.len())
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad_file(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn offset(t: SystemTime) -> OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Signing("system random number generator failed".into()))?;
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

fn parse_pem_certs(path: &Path, text: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(path, format!("not a PEM certificate list: {e}")))
}

fn der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    // rcgen re-exports no PEM encoder for arbitrary DER; build one with the
    // standard 64-column base64 body.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pem.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl CertificateAuthority {
    /// Generates a new self-signed ECDSA P-256 root valid for 10 years, with
    /// organization `org` (Istio uses the trust domain).
    pub fn generate_self_signed(org: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(format!("generating the root key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(60));
        params.not_after = offset(now + SELF_SIGNED_ROOT_TTL);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Signing(format!("self-signing the root: {e}")))?;
        let root_pem = cert.pem();
        let ca_not_after =
            SystemTime::UNIX_EPOCH + Duration::from_secs(params.not_after.unix_timestamp() as u64);
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_cert_pem: root_pem.clone(),
            intermediates_pem: Vec::new(),
            root_pem,
            root_der: cert.der().clone(),
            ca_not_after,
        })
    }

    /// Loads the CA from `dir` if it holds `ca-cert.pem`; otherwise generates
    /// a self-signed root and writes it there in the `cacerts` layout, so a
    /// restart keeps issued identities valid.
    pub fn load_or_generate(dir: &Path, org: &str) -> Result<Self, CaError> {
        if dir.join(CA_CERT_FILE).exists() || dir.join(CA_KEY_FILE).exists() {
            return Self::load(dir);
        }
        let ca = Self::generate_self_signed(org)?;
        ca.write_to(dir)?;
        tracing::info!(dir = %dir.display(), "generated a self-signed mesh root CA");
        Ok(ca)
    }

    /// Writes `ca-cert.pem`, `ca-key.pem` (mode 0600), `root-cert.pem` and
    /// `cert-chain.pem` into `dir`, creating it.
    pub fn write_to(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut chain = self.intermediates_pem.concat();
        if chain.is_empty() {
            chain = self.ca_cert_pem.clone();
        } else {
            chain.push_str(&self.root_pem);
        }
        write_file(
            &dir.join(CA_KEY_FILE),
            &self.issuer.key().serialize_pem(),
            true,
        )?;
        write_file(&dir.join(CA_CERT_FILE), &self.ca_cert_pem, false)?;
        write_file(&dir.join(ROOT_CERT_FILE), &self.root_pem, false)?;
        write_file(&dir.join(CERT_CHAIN_FILE), &chain, false)
    }

    /// Loads a CA in Istio's `cacerts` layout: `ca-cert.pem` (the issuing
    /// CA), `ca-key.pem` (its PKCS#8 key), `root-cert.pem` (the mesh root)
    /// and `cert-chain.pem` (issuing CA up to the root). Checks that the key
    /// matches, that the issuing certificate is a CA, and that the chain
    /// verifies up to the root.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let names = [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE];
        let (present, missing): (Vec<&str>, Vec<&str>) =
            names.iter().partition(|n| dir.join(n).exists());
        if !missing.is_empty() {
            return Err(CaError::Incomplete {
                dir: dir.to_path_buf(),
                present: present.join(", "),
                missing: missing.join(", "),
            });
        }
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(io_err(&path))
        };
        let (ca_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let (root_path, chain_path) = (dir.join(ROOT_CERT_FILE), dir.join(CERT_CHAIN_FILE));
        let ca_certs = parse_pem_certs(&ca_path, &read(CA_CERT_FILE)?)?;
        let [ca_der] = ca_certs.as_slice() else {
            return Err(bad_file(
                &ca_path,
                format!(
                    "must hold exactly one certificate, found {}",
                    ca_certs.len()
                ),
            ));
        };
        let roots = parse_pem_certs(&root_path, &read(ROOT_CERT_FILE)?)?;
        let Some(root_der) = roots.first().cloned() else {
            return Err(bad_file(&root_path, "holds no certificate"));
        };
        let chain = parse_pem_certs(&chain_path, &read(CERT_CHAIN_FILE)?)?;
        let key = KeyPair::from_pem(&read(CA_KEY_FILE)?).map_err(|e| {
            bad_file(
                &key_path,
                format!(
                    "not a usable PKCS#8 private key ({e}); convert with `openssl pkcs8 -topk8 -nocrypt`"
                ),
            )
        })?;

        let (_, ca_x509) = X509Certificate::from_der(ca_der)
            .map_err(|e| bad_file(&ca_path, format!("not valid X.509: {e}")))?;
        if ca_x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad_file(
                &key_path,
                format!("does not match the public key of {}", ca_path.display()),
            ));
        }
        if !ca_x509.is_ca() {
            return Err(bad_file(
                &ca_path,
                "is not a CA certificate (basicConstraints CA:TRUE missing)",
            ));
        }
        if !ca_x509.validity().is_valid() {
            return Err(bad_file(
                &ca_path,
                format!(
                    "is outside its validity period (notBefore {}, notAfter {})",
                    ca_x509.validity().not_before,
                    ca_x509.validity().not_after
                ),
            ));
        }

        // Issuing CA, then cert-chain.pem, deduplicated, root excluded.
        let mut path: Vec<CertificateDer<'static>> = Vec::new();
        for der in std::iter::once(ca_der.clone()).chain(chain) {
            if der != root_der && !path.contains(&der) {
                path.push(der);
            }
        }
        verify_chain_to_root(&path, &root_der, &chain_path, &root_path)?;

        let ca_not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(ca_x509.validity().not_after.timestamp().max(0) as u64);
        let issuer = Issuer::from_ca_cert_der(ca_der, key)
            .map_err(|e| bad_file(&ca_path, format!("cannot act as issuer: {e}")))?;
        Ok(Self {
            issuer,
            ca_cert_pem: der_to_pem(ca_der),
            intermediates_pem: path.iter().map(|d| der_to_pem(d)).collect(),
            root_pem: der_to_pem(&root_der),
            root_der,
            ca_not_after,
        })
    }

    /// The mesh root certificate (PEM), what proxies trust.
    pub fn root_cert_pem(&self) -> &str {
        &self.root_pem
    }

    /// The mesh root certificate (DER).
    pub fn root_cert_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Signs a PKCS#10 CSR (PEM) into a leaf for `identity`, valid for `ttl`
    /// from now.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedChain, CaError> {
        let now = SystemTime::now();
        self.sign_csr_with_validity(csr_pem, identity, now, now + ttl)
    }

    /// Signs a CSR with an explicit validity window (tests use it to mint
    /// expired certificates). The CSR's self-signature is verified; its
    /// requested names are never copied: the leaf carries exactly one URI SAN,
    /// `identity`, and a CSR that asks for anything else is refused.
    pub fn sign_csr_with_validity(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedChain, CaError> {
        self.sign_leaf(csr_pem, identity, not_before, not_after, &[])
    }

    /// Signs the control plane's own serving certificate: like
    /// [`Self::sign_csr`] (the CSR may ask only for `identity`), plus the
    /// DNS and IP `names` clients verify as host names. For in-process use
    /// by weftd; the `CreateCertificate` service never calls it.
    pub fn sign_server_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
        names: &[ServerSan],
    ) -> Result<IssuedChain, CaError> {
        let now = SystemTime::now();
        self.sign_leaf(csr_pem, identity, now, now + ttl, names)
    }

    fn sign_leaf(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
        names: &[ServerSan],
    ) -> Result<IssuedChain, CaError> {
        let not_after = not_after.min(self.ca_not_after);
        if not_after <= not_before {
            return Err(CaError::Signing(format!(
                "empty validity window for {identity}: notAfter is not after notBefore (is the issuing CA expired?)"
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CaError::BadCsr(format!(
                "not a valid PKCS#10 request with a verifiable self-signature: {e}"
            ))
        })?;
        let wanted = identity.uri();
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                SanType::DnsName(name) => format!("DNS:{}", name.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(name) => format!("email:{}", name.as_str()),
                other => format!("{other:?}"),
            };
            if requested != wanted {
                return Err(CaError::IdentityNotAuthorized {
                    requested,
                    authorized: wanted,
                });
            }
        }
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(CaError::BadCsr(
                "requests a CA certificate (basicConstraints CA:TRUE); workloads get leaves only"
                    .into(),
            ));
        }
        let uri = wanted
            .clone()
            .try_into()
            .map_err(|e| CaError::Signing(format!("URI SAN {wanted:?}: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in names {
            params.subject_alt_names.push(name.san_type()?);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        params.serial_number = Some(random_serial()?);
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Signing(format!("signing the leaf for {wanted}: {e}")))?;

        let mut chain_pem = Vec::with_capacity(self.intermediates_pem.len() + 2);
        chain_pem.push(leaf.pem());
        chain_pem.extend(self.intermediates_pem.iter().cloned());
        chain_pem.push(self.root_pem.clone());
        let secs = |t: OffsetDateTime| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
        };
        Ok(IssuedChain {
            chain_pem,
            not_before: secs(params.not_before),
            not_after: secs(params.not_after),
        })
    }
}

/// Checks that each certificate in `path` is signed by the next one and the
/// last by `root`.
fn verify_chain_to_root(
    path: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    chain_file: &Path,
    root_file: &Path,
) -> Result<(), CaError> {
    let (_, root_x509) = X509Certificate::from_der(root)
        .map_err(|e| bad_file(root_file, format!("not valid X.509: {e}")))?;
    if !root_x509.is_ca() {
        return Err(bad_file(root_file, "is not a CA certificate"));
    }
    let parsed: Vec<X509Certificate<'_>> = path
        .iter()
        .map(|der| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|e| bad_file(chain_file, format!("not valid X.509: {e}")))
        })
        .collect::<Result<_, _>>()?;
    for (i, cert) in parsed.iter().enumerate() {
        let issuer = parsed.get(i + 1).unwrap_or(&root_x509);
        cert.verify_signature(Some(issuer.public_key())).map_err(|_| {
            bad_file(
                chain_file,
                format!(
                    "certificate {:?} is not signed by {:?}; the chain must lead from ca-cert.pem to root-cert.pem",
                    cert.subject().to_string(),
                    issuer.subject().to_string()
                ),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
        let pem = der_to_pem(ca.root_cert_der());
        assert_eq!(pem, ca.root_cert_pem().replace("\r\n", "\n"));
        let back = parse_pem_certs(Path::new("x"), &pem).unwrap();
        assert_eq!(&back[0], ca.root_cert_der());
    }
}
