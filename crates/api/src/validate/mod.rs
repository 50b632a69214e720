//! Validation of objects, modelled on Istio's validating webhook
//! (`pkg/config/validation`): every invalid field is reported with its path
//! (`spec.http[0].route[1].weight`) and the reason. Also cross-object checks
//! Istio leaves to `istioctl analyze` (a destination subset no
//! DestinationRule defines).
//!
//! Pure functions over decoded objects; this module never does I/O.

mod common;
mod cross;
mod destination_rule;
mod http_route;
mod kube;
mod security;
mod service_entry;
mod sidecar;
mod virtual_service;

use std::fmt;

pub use common::{
    Protocol, full_match_regex, is_dns1123_label, is_dns1123_subdomain, validate_duration,
    validate_fqdn, validate_label_selector, validate_port, validate_regex,
    validate_wildcard_domain,
};
pub use cross::validate_cross;

use crate::{Object, Resource};

/// How serious a problem is. Only errors make an object invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldError {
    pub severity: Severity,
    /// Path from the document root, e.g. `spec.http[0].route[1].weight`;
    /// empty when the problem concerns the whole document.
    pub path: String,
    pub message: String,
    /// 1-based line in the file where the field is, when known (0 otherwise).
    pub line: usize,
}

impl FieldError {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
            line: 0,
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
            line: 0,
        }
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        if self.path.is_empty() {
            write!(f, "{tag}{}", self.message)
        } else {
            write!(f, "{tag}{}: {}", self.path, self.message)
        }
    }
}

/// Collects problems while walking an object.
#[derive(Debug, Default)]
pub(crate) struct Errs {
    pub list: Vec<FieldError>,
}

impl Errs {
    pub fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.list.push(FieldError::error(path, msg));
    }
    pub fn warn(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.list.push(FieldError::warning(path, msg));
    }
    /// Records `r`'s error, if any, at `path`.
    pub fn check(&mut self, path: impl Into<String>, r: Result<(), String>) {
        if let Err(m) = r {
            self.err(path, m);
        }
    }
}

/// `base[i]`.
pub(crate) fn idx(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// `base.field`.
pub(crate) fn at(base: &str, field: &str) -> String {
    crate::decode::join(base, field)
}

/// Validates one object on its own (metadata and spec), as Istio's
/// validating webhook would. Cross-object rules are in [`validate_cross`].
pub fn validate_object(obj: &Object) -> Vec<FieldError> {
    let mut e = Errs::default();
    validate_metadata(obj, &mut e);
    let ns = obj.namespace();
    match &obj.spec {
        Resource::VirtualService(vs) => virtual_service::validate(vs, ns, &mut e),
        Resource::DestinationRule(dr) => destination_rule::validate(dr, ns, &mut e),
        Resource::Gateway(gw) => sidecar::validate_gateway(gw, &mut e),
        Resource::ServiceEntry(se) => service_entry::validate_service_entry(se, ns, &mut e),
        Resource::Sidecar(sc) => sidecar::validate_sidecar(sc, &mut e),
        Resource::WorkloadEntry(we) => {
            service_entry::validate_workload_entry(we, "spec", None, true, &mut e)
        }
        Resource::PeerAuthentication(pa) => security::validate_peer_authentication(pa, &mut e),
        Resource::AuthorizationPolicy(ap) => security::validate_authorization_policy(ap, &mut e),
        Resource::Service(svc) => kube::validate_service(svc, &mut e),
        Resource::EndpointSlice(es) => kube::validate_endpoint_slice(es, &mut e),
        Resource::Pod(_) | Resource::Namespace(_) | Resource::Other(_) => {}
        Resource::MeshConfig(mc) => kube::validate_mesh_config(mc, "data.mesh", &mut e),
    }
    e.list
}

fn validate_metadata(obj: &Object, e: &mut Errs) {
    let name = &obj.meta.name;
    if name.is_empty() {
        e.err("metadata.name", "required field is missing");
    } else if !is_dns1123_subdomain(name) {
        e.err(
            "metadata.name",
            format!(
                "invalid name {name:?}: must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.')"
            ),
        );
    } else if matches!(obj.spec, Resource::Gateway(_)) && !is_dns1123_label(name) {
        e.err(
            "metadata.name",
            format!("invalid gateway name {name:?}: must be a DNS label (no dots)"),
        );
    }
    if let Some(ns) = &obj.meta.namespace
        && !is_dns1123_label(ns)
    {
        e.err(
            "metadata.namespace",
            format!("invalid namespace {ns:?}: must be a lowercase RFC 1123 label"),
        );
    }
    common::check_labels(&obj.meta.labels, "metadata.labels", e);
}
