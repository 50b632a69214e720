//! Aggregated Discovery Service plumbing shared by weftd and weft-proxy.
//!
//! - [`types`]: Envoy v3 type URLs and push order.
//! - [`resources`]: versioned resource sets, node identity, the
//!   [`Generator`] trait weftd implements with translation.
//! - [`push`]: push triggers and their debouncing.
//! - [`server`]: the ADS gRPC service, state of the world and delta, with
//!   per-proxy ACK/NACK tracking ([`status`]) and pilot metrics ([`metrics`]).
//! - [`client`]: the state-of-the-world ADS client loop used by weft-proxy.
//! - [`proxy_node`]: the Istio-style `node` a proxy introduces itself with.
//! - [`names`]: resource names and the EDS/RDS names clusters and listeners need.
//!
//! This crate knows the protocol, not the mesh: it never decides what a
//! resource contains.

pub mod client;
pub mod error;
pub mod metrics;
pub mod names;
pub mod proxy_node;
pub mod push;
pub mod resources;
pub mod server;
pub mod status;
pub mod types;

pub use envoy_types::pb::envoy::config::core::v3::Node;
pub use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
pub use envoy_types::pb::google::protobuf::Any;

pub use client::{AdsClient, ClientConfig, ClientHandle, ClientState, ConfigHandler};
pub use error::XdsError;
pub use metrics::XdsMetrics;
pub use proxy_node::{ProxyKind, ProxyMetadata};
pub use push::{DebounceConfig, PushRequest, PushScope, PushState, Pusher};
pub use resources::{Generator, NodeInfo, Resource, ResourceSet, string_struct};
pub use server::{AdsServer, ServerOptions};
pub use status::{ProxySyncStatus, StreamKind, TypeSyncStatus};
pub use types::XdsType;
