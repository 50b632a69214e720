//! The real `weftd` authenticates xDS clients on its TLS port (15012) as
//! istiod does: a TLS gRPC ADS (or SDS) client with neither a client
//! certificate nor a bearer token is refused with UNAUTHENTICATED and the
//! reason; an unknown token is refused too; a client certificate issued by
//! the mesh CA, or a token from the bootstrap token store, gets config; a
//! certificate from another CA does not get past the TLS handshake. The
//! plaintext port (15010) stays open, refusals are counted on `/metrics`
//! (`pilot_xds_auth_failures_total`), and `CreateCertificate` on 15012 keeps
//! working with a token alone (how a proxy gets its first certificate).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tonic::transport::Channel;
use weft_identity::grpc_tls::MtlsConnector;
use weft_identity::tls::{SpiffeServerVerifier, bootstrap_client_config};
use weft_identity::workload::generate_key_and_csr;
use weft_identity::{CaClient, CertificateAuthority, MeshTrust, SpiffeId, TokenStore};

/// Generous bound for anything asynchronous.
const BOUND: Duration = Duration::from_secs(30);

struct Mesh {
    _tmp: tempfile::TempDir,
    _weftd: support::Weftd,
    xds: SocketAddr,
    xds_tls: SocketAddr,
    monitoring: SocketAddr,
    root: CertificateDer<'static>,
    token: String,
}

fn start() -> Mesh {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let tokens = tmp.path().join("bootstrap-tokens.json");
    let store = TokenStore::new();
    let token = store
        .issue("default", "reviews", "reviews-v1")
        .expect("issue token");
    store.save(&tokens).expect("save token store");
    let root_out: PathBuf = tmp.path().join("root-cert.pem");
    let weftd = support::Weftd::start(
        &config,
        [
            "--bootstrap-tokens".as_ref(),
            tokens.as_os_str(),
            "--root-cert-out".as_ref(),
            root_out.as_os_str(),
        ],
    );
    let root = CertificateDer::from_pem_file(&root_out)
        .unwrap_or_else(|e| panic!("--root-cert-out {}: {e}", root_out.display()));
    Mesh {
        xds: weftd.addr("xds-addr"),
        xds_tls: weftd.addr("xds-tls-addr"),
        monitoring: weftd.addr("monitoring-addr"),
        _weftd: weftd,
        _tmp: tmp,
        root,
        token,
    }
}

/// `pilot_xds_auth_failures_total` on weftd's `/metrics`.
fn auth_failures(monitoring: SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(monitoring).expect("connect to /metrics");
    conn.set_read_timeout(Some(BOUND)).expect("timeout");
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {monitoring}\r\nConnection: close\r\n\r\n"
    )
    .expect("request /metrics");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("pilot_xds_auth_failures_total "))
        .unwrap_or_else(|| panic!("no pilot_xds_auth_failures_total in /metrics: {text}"))
        .trim()
        .parse()
        .expect("counter value")
}

fn weftd_id() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/istio-system/sa/istiod").expect("id")
}

fn reviews() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").expect("id")
}

fn trust(root: &CertificateDer<'static>) -> MeshTrust {
    MeshTrust::new(std::slice::from_ref(root), vec!["cluster.local".into()]).expect("trust")
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("istiod.istio-system.svc").expect("name")
}

/// A client config verifying weftd, presenting `chain` + `key` when given.
fn client_config(
    root: &CertificateDer<'static>,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let Some((chain, key)) = cert else {
        return bootstrap_client_config(&trust(root), vec![weftd_id()]).expect("client config");
    };
    let mut config = rustls::ClientConfig::builder_with_provider(weft_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            trust(root),
            vec![weftd_id()],
        )))
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A certificate for `reviews` signed by `ca` (leaf first).
fn certificate_from(
    ca: &CertificateAuthority,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (key, csr) = generate_key_and_csr(&reviews()).expect("CSR");
    let issued = ca
        .sign_csr(&csr, &reviews(), Duration::from_secs(3600))
        .expect("sign");
    chain_and_key(&issued.chain_pem, key.serialize_der())
}

fn chain_and_key(
    chain_pem: &[String],
    key_der: Vec<u8>,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = chain_pem
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM"))
        .collect();
    (
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
    )
}

async fn tls_channel(addr: SocketAddr, config: rustls::ClientConfig) -> Result<Channel, String> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    tokio::time::timeout(
        BOUND,
        endpoint.connect_with_connector(MtlsConnector::new(config, addr, server_name())),
    )
    .await
    .expect("connect within bound")
    .map_err(|e| format!("{e:?}"))
}

fn cds_request() -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "sidecar~10.1.0.21~reviews-v1.default~default.svc.cluster.local".into(),
            ..Node::default()
        }),
        type_url: weft_xds::types::CLUSTER.into(),
        ..DiscoveryRequest::default()
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(token) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    req
}

