//! weftd, the control plane: config store, service registry, translation of
//! Istio resources into xDS, push, the CA and the admission webhooks.
//!
//! Modules: the namespace view of the file config source ([`namespaces`]),
//! the sidecar-injection webhook ([`webhook`]), translation ([`translate`]),
//! distribution over ADS ([`discovery`]) from the encoded per-proxy
//! cache ([`xds_cache`]), debug endpoints ([`debug`]), the
//! CA and its gRPC ports ([`ca`]), the SDS trust bundle ([`sds`]) and a
//! node-agent SDS server for Envoy sidecars ([`sds_agent`]), and the
//! authentication of xDS clients on the TLS port ([`xds_auth`]).

pub mod ca;
pub mod debug;
pub mod discovery;
pub mod namespaces;
pub mod sds;
pub mod sds_agent;
pub mod translate;
pub mod webhook;
pub mod xds_auth;
pub mod xds_cache;
