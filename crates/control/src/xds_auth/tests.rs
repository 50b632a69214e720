//! The authenticator's decision table and the layer's path selection.

use super::*;
use weft_identity::{BootstrapTokenAuthenticator, PeerCertificateAuthenticator, TokenStore};

fn authenticator(store: &TokenStore) -> XdsAuthenticator {
    XdsAuthenticator::new(vec![
        Arc::new(BootstrapTokenAuthenticator::new(store.clone())),
        Arc::new(PeerCertificateAuthenticator::new(vec![
            "cluster.local".into(),
        ])),
    ])
}

fn id(uri: &str) -> SpiffeId {
    SpiffeId::parse(uri).expect("SPIFFE ID")
}

#[derive(Debug)]
enum Want {
    /// Authenticated as namespace/service account by that authenticator.
    Ok(&'static str, &'static str, &'static str),
    /// Refused; the message contains this.
    Err(&'static str),
}

#[tokio::test]
async fn the_decision_table() {
    let store = TokenStore::new();
    let token = store
        .issue("default", "reviews", "reviews-v1")
        .expect("token");
    let bearer = format!("Bearer {token}");
    let basic = format!("Basic {token}");
    let lower = format!("bearer {token}");
    let auth = authenticator(&store);
    let mesh = id("spiffe://cluster.local/ns/default/sa/ratings");
    let foreign = id("spiffe://other.example/ns/default/sa/ratings");
    let cases: Vec<(&str, Option<&SpiffeId>, Option<&str>, Want)> = vec![
        (
            "nothing",
            None,
            None,
            Want::Err("no client certificate and no `authorization"),
        ),
        (
            "mesh certificate",
            Some(&mesh),
            None,
            Want::Ok("default", "ratings", "client-certificate"),
        ),
        (
            "valid token",
            None,
            Some(&bearer),
            Want::Ok("default", "reviews", "bootstrap-token"),
        ),
        (
            "token wins when both are good (tried first)",
            Some(&mesh),
            Some(&bearer),
            Want::Ok("default", "reviews", "bootstrap-token"),
        ),
        (
            "unknown token",
            None,
            Some("Bearer not-a-token"),
            Want::Err("token not recognised"),
        ),
        (
            "unknown token, mesh certificate",
            Some(&mesh),
            Some("Bearer not-a-token"),
            Want::Ok("default", "ratings", "client-certificate"),
        ),
        (
            "another scheme",
            None,
            Some(&basic),
            Want::Err("not `Bearer <token>` (the scheme is not `Bearer`)"),
        ),
        (
            "empty token",
            None,
            Some("Bearer   "),
            Want::Err("the token is empty"),
        ),
        (
            "lower-case scheme",
            None,
            Some(&lower),
            Want::Err("the scheme is not `Bearer`"),
        ),
        (
            "malformed header, mesh certificate",
            Some(&mesh),
            Some("Basic x"),
            Want::Ok("default", "ratings", "client-certificate"),
        ),
        (
            "certificate of another trust domain",
            Some(&foreign),
            None,
            Want::Err("is not in trust domain cluster.local"),
        ),
    ];
    for (name, peer, header, want) in cases {
        let got = auth.authenticate(peer, header).await;
        match (&want, &got) {
            (Want::Ok(ns, sa, by), Ok(caller)) => {
                assert_eq!(
                    (
                        caller.namespace.as_str(),
                        caller.service_account.as_str(),
                        caller.authenticator
                    ),
                    (*ns, *sa, *by),
                    "{name}"
                );
            }
            (Want::Err(part), Err(e)) => {
                assert!(e.to_string().contains(part), "{name}: {e}");
                assert!(
                    !e.to_string().contains(&token),
                    "{name}: the token leaked: {e}"
                );
            }
            _ => panic!("{name}: want {want:?}, got {got:?}"),
        }
    }
    assert_eq!(auth.failures(), 0, "authenticate alone counts nothing");
}

#[tokio::test]
async fn a_revoked_token_is_refused() {
    let store = TokenStore::new();
    let token = store
        .issue("default", "reviews", "reviews-v1")
        .expect("token");
    let auth = authenticator(&store);
    let header = format!("Bearer {token}");
    auth.authenticate(None, Some(&header)).await.expect("valid");
    assert_eq!(store.revoke_pod("reviews-v1"), 1);
    let err = auth
        .authenticate(None, Some(&header))
        .await
        .expect_err("revoked");
    assert!(matches!(err, XdsAuthError::Rejected(_)), "{err}");
}

#[test]
fn only_ads_and_sds_need_authentication() {
    for (path, needs) in [
        (
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            true,
        ),
        (
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            true,
        ),
        (
            "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
            true,
        ),
        (
            "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
            true,
        ),
        (
            "/istio.v1.auth.IstioCertificateService/CreateCertificate",
            false,
        ),
        ("/grpc.health.v1.Health/Check", false),
    ] {
        assert_eq!(requires_auth(path), needs, "{path}");
    }
}

#[test]
fn bearer_tokens_parse() {
    assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
    assert_eq!(bearer_token("Bearer  abc "), Ok("abc"));
    assert!(bearer_token("Bearer").is_err());
    assert!(bearer_token("Token abc").is_err());
}
