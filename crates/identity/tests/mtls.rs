//! Real TLS over 127.0.0.1 between two workloads with SPIFFE verification,
//! and the failure reasons of bad peers.

mod common;

use std::sync::Arc;

use common::{connect, echo, echo_server, id, trust};
use tokio::io::AsyncReadExt;
use weft_identity::tls::{self, MeshTrust};
use weft_identity::{CertificateAuthority, SpiffeId};

fn new_ca() -> Arc<CertificateAuthority> {
    Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap())
}

#[tokio::test]
async fn mutual_tls_both_ways_with_spiffe_ids_and_istio_alpn() {
    let ca = new_ca();
    let mesh = trust(&ca);
    let reviews = common::manager(&ca, id("default", "reviews")).await;
    let productpage = common::manager(&ca, id("default", "productpage")).await;

    // productpage -> reviews, then reviews -> productpage.
    for (client, server) in [(&productpage, &reviews), (&reviews, &productpage)] {
        let (addr, mut accepted) =
            echo_server(Arc::clone(server), &mesh, vec![b"h2".to_vec()]).await;
        let mut stream = connect(addr, Arc::clone(client), &mesh, vec![server.id().clone()])
            .await
            .unwrap();
        assert_eq!(echo(&mut stream, b"hello").await.unwrap(), b"hello");
        let seen = accepted.recv().await.unwrap();
        assert_eq!(
            seen.result.unwrap(),
            *client.id(),
            "server sees the client's SPIFFE ID"
        );
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
        let (_, conn) = stream.get_ref();
        assert_eq!(
            tls::peer_spiffe_id(conn.peer_certificates()).unwrap(),
            *server.id()
        );
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    }

    // An empty expected set accepts any identity of the trust domain.
    let (addr, _accepted) = echo_server(Arc::clone(&reviews), &mesh, vec![]).await;
    let mut stream = connect(addr, Arc::clone(&productpage), &mesh, vec![])
        .await
        .unwrap();
    assert_eq!(echo(&mut stream, b"x").await.unwrap(), b"x");
}

#[test]
fn client_offers_istio_alpn_first() {
    let ca = CertificateAuthority::generate_self_signed("cluster.local").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ca = Arc::new(ca);
    let m = rt.block_on(common::manager(&ca, id("a", "b")));
    let config = tls::client_config(m, &trust(&ca), vec![], &[b"h2", b"http/1.1"]).unwrap();
    let alpn: Vec<&[u8]> = config.alpn_protocols.iter().map(Vec::as_slice).collect();
    assert_eq!(
        alpn,
        vec![&b"istio-peer-exchange"[..], b"istio", b"h2", b"http/1.1"]
    );
    assert!(tls::is_istio_alpn(alpn.iter().copied()));
    assert!(!tls::is_istio_alpn([&b"h2"[..], b"http/1.1"].into_iter()));
}

/// Asserts a handshake fails on the client with `client_reason` in its
/// reason string, and the server either saw it fail or saw no request.
async fn expect_client_rejects(
    result: std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    want: &str,
) {
    let err = result.expect_err("handshake must fail");
    let reason = tls::handshake_failure_reason(&err);
    assert!(
        reason.starts_with("TLS_error:|CERTIFICATE_VERIFY_FAILED:"),
        "{reason}"
    );
    assert!(reason.contains(want), "{reason} should contain {want:?}");
}

/// Server-side rejection: with TLS 1.3 the client may finish first and learn
/// of it on its first read; the server's accept reports the reason.
async fn expect_server_rejects(
    result: std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    accepted: &mut tokio::sync::mpsc::UnboundedReceiver<common::Accepted>,
    want: &str,
) {
    if let Ok(mut stream) = result {
        let mut buf = [0u8; 1];
        let read = stream.read(&mut buf).await;
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "client must not get data: {read:?}"
        );
    }
    let seen = accepted.recv().await.unwrap();
    let reason = seen.result.expect_err("server must refuse the client");
    assert!(reason.contains(want), "{reason} should contain {want:?}");
}

#[tokio::test]
async fn wrong_server_identity_is_refused_with_a_reason() {
    let ca = new_ca();
    let mesh = trust(&ca);
    let server = common::manager(&ca, id("default", "ratings")).await;
    let client = common::manager(&ca, id("default", "reviews")).await;
    let (addr, _acc) = echo_server(server, &mesh, vec![]).await;
    let expected = vec![id("default", "details"), id("other", "ratings")];
    expect_client_rejects(
        connect(addr, client, &mesh, expected).await,
        "peer SPIFFE ID spiffe://cluster.local/ns/default/sa/ratings is not one of the expected spiffe://cluster.local/ns/default/sa/details, spiffe://cluster.local/ns/other/sa/ratings",
    )
    .await;
}

