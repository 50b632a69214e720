//! Which TLS an outbound cluster originates, as Istio decides it:
//!
//! - a DestinationRule `tls.mode` wins: `DISABLE` → plaintext, `SIMPLE` /
//!   `MUTUAL` → TLS with files ([`policy::apply_tls`]), `ISTIO_MUTUAL` →
//!   a plain `transport_socket` with the mesh identity (SNI and SANs from
//!   the rule when set, else `outbound_.PORT_.SUBSET_.FQDN` and the
//!   destination's service accounts);
//! - without one, auto mTLS (MeshConfig `enableAutoMtls`, default on) for
//!   in-mesh services whose namespace/mesh PeerAuthentication is not
//!   `DISABLE`: `transport_socket_matches` sending mTLS to endpoints labelled
//!   `security.istio.io/tlsMode: istio` and plaintext to the rest. Original
//!   destination clusters (headless services) cannot match endpoints, so
//!   they get mTLS only when every instance runs a sidecar, as a plain
//!   `transport_socket`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use std::collections::HashMap;
use weft_api::networking::{ClientTlsMode, ClientTlsSettings};

use weft_api::Kind;
use weft_api::mesh::MeshConfig;
use weft_api::registry::{MeshLocation, Registry, Resolution, Service, ServiceSource};
use weft_api::store::Snapshot;

use super::authn::PeerMode;
use super::tls::{
    TLS_MODE_ISTIO, TLS_MODE_LABEL, UpstreamAlpn, auto_mtls_matches, istio_mutual, outbound_sni,
    tls_socket,
};
use super::{MeshView, metadata, policy};

/// What the TLS decision needs to know about one outbound cluster.
pub struct UpstreamCluster<'a> {
    pub service: &'a Service,
    pub port: u32,
    pub subset: &'a str,
    pub alpn: UpstreamAlpn,
    /// The effective DestinationRule load balancer says `PASSTHROUGH`.
    pub lb_passthrough: bool,
}

/// Istio's "service accounts" of every service (sorted, unique): the
/// SPIFFE identities of its workloads, plus a ServiceEntry's
/// `subjectAltNames`.
pub fn all_service_accounts(
    snapshot: &Snapshot,
    registry: &Registry,
    mesh: &MeshConfig,
) -> HashMap<String, Vec<String>> {
    let td = mesh.trust_domain_or_default();
    let mut se_sans: HashMap<(&str, &str), &[String]> = HashMap::new();
    for o in snapshot.of_kind(&Kind::ServiceEntry) {
        if let Some(se) = o.as_service_entry() {
            se_sans.insert((o.namespace(), o.name()), &se.subject_alt_names);
        }
    }
    registry
        .services()
        .map(|svc| {
            let mut out: Vec<String> = registry
                .all_endpoints(&svc.hostname)
                .iter()
                .filter(|e| !e.service_account.is_empty())
                .map(|e| metadata::principal(td, &e.namespace, &e.service_account))
                .collect();
            if svc.source == ServiceSource::ServiceEntry
                && let Some(sans) = se_sans.get(&(svc.namespace.as_str(), svc.name.as_str()))
            {
                out.extend(sans.iter().cloned());
            }
            out.sort();
            out.dedup();
            (svc.hostname.clone(), out)
        })
        .collect()
}

/// The service accounts of `svc` (see [`all_service_accounts`]).
pub fn service_accounts<'v>(view: &'v MeshView, svc: &Service) -> &'v [String] {
    view.service_accounts
        .get(&svc.hostname)
        .map_or(&[], Vec::as_slice)
}

fn is_original_dst(c: &Cluster) -> bool {
    c.cluster_discovery_type
        == Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        ))
}

/// The mode clients assume for `u` (Istio's best-effort inference), `None`
/// for mesh-external services (unknown: no auto mTLS).
fn service_mode(view: &MeshView, u: &UpstreamCluster<'_>) -> Option<PeerMode> {
    let svc = u.service;
    if svc.location == MeshLocation::External {
        return None;
    }
    if svc.resolution == Resolution::Passthrough || u.lb_passthrough {
        let eps = view.registry.endpoints(&svc.hostname, u.port);
        let all_sidecars = !eps.is_empty()
            && eps
                .iter()
                .all(|e| e.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO));
        if !all_sidecars {
            return Some(PeerMode::Disable);
        }
    }
    Some(view.peer_authn.namespace_mode(&svc.namespace))
}

/// Sets `cluster`'s transport socket(s) for `tls` (the effective
/// DestinationRule setting) and auto mTLS.
pub fn apply_upstream_tls(
    view: &MeshView,
    cluster: &mut Cluster,
    tls: Option<&ClientTlsSettings>,
    u: &UpstreamCluster<'_>,
) {
    let sni = outbound_sni(u.port, u.subset, &u.service.hostname);
    if let Some(t) = tls {
        match t.mode.unwrap_or(ClientTlsMode::Disable) {
            ClientTlsMode::Disable => {}
            ClientTlsMode::Simple | ClientTlsMode::Mutual => {
                policy::apply_tls(cluster, Some(t), &u.service.hostname);
            }
            ClientTlsMode::IstioMutual => {
                let sans = if t.subject_alt_names.is_empty() {
                    service_accounts(view, u.service)
                } else {
                    &t.subject_alt_names
                };
                let sni = t.sni.clone().unwrap_or(sni);
                cluster.transport_socket = Some(tls_socket(&istio_mutual(&sni, sans, u.alpn)));
            }
        }
        return;
    }
    let auto = view.mesh.enable_auto_mtls.unwrap_or(true);
    let mode = service_mode(view, u);
    if !auto || mode.is_none_or(|m| m == PeerMode::Disable) {
        return;
    }
    let socket = tls_socket(&istio_mutual(
        &sni,
        service_accounts(view, u.service),
        u.alpn,
    ));
    if is_original_dst(cluster) {
        // Headless (passthrough) services only: their mode said every
        // instance has a sidecar.
        if u.service.resolution == Resolution::Passthrough || u.lb_passthrough {
            cluster.transport_socket = Some(socket);
        }
    } else {
        cluster.transport_socket_matches = auto_mtls_matches(socket);
    }
}
