//! Metadata weft-proxy reads to label Istio's standard metrics
//! (`istio_requests_total` and friends) without per-request lookups.
//!
//! Keys, all string values unless noted:
//!
//! | where | `filter_metadata` key | fields |
//! |---|---|---|
//! | outbound cluster | `istio` | `services`: list of `{host, name, namespace}` (Istio's own shape); `default_original_port` (number) |
//! | outbound cluster | `weft` | `direction`=`outbound`, `destination_service` (FQDN), `destination_service_name`, `destination_service_namespace`, `destination_port`, `destination_subset`, `destination_protocol` |
//! | inbound cluster | `weft` | `direction`=`inbound`, the above `destination_service*` of the served service, and the proxy's own workload as `destination_workload`, `destination_workload_namespace`, `destination_canonical_service`, `destination_canonical_revision`, `destination_app`, `destination_version`, `destination_principal` |
//! | outbound cluster of a DestinationRule | `istio` | `config`: `/apis/networking.istio.io/VERSION/namespaces/NS/destination-rule/NAME`, `subset` (subset clusters) |
//! | inbound cluster | `istio` | `services`: the services served on that port, `{host, name, namespace}` |
//! | EDS endpoint (`LbEndpoint.metadata`) | `istio` | `workload`: `NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER` (Istio's form) |
//! | endpoint of a sidecar pod (`security.istio.io/tlsMode: istio`) | `envoy.transport_socket_match` | `tlsMode`: `istio` (auto mTLS) |
//! | EDS endpoint | `weft` | `workload`, `namespace`, `canonical_service`, `canonical_revision`, `app`, `version`, `principal` of the endpoint's workload |
//! | `virtualOutbound`, `virtualInbound` listeners | `weft` | the proxy's own workload as `source_workload`, `source_workload_namespace`, `source_canonical_service`, `source_canonical_revision`, `source_app`, `source_version`, `source_principal` |
//!
//! Principals are SPIFFE ids `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::Struct;
use weft_api::registry::{Endpoint, Service};

use super::node::{ProxyNode, canonical_revision, canonical_service, workload_from_pod};
use super::pb;
use super::tls::{TLS_MODE_ISTIO, TLS_MODE_KEY, TLS_MODE_LABEL, TRANSPORT_SOCKET_MATCH};

/// `filter_metadata` key Istio uses.
pub const ISTIO: &str = "istio";
/// `filter_metadata` key for weft-proxy's metrics labels.
pub const WEFT: &str = "weft";

