//! The real `weftd` binary as the mesh CA: with a temporary `--ca-dir` and
//! a bootstrap token store written like the local runtime writes it, a
//! `CaClient` gets a certificate for `spiffe://cluster.local/ns/default/sa/reviews`
//! over plaintext (`--xds-addr`) and over TLS (`--xds-tls-addr`, verifying
//! weftd against the root from `--root-cert-out`); the chain verifies
//! against that root and names exactly that identity; a CSR for another
//! service account with the same token is refused with PermissionDenied;
//! a restart on the same directory keeps the root; a renewal over 15012
//! authenticated by the client certificate alone is signed for that identity
//! only; `--cacerts` roots and MeshConfig's `trustDomain` are honoured; ADS answers over TLS to a
//! caller presenting its token, SDS included (`ROOTCA` carries the mesh root).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use prost::Message as _;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use weft_identity::grpc_tls::MtlsConnector;
use weft_identity::spiffe::spiffe_id_from_cert_der;
use weft_identity::tls::{SpiffeServerVerifier, bootstrap_client_config};
use weft_identity::workload::generate_key_and_csr;
use weft_identity::{CaClient, CertificateAuthority, MeshTrust, SpiffeId, TokenStore};

/// Generous bound for anything asynchronous.
const BOUND: Duration = Duration::from_secs(30);

struct Weftd {
    _process: support::Weftd,
    xds: SocketAddr,
    xds_tls: SocketAddr,
}

struct Paths {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    ca: PathBuf,
    tokens: PathBuf,
    root_out: PathBuf,
    token: String,
}

/// A config dir, an empty CA dir and a token store granting
/// default/reviews to pod reviews-v1 (its token returned, as the pod's
/// proxy would read it from its token file).
fn paths() -> Paths {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let tokens = tmp.path().join("bootstrap-tokens.json");
    let store = TokenStore::new();
    let token = store
        .issue_to_file(
            "default",
            "reviews",
            "reviews-v1",
            &tmp.path().join("reviews-v1.token"),
        )
        .expect("issue token");
    store.save(&tokens).expect("save token store");
    Paths {
        ca: tmp.path().join("ca"),
        root_out: tmp.path().join("root-cert.pem"),
        config,
        tokens,
        token,
        _tmp: tmp,
    }
}

fn start(p: &Paths) -> Weftd {
    start_with(p, &[])
}

fn start_with(p: &Paths, extra: &[&std::ffi::OsStr]) -> Weftd {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--ca-dir".as_ref(),
        p.ca.as_os_str(),
        "--bootstrap-tokens".as_ref(),
        p.tokens.as_os_str(),
        "--root-cert-out".as_ref(),
        p.root_out.as_os_str(),
    ];
    args.extend_from_slice(extra);
    let process = support::Weftd::start(&p.config, args);
    Weftd {
        xds: process.addr("xds-addr"),
        xds_tls: process.addr("xds-tls-addr"),
        _process: process,
    }
}

fn reviews() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").expect("id")
}

fn weftd_id() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/istio-system/sa/istiod").expect("id")
}

fn read_root(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("--root-cert-out {}: {e}", path.display()))
}

fn trust(root: &CertificateDer<'static>) -> MeshTrust {
    trust_in(root, "cluster.local")
}

fn trust_in(root: &CertificateDer<'static>, trust_domain: &str) -> MeshTrust {
    MeshTrust::new(std::slice::from_ref(root), vec![trust_domain.into()]).expect("mesh trust")
}

/// Checks `chain` (PEM, leaf first) chains to `root` and names `id` only.
fn assert_chain(chain: &[String], root: &CertificateDer<'static>, id: &SpiffeId) {
    let ders: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate"))
        .collect();
    assert!(ders.len() >= 2, "chain has leaf and root: {chain:?}");
    assert_eq!(ders.last(), Some(root), "chain ends with the mesh root");
    let verifier = SpiffeServerVerifier::new(trust_in(root, id.trust_domain()), vec![id.clone()]);
    verifier
        .verify_server_cert(
            &ders[0],
            &ders[1..],
            &ServerName::try_from("reviews.default.svc").expect("name"),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("issued chain does not verify for {id}: {e}"));
    assert_eq!(&spiffe_id_from_cert_der(&ders[0]).expect("leaf SAN"), id);
}

async fn request(client: &mut CaClient, id: &SpiffeId, token: &str) -> Result<Vec<String>, String> {
    let (_key, csr) = generate_key_and_csr(id).expect("CSR");
    send(client, csr, Some(token)).await
}

