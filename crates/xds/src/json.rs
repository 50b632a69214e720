//! Envoy resources in proto3 JSON, and Envoy's admin `config_dump` shape
//! built from [`ResourceSet`]s (weftd's `/debug/config_dump?proxyID=`,
//! read by `weft proxy-config`).
//!
//! Uses the descriptors of every message `envoy-types` was generated from
//! (embedded by `build.rs`), so `Any` values nested anywhere (filters,
//! transport sockets, access loggers) are rendered with their `@type`.
//! Field names are the proto names (`version_info`, `dynamic_listeners`),
//! as Envoy's own admin endpoint prints them.
//!
//! Owns rendering only; it never decides what a resource contains.

use std::sync::OnceLock;

use envoy_types::pb::envoy::admin::v3::{
    ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump,
    clusters_config_dump, endpoints_config_dump, listeners_config_dump, routes_config_dump,
};
use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::error::XdsError;
use crate::names::to_any;
use crate::resources::ResourceSet;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_all_descriptors.bin"));

/// The descriptor pool of every Envoy, xDS, udpa and well-known message.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("the embedded Envoy descriptor set is valid")
    })
}

fn options() -> SerializeOptions {
    SerializeOptions::new().use_proto_field_name(true)
}

/// One encoded message (`type_url` names it) as proto3 JSON.
pub fn message_to_json(type_url: &str, bytes: &[u8]) -> Result<serde_json::Value, XdsError> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let err = |reason: String| XdsError::Decode {
        type_url: type_url.to_string(),
        reason,
    };
    let desc = pool()
        .get_message_by_name(name)
        .ok_or_else(|| err(format!("message {name} is not in the Envoy descriptor set")))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|e| err(e.to_string()))?;
    msg.serialize_with_options(serde_json::value::Serializer, &options())
        .map_err(|e| err(format!("rendering JSON: {e}")))
}

/// An `Any` as proto3 JSON: the message's fields plus `@type`.
pub fn any_to_json(any: &Any) -> Result<serde_json::Value, XdsError> {
    let mut v = message_to_json(&any.type_url, &any.value)?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("@type".into(), any.type_url.clone().into());
    }
    Ok(v)
}

/// What a config dump shows for one type: the set's version (as sent, or
/// as computed) and its resources.
#[derive(Clone, Debug, Default)]
pub struct DumpSection {
    /// The `version_info` of the section.
    pub version_info: String,
    /// The resources, each dumped with its own version.
    pub resources: ResourceSet,
}

/// Envoy's admin `ConfigDump` (`envoy.admin.v3.ConfigDump`) holding a
/// `ListenersConfigDump`, `ClustersConfigDump`, `RoutesConfigDump` and
/// `EndpointsConfigDump` with every resource as a dynamic (xDS) one, in
/// the order Envoy's admin endpoint uses, as JSON.
pub fn config_dump(
    listeners: &DumpSection,
    routes: &DumpSection,
    clusters: &DumpSection,
    endpoints: &DumpSection,
) -> Result<serde_json::Value, XdsError> {
    let l = ListenersConfigDump {
        version_info: listeners.version_info.clone(),
        dynamic_listeners: listeners
            .resources
            .iter()
            .map(|r| listeners_config_dump::DynamicListener {
                name: r.name.clone(),
                active_state: Some(listeners_config_dump::DynamicListenerState {
                    version_info: r.version.clone(),
                    listener: Some(r.any.clone()),
                    last_updated: None,
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let c = ClustersConfigDump {
        version_info: clusters.version_info.clone(),
        dynamic_active_clusters: clusters
            .resources
            .iter()
            .map(|r| clusters_config_dump::DynamicCluster {
                version_info: r.version.clone(),
                cluster: Some(r.any.clone()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let rt = RoutesConfigDump {
        dynamic_route_configs: routes
            .resources
            .iter()
            .map(|r| routes_config_dump::DynamicRouteConfig {
                version_info: r.version.clone(),
                route_config: Some(r.any.clone()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let e = EndpointsConfigDump {
        dynamic_endpoint_configs: endpoints
            .resources
            .iter()
            .map(|r| endpoints_config_dump::DynamicEndpointConfig {
                version_info: r.version.clone(),
                endpoint_config: Some(r.any.clone()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dump = ConfigDump {
        configs: vec![to_any(&l), to_any(&c), to_any(&rt), to_any(&e)],
    };
    let any = to_any(&dump);
    message_to_json(&any.type_url, &any.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy,
    };

    #[test]
    fn config_dump_in_envoy_shape_with_nested_any() {
        let tcp = TcpProxy {
            stat_prefix: "outbound|3306||db".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                "outbound|3306||db".into(),
            )),
            ..Default::default()
        };
        let listener = Listener {
            name: "0.0.0.0_3306".into(),
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(3306)),
                    ..Default::default()
                })),
            }),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(to_any(&tcp))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let cluster = Cluster {
            name: "outbound|3306||db".into(),
            ..Default::default()
        };
        let section = |set: ResourceSet| DumpSection {
            version_info: set.version(),
            resources: set,
        };
        let mut ls = ResourceSet::new();
        ls.insert(&listener.name, to_any(&listener));
        let mut cs = ResourceSet::new();
        cs.insert(&cluster.name, to_any(&cluster));
        let dump = config_dump(
            &section(ls.clone()),
            &section(ResourceSet::new()),
            &section(cs),
            &section(ResourceSet::new()),
        )
        .unwrap();
        let configs = dump["configs"].as_array().unwrap();
        let types: Vec<&str> = configs
            .iter()
            .map(|c| c["@type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            ]
        );
        let l = &configs[0]["dynamic_listeners"][0];
        assert_eq!(l["name"], "0.0.0.0_3306");
        assert_eq!(
            l["active_state"]["version_info"],
            ls.get("0.0.0.0_3306").unwrap().version
        );
        let inner = &l["active_state"]["listener"];
        assert_eq!(
            inner["@type"],
            "type.googleapis.com/envoy.config.listener.v3.Listener"
        );
        assert_eq!(inner["address"]["socket_address"]["port_value"], 3306);
        let filter = &inner["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            filter["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        );
        assert_eq!(filter["cluster"], "outbound|3306||db");
        assert_eq!(
            configs[1]["dynamic_active_clusters"][0]["cluster"]["name"],
            "outbound|3306||db"
        );
        let err = message_to_json("type.googleapis.com/no.Such", b"").unwrap_err();
        assert!(err.to_string().contains("no.Such"), "{err}");
    }
}
