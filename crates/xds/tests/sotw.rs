//! State-of-the-world ADS over real gRPC on 127.0.0.1.

mod common;

use common::*;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{PushRequest, XdsType};

#[tokio::test]
async fn initial_fetch_ack_then_push_on_change() {
    let srv = TestServer::start(debounce_ms(0)).await;
    let generator = &srv.generator;
    generator.set_all(
        CLUSTER,
        set([static_cluster("a", "1"), static_cluster("b", "1")]),
    );
    generator.set_all(LISTENER, set([rds_listener("0.0.0.0_80", "80")]));

    let mut s = RawSotw::connect(&srv.url()).await;
    s.subscribe("p1", CLUSTER, &[]);
    let cds = s.recv().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(names(&cds), ["a", "b"]);
    assert_eq!(cds.version_info, generator.get("p1", CLUSTER).version());
    assert!(!cds.nonce.is_empty());
    s.ack(&cds, &[]);
    s.send(weft_xds::DiscoveryRequest {
        type_url: LISTENER.into(),
        ..Default::default()
    });
    let lds = s.recv().await;
    assert_eq!(names(&lds), ["0.0.0.0_80"]);
    s.ack(&lds, &[]);

    let status = srv
        .wait_status("p1", |st| {
            st.types.get(LISTENER).is_some_and(|t| t.synced())
        })
        .await;
    assert_eq!(status.types[CLUSTER].acked_version, cds.version_info);
    assert_eq!(
        status.types[CLUSTER].subscribed,
        weft_xds::status::names(["*"])
    );
    assert_eq!(status.types[CLUSTER].initial_version, "");
    assert_eq!(srv.server.metrics().connected_proxies(), 1);

    // Change clusters only; a full push re-sends CDS (whole set) and skips
    // LDS, whose set did not change.
    generator.set_all(
        CLUSTER,
        set([static_cluster("a", "2"), static_cluster("b", "1")]),
    );
    srv.pusher.trigger(PushRequest::full("test"));
    let cds2 = s.recv().await;
    assert_eq!(cds2.type_url, CLUSTER);
    assert_eq!(names(&cds2), ["a", "b"], "CDS always carries the full set");
    assert_ne!(cds2.version_info, cds.version_info);
    assert_ne!(cds2.nonce, cds.nonce);
    s.ack(&cds2, &[]);
    let status = srv
        .wait_status("p1", |st| {
            st.types[CLUSTER].acked_version == cds2.version_info
        })
        .await;
    assert_eq!(
        status.types[LISTENER].responses, 1,
        "unchanged LDS was pushed"
    );
    assert_eq!(srv.server.metrics().pushes(CLUSTER), 2);
    assert_eq!(srv.server.metrics().pushes(LISTENER), 1);
    let text = srv.metrics_text();
    assert!(
        text.contains("pilot_proxy_convergence_time_count 1\n"),
        "one push converged: {text}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn nack_keeps_last_version_and_is_not_resent_until_change() {
    let srv = TestServer::start(debounce_ms(0)).await;
    let generator = &srv.generator;
    generator.set_all(CLUSTER, set([static_cluster("a", "good")]));
    generator.set_all(LISTENER, set([rds_listener("l", "r1")]));
    let mut s = RawSotw::connect(&srv.url()).await;
    s.subscribe("p1", CLUSTER, &[]);
    let good = s.recv().await;
    s.ack(&good, &[]);
    s.subscribe("p1", LISTENER, &[]);
    let lds = s.recv().await;
    s.ack(&lds, &[]);

    generator.set_all(CLUSTER, set([static_cluster("a", "bad")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Cluster], "bad"));
    let bad = s.recv().await;
    assert_eq!(bad.type_url, CLUSTER);
    s.nack(
        &bad,
        &good.version_info,
        "cluster a: field alt_stat_name: unsupported",
    );
    let status = srv
        .wait_status("p1", |st| st.types[CLUSTER].nacks == 1)
        .await;
    let cds = &status.types[CLUSTER];
    assert_eq!(
        cds.acked_version, good.version_info,
        "stays on the accepted version"
    );
    assert_eq!(cds.sent_version, bad.version_info);
    let nack = cds.last_nack.as_ref().unwrap();
    assert_eq!(nack.version, bad.version_info);
    assert!(nack.message.contains("alt_stat_name"));
    assert_eq!(srv.server.metrics().rejects(CLUSTER), 1);
    assert!(
        srv.metrics_text()
            .contains("pilot_total_xds_rejects{type=\"cds\"} 1\n")
    );

    // A push with the same (rejected) state sends nothing for CDS. The LDS
    // change pushed after it proves the CDS decision was already taken
    // (CDS goes first in push order).
    srv.pusher.trigger(PushRequest::full("same state"));
    generator.set_all(LISTENER, set([rds_listener("l", "r2")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Listener], "sentinel"));
    let next = s.recv().await;
    assert_eq!(
        next.type_url, LISTENER,
        "rejected CDS version was sent again"
    );
    s.ack(&next, &[]);

    // A new state is pushed.
    generator.set_all(CLUSTER, set([static_cluster("a", "fixed")]));
    srv.pusher.trigger(PushRequest::full("fixed"));
    let fixed = s.recv().await;
    assert_eq!(fixed.type_url, CLUSTER);
    assert_ne!(fixed.version_info, bad.version_info);
    s.ack(&fixed, &[]);
    let status = srv
        .wait_status("p1", |st| {
            st.types[CLUSTER].acked_version == fixed.version_info
        })
        .await;
    assert!(
        status.types[CLUSTER].last_nack.is_some(),
        "last NACK kept for diagnosis"
    );
    let syncz = status.istio_syncz();
    assert_eq!(syncz["proxy"], "p1");
    assert_eq!(syncz["cluster_sent"], fixed.nonce.as_str());
    assert_eq!(syncz["cluster_acked"], fixed.nonce.as_str());
    assert_eq!(syncz["listener_acked"], next.nonce.as_str());
    assert_eq!(
        syncz["weft_versions"]["cds"]["acked"],
        fixed.version_info.as_str()
    );
    assert_eq!(
        syncz["weft_last_nack"]["cds"]["message"],
        "cluster a: field alt_stat_name: unsupported"
    );
    srv.stop().await;
}

#[tokio::test]
async fn eds_only_push_and_named_subscriptions() {
    let srv = TestServer::start(debounce_ms(0)).await;
    let generator = &srv.generator;
    generator.set_all(CLUSTER, set([eds_cluster("a"), eds_cluster("b")]));
    generator.set_all(ENDPOINT, set([cla("a", "1"), cla("b", "1")]));
    generator.set_all(LISTENER, set([rds_listener("l", "80")]));
    generator.set_all(ROUTE, set([route("80", "x")]));

    let mut s = RawSotw::connect(&srv.url()).await;
    s.subscribe("p1", CLUSTER, &[]);
    let cds = s.recv().await;
    s.ack(&cds, &[]);
    s.subscribe("p1", ENDPOINT, &["a"]);
    let eds = s.recv().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(names(&eds), ["a"], "only subscribed names");
    s.ack(&eds, &["a"]);
    s.subscribe("p1", LISTENER, &[]);
    let lds = s.recv().await;
    s.ack(&lds, &[]);

    // Adding a name in the ACK sends just the new resource.
    s.ack(&eds, &["a", "b"]);
    let eds_b = s.recv().await;
    assert_eq!(names(&eds_b), ["b"]);
    s.ack(&eds_b, &["a", "b"]);

    // Clusters and endpoints change, but only an EDS push is requested.
    generator.set_all(
        CLUSTER,
        set([eds_cluster("a"), eds_cluster("b"), eds_cluster("c")]),
    );
    generator.set_all(ENDPOINT, set([cla("a", "2"), cla("b", "1")]));
    srv.pusher.trigger(PushRequest::endpoints("endpoints of a"));
    let eds2 = s.recv().await;
    assert_eq!(eds2.type_url, ENDPOINT);
    assert_eq!(names(&eds2), ["a"], "only the changed load assignment");
    s.ack(&eds2, &["a", "b"]);
    // The next response is the sentinel LDS push: CDS was not pushed.
    generator.set_all(LISTENER, set([rds_listener("l", "81")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Listener], "sentinel"));
    let next = s.recv().await;
    assert_eq!(
        next.type_url, LISTENER,
        "an EDS-only push sent another type"
    );
    assert_eq!(srv.server.metrics().pushes(CLUSTER), 1);
    srv.stop().await;
}

#[tokio::test]
async fn each_proxy_gets_its_own_resources() {
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator
        .set("p1", CLUSTER, set([static_cluster("only-p1", "1")]));
    srv.generator
        .set("p2", CLUSTER, set([static_cluster("only-p2", "1")]));
    let mut s1 = RawSotw::connect(&srv.url()).await;
    let mut s2 = RawSotw::connect(&srv.url()).await;
    s1.subscribe("p1", CLUSTER, &[]);
    s2.subscribe("p2", CLUSTER, &[]);
    let r1 = s1.recv().await;
    let r2 = s2.recv().await;
    assert_eq!(names(&r1), ["only-p1"]);
    assert_eq!(names(&r2), ["only-p2"]);
    s1.ack(&r1, &[]);
    s2.ack(&r2, &[]);

    // A change for p2 only: p2 gets a push, p1 does not.
    srv.generator
        .set("p2", CLUSTER, set([static_cluster("only-p2", "2")]));
    srv.pusher.trigger(PushRequest::full("p2 changed"));
    let r2b = s2.recv().await;
    assert_eq!(names(&r2b), ["only-p2"]);
    s2.ack(&r2b, &[]);
    srv.wait_status("p2", |st| {
        st.types[CLUSTER].acked_version == r2b.version_info
    })
    .await;
    let all = srv.server.sync_status();
    assert_eq!(all.len(), 2);
    assert_eq!(srv.server.node("p1").unwrap().id, "p1");
    assert_eq!(srv.server.node("p2").unwrap().cluster, "test");
    assert!(srv.server.node("p3").is_none());
    let p1 = all.iter().find(|st| st.proxy_id == "p1").unwrap();
    assert_eq!(p1.types[CLUSTER].responses, 1);
    assert_eq!(srv.server.metrics().connected_proxies(), 2);
    drop(s1);
    srv.wait_status("p2", |_| srv.server.sync_status().len() == 1)
        .await;
    assert_eq!(srv.server.metrics().connected_proxies(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn burst_of_triggers_is_one_push() {
    // Long enough that the synchronous triggers below all land in one
    // window; the test never measures time.
    let srv = TestServer::start(debounce_ms(300)).await;
    srv.generator
        .set_all(CLUSTER, set([static_cluster("a", "0")]));
    srv.generator
        .set_all(LISTENER, set([rds_listener("l", "r0")]));
    let mut s = RawSotw::connect(&srv.url()).await;
    s.subscribe("p1", CLUSTER, &[]);
    let first = s.recv().await;
    s.ack(&first, &[]);
    s.subscribe("p1", LISTENER, &[]);
    let lds = s.recv().await;
    s.ack(&lds, &[]);

    for i in 1..=5 {
        srv.generator
            .set_all(CLUSTER, set([static_cluster("a", &i.to_string())]));
        srv.pusher.trigger(PushRequest::full(format!("change {i}")));
    }
    let pushed = s.recv().await;
    assert_eq!(pushed.type_url, CLUSTER);
    assert_eq!(
        pushed.version_info,
        srv.generator.get("p1", CLUSTER).version()
    );
    s.ack(&pushed, &[]);
    let state = srv.pusher.current();
    assert_eq!(state.version, 1, "five triggers, one push");
    assert_eq!(state.coalesced, 5);

    srv.generator
        .set_all(LISTENER, set([rds_listener("l", "r1")]));
    srv.pusher
        .trigger(PushRequest::types([XdsType::Listener], "sentinel"));
    assert_eq!(s.recv().await.type_url, LISTENER);
    assert_eq!(srv.server.metrics().pushes(CLUSTER), 2);
    srv.stop().await;
}

#[tokio::test]
async fn stale_nonce_is_ignored_and_missing_node_rejected() {
    let srv = TestServer::start(debounce_ms(0)).await;
    srv.generator
        .set_all(CLUSTER, set([static_cluster("a", "1")]));
    let mut s = RawSotw::connect(&srv.url()).await;
    s.subscribe("p1", CLUSTER, &[]);
    let r1 = s.recv().await;
    srv.generator
        .set_all(CLUSTER, set([static_cluster("a", "2")]));
    srv.pusher.trigger(PushRequest::full("x"));
    let r2 = s.recv().await;
    // An ACK of the older response is stale: not recorded. The LDS
    // subscription after it is answered only once the ACK was handled.
    s.ack(&r1, &[]);
    s.subscribe("p1", LISTENER, &[]);
    assert_eq!(s.recv().await.type_url, LISTENER);
    let st = srv.server.sync_status();
    assert_eq!(st[0].types[CLUSTER].acked_version, "", "stale ACK recorded");
    s.ack(&r2, &[]);
    let st = srv
        .wait_status("p1", |st| !st.types[CLUSTER].acked_version.is_empty())
        .await;
    assert_eq!(st.types[CLUSTER].acked_version, r2.version_info);

    let mut anonymous = RawSotw::connect(&srv.url()).await;
    anonymous.send(weft_xds::DiscoveryRequest {
        type_url: CLUSTER.into(),
        ..Default::default()
    });
    let err = anonymous.recv_err().await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node.id"), "{}", err.message());
    srv.stop().await;
}

#[tokio::test]
async fn changed_eds_cluster_gets_its_unchanged_endpoints_again() {
    let srv = TestServer::start(debounce_ms(0)).await;
    let g = &srv.generator;
    g.set_all(CLUSTER, set([eds_cluster("a"), eds_cluster("b")]));
    g.set_all(ENDPOINT, set([cla("a", "1"), cla("b", "1")]));
    g.set_all(LISTENER, set([rds_listener("l", "80")]));
    let mut s = RawSotw::connect(&srv.url()).await;
    s.subscribe("p1", CLUSTER, &[]);
    let cds = s.recv().await;
    s.ack(&cds, &[]);
    s.subscribe("p1", ENDPOINT, &["a", "b"]);
    let eds = s.recv().await;
    s.ack(&eds, &["a", "b"]);

    // Cluster a's definition changes (Envoy re-warms it); its endpoints do not.
    g.set_all(
        CLUSTER,
        set([eds_cluster_marked("a", "x"), eds_cluster("b")]),
    );
    srv.pusher.trigger(PushRequest::full("cluster a changed"));
    let cds2 = s.recv().await;
    assert_eq!(cds2.type_url, CLUSTER);
    s.ack(&cds2, &[]);
    let eds2 = s.recv().await;
    assert_eq!(eds2.type_url, ENDPOINT);
    assert_eq!(
        names(&eds2),
        ["a"],
        "only the re-warming cluster's assignment"
    );
    assert_eq!(
        eds2.version_info, eds.version_info,
        "endpoints themselves unchanged"
    );
    srv.stop().await;
}

/// Generates per node cluster and counts how often it is asked.
struct Counting {
    calls: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
}

impl weft_xds::Generator for Counting {
    fn generate(&self, node: &weft_xds::NodeInfo, type_url: &str) -> weft_xds::ResourceSet {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        match type_url {
            CLUSTER => set([static_cluster(&node.cluster, &generation.to_string())]),
            _ => weft_xds::ResourceSet::new(),
        }
    }

    fn cache_key(&self, node: &weft_xds::NodeInfo, _type_url: &str) -> Option<String> {
        Some(node.cluster.clone())
    }
}

#[tokio::test]
async fn proxies_with_one_cache_key_share_one_generation_per_push() {
    use std::sync::atomic::Ordering::SeqCst;
    let generator = std::sync::Arc::new(Counting {
        calls: Default::default(),
        generation: Default::default(),
    });
    let pusher = weft_xds::Pusher::spawn(debounce_ms(0));
    let server = weft_xds::AdsServer::new(
        generator.clone(),
        &pusher,
        std::sync::Arc::new(weft_xds::XdsMetrics::unregistered()),
        weft_xds::ServerOptions::default(),
    );
    let listener = weft_xds::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let srv = server.clone();
    tokio::spawn(async move { srv.serve(listener, std::future::pending()).await });

    let mut streams = Vec::new();
    for i in 0..5 {
        let mut s = RawSotw::connect(&url).await;
        s.subscribe(&format!("p{i}"), CLUSTER, &[]);
        let r = s.recv().await;
        assert_eq!(
            names(&r),
            ["test"],
            "node.cluster of every test node is \"test\""
        );
        s.ack(&r, &[]);
        streams.push((s, r.version_info));
    }
    assert_eq!(
        generator.calls.load(SeqCst),
        1,
        "five proxies, one generation"
    );

    generator.generation.store(1, SeqCst);
    pusher.trigger(PushRequest::types([XdsType::Cluster], "change"));
    for (s, old) in &mut streams {
        let r = s.recv().await;
        assert_ne!(&r.version_info, old);
    }
    assert_eq!(
        generator.calls.load(SeqCst),
        2,
        "one more generation for the push"
    );
    server.close();
}

#[tokio::test]
async fn streams_survive_a_dropped_pusher() {
    let generator = std::sync::Arc::new(TestGenerator::default());
    generator.set_all(CLUSTER, set([static_cluster("a", "1")]));
    generator.set_all(LISTENER, set([rds_listener("l", "r")]));
    let pusher = weft_xds::Pusher::spawn(debounce_ms(0));
    let server = weft_xds::AdsServer::new(
        generator,
        &pusher,
        std::sync::Arc::new(weft_xds::XdsMetrics::unregistered()),
        weft_xds::ServerOptions::default(),
    );
    drop(pusher);
    let listener = weft_xds::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let srv = server.clone();
    tokio::spawn(async move { srv.serve(listener, std::future::pending()).await });
    let mut s = RawSotw::connect(&url).await;
    s.subscribe("p1", CLUSTER, &[]);
    let r = s.recv().await;
    s.ack(&r, &[]);
    s.subscribe("p1", LISTENER, &[]);
    assert_eq!(s.recv().await.type_url, LISTENER);
    server.close();
}
