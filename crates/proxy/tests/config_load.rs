//! Bootstrap parsing and the refusal of unsupported fields with their path.

use weft_proxy::config::{ConfigError, load_str};

const HCM: &str = r#"
static_resources:
  listeners:
  - name: l0
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          CODEC
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: c0, timeout: 1.5s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: c0
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: c0
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } }
"#;

#[test]
fn parses_a_bootstrap_into_envoy_types() {
    let loaded = load_str(&HCM.replace("CODEC", ""), "test.yaml").expect("valid bootstrap");
    let sr = loaded.bootstrap.static_resources.expect("static_resources");
    assert_eq!(sr.listeners[0].name, "l0");
    assert_eq!(sr.clusters[0].name, "c0");
    let ct = sr.clusters[0].connect_timeout.expect("connect_timeout");
    assert_eq!((ct.seconds, ct.nanos), (0, 250_000_000));
}

#[test]
fn refuses_an_unimplemented_field_with_its_path() {
    let err = load_str(
        &HCM.replace("CODEC", "server_header_transformation: PASS_THROUGH"),
        "test.yaml",
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Unsupported { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "test.yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.server_header_transformation: unsupported"
    );
}

#[test]
fn names_the_path_of_an_unknown_field() {
    let err = load_str(&HCM.replace("CODEC", "no_such_field: 1"), "test.yaml").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no_such_field"), "{text}");
    assert!(
        text.contains("static_resources.listeners[0].filter_chains[0].filters[0].typed_config"),
        "{text}"
    );
}

#[test]
fn compile_errors_name_the_field_and_value() {
    let stats = weft_proxy::stats::Stats::new();
    let loaded = load_str(&HCM.replace("CODEC", "codec_type: HTTP3"), "test.yaml").expect("parses");
    let err = weft_proxy::model::Snapshot::compile(&loaded, &stats)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "test.yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.codec_type: unsupported (HTTP3)"
    );
    let loaded = load_str(
        &HCM.replace("CODEC", "")
            .replace("cluster: c0, timeout", "cluster: nope, timeout"),
        "test.yaml",
    )
    .expect("parses");
    let err = weft_proxy::model::Snapshot::compile(&loaded, &stats)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster \"nope\""
        ),
        "{err}"
    );
}

#[test]
fn typed_config_of_an_unimplemented_filter_is_refused() {
    let yaml = HCM.replace("CODEC", "").replace(
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
    );
    let err = load_str(&yaml, "test.yaml").unwrap_err().to_string();
    assert!(err.contains("http_filters[0].typed_config"), "{err}");
}

#[test]
fn local_rate_limit_token_bucket_needs_positive_fill() {
    let stats = weft_proxy::stats::Stats::new();
    let with_bucket = |bucket: &str| {
        HCM.replace("CODEC", "").replace(
            "          http_filters:\n",
            &format!(
                "          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: {bucket}
"
            ),
        )
    };
    let compile = |yaml: String| {
        let loaded = load_str(&yaml, "test.yaml").expect("parses");
        weft_proxy::model::Snapshot::compile(&loaded, &stats).map(|_| ())
    };
    compile(with_bucket(
        "{ max_tokens: 0, tokens_per_fill: 1, fill_interval: 1s }",
    ))
    .expect("max_tokens 0 is valid (always rate limited)");
    let err = compile(with_bucket(
        "{ max_tokens: 5, tokens_per_fill: 0, fill_interval: 1s }",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.ends_with(
            "http_filters[0].typed_config.token_bucket.tokens_per_fill: tokens_per_fill must be positive"
        ),
        "{err}"
    );
    let err = compile(with_bucket("{ max_tokens: 5, fill_interval: 0s }"))
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(
            "http_filters[0].typed_config.token_bucket.fill_interval: fill_interval must be positive"
        ),
        "{err}"
    );
}
