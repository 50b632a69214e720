//! The list of Envoy fields weft-proxy implements, and the walk that refuses
//! any other set field with its path (e.g.
//! `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.codec_type`).
//!
//! A field is "set" in the protobuf sense: present for messages, oneofs and
//! `optional`/wrapper fields, non-default for plain proto3 scalars. Values of
//! enums are checked where they are compiled (`crate::model`), not here.
//!
//! This file owns the walk, the messages supported whole (`OPEN`) and
//! the `typed_config` types (`ANY_TYPES`); the per-message field lists
//! live by area in `support/` (listener, route, cluster, rbac).

mod cluster;
mod listener;
mod rbac;
mod route;

use super::{ConfigError, pool};
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};
use std::fmt::Write as _;

/// Messages of which only the listed fields are understood, by area.
const PARTIAL: &[&[(&str, &[&str])]] = &[
    listener::LISTENER,
    route::ROUTE,
    cluster::CLUSTER,
    rbac::RBAC,
];

/// Messages whose every field is understood.
const OPEN: &[&str] = &[
    "google.protobuf.Duration",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.BoolValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.StringValue",
    "google.protobuf.Empty",
    "envoy.type.v3.FractionalPercent",
    "envoy.type.v3.Percent",
    "envoy.type.v3.TokenBucket",
    "envoy.type.v3.HttpStatus",
    "envoy.config.core.v3.CidrRange",
    "envoy.config.core.v3.Metadata",
    "envoy.config.core.v3.Locality",
    "envoy.config.core.v3.HeaderValue",
    "envoy.config.core.v3.RuntimeFractionalPercent",
    "envoy.config.core.v3.AggregatedConfigSource",
    "envoy.type.matcher.v3.RegexMatcher.GoogleRE2",
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.config.route.v3.RetryPolicy.RetryBackOff",
    "envoy.config.route.v3.RouteAction.HashPolicy.Header",
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
    "envoy.type.matcher.v3.RegexMatchAndSubstitute",
    "envoy.config.route.v3.DirectResponseAction",
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
    "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig",
    // `sds_config` names where Envoy would fetch the secret; weft-proxy
    // serves `default`/`ROOTCA` itself and static secrets by name (tls/context.rs).
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
];

/// `typed_config` payloads weft-proxy knows how to run.
const ANY_TYPES: &[&str] = &[
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
];

/// Refuses any set field that weft-proxy does not implement, naming its path.
pub fn check_supported(msg: &DynamicMessage, origin: &str) -> Result<(), ConfigError> {
    let mut path = String::new();
    walk(msg, &mut path, origin)
}

fn walk(msg: &DynamicMessage, path: &mut String, origin: &str) -> Result<(), ConfigError> {
    let desc = msg.descriptor();
    let name = desc.full_name();
    if name == "google.protobuf.Any" {
        return walk_any(msg, path, origin);
    }
    if OPEN.contains(&name) {
        return Ok(());
    }
    let allowed: &[&str] = PARTIAL
        .iter()
        .flat_map(|t| t.iter())
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or(&[]);
    for (field, value) in msg.fields() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(field.name());
        if !allowed.contains(&field.name()) {
            return Err(ConfigError::unsupported(origin, path.clone(), ""));
        }
        walk_value(value, path, origin)?;
        path.truncate(len);
    }
    Ok(())
}

fn walk_value(value: &Value, path: &mut String, origin: &str) -> Result<(), ConfigError> {
    match value {
        Value::Message(m) => walk(m, path, origin),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                walk_value(item, path, origin)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Map(map) => {
            for (k, v) in map {
                let len = path.len();
                match k {
                    MapKey::String(s) => {
                        let _ = write!(path, "[{s}]");
                    }
                    other => {
                        let _ = write!(path, "[{other:?}]");
                    }
                }
                walk_value(v, path, origin)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn walk_any(msg: &DynamicMessage, path: &mut String, origin: &str) -> Result<(), ConfigError> {
    let inner =
        unpack_any(msg).map_err(|detail| ConfigError::unsupported(origin, path.clone(), detail))?;
    walk(&inner, path, origin)
}

/// Decodes an `Any` into its dynamic message, if its type is one we run.
pub fn unpack_any(msg: &DynamicMessage) -> Result<DynamicMessage, String> {
    let url = msg
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let type_name = url.rsplit('/').next().unwrap_or_default();
    if !ANY_TYPES.contains(&type_name) {
        return Err(format!("typed_config type {url:?} is not implemented"));
    }
    let desc = pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| format!("typed_config type {url:?} is unknown"))?;
    let bytes = msg
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    DynamicMessage::decode(desc, bytes).map_err(|e| format!("decoding {url:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A typo in a table would silently refuse (or never match) a message.
    #[test]
    fn every_listed_message_and_field_exists_once() {
        let mut seen = HashSet::new();
        for name in OPEN.iter().chain(ANY_TYPES) {
            assert!(
                pool().get_message_by_name(name).is_some(),
                "{name} is not an Envoy message"
            );
        }
        for name in OPEN {
            assert!(seen.insert(*name), "{name} listed twice");
        }
        for (name, fields) in PARTIAL.iter().flat_map(|t| t.iter()) {
            assert!(seen.insert(*name), "{name} listed twice");
            let desc = pool()
                .get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name} is not an Envoy message"));
            for f in *fields {
                assert!(
                    desc.get_field_by_name(f).is_some(),
                    "{name} has no field {f}"
                );
            }
        }
    }
}
