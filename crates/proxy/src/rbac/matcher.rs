//! RBAC permissions and principals (`envoy.config.rbac.v3.Permission` /
//! `Principal`) compiled into trees of plain data, and their evaluation
//! against one connection or request ([`Attrs`]). Pure: no I/O, no stats.

use crate::config::ConfigError;
use crate::model::common::{Ctx, StringMatch};
use crate::model::route::{HeaderMatch, RequestView};
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Principal, permission::Rule, principal::Identifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{MetadataMatcher, PathMatcher, path_matcher};
use std::net::{IpAddr, SocketAddr};

/// The peer's TLS identity, as RBAC's `authenticated` reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerCert<'a> {
    /// URI SANs of the peer certificate (the SPIFFE id for mesh peers).
    pub uri_sans: &'a [String],
    /// DNS SANs of the peer certificate.
    pub dns_sans: &'a [String],
    /// The certificate's subject (RFC 2253 form), empty when unknown.
    pub subject: &'a str,
}

/// What RBAC looks at for one connection (and request, for HTTP).
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    /// The HTTP request (method, `:path`, headers); `None` on TCP chains.
    pub request: Option<&'a RequestView<'a>>,
    /// The connection's peer address (`direct_remote_ip`, `source_ip`).
    pub direct_remote: IpAddr,
    /// The client address as the connection manager determined it (from
    /// `x-forwarded-for` when the HCM does not use the remote address).
    pub remote: IpAddr,
    /// The (original) destination address (`destination_ip`/`_port`).
    pub destination: SocketAddr,
    /// SNI of the downstream TLS connection, `""` without TLS or SNI.
    pub server_name: &'a str,
    /// The downstream TLS peer certificate; `None` on plaintext.
    pub peer: Option<PeerCert<'a>>,
}

// === impl Cidr ===

#[derive(Debug, Clone)]
pub(crate) struct Cidr {
    ip: IpAddr,
    len: u8,
}

impl Cidr {
    pub(crate) fn compile(ctx: &Ctx<'_>, r: &CidrRange) -> Result<Self, ConfigError> {
        let ip: IpAddr = r.address_prefix.parse().map_err(|_| {
            ctx.field("address_prefix")
                .invalid(format!("bad address_prefix {:?}", r.address_prefix))
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = r.prefix_len.as_ref().map(|v| v.value).unwrap_or(max);
        if len > max {
            return Err(ctx
                .field("prefix_len")
                .invalid(format!("bad prefix_len {len}")));
        }
        Ok(Cidr { ip, len: len as u8 })
    }

    pub(crate) fn contains(&self, a: IpAddr) -> bool {
        let a = match (self.ip, a) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
            _ => a,
        };
        match (self.ip, a) {
            (IpAddr::V4(n), IpAddr::V4(x)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(x) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(x)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(x) & mask
            }
            _ => false,
        }
    }
}

// === impl Perm ===

/// A compiled `Permission`.
#[derive(Debug)]
pub(crate) enum Perm {
    Any,
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
    Header(HeaderMatch),
    UrlPath(StringMatch),
    DestinationIp(Cidr),
    DestinationPort(u32),
    /// `[start, end)`.
    DestinationPortRange(i32, i32),
    RequestedServerName(StringMatch),
    /// Dynamic metadata: weft-proxy has none, so only the matcher's
    /// outcome on an absent value counts.
    Metadata(bool),
}

impl Perm {
    #[allow(deprecated)]
    pub fn compile(ctx: &Ctx<'_>, p: &Permission) -> Result<Self, ConfigError> {
        let set = |name: &str, rules: &[Permission]| -> Result<Vec<Perm>, ConfigError> {
            let c = ctx.field(name);
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| Perm::compile(&c.index("rules", i), r))
                .collect()
        };
        Ok(match &p.rule {
            Some(Rule::Any(true)) => Perm::Any,
            Some(Rule::Any(false)) => return Err(ctx.field("any").invalid("any must be true")),
            Some(Rule::AndRules(s)) => Perm::And(set("and_rules", &s.rules)?),
            Some(Rule::OrRules(s)) => Perm::Or(set("or_rules", &s.rules)?),
            Some(Rule::NotRule(r)) => {
                Perm::Not(Box::new(Perm::compile(&ctx.field("not_rule"), r)?))
            }
            Some(Rule::Header(h)) => Perm::Header(HeaderMatch::compile(&ctx.field("header"), h)?),
            Some(Rule::UrlPath(m)) => Perm::UrlPath(path_matcher(&ctx.field("url_path"), m)?),
            Some(Rule::DestinationIp(c)) => {
                Perm::DestinationIp(Cidr::compile(&ctx.field("destination_ip"), c)?)
            }
            Some(Rule::DestinationPort(p)) => Perm::DestinationPort(*p),
            Some(Rule::DestinationPortRange(r)) => Perm::DestinationPortRange(r.start, r.end),
            Some(Rule::RequestedServerName(m)) => Perm::RequestedServerName(StringMatch::compile(
                &ctx.field("requested_server_name"),
                m,
            )?),
            Some(Rule::Metadata(m)) => Perm::Metadata(metadata(&ctx.field("metadata"), m)?),
            Some(Rule::SourcedMetadata(s)) => {
                let c = ctx.field("sourced_metadata");
                if s.metadata_source != 0 {
                    return Err(c
                        .field("metadata_source")
                        .unsupported("only DYNAMIC metadata"));
                }
                let m = s
                    .metadata_matcher
                    .as_ref()
                    .ok_or_else(|| c.invalid("metadata_matcher is required"))?;
                Perm::Metadata(metadata(&c.field("metadata_matcher"), m)?)
            }
            Some(Rule::Matcher(_)) => return Err(ctx.field("matcher").unsupported("")),
            Some(Rule::UriTemplate(_)) => return Err(ctx.field("uri_template").unsupported("")),
            None => return Err(ctx.invalid("a permission rule is required")),
        })
    }

