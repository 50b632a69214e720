//! The list of Envoy fields weft-proxy implements, and the walk that refuses
//! any other set field with its path (e.g.
//! `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.codec_type`).
//!
//! A field is "set" in the protobuf sense: present for messages, oneofs and
//! `optional`/wrapper fields, non-default for plain proto3 scalars. Values of
//! enums are checked where they are compiled (`crate::model`), not here.

use super::{ConfigError, pool};
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};
use std::fmt::Write as _;

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

/// Messages of which only the listed fields are understood.
const PARTIAL: &[(&str, &[&str])] = &[
    ("envoy.config.core.v3.Http1ProtocolOptions", &[]),
    ("envoy.extensions.filters.http.cors.v3.Cors", &[]),
    (
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        &[
            "allow_origin_string_match",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "filter_enabled",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
        &["config_source", "route_config_name"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        &["eds_config", "service_name"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        &["locality_weighted_lb_config", "healthy_panic_threshold"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &["node", "static_resources", "admin"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        &["listeners", "clusters", "secrets"],
    ),
    (
        "envoy.config.bootstrap.v3.Admin",
        &["address", "access_log_path"],
    ),
    (
        "envoy.config.core.v3.Node",
        &["id", "cluster", "metadata", "locality"],
    ),
    ("envoy.config.core.v3.Address", &["socket_address"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["address", "port_value", "protocol", "ipv4_compat"],
    ),
    (
        "envoy.config.core.v3.DataSource",
        &["inline_string", "inline_bytes", "filename"],
    ),
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action", "keep_empty_value"],
    ),
    (
        "envoy.config.core.v3.ConfigSource",
        &["ads", "resource_api_version"],
    ),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
        ],
    ),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &["idle_timeout", "max_requests_per_connection"],
    ),
    (
        "envoy.config.core.v3.TransportSocket",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "default_filter_chain",
            "listener_filters",
            "use_original_dst",
            "bind_to_port",
            "transparent",
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
            "traffic_direction",
            "stat_prefix",
            "metadata",
        ],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &["filter_chain_match", "filters", "name", "transport_socket"],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "source_prefix_ranges",
            "source_ports",
            "transport_protocol",
            "application_protocols",
            "server_names",
        ],
    ),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.config.listener.v3.ListenerFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.accesslog.v3.AccessLog",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &["path", "format", "log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        &["log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        &["log_format"],
    ),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &["text_format", "text_format_source", "json_format"],
    ),
    (
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        &[],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "stat_prefix",
            "codec_type",
            "route_config",
            "rds",
            "http_filters",
            "access_log",
            "use_remote_address",
            "skip_xff_append",
            "generate_request_id",
            "preserve_external_request_id",
            "always_set_request_id_in_response",
            "stream_idle_timeout",
            "upgrade_configs",
            "server_name",
            "common_http_protocol_options",
            "http2_protocol_options",
            "forward_client_cert_details",
            "set_current_client_cert_details",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        &["subject", "cert", "chain", "dns", "uri"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type", "enabled"],
    ),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "validate_clusters",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "domains",
            "routes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "retry_policy",
        ],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "typed_per_filter_config",
        ],
    ),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "headers",
            "query_parameters",
            "case_sensitive",
        ],
    ),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "exact_match",
            "safe_regex_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "invert_match",
            "string_match",
            "treat_missing_header_as_empty",
        ],
    ),
    (
        "envoy.config.route.v3.QueryParameterMatcher",
        &["name", "string_match", "present_match"],
    ),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "safe_regex",
            "contains",
            "ignore_case",
        ],
    ),
    (
        "envoy.type.matcher.v3.RegexMatcher",
        &["regex", "google_re2"],
    ),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "weighted_clusters",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "timeout",
            "idle_timeout",
            "retry_policy",
            "hash_policy",
            "upgrade_configs",
            "cluster_not_found_response_code",
            "request_mirror_policies",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &["cluster", "runtime_fraction"],
    ),
    (
        "envoy.config.route.v3.RouteAction.UpgradeConfig",
        &["upgrade_type", "enabled"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster",
        &["clusters", "total_weight"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &[
            "name",
            "weight",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retry_back_off",
            "retriable_status_codes",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &[
            "header",
            "cookie",
            "connection_properties",
            "query_parameter",
            "terminal",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
        &["name", "ttl", "path"],
    ),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &[
            "stat_prefix",
            "cluster",
            "weighted_clusters",
            "idle_timeout",
            "access_log",
            "max_connect_attempts",
        ],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &["delay", "abort"],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay",
        &["fixed_delay", "percentage"],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &["http_status", "percentage"],
    ),
    (
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        &[
            "stat_prefix",
            "status",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "response_headers_to_add",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
            "circuit_breakers",
            "outlier_detection",
            "http2_protocol_options",
            "typed_extension_protocol_options",
            "dns_lookup_family",
            "dns_refresh_rate",
            "eds_cluster_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "least_request_lb_config",
            "original_dst_lb_config",
            "alt_stat_name",
            "cleanup_interval",
            "http_protocol_options",
            "common_http_protocol_options",
            "common_lb_config",
            "metadata",
            "max_requests_per_connection",
            "transport_socket",
            "transport_socket_matches",
            "upstream_bind_config",
        ],
    ),
    (
        "envoy.config.core.v3.BindConfig",
        &["source_address", "freebind"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.TransportSocketMatch",
        &["name", "match", "transport_socket"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &["name", "tls_certificate", "validation_context"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        &["certificate_chain", "private_key"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        &["trusted_ca", "match_typed_subject_alt_names"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        &["san_type", "matcher"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        &[
            "tls_minimum_protocol_version",
            "tls_maximum_protocol_version",
            "cipher_suites",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            "tls_params",
            "tls_certificates",
            "tls_certificate_sds_secret_configs",
            "alpn_protocols",
            "validation_context",
            "validation_context_sds_secret_config",
            "combined_validation_context",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        &[
            "default_validation_context",
            "validation_context_sds_secret_config",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &["common_tls_context", "require_client_certificate"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        &["common_tls_context", "sni", "max_session_keys"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &[
            "locality",
            "lb_endpoints",
            "load_balancing_weight",
            "priority",
        ],
    ),
    (
        "envoy.config.endpoint.v3.LbEndpoint",
        &[
            "endpoint",
            "health_status",
            "load_balancing_weight",
            "metadata",
        ],
    ),
    (
        "envoy.config.endpoint.v3.Endpoint",
        &["address", "hostname"],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
        ],
    ),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "consecutive_gateway_failure",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "enforcing_consecutive_gateway_failure",
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &["explicit_http_config", "common_http_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
];

/// The RBAC filters' messages (crate::rbac).
const RBAC: &[(&str, &[&str])] = &[
    (
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        &[
            "rules",
            "rules_stat_prefix",
            "shadow_rules",
            "shadow_rules_stat_prefix",
        ],
    ),
    (
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
        &["rbac"],
    ),
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &[
            "rules",
            "shadow_rules",
            "shadow_rules_stat_prefix",
            "stat_prefix",
            "enforcement_type",
        ],
    ),
    ("envoy.config.rbac.v3.RBAC", &["action", "policies"]),
    (
        "envoy.config.rbac.v3.Policy",
        &["permissions", "principals"],
    ),
    (
        "envoy.config.rbac.v3.Permission",
        &[
            "and_rules",
            "or_rules",
            "any",
            "header",
            "url_path",
            "destination_ip",
            "destination_port",
            "destination_port_range",
            "metadata",
            "not_rule",
            "requested_server_name",
            "sourced_metadata",
        ],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &[
            "and_ids",
            "or_ids",
            "any",
            "authenticated",
            "source_ip",
            "direct_remote_ip",
            "remote_ip",
            "header",
            "url_path",
            "metadata",
            "not_id",
            "sourced_metadata",
        ],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    (
        "envoy.config.rbac.v3.Principal.Authenticated",
        &["principal_name"],
    ),
    (
        "envoy.config.rbac.v3.SourcedMetadata",
        &["metadata_matcher", "metadata_source"],
    ),
    ("envoy.type.matcher.v3.PathMatcher", &["path"]),
    (
        "envoy.type.matcher.v3.MetadataMatcher",
        &["filter", "path", "value", "invert"],
    ),
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
        .chain(RBAC)
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
