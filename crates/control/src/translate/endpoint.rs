//! ClusterLoadAssignments for the EDS clusters: the registry's healthy
//! endpoints of the service port (of the subset's labels for subset
//! clusters), grouped by locality, with workload metadata for metrics.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Locality as EnvoyLocality;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::UInt32Value;
use weft_api::registry::{Locality, labels_match};

use super::cluster::{lb_endpoint, parse_outbound};
use super::scope::ProxyScope;
use super::{MeshView, metadata};

/// One assignment per EDS cluster in `clusters`.
pub fn build_endpoints(
    view: &MeshView,
    scope: &ProxyScope<'_>,
    clusters: &[Cluster],
) -> Vec<ClusterLoadAssignment> {
    let trust_domain = view.mesh.trust_domain_or_default();
    clusters
        .iter()
        .filter(|c| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
        .filter_map(|c| {
            let (port, subset, host) = parse_outbound(&c.name)?;
            let svc = view.registry.service(host)?;
            let labels = if subset.is_empty() {
                None
            } else {
                let (_, dr) = scope.destination_rule_for(host, &svc.namespace)?;
                Some(&dr.subsets.iter().find(|s| s.name == subset)?.labels)
            };
            let mut by_locality: BTreeMap<&Locality, Vec<_>> = BTreeMap::new();
            let mut eps = view.registry.endpoints(host, port);
            eps.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
            for e in eps {
                if !e.healthy || labels.is_some_and(|l| !labels_match(l, &e.labels)) {
                    continue;
                }
                let mut lb = lb_endpoint(&e.address, e.port);
                if e.weight > 1 {
                    lb.load_balancing_weight = Some(UInt32Value { value: e.weight });
                }
                lb.metadata = metadata::endpoint(e, "Kubernetes", trust_domain);
                by_locality.entry(&e.locality).or_default().push(lb);
            }
            let endpoints = by_locality
                .into_iter()
                .map(|(loc, lb_endpoints)| LocalityLbEndpoints {
                    locality: (!loc.is_empty()).then(|| EnvoyLocality {
                        region: loc.region.clone(),
                        zone: loc.zone.clone(),
                        sub_zone: loc.subzone.clone(),
                    }),
                    lb_endpoints,
                    ..LocalityLbEndpoints::default()
                })
                .collect();
            Some(ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                endpoints,
                ..ClusterLoadAssignment::default()
            })
        })
        .collect()
}
