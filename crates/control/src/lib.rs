//! weftd, the control plane: config store, service registry, translation of
//! Istio resources into xDS, push, the CA and the admission webhooks.
//!
//! Today it holds the namespace view of the file config source
//! ([`namespaces`]) and the sidecar-injection webhook ([`webhook`]).

pub mod ca;
pub mod debug;
pub mod discovery;
pub mod namespaces;
pub mod translate;
pub mod webhook;
