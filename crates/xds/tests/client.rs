//! The weft-proxy side: `AdsClient` against the real server over loopback.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::sync::watch;
use weft_xds::names::resource_name;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{AdsClient, Any, ClientConfig, ClientState, ProxyMetadata, PushRequest, XdsType};

/// What the handler holds: per type URL, resource names in order.
type Applied = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// A handler that rejects any cluster named "bad" and records every
/// accepted set.
fn recording_handler(applied: Applied) -> impl FnMut(&str, &[Any]) -> Result<(), String> {
    move |type_url: &str, resources: &[Any]| {
        let names: Vec<String> = resources
            .iter()
            .map(|a| resource_name(a).unwrap())
            .collect();
        if type_url == CLUSTER && names.iter().any(|n| n == "bad") {
            return Err("cluster bad: field name: reserved".to_string());
        }
        if type_url == CLUSTER && names.iter().any(|n| n == "boom") {
            panic!("compiler bug on cluster boom");
        }
        applied.lock().unwrap().insert(type_url.to_string(), names);
        Ok(())
    }
}

fn full_mesh(srv: &TestServer, generation: &str) {
    let g = &srv.generator;
    g.set_all(
        CLUSTER,
        set([
            eds_cluster("a"),
            static_cluster("PassthroughCluster", generation),
        ]),
    );
    g.set_all(ENDPOINT, set([cla("a", generation), cla("unrelated", "1")]));
    g.set_all(LISTENER, set([rds_listener("0.0.0.0_80", "80")]));
    g.set_all(ROUTE, set([route("80", generation), route("9090", "1")]));
}

fn client_config(url: String, id: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, node(id));
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    config
}

async fn wait_client(
    rx: &mut watch::Receiver<ClientState>,
    what: &str,
    pred: impl FnMut(&ClientState) -> bool,
) -> ClientState {
    let reached = match tokio::time::timeout(WAIT, rx.wait_for(pred)).await {
        Ok(Ok(state)) => Some(state.clone()),
        _ => None,
    };
    reached.unwrap_or_else(|| panic!("client never reached: {what}; state: {:#?}", *rx.borrow()))
}

fn synced_with(state: &ClientState, srv: &TestServer, id: &str) -> bool {
    [CLUSTER, ENDPOINT, LISTENER, ROUTE].iter().all(|t| {
        let mut want = srv.generator.get(id, t);
        let names: Vec<String> = match *t {
            ENDPOINT => vec!["a".into()],
            ROUTE => vec!["80".into()],
            _ => want.names().map(str::to_string).collect(),
        };
        let names: std::collections::BTreeSet<String> = names.into_iter().collect();
        want = want.filtered(names.iter().map(String::as_str));
        state.version(t) == want.version()
    })
}

