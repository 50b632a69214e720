//! Sidecar injection: the pure decision and patch function shared by
//! `weft kube-inject` and weftd's `/inject` webhook.
//!
//! The entry points are [`inject_object`] (one Kubernetes object, any kind)
//! and [`inject_stream`] (a multi-document YAML stream). Both are pure: no
//! I/O, no clocks. The result is [`Injection::Skipped`] with a
//! [`SkipReason`], [`Injection::Injected`] with the new object, or an
//! [`InjectError`] naming the field and the bad value.
//!
//! Modules: `decision` (Istio's table and the webhook selectors), `capture`
//! (iptables flags from annotations), `template` (minijinja rendering),
//! `merge` (strategic-merge of template output), `probes` (probe rewriting),
//! `resources`, `workload` (owner and canonical labels), `pod` (the pod
//! pipeline), `objects` (kinds, lists, YAML streams), `config` (settings).

pub mod capture;
pub mod config;
mod context;
pub mod decision;
pub mod error;
pub mod merge;
pub mod objects;
pub mod pod;
mod postprocess;
pub mod probes;
pub mod resources;
pub mod selector;
pub mod template;
pub mod webhook_config;
pub mod workload;
pub mod yaml;

pub use config::{InjectionConfig, Policy, Settings};
pub use decision::{SkipReason, WebhookEntry, webhook_entries};
pub use error::InjectError;
pub use objects::{
    DocumentReport, Injection, StreamError, inject_object, inject_stream, parse_stream,
    render_stream,
};
pub use pod::{PodOutcome, inject_pod};
pub use postprocess::append_multus_network;
pub use selector::{LabelSelector, Operator, Requirement};
pub use webhook_config::{WebhookTarget, mutating_webhook_configuration};
pub use workload::Workload;
