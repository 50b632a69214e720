//! MeshConfig: mesh-wide settings with Istio's field names.
//!
//! Istio reads MeshConfig from the `mesh` key of the `istio` ConfigMap in the
//! root namespace; Weft reads it from the same ConfigMap found in the config
//! directory, or from a standalone file via [`MeshConfig::from_yaml`].
//! Fields Weft does not interpret but Istio defines with a deep structure
//! (`extensionProviders`, `defaultProviders`, ...) are kept as raw JSON values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::networking::{HttpRetry, LocalityLbSetting, OutboundTrafficMode};

/// Istio's MeshConfig.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MeshConfig {
    pub default_config: Option<ProxyConfig>,
    pub access_log_file: Option<String>,
    pub access_log_format: Option<String>,
    pub access_log_encoding: Option<AccessLogEncoding>,
    pub enable_auto_mtls: Option<bool>,
    pub trust_domain: Option<String>,
    pub trust_domain_aliases: Vec<String>,
    pub outbound_traffic_policy: Option<MeshOutboundTrafficPolicy>,
    pub default_destination_rule_export_to: Vec<String>,
    pub default_virtual_service_export_to: Vec<String>,
    pub default_service_export_to: Vec<String>,
    pub root_namespace: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub protocol_detection_timeout: Option<Duration>,
    pub dns_refresh_rate: Option<Duration>,
    pub enable_tracing: Option<bool>,
    pub enable_prometheus_merge: Option<bool>,
    pub enable_envoy_access_log_service: Option<bool>,
    pub ingress_class: Option<String>,
    pub ingress_service: Option<String>,
    pub ingress_controller_mode: Option<String>,
    pub ingress_selector: Option<String>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    pub default_http_retry_policy: Option<HttpRetry>,
    pub inbound_cluster_stat_name: Option<String>,
    pub outbound_cluster_stat_name: Option<String>,
    pub h2_upgrade_policy: Option<String>,
    pub discovery_selectors: Vec<serde_json::Value>,
    pub extension_providers: Vec<serde_json::Value>,
    pub default_providers: Option<serde_json::Value>,
    pub service_settings: Vec<serde_json::Value>,
    #[serde(rename = "meshMTLS")]
    pub mesh_mtls: Option<serde_json::Value>,
    pub inbound_traffic_policy: Option<serde_json::Value>,
    pub default_traffic_policy: Option<serde_json::Value>,
    pub path_normalization: Option<serde_json::Value>,
    pub ca: Option<serde_json::Value>,
    pub config_sources: Vec<serde_json::Value>,
    pub service_scope_configs: Vec<serde_json::Value>,
    pub zone_aware_lb_setting: Option<serde_json::Value>,
    pub service_entry_visibility: Option<serde_json::Value>,
    pub hbone_idle_timeout: Option<Duration>,
    pub disable_envoy_listener_log: Option<bool>,
    pub verify_certificate_at_client: Option<bool>,
    pub tls_defaults: Option<serde_json::Value>,
    pub tcp_keepalive: Option<serde_json::Value>,
    pub ca_certificates: Vec<serde_json::Value>,
    pub certificates: Vec<serde_json::Value>,
    pub proxy_listen_port: Option<u32>,
    pub proxy_http_port: Option<u32>,
    pub proxy_inbound_listen_port: Option<u32>,
}

/// Decodes a MeshConfig value; unknown fields become warnings, as Istio
/// accepts them (its mesh parser retries with unknown fields allowed).
pub(crate) fn decode_mesh_config(
    value: serde_yaml::Value,
    prefix: &str,
) -> (Option<MeshConfig>, Vec<crate::FieldError>) {
    let (mesh, mut problems) = crate::decode::decode_typed::<MeshConfig>(value, prefix);
    for p in &mut problems {
        if p.message == "unknown field" {
            p.severity = crate::Severity::Warning;
            p.message = "unknown MeshConfig field, ignored (as Istio does)".into();
        }
    }
    (mesh, problems)
}

/// `accessLogEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

/// MeshConfig's `outboundTrafficPolicy: {mode}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MeshOutboundTrafficPolicy {
    pub mode: Option<OutboundTrafficMode>,
}

/// ProxyConfig (`defaultConfig`): per-proxy settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyConfig {
    pub concurrency: Option<i32>,
    pub drain_duration: Option<Duration>,
    pub termination_drain_duration: Option<Duration>,
    pub parent_shutdown_duration: Option<Duration>,
    pub proxy_metadata: BTreeMap<String, String>,
    pub hold_application_until_proxy_starts: Option<bool>,
    pub discovery_address: Option<String>,
    pub config_path: Option<String>,
    pub binary_path: Option<String>,
    pub service_cluster: Option<String>,
    pub proxy_admin_port: Option<u32>,
    pub status_port: Option<u32>,
    pub stat_name_length: Option<u32>,
    pub control_plane_auth_policy: Option<String>,
    pub interception_mode: Option<InterceptionMode>,
    pub tracing: Option<serde_json::Value>,
    pub proxy_stats_matcher: Option<serde_json::Value>,
    pub extra_stat_tags: Vec<String>,
    pub gateway_topology: Option<serde_json::Value>,
    pub image: Option<serde_json::Value>,
    pub ca_certificates_pem: Vec<String>,
    pub private_key_provider: Option<serde_json::Value>,
    pub proxy_headers: Option<serde_json::Value>,
    pub readiness_probe: Option<serde_json::Value>,
    pub envoy_access_log_service: Option<serde_json::Value>,
    pub envoy_metrics_service: Option<serde_json::Value>,
    pub mesh_id: Option<String>,
    pub availability_zone: Option<String>,
    pub custom_config_file: Option<String>,
    pub proxy_bootstrap_template_path: Option<String>,
    pub zipkin_address: Option<String>,
    pub statsd_udp_address: Option<String>,
    pub envoy_metrics_service_address: Option<String>,
    pub discovery_refresh_delay: Option<Duration>,
    pub file_flush_interval: Option<Duration>,
    pub file_flush_min_size_kb: Option<u32>,
    pub sds: Option<serde_json::Value>,
    pub stats_compression: Option<serde_json::Value>,
    pub connection_settings: Option<serde_json::Value>,
}

/// `interceptionMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InterceptionMode {
    Redirect,
    Tproxy,
    None,
}

impl MeshConfig {
    /// Parses a MeshConfig document (the text of the `mesh` ConfigMap key).
    /// Mistyped fields are errors; unknown fields are warnings (Istio ignores
    /// them too). Returns the problems alongside the config when there are
    /// only warnings.
    pub fn from_yaml(
        text: &str,
    ) -> Result<(MeshConfig, Vec<crate::FieldError>), Vec<crate::FieldError>> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            vec![crate::FieldError::error(
                "",
                format!("invalid MeshConfig YAML: {e}"),
            )]
        })?;
        if value.is_null() {
            return Ok((MeshConfig::default(), Vec::new()));
        }
        let (mesh, problems) = decode_mesh_config(value, "");
        match mesh {
            Some(m) if !problems.iter().any(crate::FieldError::is_error) => Ok((m, problems)),
            _ => Err(problems),
        }
    }

    /// The effective outbound traffic mode (ALLOW_ANY unless set).
    pub fn outbound_mode(&self) -> OutboundTrafficMode {
        self.outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode)
            .unwrap_or_default()
    }

    /// The effective trust domain (`cluster.local` unless set).
    pub fn trust_domain_or_default(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or("cluster.local")
    }
}
