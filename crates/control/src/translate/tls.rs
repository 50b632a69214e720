//! Mesh TLS building blocks with Istio's shapes: SDS references to the
//! workload certificate (`default`) and the mesh root (`ROOTCA`) served by
//! the `sds-grpc` cluster of the proxy's bootstrap, ISTIO_MUTUAL upstream
//! contexts (SNI `outbound_.PORT_.SUBSET_.FQDN`, SPIFFE SAN matching,
//! ALPN `istio-peer-exchange`/`istio`), the inbound `DownstreamTlsContext`
//! that requires a client certificate, and the auto-mTLS
//! `transport_socket_matches` of outbound clusters.
//!
//! The `sds-grpc` cluster is never generated here: like Istio's, it lives
//! in the bootstrap (weftd's agent-side SDS, `sds_agent`, for Envoy).
//! weft-proxy satisfies `default`/`ROOTCA` itself from its certificate
//! source.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{BoolValue, Struct};

use super::pb;

/// The bootstrap cluster serving SDS (Istio's name).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// SDS resource of the workload certificate chain and key.
pub const DEFAULT_SECRET: &str = "default";
/// SDS resource of the mesh trust bundle.
pub const ROOT_SECRET: &str = "ROOTCA";
/// Transport socket names.
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// Pod label saying the pod runs a sidecar that terminates mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Endpoint `filter_metadata` key Envoy's transport socket matching reads.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Key and value of the auto-mTLS match (`tlsMode: istio`).
pub const TLS_MODE_KEY: &str = "tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";

/// ALPN a client sidecar offers to an in-mesh peer (metadata exchange +
/// the in-mesh marker).
pub const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];
/// Every ALPN an Istio client sidecar may send over mTLS (inbound match
/// of PERMISSIVE HTTP/TCP ports).
pub const ALPN_ALL_ISTIO_MTLS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// ALPN of HTTP detected by the client sidecar and sent over mTLS.
pub const ALPN_MTLS_HTTP: [&str; 3] = ["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// Server ALPN of inbound HTTP chains.
pub const ALPN_DOWNSTREAM_HTTP: [&str; 2] = ["h2", "http/1.1"];
/// Server ALPN of inbound TCP chains (metadata exchange, then HTTP).
pub const ALPN_DOWNSTREAM_TCP: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];
/// Istio's inbound cipher suites.
pub const INBOUND_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

fn strings<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|s| (*s).to_string()).collect()
}

/// `{name, sds_config: ADS-less gRPC to sds-grpc}`, as Istio writes it
/// (wait for the secret without an initial-fetch timeout).
pub fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    set_node_on_first_message_only: true,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: SDS_CLUSTER.to_string(),
                            ..EnvoyGrpc::default()
                        })),
                        ..GrpcService::default()
                    }],
                    ..ApiConfigSource::default()
                },
            )),
            resource_api_version: ApiVersion::V3 as i32,
            initial_fetch_timeout: Some(pb::secs(0)),
            ..ConfigSource::default()
        }),
    }
}

/// A URI SAN matcher (`exact` or `prefix`).
fn uri_san(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ..StringMatcher::default()
        }),
        ..SubjectAltNameMatcher::default()
    }
}

/// `default` as certificate, `ROOTCA` plus `sans` as validation.
fn mesh_common(sans: Vec<SubjectAltNameMatcher>, tls_params: TlsParameters) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(tls_params),
        tls_certificate_sds_secret_configs: vec![sds_secret(DEFAULT_SECRET)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans,
                    ..CertificateValidationContext::default()
                }),
                validation_context_sds_secret_config: Some(sds_secret(ROOT_SECRET)),
                ..CombinedCertificateValidationContext::default()
            },
        )),
        ..CommonTlsContext::default()
    }
}

/// What kind of traffic an ISTIO_MUTUAL cluster carries (its ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamAlpn {
    /// TCP or sniffed: `istio-peer-exchange`, `istio`.
    Tcp,
    /// HTTP/1.1: plus `http/1.1`.
    Http1,
    /// HTTP/2: plus `h2`.
    Http2,
}

/// An ISTIO_MUTUAL upstream context: SNI as given, SANs exact-matched.
pub fn istio_mutual(sni: &str, sans: &[String], alpn: UpstreamAlpn) -> UpstreamTlsContext {
    let mut common = mesh_common(
        sans.iter()
            .map(|s| uri_san(MatchPattern::Exact(s.clone())))
            .collect(),
        TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..TlsParameters::default()
        },
    );
    common.alpn_protocols = strings(ALPN_IN_MESH);
    match alpn {
        UpstreamAlpn::Tcp => {}
        UpstreamAlpn::Http1 => common.alpn_protocols.push("http/1.1".to_string()),
        UpstreamAlpn::Http2 => common.alpn_protocols.push("h2".to_string()),
    }
    UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: sni.to_string(),
        ..UpstreamTlsContext::default()
    }
}

/// The inbound mTLS context: requires a client certificate issued under
/// `ROOTCA` whose SPIFFE id is in one of `trust_domains`.
pub fn inbound_mtls(trust_domains: &[String], http: bool) -> DownstreamTlsContext {
    let sans = trust_domains
        .iter()
        .map(|td| uri_san(MatchPattern::Prefix(format!("spiffe://{td}/"))))
        .collect();
    let mut common = mesh_common(
        sans,
        TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            cipher_suites: strings(INBOUND_CIPHERS),
            ..TlsParameters::default()
        },
    );
    common.alpn_protocols = if http {
        strings(ALPN_DOWNSTREAM_HTTP)
    } else {
        strings(ALPN_DOWNSTREAM_TCP)
    };
    DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: true }),
        ..DownstreamTlsContext::default()
    }
}

/// A TLS transport socket around `ctx`.
pub fn tls_socket<M: prost::Name>(ctx: &M) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_string(),
        config_type: Some(ConfigType::TypedConfig(pb::any(ctx))),
    }
}

/// The plaintext transport socket.
pub fn raw_buffer_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_SOCKET.to_string(),
        config_type: Some(ConfigType::TypedConfig(pb::any(&RawBuffer::default()))),
    }
}

/// Auto mTLS: `tls` toward endpoints labelled `tlsMode: istio`, plaintext
/// toward everything else.
pub fn auto_mtls_matches(tls: TransportSocket) -> Vec<TransportSocketMatch> {
    vec![
        TransportSocketMatch {
            name: format!("tlsMode-{TLS_MODE_ISTIO}"),
            r#match: Some(pb::string_struct([(TLS_MODE_KEY, TLS_MODE_ISTIO)])),
            transport_socket: Some(tls),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".to_string(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_buffer_socket()),
        },
    ]
}

/// Istio's SNI of an outbound cluster: `outbound_.PORT_.SUBSET_.FQDN`.
pub fn outbound_sni(port: u32, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}