/// A SPIFFE principal.
pub fn principal(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

fn metadata(entries: Vec<(&str, Struct)>) -> Metadata {
    let filter_metadata: HashMap<String, Struct> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Metadata {
        filter_metadata,
        ..Metadata::default()
    }
}

fn service_fields(svc: &Service, port: u32) -> Vec<(&'static str, String)> {
    vec![
        ("destination_service", svc.hostname.clone()),
        ("destination_service_name", svc.name.clone()),
        ("destination_service_namespace", svc.namespace.clone()),
        ("destination_port", port.to_string()),
    ]
}

fn weft_struct(fields: Vec<(&str, String)>) -> Struct {
    pb::string_struct(fields.iter().map(|(k, v)| (*k, v.as_str())))
}

fn service_value(svc: &Service) -> envoy_types::pb::google::protobuf::Value {
    pb::struct_value(pb::string_struct([
        ("host", svc.hostname.as_str()),
        ("name", svc.name.as_str()),
        ("namespace", svc.namespace.as_str()),
    ]))
}

/// Adds Istio's `istio.config` (the DestinationRule that shaped the
/// cluster) and, for subset clusters, `istio.subset`.
pub fn add_istio_config(md: &mut Metadata, dr: &weft_api::Object, subset: &str) {
    let version = dr
        .api_version
        .rsplit('/')
        .next()
        .filter(|v| !v.is_empty())
        .unwrap_or("v1");
    let istio = md.filter_metadata.entry(ISTIO.to_string()).or_default();
    istio.fields.insert(
        "config".to_string(),
        pb::string(&format!(
            "/apis/networking.istio.io/{version}/namespaces/{}/destination-rule/{}",
            dr.namespace(),
            dr.name()
        )),
    );
    if !subset.is_empty() {
        istio
            .fields
            .insert("subset".to_string(), pb::string(subset));
    }
}

/// Metadata of `outbound|PORT|SUBSET|HOST`.
pub fn outbound_cluster(svc: &Service, port: u32, subset: &str, protocol: &str) -> Metadata {
    let istio = pb::structure(BTreeMap::from([
        ("services".to_string(), pb::list(vec![service_value(svc)])),
        (
            "default_original_port".to_string(),
            pb::number(f64::from(port)),
        ),
    ]));
    let mut fields = vec![("direction", "outbound".to_string())];
    fields.extend(service_fields(svc, port));
    fields.push(("destination_subset", subset.to_string()));
    fields.push(("destination_protocol", protocol.to_string()));
    metadata(vec![(ISTIO, istio), (WEFT, weft_struct(fields))])
}

/// Metadata of `inbound|PORT||`: the served service(s) (the first one
/// for weft's labels, all of them in Istio's `istio.services`) and the
/// proxy itself.
pub fn inbound_cluster(
    services: &[&Service],
    port: u32,
    node: &ProxyNode,
    trust_domain: &str,
) -> Metadata {
    let mut fields = vec![("direction", "inbound".to_string())];
    if let Some(svc) = services.first() {
        fields.extend(service_fields(svc, port));
    }
    fields.extend(workload_fields("destination_", node, trust_domain));
    let mut entries = vec![(WEFT, weft_struct(fields))];
    if !services.is_empty() {
        let istio = pb::structure(BTreeMap::from([(
            "services".to_string(),
            pb::list(services.iter().map(|s| service_value(s)).collect()),
        )]));
        entries.push((ISTIO, istio));
    }
    metadata(entries)
}

/// Metadata of the proxy's own listeners: the source side of its metrics.
pub fn own_workload(node: &ProxyNode, trust_domain: &str) -> Metadata {
    metadata(vec![(
        WEFT,
        weft_struct(workload_fields("source_", node, trust_domain)),
    )])
}

fn workload_fields(
    prefix: &str,
    node: &ProxyNode,
    trust_domain: &str,
) -> Vec<(&'static str, String)> {
    let names: [&'static str; 7] = if prefix == "source_" {
        [
            "source_workload",
            "source_workload_namespace",
            "source_canonical_service",
            "source_canonical_revision",
            "source_app",
            "source_version",
            "source_principal",
        ]
    } else {
        [
            "destination_workload",
            "destination_workload_namespace",
            "destination_canonical_service",
            "destination_canonical_revision",
            "destination_app",
            "destination_version",
            "destination_principal",
        ]
    };
    let label = |k: &str| node.labels.get(k).cloned().unwrap_or_default();
    let values = [
        node.workload_name.clone(),
        node.namespace.clone(),
        node.canonical_service().to_string(),
        node.canonical_revision().to_string(),
        label("app"),
        label("version"),
        principal(trust_domain, &node.namespace, &node.service_account),
    ];
    names.into_iter().zip(values).collect()
}

/// Metadata of one EDS endpoint (its workload), `None` for endpoints with
/// no workload (inline ServiceEntry endpoints without labels).
pub fn endpoint(ep: &Endpoint, cluster_id: &str, trust_domain: &str) -> Option<Metadata> {
    if ep.workload_name.is_empty() && ep.labels.is_empty() {
        return None;
    }
    // Pods are named after their Deployment plus two hashes; Istio's
    // workload label is the Deployment name.
    let workload = workload_from_pod(&ep.workload_name);
    let canonical = canonical_service(&ep.labels, &workload);
    let revision = canonical_revision(&ep.labels);
    let istio = pb::string_struct([(
        "workload",
        format!(
            "{};{};{};{};{}",
            workload, ep.namespace, canonical, revision, cluster_id
        )
        .as_str(),
    )]);
    let label = |k: &str| ep.labels.get(k).cloned().unwrap_or_default();
    let sa = if ep.service_account.is_empty() {
        "default"
    } else {
        ep.service_account.as_str()
    };
    let weft = weft_struct(vec![
        ("workload", workload.clone()),
        ("namespace", ep.namespace.clone()),
        ("canonical_service", canonical.to_string()),
        ("canonical_revision", revision.to_string()),
        ("app", label("app")),
        ("version", label("version")),
        ("principal", principal(trust_domain, &ep.namespace, sa)),
    ]);
    let mut entries = vec![(ISTIO, istio), (WEFT, weft)];
    if let Some(m) = transport_socket_match(&ep.labels) {
        entries.push((TRANSPORT_SOCKET_MATCH, m));
    }
    Some(metadata(entries))
}

/// `{tlsMode: istio}` for workloads labelled `security.istio.io/tlsMode:
/// istio` (they run a sidecar that terminates mTLS), else `None`.
pub fn transport_socket_match(labels: &BTreeMap<String, String>) -> Option<Struct> {
    (labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO))
        .then(|| pb::string_struct([(TLS_MODE_KEY, TLS_MODE_ISTIO)]))
}
