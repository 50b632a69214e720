//! Istio-compatible resource types (`networking.istio.io`, `security.istio.io`),
//! the Kubernetes objects Weft reads, MeshConfig, and validation that reports
//! every invalid field with its path.
//!
//! Layers, from the bottom:
//! - types: [`networking`], [`security`], [`k8s`], [`mesh`], [`duration`];
//! - [`decode`]: multi-document YAML to typed [`Object`]s, recording where each
//!   came from and every unknown or mistyped field;
//! - [`validate`]: per-object rules like Istio's validating webhook, plus
//!   cross-object checks (unknown subsets);
//! - [`analyze`]: `analyze_dir`, the engine of `weft analyze DIR`, with
//!   [`locate`] mapping field paths to lines;
//! - [`store`]: the file config source (immutable [`store::Snapshot`]s, last good
//!   version of each invalid object kept), and [`watch`] to follow a directory;
//! - [`registry`]: services and endpoints from Kubernetes objects and
//!   ServiceEntry/WorkloadEntry, with Istio's host resolution.
//!
//! Everything except `analyze::analyze_dir`, `store::Store::load`/`reload` and
//! `watch` is pure: no I/O.
//!
//! ```
//! use std::collections::BTreeMap;
//! use weft_api::analyze_files;
//!
//! let vs = "apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: {host: reviews}
//!       weight: 80
//!     - destination: {host: ratings}
//!       weight: 10
//! ";
//! let files = BTreeMap::from([("vs.yaml".to_string(), vs.to_string())]);
//! let report = analyze_files(&files);
//! assert!(report.has_errors());
//! assert_eq!(
//!     report.to_string(),
//!     "vs.yaml[doc 1] VirtualService default/reviews: spec.http[0].route: weights sum to 90, must be 100\n"
//! );
//! ```

pub mod analyze;
pub mod decode;
pub mod duration;
pub mod k8s;
pub mod locate;
pub mod mesh;
pub mod meta;
pub mod networking;
pub mod registry;
pub mod security;
pub mod store;
pub mod validate;
pub mod watch;

mod object;

pub use analyze::{AnalysisReport, Problem, analyze_dir, analyze_files};
pub use meta::{Kind, ObjectKey, ObjectMeta, Origin};
pub use object::{Object, Resource};
pub use validate::{FieldError, Severity};
