//! DestinationRule traffic policy: merging (top level, then port-level
//! settings, then the subset's own policy, each replacing whole settings as
//! Istio does) and applying it to a cluster (load balancer, connection
//! pool → circuit breakers / HTTP protocol options, outlier detection) and
//! to routes (consistent hash → `hash_policy`).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, LbConfig, LbPolicy, MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use weft_api::networking::{
    ClientTlsMode, ClientTlsSettings,
    ConnectionPoolSettings, DestinationRule, H2UpgradePolicy, HashKey, LoadBalancerSettings,
    OutlierDetection as IstioOutlier, SimpleLb, TrafficPolicy,
};

use super::pb;

/// Extension name of the upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The settings in force for one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<IstioOutlier>,
    pub tls: Option<ClientTlsSettings>,
}

impl Effective {
    fn apply(&mut self, p: &TrafficPolicy, port: u32) {
        if p.load_balancer.is_some() {
            self.load_balancer.clone_from(&p.load_balancer);
        }
        if p.connection_pool.is_some() {
            self.connection_pool.clone_from(&p.connection_pool);
        }
        if p.outlier_detection.is_some() {
            self.outlier_detection.clone_from(&p.outlier_detection);
        }
        if p.tls.is_some() {
            self.tls.clone_from(&p.tls);
        }
        for pl in &p.port_level_settings {
            if pl.port.as_ref().is_some_and(|s| s.number == port) {
                if pl.load_balancer.is_some() {
                    self.load_balancer.clone_from(&pl.load_balancer);
                }
                if pl.connection_pool.is_some() {
                    self.connection_pool.clone_from(&pl.connection_pool);
                }
                if pl.outlier_detection.is_some() {
                    self.outlier_detection.clone_from(&pl.outlier_detection);
                }
                if pl.tls.is_some() {
                    self.tls.clone_from(&pl.tls);
                }
            }
        }
    }
}

/// The effective policy of `dr` for `port` and `subset` (empty: none).
pub fn effective(dr: Option<&DestinationRule>, port: u32, subset: &str) -> Effective {
    let mut eff = Effective::default();
    let Some(dr) = dr else { return eff };
    if let Some(p) = &dr.traffic_policy {
        eff.apply(p, port);
    }
    if let Some(p) = dr
        .subsets
        .iter()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
    {
        eff.apply(p, port);
    }
    eff
}

fn u32v(v: i32) -> Option<UInt32Value> {
    u32::try_from(v).ok().map(|value| UInt32Value { value })
}

/// Istio's default circuit breakers: effectively unlimited.
pub fn default_thresholds() -> Thresholds {
    let max = Some(UInt32Value { value: u32::MAX });
    Thresholds {
        max_connections: max,
        max_pending_requests: max,
        max_requests: max,
        max_retries: max,
        ..Thresholds::default()
    }
}

/// Applies the effective policy to `cluster`. `http` says whether the
/// port speaks HTTP (HTTP settings are ignored for TCP), `http2` whether
/// upstream connections use HTTP/2 by protocol. Returns whether the
/// cluster ends up speaking HTTP/2 (by protocol or `h2UpgradePolicy`).
pub fn apply(cluster: &mut Cluster, eff: &Effective, http: bool, http2: bool) -> bool {
    apply_lb(cluster, eff.load_balancer.as_ref());
    let mut thresholds = default_thresholds();
    let mut common = CommonHttpOptions::default();
    let mut use_h2 = http2;
    if let Some(pool) = &eff.connection_pool {
        if let Some(tcp) = &pool.tcp {
            if let Some(n) = tcp.max_connections.and_then(u32v) {
                thresholds.max_connections = Some(n);
            }
            if let Some(d) = tcp.connect_timeout.as_ref().and_then(pb::api_duration) {
                cluster.connect_timeout = Some(d);
            }
        }
        if let Some(h) = pool.http.as_ref().filter(|_| http) {
            if let Some(n) = h.http1_max_pending_requests.and_then(u32v) {
                thresholds.max_pending_requests = Some(n);
            }
            if let Some(n) = h.http2_max_requests.and_then(u32v) {
                thresholds.max_requests = Some(n);
            }
            if let Some(n) = h.max_retries.and_then(u32v) {
                thresholds.max_retries = Some(n);
            }
            if let Some(n) = h.max_requests_per_connection.and_then(u32v) {
                common.max_requests_per_connection = Some(n);
            }
            if let Some(d) = h.idle_timeout.as_ref().and_then(pb::api_duration) {
                common.idle_timeout = Some(d);
            }
            if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) {
                use_h2 = true;
            }
        }
    }
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![thresholds],
        ..CircuitBreakers::default()
    });
    if http && (use_h2 || common != CommonHttpOptions::default()) {
        let protocol = if use_h2 {
            ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
        } else {
            ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
        };
        let opts = HttpProtocolOptions {
            common_http_protocol_options: (common != CommonHttpOptions::default())
                .then_some(common),
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(protocol),
                },
            )),
            ..HttpProtocolOptions::default()
        };
        cluster.typed_extension_protocol_options =
            HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts))]);
    }
    if let Some(od) = &eff.outlier_detection {
        apply_outlier(cluster, od);
    }
    http && use_h2
}

