//! Unit tests of the label sources (node metadata, metadata exchange,
//! endpoint and cluster metadata) and the text rendering.

use super::peer::{Node, Workload, base64_decode, base64_encode, namespace_of, service};
use super::*;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

fn s(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn obj(fields: &[(&str, Value)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn node_md() -> Struct {
    obj(&[
        ("NAME", s("reviews-v2-abc")),
        ("NAMESPACE", s("bookinfo")),
        ("WORKLOAD_NAME", s("reviews-v2")),
        ("SERVICE_ACCOUNT", s("reviews")),
        ("CLUSTER_ID", s("Kubernetes")),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(obj(&[
                    ("app", s("reviews")),
                    ("version", s("v2")),
                ]))),
            },
        ),
    ])
}

#[test]
fn base64_round_trips() {
    for data in [&b""[..], b"a", b"ab", b"abc", b"\x00\xff\x10\x80hello"] {
        let e = base64_encode(data);
        assert_eq!(base64_decode(e.as_bytes()).unwrap(), data, "{e}");
    }
    assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
}

#[test]
fn node_metadata_gives_istio_labels_and_an_exchange_header() {
    let node = Node::from_metadata(
        "sidecar~10.0.0.1~reviews-v2-abc.bookinfo~bookinfo.svc.cluster.local",
        &node_md(),
    );
    assert_eq!(node.me.workload, "reviews-v2");
    assert_eq!(node.me.canonical_service, "reviews");
    assert_eq!(node.me.canonical_revision, "v2");
    assert_eq!(
        node.me.principal,
        "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    );
    let header = node.exchange.expect("exchange header");
    let peer = Workload::from_exchange(header.as_bytes()).expect("decodes");
    assert_eq!(peer, node.me);
}

#[test]
fn endpoint_and_cluster_metadata() {
    let md = Metadata {
        filter_metadata: [
            (
                "istio".to_string(),
                obj(&[("workload", s("ratings-v1;bookinfo;ratings;v1;Kubernetes"))]),
            ),
            (
                "weft".to_string(),
                obj(&[("app", s("ratings")), ("version", s("v1"))]),
            ),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let w = Workload::from_endpoint(&md).unwrap();
    assert_eq!(
        (
            w.workload.as_str(),
            w.namespace.as_str(),
            w.canonical_service.as_str(),
            w.app.as_str()
        ),
        ("ratings-v1", "bookinfo", "ratings", "ratings")
    );
    let svc = obj(&[
        ("host", s("ratings.bookinfo.svc.cluster.local")),
        ("name", s("ratings")),
        ("namespace", s("bookinfo")),
    ]);
    let cluster = Metadata {
        filter_metadata: [(
            "istio".to_string(),
            obj(&[(
                "services",
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![Value {
                            kind: Some(Kind::StructValue(svc)),
                        }],
                    })),
                },
            )]),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    assert_eq!(
        service(&cluster).unwrap(),
        (
            "ratings.bookinfo.svc.cluster.local".to_string(),
            "ratings".to_string(),
            "bookinfo".to_string()
        )
    );
    assert_eq!(namespace_of("spiffe://td/ns/foo/sa/bar"), Some("foo"));
    assert_eq!(namespace_of("spiffe://td/sa/bar"), None);
}

#[test]
fn exchange_headers_are_added_outbound_and_taken_inbound() {
    let m = IstioMetrics::default();
    let pb = envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
        metadata: Some(node_md()),
        ..Default::default()
    };
    m.set_node(Some(&pb));
    let out = m.scope(Reporter::Source, true);
    let mut h = HeaderMap::new();
    let _obs = HttpObs::start(Some(&out), &mut h);
    assert!(
        h.is_empty(),
        "outbound adds its headers once the cluster is known"
    );
    add_exchange(&out.node, &mut h);
    assert!(h.contains_key(PEER_METADATA) && h.contains_key(PEER_ID));
    let inb = m.scope(Reporter::Destination, true);
    let obs = HttpObs::start(Some(&inb), &mut h);
    assert!(!h.contains_key(PEER_METADATA) && !h.contains_key(PEER_ID));
    assert!(obs.peer_header.is_some());
    // Without an explicit direction nothing is exchanged.
    let quiet = m.scope(Reporter::Source, false);
    let mut h2 = HeaderMap::new();
    HttpObs::start(Some(&quiet), &mut h2);
    assert!(h2.is_empty());
}

#[test]
fn scopes_are_reused_across_config_versions_of_the_same_node() {
    let m = IstioMetrics::default();
    let mut pb = envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
        metadata: Some(node_md()),
        ..Default::default()
    };
    m.set_node(Some(&pb));
    let a = m.scope(Reporter::Source, true);
    m.set_node(Some(&pb.clone()));
    assert!(Arc::ptr_eq(&a, &m.scope(Reporter::Source, true)));
    assert!(!Arc::ptr_eq(&a, &m.scope(Reporter::Destination, true)));
    pb.metadata
        .as_mut()
        .unwrap()
        .fields
        .insert("NAMESPACE".into(), s("other"));
    m.set_node(Some(&pb));
    let b = m.scope(Reporter::Source, true);
    assert!(!Arc::ptr_eq(&a, &b), "a new node gives new scopes");
    assert_eq!(b.node.me.namespace, "other");
}
