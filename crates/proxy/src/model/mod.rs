//! The compiled configuration: immutable plain data built once per config
//! version from the `envoy-types` protos and swapped in whole (`arc-swap`).
//! Requests read it without locks. Compile errors name the field's path.

mod action;
pub mod cluster;
pub mod common;
pub mod cors;
pub mod http;
pub mod lb;
pub mod listener;
pub mod route;
pub mod token_bucket;

use crate::accesslog::{AccessLog, DEFAULT_FORMAT};
use crate::config::{ConfigError, LoadedBootstrap};
use crate::stats::Stats;
use bytes::Bytes;
use cluster::Cluster;
use common::Ctx;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog as PbAccessLog, access_log::ConfigType,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, data_source::Specifier, substitution_format_string::Format as SubFormat,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log::AccessLogFormat,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog,
};
use listener::Listener;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// One accepted configuration version.
#[derive(Debug)]
pub struct Snapshot {
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Cluster names in configuration order (for /clusters and /stats).
    pub cluster_order: Vec<String>,
    pub admin: Option<SocketAddr>,
    pub node_id: String,
    pub node_cluster: String,
    /// The bootstrap in JSON form, for `/config_dump`.
    pub config_json: std::sync::Arc<str>,
}

impl Snapshot {
    #[allow(deprecated)]
    pub fn compile(loaded: &LoadedBootstrap, stats: &Stats) -> Result<Snapshot, ConfigError> {
        let b = &loaded.bootstrap;
        let root = Ctx::new(&loaded.origin, "");
        let sr = b.static_resources.clone().unwrap_or_default();
        let sctx = root.field("static_resources");
        let secrets = crate::tls::Secrets::compile(&sctx, &sr.secrets)?;
        let mut clusters = HashMap::new();
        let mut cluster_order = Vec::new();
        for (i, c) in sr.clusters.iter().enumerate() {
            let ctx = sctx.index("clusters", i);
            let compiled = Cluster::compile(&ctx, c, stats, &secrets)?;
            if clusters
                .insert(c.name.clone(), Arc::new(compiled))
                .is_some()
            {
                return Err(ctx
                    .field("name")
                    .invalid(format!("duplicate cluster {:?}", c.name)));
            }
            cluster_order.push(c.name.clone());
        }
        stats.istio.set_node(b.node.as_ref());
        let mut listeners = Vec::new();
        for (i, l) in sr.listeners.iter().enumerate() {
            let ctx = sctx.index("listeners", i);
            let compiled = Listener::compile(&ctx, l, &clusters, stats, &secrets)?;
            if listeners
                .iter()
                .any(|x: &Arc<Listener>| x.name == compiled.name)
            {
                return Err(ctx
                    .field("name")
                    .invalid(format!("duplicate listener {:?}", compiled.name)));
            }
            listeners.push(Arc::new(compiled));
        }
        if let Some(a) = &b.admin
            && !a.access_log_path.is_empty()
            && a.access_log_path != "/dev/null"
        {
            return Err(root
                .field("admin")
                .field("access_log_path")
                .unsupported(format!(
                    "{:?}: the admin API keeps no access log; use /dev/null",
                    a.access_log_path
                )));
        }
        let admin = match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
            Some(a) => Some(listener::socket_addr(
                &root.field("admin").field("address"),
                Some(a),
            )?),
            None => None,
        };
        let node = b.node.clone().unwrap_or_default();
        Ok(Snapshot {
            listeners,
            clusters,
            cluster_order,
            admin,
            node_id: node.id,
            node_cluster: node.cluster,
            config_json: loaded.json.clone(),
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// Reads an inline or file `DataSource`.
pub fn data_source(ctx: &Ctx<'_>, d: &DataSource) -> Result<Bytes, ConfigError> {
    match &d.specifier {
        Some(Specifier::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(Specifier::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(Specifier::Filename(f)) => std::fs::read(f).map(Bytes::from).map_err(|e| {
            ctx.field("filename")
                .invalid(format!("cannot read {f}: {e}"))
        }),
        Some(_) => Err(ctx.unsupported("")),
        None => Ok(Bytes::new()),
    }
}

/// An access log's format: a format string or a `json_format` object.
enum LogSpec {
    Text(String),
    Json(serde_json::Map<String, serde_json::Value>),
}

fn struct_to_json(
    s: &envoy_types::pb::google::protobuf::Struct,
) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

#[allow(deprecated)]
fn text_format(
    ctx: &Ctx<'_>,
    f: Option<&envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString>,
) -> Result<LogSpec, ConfigError> {
    let Some(f) = f else {
        return Ok(LogSpec::Text(DEFAULT_FORMAT.to_owned()));
    };
    match &f.format {
        Some(SubFormat::TextFormat(t)) => Ok(LogSpec::Text(t.clone())),
        Some(SubFormat::TextFormatSource(ds)) => {
            let b = data_source(&ctx.field("text_format_source"), ds)?;
            String::from_utf8(b.to_vec())
                .map(LogSpec::Text)
                .map_err(|_| ctx.field("text_format_source").invalid("not UTF-8"))
        }
        Some(SubFormat::JsonFormat(s)) => Ok(LogSpec::Json(struct_to_json(s))),
        None => Ok(LogSpec::Text(DEFAULT_FORMAT.to_owned())),
    }
}

/// Compiles `access_log` entries (file, stdout, stderr loggers).
pub fn access_logs(ctx: &Ctx<'_>, logs: &[PbAccessLog]) -> Result<Vec<AccessLog>, ConfigError> {
    let mut out = Vec::new();
    for (i, l) in logs.iter().enumerate() {
        let c = ctx.index("access_log", i);
        let Some(ConfigType::TypedConfig(any)) = &l.config_type else {
            return Err(c.field("typed_config").invalid("typed_config is required"));
        };
        let tc = c.field("typed_config");
        let err = |e: prost::DecodeError| tc.invalid(e.to_string());
        let (path, format) = match any.type_url.rsplit('/').next().unwrap_or_default() {
            "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
                let f = FileAccessLog::decode(any.value.as_slice()).map_err(err)?;
                #[allow(deprecated)]
                let format = match &f.access_log_format {
                    Some(AccessLogFormat::Format(s)) if !s.is_empty() => LogSpec::Text(s.clone()),
                    Some(AccessLogFormat::LogFormat(lf)) => {
                        text_format(&tc.field("log_format"), Some(lf))?
                    }
                    None | Some(AccessLogFormat::Format(_)) => {
                        LogSpec::Text(DEFAULT_FORMAT.to_owned())
                    }
                    Some(_) => {
                        return Err(tc.unsupported("JSON access log formats are not implemented"));
                    }
                };
                (f.path, format)
            }
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
                let f = StdoutAccessLog::decode(any.value.as_slice()).map_err(err)?;
                let lf = f.access_log_format.as_ref().map(|envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat::LogFormat(lf)| lf);
                (
                    "/dev/stdout".to_owned(),
                    text_format(&tc.field("log_format"), lf)?,
                )
            }
            "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
                let f = StderrAccessLog::decode(any.value.as_slice()).map_err(err)?;
                let lf = f.access_log_format.as_ref().map(|envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat::LogFormat(lf)| lf);
                (
                    "/dev/stderr".to_owned(),
                    text_format(&tc.field("log_format"), lf)?,
                )
            }
            other => return Err(tc.unsupported(format!("access logger {other}"))),
        };
        let log = match &format {
            LogSpec::Text(t) => AccessLog::new_after(out.last(), &tc, &path, t)?,
            LogSpec::Json(o) => AccessLog::new_json_after(out.last(), &tc, &path, o)?,
        };
        out.push(log);
    }
    // Every logger captures the same (union) header list.
    if let Some(last) = out
        .last()
        .map(|l| (l.format.req_headers.clone(), l.format.resp_headers.clone()))
    {
        for l in &mut out {
            l.format.req_headers = last.0.clone();
            l.format.resp_headers = last.1.clone();
        }
    }
    Ok(out)
}