#[tokio::test]
async fn client_follows_cds_lds_then_eds_rds_and_acks() {
    let srv = TestServer::start(debounce_ms(0)).await;
    full_mesh(&srv, "1");
    let applied = Applied::default();
    let me = ProxyMetadata {
        ips: vec!["10.0.0.1".into()],
        pod_name: "a-1".into(),
        namespace: "default".into(),
        domain: "cluster.local".into(),
        workload_name: "a".into(),
        labels: [("app".to_string(), "a".to_string())].into(),
        service_account: "default".into(),
        ..Default::default()
    };
    let mut config = client_config(srv.url(), "unused");
    config.node = me.to_node();
    let client = AdsClient::spawn(config, recording_handler(applied.clone())).unwrap();
    let id = "sidecar~10.0.0.1~a-1.default~default.svc.cluster.local";
    let mut rx = client.state();
    let state = wait_client(&mut rx, "all four types", |s| synced_with(s, &srv, id)).await;
    assert!(state.connected);
    assert_eq!(state.nacks, 0);
    {
        let applied = applied.lock().unwrap();
        assert_eq!(applied[CLUSTER], ["PassthroughCluster", "a"]);
        assert_eq!(
            applied[ENDPOINT],
            ["a"],
            "only the EDS cluster's assignment"
        );
        assert_eq!(applied[LISTENER], ["0.0.0.0_80"]);
        assert_eq!(applied[ROUTE], ["80"], "only the route the listener names");
    }
    let st = srv
        .wait_status(id, |s| {
            s.types.len() == 4 && s.types.values().all(|t| t.synced())
        })
        .await;
    assert_eq!(
        st.types[ENDPOINT].subscribed,
        weft_xds::status::names(["a"])
    );
    // weftd reads back what the proxy said about itself.
    let node = srv.server.node(id).expect("connected node");
    assert_eq!(node.cluster, "a.default");
    assert_eq!(ProxyMetadata::from_node(&node.node).unwrap(), me);
    assert_eq!(st.types[ROUTE].subscribed, weft_xds::status::names(["80"]));

    // An endpoint change reaches the handler as the full EDS set.
    srv.generator
        .set_all(ENDPOINT, set([cla("a", "2"), cla("unrelated", "1")]));
    srv.pusher.trigger(PushRequest::endpoints("a moved"));
    wait_client(&mut rx, "new endpoints", |s| synced_with(s, &srv, id)).await;
    assert_eq!(applied.lock().unwrap()[ENDPOINT], ["a"]);
    client.shutdown().await;
    srv.stop().await;
}

#[tokio::test]
async fn client_nacks_and_keeps_last_good() {
    let srv = TestServer::start(debounce_ms(0)).await;
    full_mesh(&srv, "1");
    let applied = Applied::default();
    let client = AdsClient::spawn(
        client_config(srv.url(), "p1"),
        recording_handler(applied.clone()),
    )
    .unwrap();
    let mut rx = client.state();
    let good = wait_client(&mut rx, "synced", |s| synced_with(s, &srv, "p1")).await;

    srv.generator
        .set_all(CLUSTER, set([eds_cluster("a"), static_cluster("bad", "1")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Cluster], "bad cluster"));
    let state = wait_client(&mut rx, "a NACK", |s| s.nacks == 1).await;
    let (t, message) = state.last_nack.clone().unwrap();
    assert_eq!(t, CLUSTER);
    assert!(message.contains("cluster bad"), "{message}");
    assert_eq!(
        state.version(CLUSTER),
        good.version(CLUSTER),
        "kept last accepted"
    );
    assert_eq!(
        applied.lock().unwrap()[CLUSTER],
        ["PassthroughCluster", "a"]
    );
    let st = srv.wait_status("p1", |s| s.types[CLUSTER].nacks == 1).await;
    assert!(
        st.types[CLUSTER]
            .last_nack
            .as_ref()
            .unwrap()
            .message
            .contains("cluster bad")
    );
    assert_eq!(st.types[CLUSTER].acked_version, good.version(CLUSTER));

    // A handler that panics NACKs too, and the client keeps running.
    srv.generator.set_all(
        CLUSTER,
        set([eds_cluster("a"), static_cluster("boom", "1")]),
    );
    srv.pusher
        .trigger(PushRequest::types([XdsType::Cluster], "panicking cluster"));
    let state = wait_client(&mut rx, "a second NACK", |s| s.nacks == 2).await;
    let (_, message) = state.last_nack.clone().unwrap();
    assert!(
        message.contains("compiler bug on cluster boom"),
        "{message}"
    );
    assert_eq!(state.version(CLUSTER), good.version(CLUSTER));

    srv.generator.set_all(
        CLUSTER,
        set([eds_cluster("a"), static_cluster("fine", "1")]),
    );
    srv.pusher
        .trigger(PushRequest::types([XdsType::Cluster], "fixed"));
    wait_client(&mut rx, "fixed CDS", |s| {
        s.version(CLUSTER) == srv.generator.get("p1", CLUSTER).version()
    })
    .await;
    assert_eq!(applied.lock().unwrap()[CLUSTER], ["a", "fine"]);
    client.shutdown().await;
    srv.stop().await;
}

