//! The sidecar mode: weft-proxy as an ADS client of weftd (`weft-proxy run
//! --xds-address HOST:PORT`, or the injector's `PROXY_CONFIG`
//! `discoveryAddress`).
//!
//! - [`env`]: the node weft-proxy reports (from the environment Istio's
//!   injector sets, as Istio's agent builds it) and the discovery address.
//! - [`tls`] (pure) and [`relay`]: plaintext to 15010, mutual TLS to 15012
//!   as pilot-agent does it (weftd verified by host name against the mesh
//!   root, the workload certificate presented), with the reasons of
//!   failures; [`peer`] keeps other processes off the relay; [`status`]
//!   remembers why there is no stream, for the readiness reason.
//! - [`applier`] and `assemble`: checking, assembling and applying the
//!   received LDS/CDS/RDS/EDS sets (and NDS for the DNS proxy).
//!
//! The protocol loop itself is `weft_xds::client`.

pub mod applier;
mod assemble;
pub mod env;
pub mod peer;
pub mod relay;
pub mod status;
pub mod tls;

pub use applier::{XdsApplier, empty_bootstrap};
pub use env::{address_from_env, address_url, metadata_from_env};
pub use tls::{TlsSettings, XdsTransport, transport_from_env};
