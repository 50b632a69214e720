//! Incremental (delta) ADS over real gRPC on 127.0.0.1.

mod common;

use std::collections::BTreeMap;

use common::*;
use weft_xds::types::{CLUSTER, ENDPOINT};
use weft_xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, PushRequest, XdsType};

fn versions(resp: &DeltaDiscoveryResponse) -> BTreeMap<String, String> {
    resp.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

fn first(node_id: &str, type_url: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(node_id)),
        type_url: type_url.to_string(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn initial_then_add_change_remove_with_per_resource_versions() {
    let srv = TestServer::start(debounce_ms(0)).await;
    let generator = &srv.generator;
    generator.set_all(
        CLUSTER,
        set([
            static_cluster("a", "1"),
            static_cluster("b", "1"),
            static_cluster("c", "1"),
        ]),
    );
    let mut d = RawDelta::connect(&srv.url()).await;
    d.send(first("p1", CLUSTER, &[]));
    let initial = d.recv().await;
    let want = generator.get("p1", CLUSTER);
    assert_eq!(initial.type_url, CLUSTER);
    assert_eq!(
        versions(&initial),
        want.iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect::<BTreeMap<_, _>>()
    );
    assert!(initial.resources.iter().all(|r| r.resource.is_some()));
    assert!(initial.removed_resources.is_empty());
    assert_eq!(initial.system_version_info, want.version());
    d.ack(&initial);

    // b changes, c goes away, d appears; a is untouched.
    generator.set_all(
        CLUSTER,
        set([
            static_cluster("a", "1"),
            static_cluster("b", "2"),
            static_cluster("d", "1"),
        ]),
    );
    srv.pusher.trigger(PushRequest::full("change"));
    let update = d.recv().await;
    let want = generator.get("p1", CLUSTER);
    let got = versions(&update);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["b", "d"]);
    assert_eq!(got["b"], want.get("b").unwrap().version);
    assert_ne!(got["b"], versions(&initial)["b"]);
    assert_eq!(update.removed_resources, ["c"]);
    d.ack(&update);
    let st = srv
        .wait_status("p1", |s| s.types[CLUSTER].acked_version == want.version())
        .await;
    assert_eq!(st.types[CLUSTER].sent_resources, 3);
    assert_eq!(st.kind, weft_xds::StreamKind::Delta);

    // Nothing changed: no response; the EDS subscription answered next proves it.
    srv.pusher
        .trigger(PushRequest::types([XdsType::Cluster], "noop"));
    generator.set_all(ENDPOINT, set([cla("a", "1")]));
    d.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["a".into()],
        ..Default::default()
    });
    let eds = d.recv().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(srv.server.metrics().pushes(CLUSTER), 2);
    srv.stop().await;
}

#[tokio::test]
async fn subscribe_unsubscribe_and_missing_names() {
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator
        .set_all(ENDPOINT, set([cla("a", "1"), cla("b", "1")]));
    let mut d = RawDelta::connect(&srv.url()).await;
    d.send(first("p1", ENDPOINT, &["a", "ghost"]));
    let r = d.recv().await;
    assert_eq!(versions(&r).keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(
        r.removed_resources,
        ["ghost"],
        "absent names are announced as removed"
    );
    d.ack(&r);

    d.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["b".into()],
        resource_names_unsubscribe: vec!["a".into()],
        ..Default::default()
    });
    let r2 = d.recv().await;
    assert_eq!(versions(&r2).keys().collect::<Vec<_>>(), ["b"]);
    assert!(r2.removed_resources.is_empty());
    d.ack(&r2);

    // a changes, but it is no longer subscribed: nothing to send. b changes: sent.
    srv.generator
        .set_all(ENDPOINT, set([cla("a", "2"), cla("b", "2")]));
    srv.pusher.trigger(PushRequest::endpoints("eps"));
    let r3 = d.recv().await;
    assert_eq!(versions(&r3).keys().collect::<Vec<_>>(), ["b"]);
    let st = srv.wait_status("p1", |_| true).await;
    assert_eq!(
        st.types[ENDPOINT].subscribed,
        weft_xds::status::names(["b", "ghost"])
    );
    srv.stop().await;
}

