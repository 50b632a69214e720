//! Supported fields of the bootstrap, the core types shared by every
//! resource (addresses, data sources, header options, protocol options),
//! listeners, filter chains, the HTTP connection manager, `tcp_proxy`, the
//! HTTP filters (CORS, fault, local rate limit) and access logs.

/// Bootstrap, core, listener, HTTP filter and access log messages.
pub(super) const LISTENER: &[(&str, &[&str])] = &[
    ("envoy.config.core.v3.Http1ProtocolOptions", &[]),
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
        "envoy.config.core.v3.SubstitutionFormatString",
        &["text_format", "text_format_source", "json_format"],
    ),
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
];