#[tokio::test]
async fn client_reconnects_after_server_restart() {
    let srv = TestServer::start(debounce_ms(0)).await;
    full_mesh(&srv, "1");
    let applied = Applied::default();
    let client = AdsClient::spawn(
        client_config(srv.url(), "p1"),
        recording_handler(applied.clone()),
    )
    .unwrap();
    let mut rx = client.state();
    let before = wait_client(&mut rx, "synced", |s| synced_with(s, &srv, "p1")).await;
    let addr = srv.addr;
    srv.stop().await;
    wait_client(&mut rx, "disconnected", |s| !s.connected).await;
    // Last good config stays with the handler while the server is gone.
    assert_eq!(applied.lock().unwrap()[ROUTE], ["80"]);

    // A new server on the same port with changed routes.
    let generator = Arc::new(TestGenerator::default());
    let srv = TestServer::start_at(addr, debounce_ms(0), generator).await;
    full_mesh(&srv, "2");
    let after = wait_client(&mut rx, "resynced", |s| {
        s.streams >= 2 && synced_with(s, &srv, "p1")
    })
    .await;
    assert_ne!(after.version(ROUTE), before.version(ROUTE));
    assert!(after.connected);
    // The client told the new server what it kept.
    let st = srv.wait_status("p1", |s| s.types.len() == 4).await;
    assert_eq!(st.types[CLUSTER].initial_version, before.version(CLUSTER));
    assert_eq!(st.types[ROUTE].initial_version, before.version(ROUTE));
    client.shutdown().await;
    srv.stop().await;
}

/// (type, changed, removed, size of the complete set) per update.
type Updates = Arc<Mutex<Vec<(String, Vec<String>, Vec<String>, usize)>>>;

struct Incremental(Updates);

impl weft_xds::ConfigHandler for Incremental {
    fn apply(&mut self, _: &str, _: &[Any]) -> Result<(), String> {
        unreachable!("apply_update is overridden")
    }

    fn apply_update(&mut self, u: &weft_xds::Update<'_>) -> Result<(), String> {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        self.0.lock().unwrap().push((
            u.type_url.to_string(),
            strings(u.changed),
            strings(u.removed),
            u.resources.len(),
        ));
        Ok(())
    }
}

#[tokio::test]
async fn incremental_handler_sees_changed_and_removed_names() {
    let srv = TestServer::start(debounce_ms(0)).await;
    full_mesh(&srv, "1");
    let updates = Updates::default();
    let client =
        AdsClient::spawn(client_config(srv.url(), "p1"), Incremental(updates.clone())).unwrap();
    let mut rx = client.state();
    wait_client(&mut rx, "synced", |s| synced_with(s, &srv, "p1")).await;
    let last = |t: &str| {
        updates
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|u| u.0 == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        last(CLUSTER),
        (
            CLUSTER.to_string(),
            vec!["PassthroughCluster".into(), "a".into()],
            vec![],
            2
        )
    );

    // EDS-only push: one changed load assignment, the complete set of one.
    srv.generator
        .set_all(ENDPOINT, set([cla("a", "2"), cla("unrelated", "1")]));
    srv.pusher.trigger(PushRequest::endpoints("a moved"));
    wait_client(&mut rx, "eds 2", |s| synced_with(s, &srv, "p1")).await;
    assert_eq!(
        last(ENDPOINT),
        (ENDPOINT.to_string(), vec!["a".into()], vec![], 1)
    );

    // CDS drops PassthroughCluster.
    srv.generator.set_all(CLUSTER, set([eds_cluster("a")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Cluster], "drop"));
    wait_client(&mut rx, "cds 2", |s| synced_with(s, &srv, "p1")).await;
    assert_eq!(
        last(CLUSTER),
        (
            CLUSTER.to_string(),
            vec![],
            vec!["PassthroughCluster".into()],
            1
        )
    );
    client.shutdown().await;
    srv.stop().await;
}