#[tokio::test]
async fn nack_is_not_resent_until_the_resource_changes() {
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator.set_all(
        CLUSTER,
        set([static_cluster("a", "1"), static_cluster("b", "1")]),
    );
    let mut d = RawDelta::connect(&srv.url()).await;
    d.send(first("p1", CLUSTER, &[]));
    let r = d.recv().await;
    d.ack(&r);

    srv.generator.set_all(
        CLUSTER,
        set([static_cluster("a", "bad"), static_cluster("b", "1")]),
    );
    srv.pusher.trigger(PushRequest::full("bad"));
    let bad = d.recv().await;
    assert_eq!(versions(&bad).keys().collect::<Vec<_>>(), ["a"]);
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: bad.nonce.clone(),
        error_detail: Some(envoy_types::pb::google::rpc::Status {
            code: 3,
            message: "cluster a rejected".into(),
            details: vec![],
        }),
        ..Default::default()
    });
    let st = srv.wait_status("p1", |s| s.types[CLUSTER].nacks == 1).await;
    assert_eq!(st.types[CLUSTER].acked_version, r.system_version_info);
    assert_eq!(srv.server.metrics().rejects(CLUSTER), 1);

    // b changes: only b is sent, the rejected a is not repeated.
    srv.generator.set_all(
        CLUSTER,
        set([static_cluster("a", "bad"), static_cluster("b", "2")]),
    );
    srv.pusher.trigger(PushRequest::full("b"));
    let b = d.recv().await;
    assert_eq!(versions(&b).keys().collect::<Vec<_>>(), ["b"]);
    d.ack(&b);

    // a changes again: sent.
    srv.generator.set_all(
        CLUSTER,
        set([static_cluster("a", "good"), static_cluster("b", "2")]),
    );
    srv.pusher.trigger(PushRequest::full("a fixed"));
    let a = d.recv().await;
    assert_eq!(versions(&a).keys().collect::<Vec<_>>(), ["a"]);
    d.ack(&a);
    srv.wait_status("p1", |s| {
        s.types[CLUSTER].acked_version == a.system_version_info
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn reconnect_with_initial_versions_sends_only_differences() {
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator.set_all(
        CLUSTER,
        set([static_cluster("a", "1"), static_cluster("b", "1")]),
    );
    let mut d = RawDelta::connect(&srv.url()).await;
    d.send(first("p1", CLUSTER, &[]));
    let r = d.recv().await;
    d.ack(&r);
    let held = versions(&r);
    drop(d);

    srv.generator.set_all(
        CLUSTER,
        set([static_cluster("a", "1"), static_cluster("c", "1")]),
    );
    let mut d = RawDelta::connect(&srv.url()).await;
    let mut req = first("p1", CLUSTER, &[]);
    req.initial_resource_versions = held.into_iter().collect();
    d.send(req);
    let r = d.recv().await;
    assert_eq!(versions(&r).keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(r.removed_resources, ["b"]);
    srv.stop().await;
}

#[tokio::test]
async fn changed_eds_cluster_gets_its_unchanged_endpoints_again() {
    let srv = TestServer::start(debounce_ms(0)).await;
    let g = &srv.generator;
    g.set_all(CLUSTER, set([eds_cluster("a"), eds_cluster("b")]));
    g.set_all(ENDPOINT, set([cla("a", "1"), cla("b", "1")]));
    let mut d = RawDelta::connect(&srv.url()).await;
    d.send(first("p1", CLUSTER, &[]));
    let cds = d.recv().await;
    d.ack(&cds);
    d.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["a".into(), "b".into()],
        ..Default::default()
    });
    let eds = d.recv().await;
    d.ack(&eds);

    g.set_all(
        CLUSTER,
        set([eds_cluster("a"), eds_cluster_marked("b", "x")]),
    );
    srv.pusher.trigger(PushRequest::full("cluster b changed"));
    let cds2 = d.recv().await;
    assert_eq!(versions(&cds2).keys().collect::<Vec<_>>(), ["b"]);
    d.ack(&cds2);
    let eds2 = d.recv().await;
    assert_eq!(eds2.type_url, ENDPOINT);
    assert_eq!(versions(&eds2).keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(
        versions(&eds2)["b"],
        versions(&eds)["b"],
        "same endpoints, resent"
    );
    srv.stop().await;
}
