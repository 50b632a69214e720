//! Reading names out of encoded resources, as an xDS client must: the name
//! of each resource (to key state-of-the-world updates), the EDS names a
//! set of clusters needs and the RDS names a set of listeners needs.
//!
//! Decodes only what naming needs; it does not validate resources.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::error::XdsError;
use crate::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// Type URL of the HTTP connection manager network filter config.
pub const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn decode<M: Message + Default>(any: &Any) -> Result<M, XdsError> {
    M::decode(any.value.as_slice()).map_err(|e| XdsError::Decode {
        type_url: any.type_url.clone(),
        reason: e.to_string(),
    })
}

/// The name of an encoded resource of a known type (the cluster name for
/// a ClusterLoadAssignment).
pub fn resource_name(any: &Any) -> Result<String, XdsError> {
    let name = match any.type_url.as_str() {
        LISTENER => decode::<Listener>(any)?.name,
        ROUTE => decode::<RouteConfiguration>(any)?.name,
        CLUSTER => decode::<Cluster>(any)?.name,
        ENDPOINT => decode::<ClusterLoadAssignment>(any)?.cluster_name,
        SECRET => decode::<Secret>(any)?.name,
        // Istio sends its one NameTable unnamed.
        crate::nds::NAME_TABLE => crate::nds::NAME_TABLE_RESOURCE.to_string(),
        other => {
            return Err(XdsError::Decode {
                type_url: other.to_string(),
                reason: "unknown resource type".to_string(),
            });
        }
    };
    if name.is_empty() {
        return Err(XdsError::Decode {
            type_url: any.type_url.clone(),
            reason: "resource has an empty name".to_string(),
        });
    }
    Ok(name)
}

/// EDS names the given clusters need: for each cluster of type EDS, its
/// `eds_cluster_config.service_name`, or else its name.
pub fn eds_names<'a>(clusters: impl IntoIterator<Item = &'a Any>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for any in clusters {
        let Ok(cluster) = decode::<Cluster>(any) else {
            continue;
        };
        let is_eds = matches!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
        );
        if !is_eds {
            continue;
        }
        let service = cluster
            .eds_cluster_config
            .as_ref()
            .map(|c| c.service_name.clone())
            .unwrap_or_default();
        out.insert(if service.is_empty() {
            cluster.name
        } else {
            service
        });
    }
    out
}

/// RDS names the given listeners need: `route_config_name` of every HTTP
/// connection manager that uses RDS, in any filter chain.
pub fn rds_names<'a>(listeners: impl IntoIterator<Item = &'a Any>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for any in listeners {
        let Ok(listener) = decode::<Listener>(any) else {
            continue;
        };
        let chains = listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.iter());
        for chain in chains {
            collect_rds(chain, &mut out);
        }
    }
    out
}

fn collect_rds(chain: &FilterChain, out: &mut BTreeSet<String>) {
    for filter in &chain.filters {
        let Some(ConfigType::TypedConfig(config)) = &filter.config_type else {
            continue;
        };
        if config.type_url != HTTP_CONNECTION_MANAGER {
            continue;
        }
        let Ok(hcm) = decode::<HttpConnectionManager>(config) else {
            continue;
        };
        if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
            && !rds.route_config_name.is_empty()
        {
            out.insert(rds.route_config_name);
        }
    }
}

/// Encodes a message as `Any` with its type URL.
pub fn to_any<M: prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::listener::v3::Filter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;

    #[test]
    fn names_and_dependencies() {
        let eds = Cluster {
            name: "outbound|80||reviews.default.svc.cluster.local".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        };
        let eds_service = Cluster {
            name: "c2".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: "svc2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let static_cluster = Cluster {
            name: "PassthroughCluster".into(),
            ..Default::default()
        };
        let clusters = [to_any(&eds), to_any(&eds_service), to_any(&static_cluster)];
        assert_eq!(clusters[0].type_url, CLUSTER);
        assert_eq!(resource_name(&clusters[2]).unwrap(), "PassthroughCluster");
        assert_eq!(
            eds_names(&clusters).into_iter().collect::<Vec<_>>(),
            vec!["outbound|80||reviews.default.svc.cluster.local", "svc2"]
        );

        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "80".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let listener = Listener {
            name: "0.0.0.0_80".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(ConfigType::TypedConfig(to_any(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let any = to_any(&listener);
        assert_eq!(any.type_url, LISTENER);
        assert_eq!(resource_name(&any).unwrap(), "0.0.0.0_80");
        assert_eq!(
            rds_names([&any]).into_iter().collect::<Vec<_>>(),
            vec!["80"]
        );
        let bad = Any {
            type_url: CLUSTER.into(),
            value: vec![0xff, 0xff],
        };
        assert!(resource_name(&bad).is_err());
    }
}
