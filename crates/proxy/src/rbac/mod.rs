//! Envoy's role-based access control filters: `envoy.filters.http.rbac`
//! (`extensions.filters.http.rbac.v3.RBAC`, per route `RBACPerRoute`) and
//! `envoy.filters.network.rbac`, as weftd generates them from Istio's
//! AuthorizationPolicy.
//!
//! Owns the compiled engines (action + policies in name order, so the
//! first matching policy's name is the one reported, as Envoy's `std::map`
//! iteration does), the decision with its shadow twin, and the counters
//! (`http.PREFIX.rbac.[RULES_PREFIX.]allowed`, `PREFIX.rbac.denied`, ...).
//! The matchers themselves live in [`matcher`]. Callers (the HTTP
//! connection manager and the connection handler) answer a denial: 403
//! `RBAC: access denied` for HTTP, a closed connection for TCP; Envoy sets
//! no response flag for either and reports
//! `rbac_access_denied_matched_policy[NAME|none]` as the details.

pub mod matcher;

use crate::accesslog::Entry;
use crate::config::ConfigError;
use crate::model::common::Ctx;
use crate::model::http::HttpManager;
use crate::model::listener::ChainKind;
use crate::model::route::RequestView;
use crate::model::route::Target;
use crate::server::conn::ConnMeta;
use crate::stats::{RbacStats, Stats};
use envoy_types::pb::envoy::config::rbac::v3::{Rbac as PbRules, rbac::Action as PbAction};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac as PbHttp, RbacPerRoute};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as PbNetwork;
use http::HeaderMap;
use matcher::{Attrs, Perm, Princ};
use std::net::IpAddr;
use std::sync::Arc;

/// What an engine does with a matching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// One named policy: any permission and any principal must match.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    permissions: Vec<Perm>,
    principals: Vec<Princ>,
    /// `rbac_access_denied_matched_policy[NAME]`, interned once.
    denied_details: &'static str,
}

impl Policy {
    pub fn matches(&self, a: &Attrs<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(a))
            && self.principals.iter().any(|p| p.matches(a))
    }
}

/// A compiled `config.rbac.v3.RBAC`.
#[derive(Debug)]
pub struct Engine {
    pub action: Action,
    /// Sorted by name.
    pub policies: Vec<Policy>,
}

/// An engine's verdict and the first policy (by name) that matched.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'a> {
    pub allowed: bool,
    pub policy: Option<&'a Policy>,
}

impl<'a> Verdict<'a> {
    /// Envoy's response-code / connection-termination details for a denial.
    pub fn details(&self) -> &'static str {
        self.policy
            .map(|p| p.denied_details)
            .unwrap_or("rbac_access_denied_matched_policy[none]")
    }
}

impl Engine {
    pub fn compile(ctx: &Ctx<'_>, r: &PbRules) -> Result<Self, ConfigError> {
        if r.audit_logging_options.is_some() {
            return Err(ctx.field("audit_logging_options").unsupported(""));
        }
        let action = match PbAction::try_from(r.action) {
            Ok(PbAction::Allow) => Action::Allow,
            Ok(PbAction::Deny) => Action::Deny,
            Ok(PbAction::Log) => Action::Log,
            Err(_) => {
                return Err(ctx
                    .field("action")
                    .invalid(format!("unknown action {}", r.action)));
            }
        };
        let mut names: Vec<&String> = r.policies.keys().collect();
        names.sort();
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let p = &r.policies[name];
            let c = ctx.field("policies").field(name);
            if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
                return Err(c
                    .field("condition")
                    .unsupported("CEL conditions are not implemented"));
            }
            if p.permissions.is_empty() {
                return Err(c.field("permissions").invalid("at least one is required"));
            }
            if p.principals.is_empty() {
                return Err(c.field("principals").invalid("at least one is required"));
            }
            let permissions = p
                .permissions
                .iter()
                .enumerate()
                .map(|(i, x)| Perm::compile(&c.index("permissions", i), x))
                .collect::<Result<_, _>>()?;
            let principals = p
                .principals
                .iter()
                .enumerate()
                .map(|(i, x)| Princ::compile(&c.index("principals", i), x))
                .collect::<Result<_, _>>()?;
            policies.push(Policy {
                name: name.as_str().into(),
                permissions,
                principals,
                denied_details: intern(format!("rbac_access_denied_matched_policy[{name}]")),
            });
        }
        Ok(Engine { action, policies })
    }

    /// Envoy's `handleAction`: ALLOW allows a match, DENY denies one, LOG
    /// allows everything (reporting the match).
    pub fn evaluate(&self, a: &Attrs<'_>) -> Verdict<'_> {
        let policy = self.policies.iter().find(|p| p.matches(a));
        let allowed = match self.action {
            Action::Allow => policy.is_some(),
            Action::Deny => policy.is_none(),
            Action::Log => true,
        };
        Verdict { allowed, policy }
    }
}

