//! The Weft sidecar data plane (istio-proxy's counterpart): reads an Envoy
//! v3 bootstrap (`config`), compiles it into immutable tables (`model`),
//! and serves listeners on worker threads (`server`), with the admin API
//! (`admin`), metrics (`stats`), access logs (`accesslog`) and the agent
//! commands (`agent`).

pub mod accesslog;
pub mod config;
pub mod model;
pub mod stats;
pub mod upstream;

/// The body type on both sides of the proxy.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
/// Errors carried through bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub mod admin;
pub mod agent;
pub mod logging;
pub mod server;
pub mod sniff;

pub use server::{Options, Proxy, StartError};