async fn send(
    client: &mut CaClient,
    csr: String,
    token: Option<&str>,
) -> Result<Vec<String>, String> {
    let req = weft_identity::IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    };
    tokio::time::timeout(BOUND, client.create_certificate(req, token))
        .await
        .expect("CreateCertificate within bound")
        .map_err(|e| match e {
            weft_identity::grpc::CaClientError::Status(s) => {
                format!("{:?}: {}", s.code(), s.message())
            }
            other => other.to_string(),
        })
}

async fn tls_client(addr: SocketAddr, root: &CertificateDer<'static>) -> CaClient {
    let config = bootstrap_client_config(&trust(root), vec![weftd_id()]).expect("client config");
    let name = ServerName::try_from("istiod.istio-system.svc").expect("name");
    CaClient::connect_tls(addr, name, config)
        .await
        .expect("connect to --xds-tls-addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_issues_workload_certificates_over_plaintext_and_tls() {
    let p = paths();
    let weftd = start(&p);
    let root = read_root(&p.root_out);

    // Plaintext, as on istiod's 15010.
    let mut plain = CaClient::connect(&format!("http://{}", weftd.xds))
        .await
        .expect("connect to --xds-addr");
    let chain = request(&mut plain, &reviews(), &p.token)
        .await
        .expect("reviews' token gets a reviews certificate");
    assert_chain(&chain, &root, &reviews());

    // The same token may not ask for another service account.
    let ratings = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/ratings").expect("id");
    let refused = request(&mut plain, &ratings, &p.token)
        .await
        .expect_err("reviews' token must not get a ratings certificate");
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    // An unknown token is not a caller at all.
    let unknown = request(&mut plain, &reviews(), "not-a-token")
        .await
        .expect_err("unknown token");
    assert!(unknown.starts_with("Unauthenticated"), "{unknown}");

    // TLS, as on 15012: weftd is verified as istiod's SPIFFE ID under the root.
    let mut tls = tls_client(weftd.xds_tls, &root).await;
    let chain = request(&mut tls, &reviews(), &p.token)
        .await
        .expect("certificate over TLS");
    assert_chain(&chain, &root, &reviews());
    let refused = request(&mut tls, &ratings, &p.token)
        .await
        .expect_err("refused over TLS too");
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_keeps_its_root_across_restarts() {
    let p = paths();
    let first = start(&p);
    let root = read_root(&p.root_out);
    drop(first);
    std::fs::remove_file(&p.root_out).expect("remove written root");
    let second = start(&p);
    assert_eq!(
        read_root(&p.root_out),
        root,
        "restart on --ca-dir keeps the root"
    );
    // Certificates issued after the restart chain to the same root.
    let mut plain = CaClient::connect(&format!("http://{}", second.xds))
        .await
        .expect("connect");
    let chain = request(&mut plain, &reviews(), &p.token)
        .await
        .expect("issued");
    assert_chain(&chain, &root, &reviews());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_serves_ads_over_tls() {
    let p = paths();
    let weftd = start(&p);
    let root = read_root(&p.root_out);
    let config = bootstrap_client_config(&trust(&root), vec![weftd_id()]).expect("client config");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", weftd.xds_tls))
        .expect("endpoint")
        .connect_with_connector(MtlsConnector::new(
            config,
            weftd.xds_tls,
            ServerName::try_from("istiod.istio-system.svc").expect("name"),
        ))
        .await
        .expect("TLS channel to --xds-tls-addr");
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let request = DiscoveryRequest {
        node: Some(Node {
            id: "sidecar~10.1.0.21~reviews-v1.default~default.svc.cluster.local".into(),
            ..Node::default()
        }),
        type_url: weft_xds::types::CLUSTER.into(),
        ..DiscoveryRequest::default()
    };
    let sds = DiscoveryRequest {
        node: request.node.clone(),
        type_url: weft_xds::types::SECRET.into(),
        resource_names: vec!["ROOTCA".into()],
        ..DiscoveryRequest::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(request).await.expect("queue CDS request");
    tx.send(sds).await.expect("queue SDS request");
    // 15012 authenticates xDS clients: this one presents its bootstrap
    // token (tests/weftd_xds_auth.rs covers the refusals).
    let mut streamed = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    streamed.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", p.token).parse().expect("header value"),
    );
    let mut responses = ads
        .stream_aggregated_resources(streamed)
        .await
        .expect("ADS stream over TLS")
        .into_inner();
    let mut by_type = std::collections::BTreeMap::new();
    while by_type.len() < 2 {
        let response = tokio::time::timeout(BOUND, responses.message())
            .await
            .expect("CDS and SDS within bound")
            .expect("stream ok")
            .expect("a response");
        assert!(!response.version_info.is_empty(), "{response:?}");
        by_type.insert(response.type_url.clone(), response);
    }
    let cds = &by_type[weft_xds::types::CLUSTER];
    assert!(
        !cds.resources.is_empty(),
        "CDS has at least the passthrough/blackhole clusters"
    );

    // SDS: ROOTCA is a validation context trusting exactly the mesh root.
    let sds = &by_type[weft_xds::types::SECRET];
    assert_eq!(sds.resources.len(), 1, "{sds:?}");
    let secret = Secret::decode(sds.resources[0].value.as_slice()).expect("Secret");
    assert_eq!(secret.name, "ROOTCA");
    let Some(secret::Type::ValidationContext(vc)) = secret.r#type else {
        panic!("ROOTCA is not a validation context: {secret:?}");
    };
    let Some(Specifier::InlineBytes(pem)) = vc.trusted_ca.and_then(|d| d.specifier) else {
        panic!("ROOTCA has no inline trusted_ca");
    };
    assert_eq!(
        CertificateDer::from_pem_slice(&pem).expect("trusted_ca PEM"),
        root
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_renews_over_tls_with_the_client_certificate_alone() {
    let p = paths();
    let weftd = start(&p);
    let root = read_root(&p.root_out);
    let mut plain = CaClient::connect(&format!("http://{}", weftd.xds))
        .await
        .expect("connect");
    let (key, csr) = generate_key_and_csr(&reviews()).expect("CSR");
    let chain = send(&mut plain, csr, Some(&p.token))
        .await
        .expect("first certificate with the token");
    let ders: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM"))
        .collect();
    // Present that certificate on 15012 and send no token.
    let mut config = rustls::ClientConfig::builder_with_provider(weft_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(SpiffeServerVerifier::new(
            trust(&root),
            vec![weftd_id()],
        )))
        .with_client_auth_cert(
            ders,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut tls = CaClient::connect_tls(
        weftd.xds_tls,
        ServerName::try_from("istiod.istio-system.svc").expect("name"),
        config,
    )
    .await
    .expect("mTLS to --xds-tls-addr");
    let (_, csr) = generate_key_and_csr(&reviews()).expect("CSR");
    let renewed = send(&mut tls, csr, None)
        .await
        .expect("renewal authenticated by the client certificate");
    assert_chain(&renewed, &root, &reviews());
    let ratings = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/ratings").expect("id");
    let (_, csr) = generate_key_and_csr(&ratings).expect("CSR");
    let refused = send(&mut tls, csr, None)
        .await
        .expect_err("reviews' certificate must not renew into ratings");
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_signs_with_plugged_in_cacerts() {
    let p = paths();
    let cacerts = p.ca.with_file_name("cacerts");
    let plugged = CertificateAuthority::generate_self_signed("cluster.local").expect("root");
    plugged.write_to(&cacerts).expect("write cacerts");
    let plugged_root = read_root(&cacerts.join("root-cert.pem"));
    let weftd = start_with(&p, &["--cacerts".as_ref(), cacerts.as_os_str()]);
    assert_eq!(
        read_root(&p.root_out),
        plugged_root,
        "--cacerts root is served"
    );
    assert!(
        !p.ca.exists(),
        "--ca-dir is not touched when --cacerts is given"
    );
    let mut plain = CaClient::connect(&format!("http://{}", weftd.xds))
        .await
        .expect("connect");
    let chain = request(&mut plain, &reviews(), &p.token)
        .await
        .expect("issued");
    assert_chain(&chain, &plugged_root, &reviews());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_takes_the_trust_domain_from_mesh_config() {
    let p = paths();
    let mesh = p.ca.with_file_name("mesh.yaml");
    std::fs::write(&mesh, "trustDomain: example.org\n").expect("write mesh config");
    let weftd = start_with(&p, &["--meshConfigFile".as_ref(), mesh.as_os_str()]);
    let root = read_root(&p.root_out);
    let mut plain = CaClient::connect(&format!("http://{}", weftd.xds))
        .await
        .expect("connect");
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/reviews").expect("id");
    let chain = request(&mut plain, &id, &p.token).await.expect("issued");
    assert_chain(&chain, &root, &id);
    // The cluster.local form of the same account is another identity now.
    let refused = request(&mut plain, &reviews(), &p.token)
        .await
        .expect_err("wrong trust domain");
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sds_serves_default_and_rootca_and_pushes_new_secrets() {
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use weft_control::sds_agent::{AgentSds, fetch_secrets};

    let p = paths();
    let weftd = start(&p);
    let root = read_root(&p.root_out);
    let mut ca = CaClient::connect(&format!("http://{}", weftd.xds))
        .await
        .expect("connect");
    let first = fetch_secrets(&mut ca, &reviews(), Some(&p.token), 3600)
        .await
        .expect("agent secrets");
    let (publish, secrets) = tokio::sync::watch::channel(std::sync::Arc::new(first.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind SDS");
    let sds_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentSds::new(secrets).service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = SecretDiscoveryServiceClient::connect(format!("http://{sds_addr}"))
        .await
        .expect("connect SDS");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        type_url: weft_xds::types::SECRET.into(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        ..DiscoveryRequest::default()
    })
    .await
    .expect("queue");
    let mut responses = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("SDS stream")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(BOUND, responses.message())
            .await
            .expect("SDS response within bound")
            .expect("stream ok")
            .expect("a response")
    };
    // Decodes `default`: its chain (with the root appended) must verify as
    // reviews, and its key must be the agent's.
    let check = |response: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
                 expected: &weft_control::sds_agent::AgentSecrets| {
        let mut names = Vec::new();
        for any in &response.resources {
            let s = Secret::decode(any.value.as_slice()).expect("Secret");
            names.push(s.name.clone());
            match s.r#type.expect("secret type") {
                secret::Type::TlsCertificate(tls) => {
                    let inline = |d: Option<
                        envoy_types::pb::envoy::config::core::v3::DataSource,
                    >| match d.and_then(|d| d.specifier) {
                        Some(Specifier::InlineBytes(b)) => String::from_utf8(b).expect("PEM"),
                        other => panic!("not inline bytes: {other:?}"),
                    };
                    let chain = inline(tls.certificate_chain);
                    assert_eq!(chain, expected.chain_pem);
                    assert_eq!(inline(tls.private_key), expected.key_pem);
                    assert_chain(&[chain, expected.root_pem.clone()], &root, &reviews());
                }
                secret::Type::ValidationContext(vc) => {
                    let Some(Specifier::InlineBytes(pem)) = vc.trusted_ca.and_then(|d| d.specifier)
                    else {
                        panic!("ROOTCA without inline trusted_ca");
                    };
                    assert_eq!(CertificateDer::from_pem_slice(&pem).expect("PEM"), root);
                }
                other => panic!("unexpected secret {other:?}"),
            }
        }
        names.sort();
        assert_eq!(names, ["ROOTCA", "default"]);
    };
    let r1 = next().await;
    check(&r1, &first);
    // ACK, then rotate: a new key and certificate are pushed unasked.
    tx.send(DiscoveryRequest {
        type_url: weft_xds::types::SECRET.into(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        version_info: r1.version_info.clone(),
        response_nonce: r1.nonce.clone(),
        ..DiscoveryRequest::default()
    })
    .await
    .expect("ACK");
    let second = fetch_secrets(&mut ca, &reviews(), Some(&p.token), 3600)
        .await
        .expect("rotated secrets");
    assert_ne!(second.key_pem, first.key_pem, "a fresh key per certificate");
    publish.send_replace(std::sync::Arc::new(second.clone()));
    let r2 = next().await;
    assert_ne!(r2.version_info, r1.version_info);
    check(&r2, &second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_sds_service_serves_rootca_but_never_a_workload_key() {
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    let p = paths();
    let weftd = start(&p);
    let root = read_root(&p.root_out);
    let mut sds = SecretDiscoveryServiceClient::connect(format!("http://{}", weftd.xds))
        .await
        .expect("connect SDS on --xds-addr");
    let response = sds
        .fetch_secrets(DiscoveryRequest {
            type_url: weft_xds::types::SECRET.into(),
            resource_names: vec!["ROOTCA".into(), "default".into()],
            ..DiscoveryRequest::default()
        })
        .await
        .expect("FetchSecrets")
        .into_inner();
    assert_eq!(response.resources.len(), 1, "only ROOTCA: {response:?}");
    let secret = Secret::decode(response.resources[0].value.as_slice()).expect("Secret");
    assert_eq!(secret.name, "ROOTCA");
    let Some(secret::Type::ValidationContext(vc)) = secret.r#type else {
        panic!("ROOTCA is not a validation context");
    };
    let Some(Specifier::InlineBytes(pem)) = vc.trusted_ca.and_then(|d| d.specifier) else {
        panic!("ROOTCA without inline trusted_ca");
    };
    assert_eq!(CertificateDer::from_pem_slice(&pem).expect("PEM"), root);
}