/// One ADS exchange: a CDS request, the first response or the status.
async fn ads(channel: Channel, token: Option<&str>) -> Result<DiscoveryResponse, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let requests = tokio_stream::iter(vec![cds_request()]);
    let exchange = async {
        let mut responses = client
            .stream_aggregated_resources(with_token(requests, token))
            .await?
            .into_inner();
        responses
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unknown("stream ended without a response"))
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("ADS answer within bound")
}

/// One SDS exchange for `ROOTCA`.
async fn sds(channel: Channel, token: Option<&str>) -> Result<DiscoveryResponse, tonic::Status> {
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let request = DiscoveryRequest {
        resource_names: vec!["ROOTCA".into()],
        type_url: weft_xds::types::SECRET.into(),
        ..cds_request()
    };
    let exchange = async {
        let mut responses = client
            .stream_secrets(with_token(tokio_stream::iter(vec![request]), token))
            .await?
            .into_inner();
        responses
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unknown("stream ended without a response"))
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("SDS answer within bound")
}

fn assert_config(response: &DiscoveryResponse, how: &str) {
    assert_eq!(response.type_url, weft_xds::types::CLUSTER, "{how}");
    assert!(
        !response.version_info.is_empty() && !response.resources.is_empty(),
        "{how}: {response:?}"
    );
}

fn assert_unauthenticated(result: Result<DiscoveryResponse, tonic::Status>, reason: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("authentication failure: ")
            && status.message().contains(reason),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_on_15012_needs_a_certificate_or_a_token() {
    let mesh = start();
    let anonymous = tls_channel(mesh.xds_tls, client_config(&mesh.root, None))
        .await
        .expect("TLS without a client certificate is allowed (CreateCertificate)");

    assert_eq!(auth_failures(mesh.monitoring), 0);
    // Neither: refused, ADS and SDS alike, with the reason.
    assert_unauthenticated(ads(anonymous.clone(), None).await, "no client certificate");
    assert_unauthenticated(sds(anonymous.clone(), None).await, "no client certificate");
    // A token weftd never issued.
    assert_unauthenticated(
        ads(anonymous.clone(), Some("not-a-token")).await,
        "token not recognised",
    );

    assert_eq!(auth_failures(mesh.monitoring), 3, "three refusals counted");

    // A valid bootstrap token: config (and the ROOTCA secret).
    let response = ads(anonymous.clone(), Some(&mesh.token))
        .await
        .expect("ADS with a valid token");
    assert_config(&response, "token");
    let secret = sds(anonymous.clone(), Some(&mesh.token))
        .await
        .expect("SDS with a valid token");
    assert_eq!(secret.resources.len(), 1, "{secret:?}");

    // CreateCertificate on 15012 still takes the token alone.
    let mut ca =
        CaClient::connect_tls(mesh.xds_tls, server_name(), client_config(&mesh.root, None))
            .await
            .expect("CA over TLS");
    let (key, csr) = generate_key_and_csr(&reviews()).expect("CSR");
    let issued = tokio::time::timeout(
        BOUND,
        ca.create_certificate(
            weft_identity::IstioCertificateRequest {
                csr,
                validity_duration: 3600,
                metadata: None,
            },
            Some(&mesh.token),
        ),
    )
    .await
    .expect("CreateCertificate within bound")
    .expect("certificate with the token alone");

    // That mesh certificate alone (no token): config.
    let cert = chain_and_key(&issued, key.serialize_der());
    let mutual = tls_channel(mesh.xds_tls, client_config(&mesh.root, Some(cert)))
        .await
        .expect("mTLS with the mesh certificate");
    assert_config(
        &ads(mutual.clone(), None)
            .await
            .expect("ADS with the mesh certificate"),
        "mesh certificate",
    );

    // The plaintext port is not authenticated (as istiod's 15010).
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.xds))
        .expect("endpoint")
        .connect()
        .await
        .expect("plaintext channel");
    assert_config(&ads(plain, None).await.expect("plaintext ADS"), "15010");
    assert_eq!(
        auth_failures(mesh.monitoring),
        3,
        "accepted callers are not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let mesh = start();
    let other = CertificateAuthority::generate_self_signed("cluster.local").expect("other CA");
    let config = client_config(&mesh.root, Some(certificate_from(&other)));
    // TLS 1.3 reports the refused client certificate after the client's
    // side of the handshake: either connecting or the first call fails,
    // and never with configuration.
    let result = match tls_channel(mesh.xds_tls, config).await {
        Err(e) => Err(e),
        Ok(channel) => ads(channel, None).await.map_err(|s| format!("{s:?}")),
    };
    let err = result.expect_err("a foreign certificate must not get config");
    assert!(
        !err.contains("authentication failure"),
        "refused by the TLS layer, before any RPC: {err}"
    );
}