/// Strings that live as long as the process, each kept once (the access
/// log's details are `&'static str`); bounded by the distinct policy names.
fn intern(s: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SET: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = SET
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(v) = set.get(s.as_str()) {
        return v;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    set.insert(leaked);
    leaked
}

/// Enforced rules and shadow rules of one filter (or one route's override).
#[derive(Debug, Default)]
pub struct Rules {
    /// `None`: nothing enforced.
    pub rules: Option<Engine>,
    /// Evaluated and counted only.
    pub shadow: Option<Engine>,
}

impl Rules {
    /// Runs the shadow rules (counted) then the enforced ones; `Err` holds
    /// the denial details.
    pub fn check(&self, a: &Attrs<'_>, stats: Option<&RbacStats>) -> Result<(), &'static str> {
        if let Some(shadow) = &self.shadow {
            let v = shadow.evaluate(a);
            if let Some(s) = stats {
                s.shadow(v.allowed);
            }
        }
        let Some(engine) = &self.rules else {
            return Ok(());
        };
        let v = engine.evaluate(a);
        if let Some(s) = stats {
            s.enforced(v.allowed);
        }
        if v.allowed { Ok(()) } else { Err(v.details()) }
    }

    fn compile(
        ctx: &Ctx<'_>,
        rules: Option<&PbRules>,
        shadow: Option<&PbRules>,
    ) -> Result<Self, ConfigError> {
        Ok(Rules {
            rules: rules
                .map(|r| Engine::compile(&ctx.field("rules"), r))
                .transpose()?,
            shadow: shadow
                .map(|r| Engine::compile(&ctx.field("shadow_rules"), r))
                .transpose()?,
        })
    }
}

/// `envoy.filters.http.rbac`, compiled. The HCM-level filter carries the
/// counters; a route's `RBACPerRoute` replaces only the rules.
#[derive(Debug)]
pub struct HttpRbac {
    pub rules: Rules,
    pub rules_stat_prefix: String,
    pub shadow_rules_stat_prefix: String,
    /// Set on the HCM-level filter once the HCM's stat prefix is known.
    pub stats: Option<RbacStats>,
}

impl HttpRbac {
    pub fn compile(ctx: &Ctx<'_>, r: &PbHttp) -> Result<Self, ConfigError> {
        if r.matcher.is_some() {
            return Err(ctx.field("matcher").unsupported("use rules"));
        }
        if r.shadow_matcher.is_some() {
            return Err(ctx.field("shadow_matcher").unsupported("use shadow_rules"));
        }
        if r.track_per_rule_stats {
            return Err(ctx.field("track_per_rule_stats").unsupported(""));
        }
        Ok(HttpRbac {
            rules: Rules::compile(ctx, r.rules.as_ref(), r.shadow_rules.as_ref())?,
            rules_stat_prefix: r.rules_stat_prefix.clone(),
            shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.clone(),
            stats: None,
        })
    }

    /// A route's override; without `rbac` the filter is off for the route.
    pub fn compile_per_route(ctx: &Ctx<'_>, r: &RbacPerRoute) -> Result<Self, ConfigError> {
        match &r.rbac {
            Some(inner) => HttpRbac::compile(&ctx.field("rbac"), inner),
            None => Ok(HttpRbac {
                rules: Rules::default(),
                rules_stat_prefix: String::new(),
                shadow_rules_stat_prefix: String::new(),
                stats: None,
            }),
        }
    }

    /// Resolves the counters under the HCM's stat prefix.
    pub fn bind_stats(&mut self, stats: &Stats, hcm_prefix: &str) {
        self.stats = Some(stats.rbac_http(
            hcm_prefix,
            &self.rules_stat_prefix,
            &self.shadow_rules_stat_prefix,
        ));
    }
}

/// `envoy.filters.network.rbac`, compiled.
#[derive(Debug)]
pub struct NetworkRbac {
    pub rules: Rules,
    pub stats: RbacStats,
}

impl NetworkRbac {
    pub fn compile(ctx: &Ctx<'_>, r: &PbNetwork, stats: &Stats) -> Result<Self, ConfigError> {
        if r.matcher.is_some() {
            return Err(ctx.field("matcher").unsupported("use rules"));
        }
        if r.shadow_matcher.is_some() {
            return Err(ctx.field("shadow_matcher").unsupported("use shadow_rules"));
        }
        if r.delay_deny.is_some() {
            return Err(ctx.field("delay_deny").unsupported(""));
        }
        if r.stat_prefix.is_empty() {
            return Err(ctx.field("stat_prefix").invalid("stat_prefix is required"));
        }
        Ok(NetworkRbac {
            rules: Rules::compile(ctx, r.rules.as_ref(), r.shadow_rules.as_ref())?,
            stats: stats.rbac_network(&r.stat_prefix, &r.shadow_rules_stat_prefix),
        })
    }

    /// The decision for a connection; `Err` holds the denial details.
    pub fn check(&self, a: &Attrs<'_>) -> Result<(), &'static str> {
        self.rules.check(a, Some(&self.stats))
    }
}

/// A filter chain's `filters`: any `envoy.filters.network.rbac` first,
/// then exactly one terminal filter, whose index is returned.
pub fn network_filters(
    ctx: &Ctx<'_>,
    filters: &[envoy_types::pb::envoy::config::listener::v3::Filter],
    stats: &Stats,
) -> Result<(Vec<Arc<NetworkRbac>>, usize), ConfigError> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use prost::Message;
    let Some(last) = filters.len().checked_sub(1) else {
        return Err(ctx
            .field("filters")
            .invalid("a terminal filter (http_connection_manager or tcp_proxy) is required"));
    };
    let mut out = Vec::new();
    for (i, f) in filters[..last].iter().enumerate() {
        let c = ctx.index("filters", i).field("typed_config");
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(c.invalid(format!("filter {:?} needs a typed_config", f.name)));
        };
        if !any
            .type_url
            .ends_with("/envoy.extensions.filters.network.rbac.v3.RBAC")
        {
            return Err(c.unsupported(format!(
                "{}: only envoy.filters.network.rbac may precede the terminal filter",
                any.type_url
            )));
        }
        let r = PbNetwork::decode(any.value.as_slice()).map_err(|e| c.invalid(e.to_string()))?;
        out.push(Arc::new(NetworkRbac::compile(&c, &r, stats)?));
    }
    Ok((out, last))
}

// === the callers' side ===

/// The TLS peer of a connection as RBAC reads it (mutual TLS only).
pub fn peer_cert(meta: &ConnMeta) -> Option<matcher::PeerCert<'_>> {
    let tls = meta.tls.as_deref().filter(|t| t.is_mutual())?;
    Some(matcher::PeerCert {
        uri_sans: &tls.peer_uri_sans,
        dns_sans: &tls.peer_dns_sans,
        subject: tls.peer_subject.as_deref().unwrap_or(""),
    })
}

