//! The local mesh: `weft up DIR` and `weft demo` run a whole Istio-style
//! mesh on one machine, with no Kubernetes.
//!
//! Two layers:
//! - the pure planning core — [`plan`] turns manifests (Namespaces,
//!   Deployments, StatefulSets, Pods, Services, Istio resources) into a
//!   [`Plan`]: namespaces, Services with local VIPs, pods with replicas and
//!   Kubernetes-like names, the sidecar injected by the same core as
//!   `weft kube-inject` ([`workload`]), each container's program mapped
//!   from its image ([`image`], [`container`]), and precise
//!   [`PlanError`]s naming file, document, object and field;
//! - the runtime shell ([`runtime`]) that runs a plan in network namespaces
//!   (the testbed crate): weftd on a dedicated node namespace, every pod on
//!   its bridge with capture applied by `weft-proxy iptables`, weft-proxy as
//!   uid/gid 1337 beside the app, readiness probes, restarts with backoff,
//!   endpoint publication to weftd, live edits, and teardown; [`state`]
//!   records what runs so `weft down`, `weft exec` and `weft logs` find it.
//!
//! Every name the runtime creates starts with `weft-<mesh>-`, and everything
//! lives inside namespaces it created: deleting them (what `weft down`
//! does) removes every veth, rule and process.

pub mod access;
pub mod bins;
pub mod container;
pub mod dns;
pub mod error;
pub mod image;
pub mod manifest;
pub mod plan;
pub mod runtime;
pub mod sandbox;
pub mod services;
pub mod state;
pub mod workload;

#[cfg(test)]
mod tests;

pub use error::{Error, PlanError, Result};
pub use plan::{Plan, PlanOptions, PodPlan, ServicePlan, plan_documents, plan_files};
pub use runtime::{Mesh, Report, UpOptions, down, require_root};
