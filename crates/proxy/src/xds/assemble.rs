//! Pure helpers of the sidecar mode's assembly: decoding and checking
//! received resources, the RDS and EDS names they reference, and folding
//! the latest routes into their listeners and endpoints into their
//! clusters, so one bootstrap-shaped configuration can be compiled.

use crate::config::{ConfigError, check_supported, pool};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use prost::Message;
use prost_reflect::DynamicMessage;
use std::collections::BTreeMap;
use weft_xds::Any;

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// One accepted resource, decoded.
#[derive(Clone, Debug)]
pub(super) struct Held<T> {
    pub(super) msg: T,
    pub(super) json: serde_json::Value,
}

/// Decodes and checks every resource; errors are prefixed `KIND NAME`.
pub(super) fn decode_all<T: prost::Message + Default>(
    resources: &[Any],
    kind: &str,
    name: impl Fn(&T) -> String,
) -> Result<BTreeMap<String, Held<T>>, ConfigError> {
    let desc = pool()
        .get_message_by_name(&format!(
            "envoy.config.{}",
            match kind {
                "Listener" => "listener.v3.Listener",
                "Cluster" => "cluster.v3.Cluster",
                "RouteConfiguration" => "route.v3.RouteConfiguration",
                _ => "endpoint.v3.ClusterLoadAssignment",
            }
        ))
        .expect("xDS resource types are in the descriptor set");
    let mut out = BTreeMap::new();
    for (i, any) in resources.iter().enumerate() {
        let unnamed = format!("{kind} #{i}");
        let dynamic = DynamicMessage::decode(desc.clone(), any.value.as_slice())
            .map_err(|e| ConfigError::invalid(&unnamed, "", format!("cannot decode: {e}")))?;
        let msg: T = dynamic
            .transcode_to()
            .map_err(|e| ConfigError::invalid(&unnamed, "", format!("cannot decode: {e}")))?;
        let n = name(&msg);
        let origin = format!("{kind} {n}");
        check_supported(&dynamic, &origin)?;
        let json = serde_json::to_value(&dynamic).unwrap_or(serde_json::Value::Null);
        out.insert(n, Held { msg, json });
    }
    Ok(out)
}

/// Route names the listener's HTTP connection managers fetch over RDS.
pub(super) fn rds_names(l: &Listener) -> Vec<String> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url.rsplit('/').next() == Some(HCM) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|h| match h.route_specifier {
            Some(RouteSpecifier::Rds(r)) => Some(r.route_config_name),
            _ => None,
        })
        .collect()
}

/// The EDS service name of an EDS cluster.
pub(super) fn eds_name(c: &Cluster) -> Option<String> {
    let is_eds = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Eds as i32
    );
    is_eds.then(|| {
        c.eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| c.name.clone())
    })
}

/// The listener with each RDS reference replaced by the named route from
/// `routes` (an empty route table while it has not arrived: 404s, as
/// Envoy's would be before warming completes).
pub(super) fn inline_routes(
    name: &str,
    l: &Listener,
    routes: &BTreeMap<String, Held<RouteConfiguration>>,
) -> Result<Listener, ConfigError> {
    let mut l = l.clone();
    let origin = format!("Listener {name}");
    let chains = l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut());
    for (ci, chain) in chains.enumerate() {
        for (fi, f) in chain.filters.iter_mut().enumerate() {
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url.rsplit('/').next() != Some(HCM) {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
                ConfigError::invalid(
                    &origin,
                    format!("filter_chains[{ci}].filters[{fi}].typed_config"),
                    e.to_string(),
                )
            })?;
            let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
                continue;
            };
            let rc = routes
                .get(&rds.route_config_name)
                .map(|h| h.msg.clone())
                .unwrap_or_else(|| RouteConfiguration {
                    name: rds.route_config_name.clone(),
                    ..Default::default()
                });
            hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
            any.value = hcm.encode_to_vec();
        }
    }
    Ok(l)
}

/// The cluster with its EDS assignment (by `service_name`, else its name)
/// as `load_assignment`; no endpoints while none has arrived.
pub(super) fn with_endpoints(
    c: &Cluster,
    eds: &BTreeMap<String, Held<ClusterLoadAssignment>>,
) -> Cluster {
    let mut c = c.clone();
    if let Some(key) = eds_name(&c) {
        c.load_assignment = Some(eds.get(&key).map(|h| h.msg.clone()).unwrap_or(
            ClusterLoadAssignment {
                cluster_name: key,
                ..Default::default()
            },
        ));
    }
    c
}