/// Envoy's downstream remote address for a request: the connection's
/// peer with `use_remote_address`, else the last `x-forwarded-for` entry
/// (no trusted hops), else the peer.
pub fn remote_ip(meta: &ConnMeta, use_remote_address: bool, headers: &HeaderMap) -> IpAddr {
    if use_remote_address {
        return meta.remote.ip();
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(meta.remote.ip())
}

/// Runs an HTTP RBAC filter (or a route's override) on a request; `Err`
/// holds the denial details for the access log.
pub fn check_request(
    r: &HttpRbac,
    stats: Option<&RbacStats>,
    meta: &ConnMeta,
    hcm: &HttpManager,
    parts: &http::request::Parts,
) -> Result<(), &'static str> {
    if r.rules.rules.is_none() && r.rules.shadow.is_none() {
        return Ok(());
    }
    let view = RequestView {
        method: parts.method.as_str(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        headers: &parts.headers,
    };
    let attrs = Attrs {
        request: Some(&view),
        direct_remote: meta.remote.ip(),
        remote: remote_ip(meta, hcm.use_remote_address, &parts.headers),
        destination: meta.destination,
        server_name: meta.server_name.as_deref().unwrap_or(""),
        peer: peer_cert(meta),
    };
    r.rules.check(&attrs, stats)
}

/// Runs a chain's network RBAC filters in order on a new connection;
/// `Err` holds the first denial's details.
pub fn check_connection(filters: &[Arc<NetworkRbac>], meta: &ConnMeta) -> Result<(), &'static str> {
    if filters.is_empty() {
        return Ok(());
    }
    let attrs = Attrs {
        request: None,
        direct_remote: meta.remote.ip(),
        remote: meta.remote.ip(),
        destination: meta.destination,
        server_name: meta.server_name.as_deref().unwrap_or(""),
        peer: peer_cert(meta),
    };
    filters.iter().try_for_each(|f| f.check(&attrs))
}

/// Closes a connection a network RBAC filter denied, the way Envoy does:
/// the verdict is applied when the client's first bytes (or its FIN)
/// arrive, which are read and dropped, so the close is a clean FIN; then
/// the chain's tcp_proxy access log records the details.
pub async fn deny_connection(
    mut stream: crate::tls::Stream,
    kind: &ChainKind,
    meta: &ConnMeta,
    details: &'static str,
) {
    use tokio::io::AsyncReadExt;
    tracing::debug!(remote = %meta.remote, listener = %meta.listener, details, "connection denied by RBAC");
    let wait = match kind {
        ChainKind::Tcp(tp) => tp.idle_timeout,
        ChainKind::Http(h) => h.idle_timeout,
    }
    .unwrap_or(std::time::Duration::from_secs(3600));
    let mut buf = vec![0u8; 16 * 1024];
    let received = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(n)) => n as u64,
        _ => 0,
    };
    drop(stream);
    let ChainKind::Tcp(tp) = kind else { return };
    if tp.access_logs.is_empty() {
        return;
    }
    let mut entry = Entry::new(std::time::SystemTime::now());
    entry.downstream_remote = Some(meta.remote);
    entry.downstream_local = Some(meta.destination);
    entry.sni = meta.server_name.clone();
    entry.termination_details = details;
    entry.bytes_received = received;
    if let Target::Cluster(c) = &tp.target {
        entry.upstream_cluster = Some(c.name.clone());
    }
    for log in &tp.access_logs {
        log.log(&entry);
    }
}

#[cfg(test)]
mod tests;
