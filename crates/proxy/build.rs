//! Extracts the protobuf descriptors weft-proxy needs from the `envoy-types`
//! crate's own descriptor set (`src/generated/types.bin`, produced from the
//! same .proto files as its Rust types) and writes the subset reachable from
//! the Envoy resources weft-proxy reads into `OUT_DIR/envoy_descriptors.bin`.
//!
//! Finding and reading the set is `weft_envoy_descriptors`' job.

use std::path::PathBuf;

/// The .proto files whose messages weft-proxy parses (plus their imports).
const ROOTS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
];

fn main() {
    weft_envoy_descriptors::rerun_if_changed();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let set = weft_envoy_descriptors::load(&manifest);
    weft_envoy_descriptors::write_out(
        &weft_envoy_descriptors::subset(&set, ROOTS),
        "envoy_descriptors.bin",
    );
}