    pub fn matches(&self, a: &Attrs<'_>) -> bool {
        match self {
            Perm::Any => true,
            Perm::And(v) => v.iter().all(|p| p.matches(a)),
            Perm::Or(v) => v.iter().any(|p| p.matches(a)),
            Perm::Not(p) => !p.matches(a),
            Perm::Header(h) => header(h, a),
            Perm::UrlPath(m) => url_path(m, a),
            Perm::DestinationIp(c) => c.contains(a.destination.ip()),
            Perm::DestinationPort(p) => u32::from(a.destination.port()) == *p,
            Perm::DestinationPortRange(s, e) => {
                let p = i32::from(a.destination.port());
                *s <= p && p < *e
            }
            Perm::RequestedServerName(m) => m.matches(a.server_name),
            Perm::Metadata(on_absent) => *on_absent,
        }
    }
}

// === impl Princ ===

/// A compiled `Principal`.
#[derive(Debug)]
pub(crate) enum Princ {
    Any,
    And(Vec<Princ>),
    Or(Vec<Princ>),
    Not(Box<Princ>),
    /// `authenticated`; `None` matches any TLS peer.
    Authenticated(Option<StringMatch>),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(StringMatch),
    Metadata(bool),
}

impl Princ {
    #[allow(deprecated)]
    pub fn compile(ctx: &Ctx<'_>, p: &Principal) -> Result<Self, ConfigError> {
        let set = |name: &str, ids: &[Principal]| -> Result<Vec<Princ>, ConfigError> {
            let c = ctx.field(name);
            ids.iter()
                .enumerate()
                .map(|(i, r)| Princ::compile(&c.index("ids", i), r))
                .collect()
        };
        Ok(match &p.identifier {
            Some(Identifier::Any(true)) => Princ::Any,
            Some(Identifier::Any(false)) => {
                return Err(ctx.field("any").invalid("any must be true"));
            }
            Some(Identifier::AndIds(s)) => Princ::And(set("and_ids", &s.ids)?),
            Some(Identifier::OrIds(s)) => Princ::Or(set("or_ids", &s.ids)?),
            Some(Identifier::NotId(p)) => {
                Princ::Not(Box::new(Princ::compile(&ctx.field("not_id"), p)?))
            }
            Some(Identifier::Authenticated(au)) => Princ::Authenticated(
                au.principal_name
                    .as_ref()
                    .map(|m| {
                        StringMatch::compile(&ctx.field("authenticated").field("principal_name"), m)
                    })
                    .transpose()?,
            ),
            // `source_ip` (deprecated) is the connection's peer, like direct_remote_ip.
            Some(Identifier::SourceIp(c)) => {
                Princ::DirectRemoteIp(Cidr::compile(&ctx.field("source_ip"), c)?)
            }
            Some(Identifier::DirectRemoteIp(c)) => {
                Princ::DirectRemoteIp(Cidr::compile(&ctx.field("direct_remote_ip"), c)?)
            }
            Some(Identifier::RemoteIp(c)) => {
                Princ::RemoteIp(Cidr::compile(&ctx.field("remote_ip"), c)?)
            }
            Some(Identifier::Header(h)) => {
                Princ::Header(HeaderMatch::compile(&ctx.field("header"), h)?)
            }
            Some(Identifier::UrlPath(m)) => {
                Princ::UrlPath(path_matcher(&ctx.field("url_path"), m)?)
            }
            Some(Identifier::Metadata(m)) => Princ::Metadata(metadata(&ctx.field("metadata"), m)?),
            Some(Identifier::SourcedMetadata(s)) => {
                let c = ctx.field("sourced_metadata");
                if s.metadata_source != 0 {
                    return Err(c
                        .field("metadata_source")
                        .unsupported("only DYNAMIC metadata"));
                }
                let m = s
                    .metadata_matcher
                    .as_ref()
                    .ok_or_else(|| c.invalid("metadata_matcher is required"))?;
                Princ::Metadata(metadata(&c.field("metadata_matcher"), m)?)
            }
            Some(Identifier::FilterState(_)) => {
                return Err(ctx
                    .field("filter_state")
                    .unsupported("weft-proxy keeps no filter state"));
            }
            Some(Identifier::Custom(_)) => return Err(ctx.field("custom").unsupported("")),
            None => return Err(ctx.invalid("a principal identifier is required")),
        })
    }

