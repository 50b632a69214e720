//! What the ADS server keeps for a proxy goes with the proxy: real gRPC
//! clients (weft_xds's `AdsClient`) on loopback connect from three
//! namespaces and disconnect; the status rows, the `pilot_xds` gauge, the
//! sets shared per cache key and the generator's per-proxy state
//! ([`Generator::forget`]) all return to their baseline, and a proxy that
//! connects again still gets its whole config.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{
    AdsClient, AdsServer, Any, ClientConfig, ClientHandle, Generator, NodeInfo, ProxyMetadata,
    Pusher, ResourceSet, ServerOptions, XdsMetrics,
};

/// Config per namespace, cached per namespace; remembers whom it forgot.
#[derive(Default)]
struct PerNamespace {
    forgotten: Mutex<Vec<String>>,
}

impl Generator for PerNamespace {
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet {
        let ns = node.metadata_str("NAMESPACE").unwrap_or("none");
        let cluster = format!("outbound|80||svc.{ns}");
        match type_url {
            CLUSTER => set([eds_cluster(&cluster)]),
            ENDPOINT => set([cla(&cluster, ns)]),
            LISTENER => set([rds_listener("0.0.0.0_80", "80")]),
            ROUTE => set([route("80", &format!("svc.{ns}"))]),
            _ => ResourceSet::new(),
        }
    }

    fn cache_key(&self, node: &NodeInfo, _type_url: &str) -> Option<String> {
        node.metadata_str("NAMESPACE").map(str::to_string)
    }

    fn forget(&self, node: &NodeInfo) {
        self.forgotten.lock().unwrap().push(node.id.clone());
    }
}

fn metadata(ns: &str, i: usize) -> ProxyMetadata {
    ProxyMetadata {
        ips: vec![format!("10.0.{}.{i}", ns.len())],
        pod_name: format!("app-{i}"),
        namespace: ns.to_string(),
        ..Default::default()
    }
}

fn client(url: &str, md: &ProxyMetadata) -> ClientHandle {
    AdsClient::spawn(
        ClientConfig::new(url, md.to_node()),
        |_: &str, _: &[Any]| Ok(()),
    )
    .expect("client")
}

/// Waits until every type of `id`'s stream is ACKed at the version sent.
async fn wait_synced(srv: &AdsServer, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = srv.sync_status();
        let synced = all.iter().any(|s| {
            s.proxy_id == id
                && [CLUSTER, ENDPOINT, LISTENER, ROUTE]
                    .iter()
                    .all(|t| s.types.get(*t).is_some_and(|t| t.synced()))
        });
        if synced {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never synced: {all:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it returns true.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_state_is_pruned_on_disconnect() {
    let generator = Arc::new(PerNamespace::default());
    let pusher = Pusher::spawn(debounce_ms(0));
    let metrics = Arc::new(XdsMetrics::unregistered());
    let server = AdsServer::new(
        generator.clone(),
        &pusher,
        metrics.clone(),
        ServerOptions::default(),
    );
    let listener = weft_xds::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let srv = server.clone();
    tokio::spawn(async move { srv.serve(listener, std::future::pending()).await });
    assert_eq!((server.connected_proxies(), server.cached_sets()), (0, 0));

    // 12 proxies in 3 namespaces: 3 keys x 4 types shared sets.
    let mut clients = Vec::new();
    for ns in ["alpha", "beta", "gamma"] {
        for i in 0..4 {
            let md = metadata(ns, i);
            clients.push((md.node_id(), ns, client(&url, &md)));
        }
    }
    for (id, _, _) in &clients {
        wait_synced(&server, id).await;
    }
    assert_eq!(server.connected_proxies(), 12);
    assert_eq!(server.sync_status().len(), 12);
    assert_eq!(metrics.connected_proxies(), 12);
    assert_eq!(server.cached_sets(), 12);

    // One namespace's proxies leave: its shared sets go, the others stay.
    let mut gone = Vec::new();
    for (id, _, handle) in clients.extract_if(.., |(_, ns, _)| *ns == "alpha") {
        handle.shutdown().await;
        gone.push(id);
    }
    eventually("alpha's proxies forgotten", || {
        generator.forgotten.lock().unwrap().len() == 4
    })
    .await;
    assert_eq!(server.cached_sets(), 8);
    assert_eq!(server.connected_proxies(), 8);
    gone.sort();
    let mut forgotten = generator.forgotten.lock().unwrap().clone();
    forgotten.sort();
    assert_eq!(forgotten, gone);

    for (_, _, handle) in clients.drain(..) {
        handle.shutdown().await;
    }
    eventually("every proxy gone", || {
        server.sync_status().is_empty() && metrics.connected_proxies() == 0
    })
    .await;
    assert_eq!((server.connected_proxies(), server.cached_sets()), (0, 0));
    assert_eq!(generator.forgotten.lock().unwrap().len(), 12);

    // A proxy connecting again gets everything, from scratch.
    let md = metadata("beta", 1);
    let id = md.node_id();
    let again = client(&url, &md);
    wait_synced(&server, &id).await;
    let mut state = again.state();
    let st = state
        .wait_for(|s| {
            [CLUSTER, ENDPOINT, LISTENER, ROUTE]
                .iter()
                .all(|t| !s.version(t).is_empty())
        })
        .await
        .unwrap()
        .clone();
    let node = NodeInfo::from_node(Some(md.to_node())).unwrap();
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        assert_eq!(st.version(t), generator.generate(&node, t).version(), "{t}");
    }
    assert_eq!(server.cached_sets(), 4);

    // A second stream of the same proxy (a reconnect overlapping the old
    // one): closing either keeps the proxy; closing both forgets it.
    let mut second = RawSotw::connect(&url).await;
    second.send(weft_xds::DiscoveryRequest {
        node: Some(md.to_node()),
        type_url: CLUSTER.to_string(),
        ..Default::default()
    });
    assert_eq!(second.recv().await.type_url, CLUSTER);
    assert_eq!(server.sync_status().len(), 2);
    drop(second);
    eventually("the second stream closed", || {
        server.sync_status().len() == 1
    })
    .await;
    assert_eq!(generator.forgotten.lock().unwrap().len(), 12);
    assert_eq!(server.cached_sets(), 4);
    again.shutdown().await;
    eventually("the proxy forgotten again", || {
        generator.forgotten.lock().unwrap().len() == 13
    })
    .await;
    assert_eq!((server.connected_proxies(), server.cached_sets()), (0, 0));
    assert_eq!(metrics.connected_proxies(), 0);
    server.close();
}
