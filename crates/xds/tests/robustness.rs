//! Random request sequences (stale and unknown nonces, NACKs, odd names and
//! types, interleaved pushes) must never break a stream: afterwards the
//! same stream still answers a fresh subscription, and a new proxy still
//! gets a correct initial response.

mod common;

use common::*;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use weft_xds::{DeltaDiscoveryRequest, DiscoveryRequest, PushRequest};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

const TYPES: [&str; 5] = [
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    "type.googleapis.com/weft.Unknown",
];
const NAMES: [&str; 5] = ["a", "b", "c", "*", ""];

fn mesh(srv: &TestServer, generation: u64) {
    let g = generation.to_string();
    srv.generator.set_all(
        CLUSTER,
        set([eds_cluster_marked("a", &g), eds_cluster("b")]),
    );
    srv.generator
        .set_all(ENDPOINT, set([cla("a", &g), cla("b", "1")]));
    srv.generator
        .set_all(LISTENER, set([rds_listener("l", "r")]));
    srv.generator.set_all(ROUTE, set([route("r", &g)]));
    srv.generator
        .set_all(SECRET, set([static_cluster("not-a-secret", &g)]));
}

#[tokio::test]
async fn random_sotw_requests_never_break_the_stream() {
    let srv = TestServer::start(debounce_ms(0)).await;
    mesh(&srv, 0);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut s = RawSotw::connect(&srv.url()).await;
    s.subscribe("fuzz", CLUSTER, &[]);
    let mut nonces = vec![s.recv().await.nonce];
    for step in 0..400u64 {
        let names: Vec<String> = (0..rng.next() % 4)
            .map(|_| rng.pick(&NAMES).to_string())
            .collect();
        let nonce = match rng.next() % 4 {
            0 => String::new(),
            1 => "bogus".to_string(),
            _ => rng.pick(&nonces).clone(),
        };
        let error = (rng.next().is_multiple_of(5)).then(|| envoy_types::pb::google::rpc::Status {
            code: (rng.next() % 17) as i32,
            message: if rng.next().is_multiple_of(2) {
                String::new()
            } else {
                format!("nack {step}")
            },
            details: vec![],
        });
        s.send(DiscoveryRequest {
            version_info: if rng.next().is_multiple_of(2) {
                String::new()
            } else {
                "v?".into()
            },
            type_url: rng.pick(&TYPES).to_string(),
            resource_names: names,
            response_nonce: nonce,
            error_detail: error,
            ..Default::default()
        });
        if rng.next().is_multiple_of(10) {
            mesh(&srv, step);
            srv.pusher
                .trigger(PushRequest::full(format!("step {step}")));
        }
        while let Some(r) = s.try_recv().await {
            nonces.push(r.nonce);
        }
    }
    assert!(
        nonces.len() > 20,
        "too few responses exercised: {}",
        nonces.len()
    );
    // The stream still works: a first request for a new type is answered.
    s.subscribe("fuzz", SECRET, &["not-a-secret"]);
    loop {
        let r = s.recv().await;
        if r.type_url == SECRET {
            assert_eq!(names(&r), ["not-a-secret"]);
            break;
        }
    }
    // And a new proxy gets the current state.
    let mut fresh = RawSotw::connect(&srv.url()).await;
    fresh.subscribe("fresh", CLUSTER, &[]);
    let r = fresh.recv().await;
    assert_eq!(
        r.version_info,
        srv.generator.get("fresh", CLUSTER).version()
    );
    assert_eq!(srv.server.sync_status().len(), 2);
    srv.stop().await;
}

#[tokio::test]
async fn random_delta_requests_never_break_the_stream() {
    let srv = TestServer::start(debounce_ms(0)).await;
    mesh(&srv, 0);
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let mut d = RawDelta::connect(&srv.url()).await;
    d.send(DeltaDiscoveryRequest {
        node: Some(node("fuzz")),
        type_url: CLUSTER.into(),
        ..Default::default()
    });
    let mut nonces = vec![d.recv().await.nonce];
    for step in 0..400u64 {
        let pick_names = |rng: &mut Rng| -> Vec<String> {
            (0..rng.next() % 3)
                .map(|_| rng.pick(&NAMES).to_string())
                .collect()
        };
        let subscribe = pick_names(&mut rng);
        let unsubscribe = pick_names(&mut rng);
        let nonce = match rng.next() % 4 {
            0 => String::new(),
            1 => "bogus".to_string(),
            _ => rng.pick(&nonces).clone(),
        };
        let error = (rng.next().is_multiple_of(5)).then(|| envoy_types::pb::google::rpc::Status {
            code: 3,
            message: format!("nack {step}"),
            details: vec![],
        });
        let mut initial = std::collections::HashMap::new();
        if rng.next().is_multiple_of(8) {
            initial.insert(rng.pick(&NAMES).to_string(), "stale".to_string());
        }
        d.send(DeltaDiscoveryRequest {
            type_url: rng.pick(&TYPES).to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: initial,
            response_nonce: nonce,
            error_detail: error,
            ..Default::default()
        });
        if rng.next().is_multiple_of(10) {
            mesh(&srv, step);
            srv.pusher
                .trigger(PushRequest::full(format!("step {step}")));
        }
        while let Some(r) = d.try_recv().await {
            nonces.push(r.nonce);
        }
    }
    assert!(
        nonces.len() > 20,
        "too few responses exercised: {}",
        nonces.len()
    );
    d.send(DeltaDiscoveryRequest {
        type_url: SECRET.into(),
        resource_names_subscribe: vec!["not-a-secret".into()],
        ..Default::default()
    });
    loop {
        let r = d.recv().await;
        if r.type_url == SECRET {
            assert_eq!(r.resources.len(), 1);
            assert_eq!(r.resources[0].name, "not-a-secret");
            break;
        }
    }
    srv.stop().await;
}
