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
