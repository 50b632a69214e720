//! The service registry model: services and endpoints computed from
//! Kubernetes Service + EndpointSlice + Pod objects and from ServiceEntry +
//! WorkloadEntry, with Istio's host naming and resolution.
//!
//! Pure: [`Registry::build`] takes objects and returns a value; nothing here
//! watches or reads anything.

mod build;
mod host;
mod scope;

use std::collections::BTreeMap;
use std::fmt;

pub use build::RegistryOptions;
pub use host::{
    DEFAULT_DOMAIN, host_matches, kube_fqdn, resolve_config_host, search_candidates,
    service_aliases,
};
pub use scope::{
    EgressHost, NamespaceSelector, destination_rule_for, export_visible, sidecar_for_workload,
};

use crate::validate::Protocol;

/// Where a service came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSource {
    /// A Kubernetes Service `namespace/name`.
    Kubernetes,
    /// A ServiceEntry `namespace/name`.
    ServiceEntry,
}

/// How the proxy finds a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are known (EDS).
    ClientSideLb,
    /// Endpoints are DNS names resolved by the proxy.
    DnsLb,
    /// DNS, one connection per resolved address at a time.
    DnsRoundRobin,
    /// Forward to the original destination (headless, resolution NONE).
    Passthrough,
    /// DYNAMIC_DNS wildcard hosts.
    DynamicDns,
}

/// Whether a service is part of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshLocation {
    Internal,
    External,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (empty when the service has a single unnamed port).
    pub name: String,
    pub port: u32,
    pub protocol: Protocol,
}

/// A service in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The FQDN (`reviews.default.svc.cluster.local`) or ServiceEntry host.
    pub hostname: String,
    /// Namespace of the object that defined it.
    pub namespace: String,
    /// Name of the object that defined it.
    pub name: String,
    pub source: ServiceSource,
    /// VIPs (cluster IPs, ServiceEntry addresses).
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub location: MeshLocation,
    pub export_to: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Workload selector: the Kubernetes Service selector, or a
    /// ServiceEntry's `workloadSelector.labels`.
    pub selector: Option<BTreeMap<String, String>>,
    /// A VIP from 240.240.0.0/16 for ServiceEntry hosts without addresses
    /// (Istio's DNS auto-allocation, used when the proxy sets
    /// `ISTIO_META_DNS_AUTO_ALLOCATE`). Stable: derived from a hash of the
    /// namespace and host, probing on collision in hostname order.
    pub auto_allocated_address: Option<String>,
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }
}

/// `region/zone/subzone` of an endpoint (any part may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Parses `region/zone/subzone` (also Istio's `istio-locality` label form
    /// `region.zone.subzone` when `sep` is '.').
    pub fn parse(s: &str, sep: char) -> Locality {
        let mut parts = s.splitn(3, sep).map(str::to_string);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// Whether no part is known.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address, or a DNS name for DNS-resolved ServiceEntries.
    pub address: String,
    /// The port traffic is sent to on the endpoint.
    pub port: u32,
    /// The service port this endpoint serves.
    pub service_port: u32,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    pub service_account: String,
    pub namespace: String,
    /// The Pod or WorkloadEntry name (empty for inline ServiceEntry endpoints).
    pub workload_name: String,
    pub network: String,
    pub weight: u32,
    pub healthy: bool,
}

impl Endpoint {
    /// Whether the endpoint carries every label of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        labels_match(selector, &self.labels)
    }
}

/// Whether `labels` contains every `selector` pair.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Services and endpoints, indexed by hostname.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    domain: String,
    services: BTreeMap<String, Service>,
    endpoints: BTreeMap<String, Vec<Endpoint>>,
    /// Hostnames defined more than once, with the definitions that lost.
    pub conflicts: Vec<String>,
}

impl Registry {
    /// The cluster domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// All services, sorted by hostname.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The service with this exact hostname.
    pub fn service(&self, hostname: &str) -> Option<&Service> {
        self.services.get(hostname)
    }

    /// Every endpoint of the service (all ports).
    pub fn all_endpoints(&self, hostname: &str) -> &[Endpoint] {
        self.endpoints.get(hostname).map_or(&[], Vec::as_slice)
    }

    /// Endpoints serving `service_port` of the service.
    pub fn endpoints(&self, hostname: &str, service_port: u32) -> Vec<&Endpoint> {
        self.all_endpoints(hostname)
            .iter()
            .filter(|e| e.service_port == service_port)
            .collect()
    }

    /// Endpoints of a subset: those whose labels include `subset_labels`.
    pub fn subset_endpoints(
        &self,
        hostname: &str,
        service_port: u32,
        subset_labels: &BTreeMap<String, String>,
    ) -> Vec<&Endpoint> {
        self.endpoints(hostname, service_port)
            .into_iter()
            .filter(|e| e.matches(subset_labels))
            .collect()
    }

    /// Resolves a name as a client in `namespace` would use it (`reviews`,
    /// `reviews.default`, `reviews.default.svc`, FQDN, ServiceEntry host,
    /// or a wildcard ServiceEntry host covering it).
    pub fn lookup(&self, name: &str, namespace: &str) -> Option<&Service> {
        let name = name.trim_end_matches('.');
        for candidate in search_candidates(name, namespace, &self.domain) {
            if let Some(s) = self.services.get(&candidate) {
                return Some(s);
            }
        }
        // Wildcard ServiceEntry hosts: the most specific wins.
        self.services
            .values()
            .filter(|s| s.hostname.starts_with('*') && host_matches(&s.hostname, name))
            .max_by_key(|s| s.hostname.len())
    }

    /// Services a workload serves: Kubernetes Services in its namespace whose
    /// selector matches its labels, and ServiceEntries whose
    /// `workloadSelector` does.
    pub fn services_for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&Service> {
        self.services
            .values()
            .filter(|s| {
                s.namespace == namespace
                    && s.selector
                        .as_ref()
                        .is_some_and(|sel| !sel.is_empty() && labels_match(sel, labels))
            })
            .collect()
    }

    /// Resolves a host written in config by an object in `namespace`
    /// (Istio's rule: only dot-less names are expanded).
    pub fn resolve_config(&self, host: &str, namespace: &str) -> Option<&Service> {
        self.services
            .get(&resolve_config_host(host, namespace, &self.domain))
    }
}