#[tokio::test]
async fn wrong_trust_domain_is_refused_on_both_sides() {
    let ca = new_ca();
    let mesh = trust(&ca);
    let foreign = SpiffeId::new("evil.example", "default", "ratings").unwrap();
    let good = common::manager(&ca, id("default", "reviews")).await;
    let bad = common::manager(&ca, foreign.clone()).await;

    // Server in the wrong trust domain (same root!): the client refuses.
    let (addr, _acc) = echo_server(Arc::clone(&bad), &mesh, vec![]).await;
    expect_client_rejects(
        connect(addr, Arc::clone(&good), &mesh, vec![]).await,
        "peer SPIFFE ID spiffe://evil.example/ns/default/sa/ratings is not in trust domain cluster.local",
    )
    .await;

    // Client in the wrong trust domain: the server refuses.
    let (addr, mut acc) = echo_server(Arc::clone(&good), &mesh, vec![]).await;
    expect_server_rejects(
        connect(addr, bad, &mesh, vec![]).await,
        &mut acc,
        "is not in trust domain cluster.local",
    )
    .await;

    // A trust domain alias makes it acceptable.
    let aliased = MeshTrust::new(
        &[ca.root_cert_der().clone()],
        vec!["cluster.local".into(), "evil.example".into()],
    )
    .unwrap();
    let (addr, mut acc) = echo_server(Arc::clone(&good), &aliased, vec![]).await;
    let bad = common::manager(&ca, foreign.clone()).await;
    let mut s = connect(addr, bad, &aliased, vec![]).await.unwrap();
    assert_eq!(echo(&mut s, b"ok").await.unwrap(), b"ok");
    assert_eq!(acc.recv().await.unwrap().result.unwrap(), foreign);
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let ca = new_ca();
    let mesh = trust(&ca);
    let good = common::manager(&ca, id("default", "reviews")).await;
    let expired = common::expired_manager(&ca, id("default", "ratings")).await;

    let (addr, _acc) = echo_server(Arc::clone(&expired), &mesh, vec![]).await;
    expect_client_rejects(
        connect(addr, Arc::clone(&good), &mesh, vec![]).await,
        "certificate expired",
    )
    .await;

    let (addr, mut acc) = echo_server(Arc::clone(&good), &mesh, vec![]).await;
    expect_server_rejects(
        connect(addr, expired, &mesh, vec![]).await,
        &mut acc,
        "certificate expired",
    )
    .await;
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused_on_both_sides() {
    let ca = new_ca();
    let mesh = trust(&ca);
    let good = common::manager(&ca, id("default", "reviews")).await;
    // Another mesh's CA, with a different name, and one with the same name
    // (two default installs): both are refused with a reason.
    let cases = [
        (
            Arc::new(CertificateAuthority::generate_self_signed("other.mesh").unwrap()),
            "unknown issuer",
        ),
        (new_ca(), "does not verify against the mesh root"),
    ];
    for (other, want) in cases {
        let stranger = common::manager(&other, id("default", "ratings")).await;
        let (addr, _acc) = echo_server(Arc::clone(&stranger), &mesh, vec![]).await;
        expect_client_rejects(connect(addr, Arc::clone(&good), &mesh, vec![]).await, want).await;

        let (addr, mut acc) = echo_server(Arc::clone(&good), &mesh, vec![]).await;
        expect_server_rejects(connect(addr, stranger, &mesh, vec![]).await, &mut acc, want).await;
    }
}

#[tokio::test]
async fn plaintext_client_gets_no_data_from_an_mtls_server() {
    use tokio::io::AsyncWriteExt;
    let ca = new_ca();
    let mesh = trust(&ca);
    let server = common::manager(&ca, id("default", "reviews")).await;
    let (addr, mut acc) = echo_server(server, &mesh, vec![]).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(
        !buf.windows(4).any(|w| w == b"HTTP"),
        "no plaintext reply: {buf:?}"
    );
    let reason = acc.recv().await.unwrap().result.unwrap_err();
    assert!(reason.starts_with("TLS_error:|"), "{reason}");
}
