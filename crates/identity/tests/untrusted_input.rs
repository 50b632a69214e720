//! Parsers of untrusted bytes never panic: SPIFFE IDs, CSRs from callers and
//! certificates from peers, fed deterministic mutations of valid inputs.

mod common;

use std::time::Duration;

use weft_identity::CertificateAuthority;
use weft_identity::spiffe::{SpiffeId, spiffe_id_from_cert_der};
use weft_identity::workload::generate_key_and_csr;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.truncate(i);
            }
            2 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            _ if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn spiffe_id_parser_survives_mutations() {
    let mut rng = Rng(0x5eed);
    let seed = b"spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
    let mut accepted = 0;
    for _ in 0..20_000 {
        let bytes = mutate(&mut rng, seed);
        if let Ok(s) = std::str::from_utf8(&bytes)
            && let Ok(id) = SpiffeId::parse(s)
        {
            // Whatever parses formats back to the same string.
            assert_eq!(id.to_string(), s);
            accepted += 1;
        }
    }
    assert!(accepted > 0, "some mutations (e.g. in a name) stay valid");
}

#[test]
fn csr_signing_and_cert_parsing_survive_mutations() {
    use rustls_pki_types::pem::PemObject;
    let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
    let id = common::id("default", "sleep");
    let (_key, csr_pem) = generate_key_and_csr(&id).unwrap();
    let csr_der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
    let leaf_pem = &ca
        .sign_csr(&csr_pem, &id, Duration::from_secs(60))
        .unwrap()
        .chain_pem[0];
    let leaf_der = rustls_pki_types::CertificateDer::from_pem_slice(leaf_pem.as_bytes())
        .unwrap()
        .to_vec();

    let mut rng = Rng(42);
    let mut signed = 0;
    for _ in 0..2_000 {
        let bytes = mutate(&mut rng, &csr_der);
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            b64(&bytes)
        );
        if let Ok(issued) = ca.sign_csr(&pem, &id, Duration::from_secs(60)) {
            // Only a CSR whose signature still verifies may be signed, and
            // then only for the authorized identity.
            let der =
                rustls_pki_types::CertificateDer::from_pem_slice(issued.chain_pem[0].as_bytes())
                    .unwrap();
            assert_eq!(spiffe_id_from_cert_der(&der).unwrap(), id);
            signed += 1;
        }
        let _ = spiffe_id_from_cert_der(&mutate(&mut rng, &leaf_der));
    }
    assert!(signed < 2_000, "mutated CSRs must mostly be refused");
}

fn b64(data: &[u8]) -> String {
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
