//! The Weft sidecar data plane (istio-proxy's counterpart).
//!
//! `weft-proxy --config FILE` runs an Envoy v3 bootstrap (`static_resources`):
//!
//! - `config`: YAML/JSON -> `envoy-types` protos via `prost-reflect`, with every
//!   set field checked against what is implemented (`config/support.rs` is the
//!   list); anything else is refused with its path.
//! - `model`: the protos compiled into immutable tables (routes, clusters with
//!   load balancers, listeners with filter chains), swapped whole on reload.
//! - `server`: one single-threaded runtime per worker with SO_REUSEPORT accept
//!   loops; connection handling (original destination, sniffing, filter chain),
//!   `http_connection_manager` (hyper, HTTP/1.1 + h2c + HTTP/2) and `tcp_proxy`.
//! - `upstream`: per-worker HTTP/1.1 and HTTP/2 pools, plaintext or TLS per endpoint.
//! - `tls`: downstream TLS termination and upstream TLS (rustls), secrets,
//!   SAN checks, the peer identity of a connection; `identity`: the
//!   sidecar's workload certificate from weftd's CA (`default`, `ROOTCA`).
//! - `rbac`: Envoy's HTTP and network RBAC filters (AuthorizationPolicy);
//!   `istio_metrics`: Istio's standard metrics with Istio's labels.
//! - `admin`, `stats`, `accesslog`, `agent`, `logging`, `sniff`: the control
//!   thread's ports, metrics, Envoy-format access logs, pilot-agent commands,
//!   log levels, and the protocol sniffer.
//! - `xds`: the sidecar mode, an ADS client of weftd (`weft-proxy run --xds-address`),
//!   plaintext to 15010 or mutual TLS to 15012 as Istio's agent does it.
//! - `dns`: the sidecar DNS proxy on 15053 (mesh names from weftd's NDS
//!   table, other names forwarded to the pod's resolvers).

pub mod accesslog;
pub mod config;
pub mod dns;
pub mod identity;
pub mod istio_metrics;
pub mod model;
pub mod rbac;
pub mod stats;
pub mod tls;
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
pub mod xds;

pub use server::{Options, Proxy, StartError};
