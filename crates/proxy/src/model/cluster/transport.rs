//! How a cluster talks to its endpoints: upstream HTTP settings (HTTP/2,
//! windows, idle timeout, max_requests_per_connection from the cluster and
//! `typed_extension_protocol_options`), the transport socket per endpoint
//! (raw_buffer or TLS, Istio's `transport_socket_matches`) and
//! `upstream_bind_config`. The connections themselves are `crate::upstream`'s.

use super::{HostSet, pb};
use crate::config::ConfigError;
use crate::model::common::{Ctx, duration};
use crate::upstream::{Bind, Transport, Transports};
use envoy_types::pb::envoy::config::core::v3::socket_address;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// Upstream HTTP settings of a cluster.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub http2: bool,
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window: Option<u32>,
    pub initial_connection_window: Option<u32>,
    pub idle_timeout: Option<Duration>,
    /// Requests one upstream connection serves before it is closed.
    pub max_requests_per_connection: Option<u32>,
}

#[allow(deprecated)]
pub(super) fn http_settings(ctx: &Ctx<'_>, c: &pb::Cluster) -> Result<HttpSettings, ConfigError> {
    let mut s = HttpSettings::default();
    let mut h2 = c.http2_protocol_options.clone();
    let mut common = c.common_http_protocol_options;
    for (key, any) in &c.typed_extension_protocol_options {
        let kc = ctx.field("typed_extension_protocol_options").field(key);
        if key != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
            return Err(kc.unsupported(""));
        }
        let opts = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| kc.invalid(e.to_string()))?;
        if opts.common_http_protocol_options.is_some() {
            common = opts.common_http_protocol_options;
        }
        match opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(o)) => h2 = Some(o),
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => {}
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(kc.unsupported("HTTP/3"));
                }
            },
            Some(_) => return Err(kc.unsupported("only explicit_http_config is implemented")),
            None => {}
        }
    }
    if let Some(o) = h2 {
        if o.max_concurrent_streams.is_some() {
            return Err(ctx
                .field("http2_protocol_options.max_concurrent_streams")
                .unsupported(
                    "upstream stream limits are not implemented; the server's SETTINGS apply",
                ));
        }
        s.http2 = true;
        s.max_concurrent_streams = o.max_concurrent_streams.map(|v| v.value);
        s.initial_stream_window = o.initial_stream_window_size.map(|v| v.value);
        s.initial_connection_window = o.initial_connection_window_size.map(|v| v.value);
    }
    s.max_requests_per_connection = c.max_requests_per_connection.map(|v| v.value);
    if let Some(cm) = common {
        if let Some(m) = cm.max_requests_per_connection {
            s.max_requests_per_connection = Some(m.value);
        }
        s.idle_timeout = cm
            .idle_timeout
            .as_ref()
            .map(|d| duration(&ctx.field("common_http_protocol_options.idle_timeout"), d))
            .transpose()?;
    }
    if s.max_requests_per_connection == Some(0) {
        s.max_requests_per_connection = None;
    }
    Ok(s)
}

/// Compiles one `transport_socket` (raw_buffer or an UpstreamTlsContext).
fn transport(
    ctx: &Ctx<'_>,
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    secrets: &crate::tls::Secrets,
    http2: bool,
) -> Result<Transport, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let c = ctx.field("typed_config");
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(c.invalid("typed_config is required"));
    };
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" => Ok(Transport::Plain),
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => {
            let u = UpstreamTlsContext::decode(any.value.as_slice())
                .map_err(|e| c.invalid(e.to_string()))?;
            Ok(Transport::Tls(Arc::new(crate::tls::ClientTls::compile(
                &c, &u, secrets, http2,
            )?)))
        }
        other => Err(c.unsupported(format!("transport socket {other}"))),
    }
}

/// Key of the endpoint metadata that `transport_socket_matches` look at.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// The cluster's transport and, with `transport_socket_matches`, each
/// endpoint's: the first match whose every field equals the endpoint's
/// `envoy.transport_socket_match` metadata (an empty match takes all);
/// no match falls back to the cluster's `transport_socket`.
pub(super) fn transports(
    ctx: &Ctx<'_>,
    c: &pb::Cluster,
    secrets: &crate::tls::Secrets,
    http2: bool,
    hosts: &HostSet,
) -> Result<Transports, ConfigError> {
    let default = match &c.transport_socket {
        Some(ts) => transport(&ctx.field("transport_socket"), ts, secrets, http2)?,
        None => Transport::Plain,
    };
    let mut matches = Vec::new();
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let mc = ctx.index("transport_socket_matches", i);
        let t = match &m.transport_socket {
            Some(ts) => transport(&mc.field("transport_socket"), ts, secrets, http2)?,
            None => Transport::Plain,
        };
        matches.push((m.r#match.clone().unwrap_or_default(), t));
    }
    let mut by_endpoint = std::collections::HashMap::new();
    if !matches.is_empty() {
        for h in hosts.priorities.iter().flat_map(|p| p.hosts.iter()) {
            let md = h
                .metadata()
                .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH));
            let chosen = matches.iter().find(|(want, _)| {
                want.fields
                    .iter()
                    .all(|(k, v)| md.and_then(|m| m.fields.get(k)) == Some(v))
            });
            if let Some((_, t)) = chosen {
                by_endpoint.insert(h.address, t.clone());
            }
        }
    }
    Ok(Transports {
        default,
        by_endpoint,
        bind: bind(ctx, c)?,
    })
}

/// `upstream_bind_config`: an IP literal source address with port 0.
fn bind(ctx: &Ctx<'_>, c: &pb::Cluster) -> Result<Option<Bind>, ConfigError> {
    let Some(b) = &c.upstream_bind_config else {
        return Ok(None);
    };
    let bc = ctx.field("upstream_bind_config");
    let Some(sa) = &b.source_address else {
        return Err(bc.field("source_address").invalid("is required"));
    };
    let sc = bc.field("source_address");
    if sa.protocol != 0 {
        return Err(sc.field("protocol").unsupported("UDP"));
    }
    let source: std::net::IpAddr = sa.address.parse().map_err(|_| {
        sc.field("address")
            .invalid(format!("{:?} is not an IP address", sa.address))
    })?;
    match sa.port_specifier {
        None | Some(socket_address::PortSpecifier::PortValue(0)) => {}
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            return Err(sc
                .field("port_value")
                .unsupported(format!("{p} (only 0, any port)")));
        }
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(sc.field("named_port").unsupported(""));
        }
    }
    Ok(Some(Bind {
        cluster: c.name.as_str().into(),
        source,
        freebind: b.freebind.map(|f| f.value),
    }))
}
