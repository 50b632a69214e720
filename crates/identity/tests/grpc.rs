//! `IstioCertificateService/CreateCertificate` end to end over loopback
//! (plaintext gRPC; the 15012 mTLS listener comes with the control plane).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use weft_identity::grpc::{CaClientError, IstioCertificateRequest};
use weft_identity::spiffe::spiffe_id_from_cert_der;
use weft_identity::workload::generate_key_and_csr;
use weft_identity::{
    BootstrapTokenAuthenticator, CaClient, CertificateAuthority, CertificateManager,
    CertificateService, GrpcCertificateProvider, IstioCertificateServer, RotationPolicy,
    SigningPolicy, TokenSource, TokenStore,
};

struct Ca {
    addr: String,
    ca: Arc<CertificateAuthority>,
    tokens: TokenStore,
}

async fn start_ca() -> Ca {
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let tokens = TokenStore::new();
    let service = CertificateService::new(
        Arc::clone(&ca),
        vec![Arc::new(BootstrapTokenAuthenticator::new(tokens.clone()))],
        SigningPolicy {
            max_ttl: Duration::from_secs(48 * 3600),
            ..SigningPolicy::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServer::new(Arc::new(service)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ca { addr, ca, tokens }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn create_certificate_with_a_bootstrap_token() {
    let ca = start_ca().await;
    let token = ca
        .tokens
        .issue("default", "reviews", "reviews-v1-0")
        .unwrap();
    let id = common::id("default", "reviews");
    let (_key, csr) = generate_key_and_csr(&id).unwrap();
    let mut client = CaClient::connect(&ca.addr).await.unwrap();
    let chain = client
        .create_certificate(
            IstioCertificateRequest {
                csr,
                validity_duration: 3600,
                metadata: None,
            },
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    let leaf = der(&chain[0]);
    assert_eq!(spiffe_id_from_cert_der(&leaf).unwrap(), id);
    assert_eq!(der(&chain[1]), ca.ca.root_cert_der().to_vec());
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let v = parsed.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 3600);

    // validity_duration 0 takes the 24 h default.
    let (_key, csr) = generate_key_and_csr(&id).unwrap();
    let chain = client
        .create_certificate(
            IstioCertificateRequest {
                csr,
                validity_duration: 0,
                metadata: None,
            },
            Some(&token),
        )
        .await
        .unwrap();
    let leaf = der(&chain[0]);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let v = parsed.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        24 * 3600
    );
}

fn status(err: CaClientError) -> tonic::Status {
    match err {
        CaClientError::Status(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test]
async fn refusals_carry_the_right_status_and_reason() {
    let ca = start_ca().await;
    let token = ca.tokens.issue("default", "sleep", "sleep-0").unwrap();
    let mut client = CaClient::connect(&ca.addr).await.unwrap();
    let request = |id| {
        let (_key, csr) = generate_key_and_csr(&id).unwrap();
        IstioCertificateRequest {
            csr,
            validity_duration: 3600,
            metadata: None,
        }
    };

    // A CSR for an identity the token does not grant.
    let s = status(
        client
            .create_certificate(request(common::id("istio-system", "istiod")), Some(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(
        s.message()
            .contains("spiffe://cluster.local/ns/default/sa/sleep"),
        "{s:?}"
    );

    // No token, unknown token.
    let s = status(
        client
            .create_certificate(request(common::id("default", "sleep")), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("authorization: Bearer"), "{s:?}");
    let s = status(
        client
            .create_certificate(request(common::id("default", "sleep")), Some("not-a-token"))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");

    // TTL above the maximum.
    let mut too_long = request(common::id("default", "sleep"));
    too_long.validity_duration = 49 * 3600;
    let s = status(
        client
            .create_certificate(too_long, Some(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("validity_duration"), "{s:?}");

    // Garbage CSR.
    let s = status(
        client
            .create_certificate(
                IstioCertificateRequest {
                    csr: "nope".into(),
                    validity_duration: 0,
                    metadata: None,
                },
                Some(&token),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("csr"), "{s:?}");

    // A revoked token stops working.
    ca.tokens.revoke_pod("sleep-0");
    let s = status(
        client
            .create_certificate(request(common::id("default", "sleep")), Some(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
}

#[tokio::test]
async fn certificate_manager_over_grpc_reads_the_token_file_and_rotates() {
    let ca = start_ca().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("istio-token");
    ca.tokens
        .issue_to_file("default", "productpage", "productpage-0", &token_file)
        .unwrap();
    let provider = Arc::new(GrpcCertificateProvider::new(
        CaClient::connect(&ca.addr).await.unwrap(),
        TokenSource::File(token_file),
    ));
    let id = common::id("default", "productpage");
    let manager = CertificateManager::new(id.clone(), provider, RotationPolicy::default())
        .await
        .unwrap();
    let first = manager.current();
    assert_eq!(first.id, id);
    assert_eq!(first.root, *ca.ca.root_cert_der());
    assert_eq!(first.certified_key.cert.len(), 1, "root is not presented");
    let second = manager.rotate().await.unwrap();
    assert_ne!(first.serial, second.serial);
    assert_eq!(manager.current().serial, second.serial);
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let ca = start_ca().await;
    let channel = tonic::transport::Endpoint::from_shared(ca.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/istio.v1.auth.IstioCertificateService/Nope",
    );
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateRequest>::default();
    let err = grpc
        .unary(
            tonic::Request::new(IstioCertificateRequest::default()),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}
