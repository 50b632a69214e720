//! Security translation rules that the golden scenarios do not pin down:
//! MeshConfig `enableAutoMtls: false` (an explicit ISTIO_MUTUAL still
//! applies), headless services (original destination clusters get mTLS only
//! when every instance has a sidecar), and a namespace PeerAuthentication
//! DISABLE turning client-side auto mTLS off.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use weft_api::store::{StoreOptions, build_snapshot};
use weft_control::translate::{MeshView, ProxyNode, ProxyResources, TranslateOptions};

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-545db77b95-2ps7q
  namespace: default
  labels: {app: reviews, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: reviews}
status: {phase: Running, podIP: 10.1.0.21}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: default
  labels: {app: db, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: db}
status: {phase: Running, podIP: 10.1.0.31}
"#;

fn translate(extra: &str) -> ProxyResources {
    let files = BTreeMap::from([
        ("mesh.yaml".to_string(), MESH.to_string()),
        ("extra.yaml".to_string(), extra.to_string()),
    ]);
    let snapshot = build_snapshot(&files, Vec::new(), None, &StoreOptions::default());
    let errors: Vec<_> = snapshot.problems.iter().filter(|p| p.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let node = ProxyNode::sidecar(
        "default",
        "client-5d8f9c7b6d-k2j4x",
        "10.1.0.9",
        [("app", "client")],
    );
    MeshView::new(&snapshot, TranslateOptions::default()).translate(&node)
}

fn cluster<'a>(res: &'a ProxyResources, name: &str) -> &'a Cluster {
    res.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const DB: &str = "outbound|5432||db.default.svc.cluster.local";

#[test]
fn auto_mtls_is_on_by_default_and_follows_mesh_config() {
    let on = translate("");
    assert_eq!(cluster(&on, REVIEWS).transport_socket_matches.len(), 2);
    let off = translate(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    enableAutoMtls: false\n",
    );
    let c = cluster(&off, REVIEWS);
    assert!(c.transport_socket_matches.is_empty() && c.transport_socket.is_none());
    // An explicit ISTIO_MUTUAL still applies without auto mTLS.
    let dr = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    enableAutoMtls: false\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n";
    let explicit = translate(dr);
    let c = cluster(&explicit, REVIEWS);
    assert!(c.transport_socket.is_some() && c.transport_socket_matches.is_empty());
}

#[test]
fn headless_services_get_mtls_only_when_every_instance_has_a_sidecar() {
    let all = translate("");
    let c = cluster(&all, DB);
    assert!(
        c.transport_socket.is_some() && c.transport_socket_matches.is_empty(),
        "original-destination cluster with sidecars everywhere: plain mTLS socket: {c:?}"
    );
    let mixed = translate(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: db-1, namespace: default, labels: {app: db}}\nstatus: {phase: Running, podIP: 10.1.0.32}\n",
    );
    let c = cluster(&mixed, DB);
    assert!(
        c.transport_socket.is_none() && c.transport_socket_matches.is_empty(),
        "one instance without a sidecar: plaintext: {c:?}"
    );
}

#[test]
fn namespace_disable_turns_client_side_mtls_off() {
    let res = translate(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: DISABLE}}\n",
    );
    let c = cluster(&res, REVIEWS);
    assert!(c.transport_socket_matches.is_empty() && c.transport_socket.is_none());
}
