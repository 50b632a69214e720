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
//! - [`json`]: resources and Envoy's admin `config_dump` in proto3 JSON.
//! - [`nds`]: Istio's NameTable (NDS) messages for the sidecar DNS proxy.
//!
//! This crate knows the protocol, not the mesh: it never decides what a
//! resource contains.
//!
//! # weftd: serving ADS
//!
//! ```no_run
//! use std::sync::Arc;
//! use weft_xds::{AdsServer, DebounceConfig, NodeInfo, PushRequest, Pusher, ResourceSet,
//!                ServerOptions, XdsMetrics};
//!
//! # async fn run() -> Result<(), weft_xds::XdsError> {
//! // Translation goes here; a closure is a Generator too.
//! let generator = Arc::new(|node: &NodeInfo, type_url: &str| -> ResourceSet {
//!     let _ = (node, type_url);
//!     ResourceSet::new()
//! });
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = Arc::new(XdsMetrics::new(&mut registry));
//! let pusher = Pusher::spawn(DebounceConfig::default());
//! let server = AdsServer::new(generator, &pusher, metrics, ServerOptions::default());
//! // On a config change: pusher.trigger(PushRequest::full("file x changed"));
//! // On an endpoint change: pusher.trigger(PushRequest::endpoints("slice y"));
//! // /debug/syncz: server.sync_status();
//! server
//!     .serve_addr("0.0.0.0:15010".parse().unwrap(), std::future::pending())
//!     .await
//! # }
//! ```
//!
//! # weft-proxy: following weftd
//!
//! ```no_run
//! use weft_xds::{AdsClient, Any, ClientConfig, ProxyMetadata};
//!
//! # async fn run() -> Result<(), weft_xds::XdsError> {
//! let me = ProxyMetadata {
//!     ips: vec!["10.0.0.5".into()],
//!     pod_name: "reviews-v1-7d9c".into(),
//!     namespace: "default".into(),
//!     ..Default::default()
//! };
//! let config = ClientConfig::new("http://127.0.0.1:15010", me.to_node());
//! // Compile and swap in; Err(message) NACKs and the old config keeps serving.
//! let handle = AdsClient::spawn(config, |type_url: &str, resources: &[Any]| {
//!     let _ = (type_url, resources);
//!     Ok(())
//! })?;
//! let state = handle.state(); // accepted versions, NACKs, connection state
//! # drop(state);
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod error;
pub mod json;
pub mod metrics;
pub mod names;
pub mod nds;
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

pub use client::{
    AdsClient, ClientConfig, ClientHandle, ClientState, ConfigHandler, ResourceView, Update,
};
pub use error::XdsError;
pub use metrics::XdsMetrics;
pub use proxy_node::{ProxyKind, ProxyMetadata};
pub use push::{DebounceConfig, PushRequest, PushScope, PushState, Pusher};
pub use resources::{Generator, NodeInfo, Resource, ResourceSet, string_struct};
pub use server::{AdsServer, ServerOptions};
pub use status::{Nack, Names, ProxySyncStatus, StreamKind, SyncStatus, TypeSyncStatus};
pub use types::XdsType;
