//! `CreateCertificate` over mesh mTLS (the 15012 shape): a proxy bootstraps
//! with its token over server-authenticated TLS, then renews with its
//! certificate alone; the CA's own identity is verified by SPIFFE ID.

mod common;

use std::sync::Arc;

use rustls_pki_types::ServerName;
use weft_identity::grpc::{CaClientError, IstioCertificateRequest};
use weft_identity::grpc_tls::mtls_incoming;
use weft_identity::spiffe::spiffe_id_from_cert_der;
use weft_identity::tls::{self, MeshTrust};
use weft_identity::workload::{generate_key_and_csr, workload_certificate};
use weft_identity::{
    Authenticator, BootstrapTokenAuthenticator, CaClient, CertificateAuthority, CertificateManager,
    CertificateService, GrpcCertificateProvider, IstioCertificateServer,
    PeerCertificateAuthenticator, RotationPolicy, SigningPolicy, TokenSource, TokenStore,
};

struct Weftd {
    addr: std::net::SocketAddr,
    ca: Arc<CertificateAuthority>,
    tokens: TokenStore,
    mesh: MeshTrust,
}

fn istiod() -> weft_identity::SpiffeId {
    common::id("istio-system", "istiod")
}

async fn start() -> Weftd {
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let mesh = common::trust(&ca);
    let tokens = TokenStore::new();
    let authenticators: Vec<Arc<dyn Authenticator>> = vec![
        Arc::new(PeerCertificateAuthenticator::new(vec![
            "cluster.local".into(),
        ])),
        Arc::new(BootstrapTokenAuthenticator::new(tokens.clone())),
    ];
    let service =
        CertificateService::new(Arc::clone(&ca), authenticators, SigningPolicy::default());
    // weftd's own serving certificate, from its in-process CA.
    let own = common::manager(&ca, istiod()).await;
    let config = tls::control_plane_server_config(own, &mesh).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServer::new(Arc::new(service)))
            .serve_with_incoming(mtls_incoming(listener, Arc::new(config))),
    );
    Weftd {
        addr,
        ca,
        tokens,
        mesh,
    }
}

fn sni() -> ServerName<'static> {
    ServerName::try_from("istiod.istio-system.svc").unwrap()
}

fn request(id: &weft_identity::SpiffeId) -> (rcgen::KeyPair, IstioCertificateRequest) {
    let (key, csr) = generate_key_and_csr(id).unwrap();
    (
        key,
        IstioCertificateRequest {
            csr,
            validity_duration: 3600,
            metadata: None,
        },
    )
}

#[tokio::test]
async fn bootstrap_with_token_then_renew_with_the_certificate() {
    let weftd = start().await;
    let me = common::id("default", "reviews");
    let token = weftd
        .tokens
        .issue("default", "reviews", "reviews-0")
        .unwrap();

    // 1. Bootstrap: TLS without a client certificate, token in the header.
    let config = tls::bootstrap_client_config(&weftd.mesh, vec![istiod()]).unwrap();
    let mut client = CaClient::connect_tls(weftd.addr, sni(), config.clone())
        .await
        .unwrap();
    let (key, req) = request(&me);
    let chain = client.create_certificate(req, Some(&token)).await.unwrap();
    let first = workload_certificate(&me, &chain, &key).unwrap();
    assert_eq!(first.root, *weftd.ca.root_cert_der());

    // Without a token and without a certificate: refused.
    let (_k, req) = request(&me);
    match client.create_certificate(req, None).await.unwrap_err() {
        CaClientError::Status(s) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated);
            assert!(s.message().contains("no client certificate"), "{s:?}");
        }
        other => panic!("{other}"),
    }

    // 2. Renewal: present the certificate, no token.
    let bootstrap_provider = Arc::new(GrpcCertificateProvider::new(
        CaClient::connect_tls(weftd.addr, sni(), config)
            .await
            .unwrap(),
        TokenSource::Static(token.clone()),
    ));
    let manager =
        CertificateManager::new(me.clone(), bootstrap_provider, RotationPolicy::default())
            .await
            .unwrap();
    let mtls = tls::client_config(manager.clone(), &weftd.mesh, vec![istiod()], &[b"h2"]).unwrap();
    let mut renewing = CaClient::connect_tls(weftd.addr, sni(), mtls)
        .await
        .unwrap();
    let (_k, req) = request(&me);
    let chain = renewing.create_certificate(req, None).await.unwrap();
    let leaf = rustls_pki_types::CertificateDer::from(
        <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(
            chain[0].as_bytes(),
        )
        .unwrap()
        .to_vec(),
    );
    assert_eq!(spiffe_id_from_cert_der(&leaf).unwrap(), me);

    // The certificate proves only its own identity.
    let (_k, req) = request(&common::id("default", "ratings"));
    match renewing.create_certificate(req, None).await.unwrap_err() {
        CaClientError::Status(s) => assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}"),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn proxy_refuses_a_ca_with_the_wrong_identity() {
    let weftd = start().await;
    let config =
        tls::bootstrap_client_config(&weftd.mesh, vec![common::id("istio-system", "not-istiod")])
            .unwrap();
    let err = CaClient::connect_tls(weftd.addr, sni(), config).await;
    let err = match err {
        Err(e) => e.to_string(),
        // tonic may connect lazily; the first call then fails.
        Ok(mut c) => {
            let (_k, req) = request(&common::id("default", "reviews"));
            c.create_certificate(req, Some("t"))
                .await
                .unwrap_err()
                .to_string()
        }
    };
    assert!(err.contains("is not one of the expected"), "{err}");
}
