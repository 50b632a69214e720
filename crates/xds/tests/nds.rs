//! Istio's NDS (`istio.networking.nds.v1.NameTable`) over ADS: the server
//! treats it as a wildcard type (Istio's agent subscribes without names),
//! sends it on full pushes, and the client subscribes to it by itself when
//! its node asks for DNS capture.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use weft_xds::nds::{NAME_TABLE, NAME_TABLE_RESOURCE, NameInfo, NameTable};
use weft_xds::types::{CLUSTER, LISTENER};
use weft_xds::{AdsClient, Any, ClientConfig, ProxyMetadata, PushRequest};

fn table(ip: &str) -> (String, Any) {
    let mut t = NameTable::default();
    t.table.insert(
        "reviews.default.svc.cluster.local".into(),
        NameInfo {
            ips: vec![ip.into()],
            registry: "Kubernetes".into(),
            shortname: "reviews".into(),
            namespace: "default".into(),
            alt_hosts: vec![],
        },
    );
    (NAME_TABLE_RESOURCE.to_string(), t.to_any())
}

#[tokio::test]
async fn an_unnamed_subscription_gets_the_table_like_istios_agent() {
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator
        .set_all(NAME_TABLE, set([table("10.96.0.20")]));
    let mut raw = RawSotw::connect(&srv.url()).await;
    raw.subscribe(
        "sidecar~10.0.0.1~a-1.default~default.svc.cluster.local",
        NAME_TABLE,
        &[],
    );
    let resp = raw.recv().await;
    assert_eq!(resp.type_url, NAME_TABLE);
    assert_eq!(resp.resources.len(), 1);
    let got = NameTable::from_any(&resp.resources[0]).unwrap();
    assert_eq!(
        got.table["reviews.default.svc.cluster.local"].ips,
        ["10.96.0.20"]
    );
    raw.ack(&resp, &[]);

    // A full push with a changed table resends it.
    srv.generator
        .set_all(NAME_TABLE, set([table("10.96.0.21")]));
    srv.pusher.trigger(PushRequest::full("service changed"));
    let resp = raw.recv().await;
    let got = NameTable::from_any(&resp.resources[0]).unwrap();
    assert_eq!(
        got.table["reviews.default.svc.cluster.local"].ips,
        ["10.96.0.21"]
    );
}

#[tokio::test]
async fn the_client_subscribes_to_nds_only_with_dns_capture() {
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator
        .set_all(NAME_TABLE, set([table("10.96.0.20")]));
    srv.generator
        .set_all(CLUSTER, set([static_cluster("PassthroughCluster", "1")]));
    srv.generator.set_all(LISTENER, set([]));

    let mut md = ProxyMetadata {
        ips: vec!["10.0.0.1".into()],
        pod_name: "a-1".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    let plain = ClientConfig::new(srv.url(), md.to_node());
    assert!(plain.extra_types.is_empty());
    md.extra.insert("DNS_CAPTURE".into(), "true".into());
    let config = ClientConfig::new(srv.url(), md.to_node());
    assert_eq!(config.extra_types, [NAME_TABLE]);

    let tables: Arc<Mutex<Vec<NameTable>>> = Arc::default();
    let seen = tables.clone();
    let client = AdsClient::spawn(config, move |type_url: &str, resources: &[Any]| {
        if type_url == NAME_TABLE {
            let t = NameTable::from_any(&resources[0])?;
            seen.lock().unwrap().push(t);
        }
        Ok(())
    })
    .unwrap();
    let mut rx = client.state();
    let reached = tokio::time::timeout(WAIT, rx.wait_for(|s| !s.version(NAME_TABLE).is_empty()))
        .await
        .is_ok();
    assert!(reached, "no NameTable accepted: {:#?}", *rx.borrow());
    let got = tables.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        got.table["reviews.default.svc.cluster.local"].ips,
        ["10.96.0.20"]
    );
    let id = "sidecar~10.0.0.1~a-1.default~default.svc.cluster.local";
    srv.wait_status(id, |s| s.types.get(NAME_TABLE).is_some_and(|t| t.synced()))
        .await;
    client.shutdown().await;
}

/// Pushes that name NDS beside EDS (an endpoint change that altered name
/// tables) resend the table when it changed, and only then; EDS-only
/// pushes leave it alone. The next EDS response is the sentinel: a table
/// sent by a push comes before the EDS response of any later push.
#[tokio::test]
async fn typed_pushes_naming_nds_resend_only_changed_tables() {
    use weft_xds::types::ENDPOINT;
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator.set_all(NAME_TABLE, set([table("10.1.0.20")]));
    srv.generator.set_all(ENDPOINT, set([cla("a", "1")]));
    let id = "sidecar~10.0.0.1~a-1.default~default.svc.cluster.local";
    let mut raw = RawSotw::connect(&srv.url()).await;
    raw.subscribe(id, NAME_TABLE, &[]);
    let nds = raw.recv().await;
    raw.ack(&nds, &[]);
    raw.subscribe(id, ENDPOINT, &["a"]);
    let eds = raw.recv().await;
    assert_eq!(eds.type_url, ENDPOINT);
    raw.ack(&eds, &["a"]);
    let mut marker = 1;
    let mut eds_push = |srv: &TestServer, req: PushRequest| {
        marker += 1;
        srv.generator
            .set_all(ENDPOINT, set([cla("a", &marker.to_string())]));
        srv.pusher.trigger(req);
    };

    // EDS only: the (changed) table is not recomputed.
    srv.generator.set_all(NAME_TABLE, set([table("10.1.0.21")]));
    eds_push(&srv, PushRequest::endpoints("eds only"));
    let r = raw.recv().await;
    assert_eq!(r.type_url, ENDPOINT, "an EDS-only push sent {}", r.type_url);
    raw.ack(&r, &["a"]);

    // EDS and NDS: the changed table follows the EDS response.
    eds_push(
        &srv,
        PushRequest::endpoints("headless pod moved").with_type_url(NAME_TABLE),
    );
    let r = raw.recv().await;
    assert_eq!(r.type_url, ENDPOINT);
    raw.ack(&r, &["a"]);
    let r = raw.recv().await;
    assert_eq!(r.type_url, NAME_TABLE);
    let got = NameTable::from_any(&r.resources[0]).unwrap();
    assert_eq!(
        got.table["reviews.default.svc.cluster.local"].ips,
        ["10.1.0.21"]
    );
    raw.ack(&r, &[]);

    // Naming NDS again with the same table: nothing is sent for it.
    eds_push(
        &srv,
        PushRequest::endpoints("other pod moved").with_type_url(NAME_TABLE),
    );
    let r = raw.recv().await;
    assert_eq!(r.type_url, ENDPOINT);
    raw.ack(&r, &["a"]);
    eds_push(&srv, PushRequest::endpoints("sentinel"));
    let r = raw.recv().await;
    assert_eq!(
        r.type_url, ENDPOINT,
        "an unchanged table was sent again before the sentinel"
    );
    let status = srv.wait_status(id, |s| s.types[NAME_TABLE].synced()).await;
    assert_eq!(status.types[NAME_TABLE].responses, 2);
}