    pub fn matches(&self, a: &Attrs<'_>) -> bool {
        match self {
            Princ::Any => true,
            Princ::And(v) => v.iter().all(|p| p.matches(a)),
            Princ::Or(v) => v.iter().any(|p| p.matches(a)),
            Princ::Not(p) => !p.matches(a),
            Princ::Authenticated(m) => authenticated(m.as_ref(), a.peer.as_ref()),
            Princ::DirectRemoteIp(c) => c.contains(a.direct_remote),
            Princ::RemoteIp(c) => c.contains(a.remote),
            Princ::Header(h) => header(h, a),
            Princ::UrlPath(m) => url_path(m, a),
            Princ::Metadata(on_absent) => *on_absent,
        }
    }
}

// === evaluation helpers ===

/// Envoy's `authenticated`: no TLS peer never matches; without a matcher
/// any TLS peer does; else a URI SAN, then a DNS SAN, then the subject.
fn authenticated(m: Option<&StringMatch>, peer: Option<&PeerCert<'_>>) -> bool {
    let Some(peer) = peer else { return false };
    let Some(m) = m else { return true };
    peer.uri_sans.iter().any(|s| m.matches(s))
        || peer.dns_sans.iter().any(|s| m.matches(s))
        || m.matches(peer.subject)
}

/// Header matchers see the request's headers; a TCP chain has an empty map.
fn header(h: &HeaderMatch, a: &Attrs<'_>) -> bool {
    match a.request {
        Some(r) => h.matches(r),
        None => {
            static EMPTY: std::sync::OnceLock<http::HeaderMap> = std::sync::OnceLock::new();
            let view = RequestView {
                method: "",
                path_and_query: "",
                headers: EMPTY.get_or_init(http::HeaderMap::new),
            };
            h.matches(&view)
        }
    }
}

/// `url_path` compares the path without query string and fragment; it
/// never matches without a request.
fn url_path(m: &StringMatch, a: &Attrs<'_>) -> bool {
    let Some(r) = a.request else { return false };
    let pq = r.path_and_query;
    let end = pq.find(['?', '#']).unwrap_or(pq.len());
    m.matches(&pq[..end])
}

fn path_matcher(ctx: &Ctx<'_>, m: &PathMatcher) -> Result<StringMatch, ConfigError> {
    match &m.rule {
        Some(path_matcher::Rule::Path(s)) => StringMatch::compile(&ctx.field("path"), s),
        None => Err(ctx.invalid("path is required")),
    }
}

/// A metadata matcher evaluated against absent dynamic metadata: no value
/// pattern matches an absent value (Envoy's matchers need a set kind), so
/// the outcome is `invert`.
fn metadata(ctx: &Ctx<'_>, m: &MetadataMatcher) -> Result<bool, ConfigError> {
    let v = m
        .value
        .as_ref()
        .ok_or_else(|| ctx.field("value").invalid("value is required"))?;
    if v.match_pattern.is_none() {
        return Err(ctx.field("value").invalid("a match pattern is required"));
    }
    Ok(m.invert)
}
