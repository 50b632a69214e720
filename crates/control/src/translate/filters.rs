//! Network filters and access logs: the HTTP connection manager (RDS or an
//! inline inbound route), TCP proxy (single or weighted clusters) and
//! MeshConfig's `accessLogFile`/`accessLogFormat`/`accessLogEncoding`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as LogConfigType;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::{DataSource, SubstitutionFormatString, data_source};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    RouteSpecifier, UpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight,
};
use weft_api::mesh::{AccessLogEncoding, MeshConfig};

use super::http::{CORS_FILTER, FAULT_FILTER};
use super::pb;

/// Istio's default text access log format.
pub const DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON access log fields.
pub const DEFAULT_JSON_FIELDS: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// The access loggers MeshConfig asks for (none when `accessLogFile` is
/// unset or empty, as in Istio).
pub fn access_logs(mesh: &MeshConfig) -> Vec<AccessLog> {
    let Some(path) = mesh.access_log_file.as_deref().filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let custom = mesh.access_log_format.as_deref().filter(|f| !f.is_empty());
    let format = match mesh.access_log_encoding.unwrap_or_default() {
        AccessLogEncoding::Text => {
            let mut text = custom.unwrap_or(DEFAULT_TEXT_FORMAT).to_string();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(text)),
                ..DataSource::default()
            })
        }
        AccessLogEncoding::Json => {
            // A custom JSON format is a JSON object of format strings; one
            // that does not parse falls back to Istio's default fields.
            let fields: BTreeMap<String, String> = custom
                .and_then(|f| serde_json::from_str(f).ok())
                .unwrap_or_else(|| {
                    DEFAULT_JSON_FIELDS
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect()
                });
            Format::JsonFormat(pb::structure(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, pb::string(&v)))
                    .collect(),
            ))
        }
    };
    let file = FileAccessLog {
        path: path.to_string(),
        access_log_format: Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(format),
            ..SubstitutionFormatString::default()
        })),
    };
    vec![AccessLog {
        name: "envoy.access_loggers.file".to_string(),
        config_type: Some(LogConfigType::TypedConfig(pb::any(&file))),
        ..AccessLog::default()
    }]
}

fn http_filter<M: prost::Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(HttpFilterConfig::TypedConfig(pb::any(config))),
        ..HttpFilter::default()
    }
}

/// The HTTP filter chain: fault (outbound), CORS when some route uses it,
/// router last.
pub fn http_filters(fault: bool, cors: bool) -> Vec<HttpFilter> {
    let mut out = Vec::new();
    if fault {
        out.push(http_filter(FAULT_FILTER, &HttpFault::default()));
    }
    if cors {
        out.push(http_filter(CORS_FILTER, &Cors::default()));
    }
    out.push(http_filter("envoy.filters.http.router", &Router::default()));
    out
}

/// Where an HTTP connection manager gets routes from.
pub enum Routes {
    /// RDS by name.
    Rds(String),
    /// An inline route configuration (inbound).
    Inline(RouteConfiguration),
}

/// An HTTP connection manager network filter.
pub fn hcm(
    stat_prefix: &str,
    routes: Routes,
    http_filters: Vec<HttpFilter>,
    logs: &[AccessLog],
) -> Filter {
    hcm_filter(&hcm_config(stat_prefix, routes, http_filters, logs))
}

/// The filter of a connection manager configuration.
pub fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(ConfigType::TypedConfig(pb::any(hcm))),
    }
}

/// An HTTP connection manager configuration.
pub fn hcm_config(
    stat_prefix: &str,
    routes: Routes,
    http_filters: Vec<HttpFilter>,
    logs: &[AccessLog],
) -> HttpConnectionManager {
    let route_specifier = match routes {
        Routes::Rds(name) => RouteSpecifier::Rds(Rds {
            config_source: Some(pb::ads()),
            route_config_name: name,
        }),
        Routes::Inline(rc) => RouteSpecifier::RouteConfig(rc),
    };
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(route_specifier),
        http_filters,
        access_log: logs.to_vec(),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..UpgradeConfig::default()
        }],
        ..HttpConnectionManager::default()
    }
}

/// A TCP proxy to one cluster or to weighted clusters.
pub fn tcp_proxy(stat_prefix: &str, clusters: &[(String, u32)], logs: &[AccessLog]) -> Filter {
    let cluster_specifier = match clusters {
        [(name, _)] => ClusterSpecifier::Cluster(name.clone()),
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..ClusterWeight::default()
                })
                .collect(),
        }),
    };
    let tp = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster_specifier),
        access_log: logs.to_vec(),
        ..TcpProxy::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(ConfigType::TypedConfig(pb::any(&tp))),
    }
}