/// Default CA bundle for `SIMPLE` TLS without `caCertificates` (the system
/// bundle on Debian-style images, as Istio's proxy image uses).
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS origination from `trafficPolicy.tls`: `SIMPLE` and `MUTUAL` with
/// files (`ISTIO_MUTUAL` and auto mTLS: [`super::upstream`]).
/// `sni_default` is the SNI when `tls.sni` is unset (the service host).
pub fn apply_tls(cluster: &mut Cluster, tls: Option<&ClientTlsSettings>, sni_default: &str) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, TlsCertificate, UpstreamTlsContext,
    };
    let Some(tls) = tls else { return };
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    if !matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
        return;
    }
    let file = |f: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(f.to_string())),
        ..DataSource::default()
    };
    let mut common = CommonTlsContext::default();
    if tls.insecure_skip_verify != Some(true) {
        let ca = tls.ca_certificates.as_deref().unwrap_or(SYSTEM_CA);
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(file(ca)),
                ..CertificateValidationContext::default()
            },
        ));
    }
    if mode == ClientTlsMode::Mutual
        && let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key)
    {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..TlsCertificate::default()
        }];
    }
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls
            .sni
            .clone()
            .unwrap_or_else(|| sni_default.trim_start_matches("*.").to_string()),
        ..UpstreamTlsContext::default()
    };
    cluster.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(ConfigType::TypedConfig(pb::any(&ctx))),
    });
}

fn apply_lb(cluster: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    // Istio's default is LEAST_REQUEST.
    let mut policy = LbPolicy::LeastRequest;
    if let Some(lb) = lb {
        if let Some(ch) = &lb.consistent_hash {
            if let Some(m) = &ch.maglev {
                policy = LbPolicy::Maglev;
                cluster.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: m.table_size.map(|value| UInt64Value { value }),
                }));
            } else {
                policy = LbPolicy::RingHash;
                let min = ch
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .unwrap_or(1024);
                cluster.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value { value: min }),
                    ..RingHashLbConfig::default()
                }));
            }
        } else if let Some(simple) = lb.simple {
            policy = match simple {
                SimpleLb::RoundRobin => LbPolicy::RoundRobin,
                SimpleLb::Random => LbPolicy::Random,
                SimpleLb::Passthrough => LbPolicy::ClusterProvided,
                SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified => {
                    LbPolicy::LeastRequest
                }
            };
        }
    }
    cluster.lb_policy = policy as i32;
}

fn apply_outlier(cluster: &mut Cluster, od: &IstioOutlier) {
    let five = od
        .consecutive_5xx_errors
        .or_else(|| od.consecutive_errors.and_then(|n| u32::try_from(n).ok()));
    let gateway = od.consecutive_gateway_errors;
    let enforce = |on: Option<u32>| {
        Some(UInt32Value {
            value: if on.is_some_and(|n| n > 0) { 100 } else { 0 },
        })
    };
    let out = OutlierDetection {
        consecutive_5xx: five.map(|value| UInt32Value { value }),
        enforcing_consecutive_5xx: enforce(five),
        consecutive_gateway_failure: gateway.map(|value| UInt32Value { value }),
        enforcing_consecutive_gateway_failure: enforce(gateway),
        interval: od.interval.as_ref().and_then(pb::api_duration),
        base_ejection_time: od.base_ejection_time.as_ref().and_then(pb::api_duration),
        max_ejection_percent: od.max_ejection_percent.and_then(u32v),
        ..OutlierDetection::default()
    };
    cluster.outlier_detection = Some(out);
    if let Some(min) = od.min_health_percent {
        cluster.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(min),
            }),
            ..CommonLbConfig::default()
        });
    }
}

/// The route hash policy of a consistent-hash load balancer.
pub fn hash_policy(lb: Option<&LoadBalancerSettings>) -> Vec<HashPolicy> {
    let Some(ch) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return Vec::new();
    };
    ch.hash_keys()
        .into_iter()
        .take(1)
        .map(|k| {
            let spec = match k {
                HashKey::Header(name) => PolicySpecifier::Header(Header {
                    header_name: name.to_string(),
                    ..Header::default()
                }),
                HashKey::Cookie(c) => PolicySpecifier::Cookie(Cookie {
                    name: c.name.clone(),
                    ttl: c.ttl.as_ref().and_then(pb::api_duration),
                    path: c.path.clone().unwrap_or_default(),
                    ..Cookie::default()
                }),
                HashKey::SourceIp => {
                    PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
                }
                HashKey::QueryParameter(name) => PolicySpecifier::QueryParameter(QueryParameter {
                    name: name.to_string(),
                }),
            };
            HashPolicy {
                policy_specifier: Some(spec),
                ..HashPolicy::default()
            }
        })
        .collect()
}
