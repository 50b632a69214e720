//! Builds a [`Registry`] from objects.

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::k8s::{IntOrString, Pod, ServiceSpec};
use crate::networking::{self as net, Location, WorkloadEntry};
use crate::{Object, Resource};

/// Registry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Cluster domain suffix of Kubernetes service FQDNs.
    pub domain: String,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            domain: DEFAULT_DOMAIN.to_string(),
        }
    }
}

const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
const LABEL_REGION: &str = "topology.kubernetes.io/region";
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
const LABEL_SUBZONE: &str = "topology.istio.io/subzone";
const LABEL_ISTIO_LOCALITY: &str = "istio-locality";

/// A workload that a selector may pick: a Pod or a WorkloadEntry.
struct Workload<'a> {
    name: &'a str,
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    addresses: Vec<&'a str>,
    locality: Locality,
    service_account: String,
    network: String,
    weight: u32,
    kind: WorkloadKind<'a>,
}

enum WorkloadKind<'a> {
    Pod(&'a Pod),
    Entry(&'a WorkloadEntry),
}

impl Registry {
    /// Computes services and endpoints from every Service, EndpointSlice,
    /// Pod, ServiceEntry and WorkloadEntry in `objects`.
    pub fn build<'a>(
        objects: impl IntoIterator<Item = &'a Object>,
        opts: &RegistryOptions,
    ) -> Registry {
        let objects: Vec<&Object> = objects.into_iter().collect();
        let mut reg = Registry {
            domain: opts.domain.clone(),
            ..Registry::default()
        };
        let workloads: Vec<Workload<'_>> = objects.iter().filter_map(|o| workload(o)).collect();
        let index = WorkloadIndex::new(&workloads);
        let mut slices: HashMap<(&str, &str), Vec<&crate::k8s::EndpointSlice>> = HashMap::new();
        for o in &objects {
            if let (Some(es), Some(svc)) =
                (o.as_endpoint_slice(), o.meta.labels.get(LABEL_SERVICE_NAME))
            {
                slices
                    .entry((o.namespace(), svc.as_str()))
                    .or_default()
                    .push(es);
            }
        }

        // Kubernetes services first: they win hostname conflicts.
        for o in &objects {
            if let Resource::Service(spec) = &o.spec {
                let svc_slices = slices
                    .get(&(o.namespace(), o.name()))
                    .map_or(&[][..], Vec::as_slice);
                let (svc, eps) = kube_service(o, spec, svc_slices, &index, &opts.domain);
                reg.insert(svc, eps);
            }
        }
        for o in &objects {
            if let Resource::ServiceEntry(se) = &o.spec {
                for (svc, eps) in service_entry(o, se, &index) {
                    reg.insert(svc, eps);
                }
            }
        }
        reg.auto_allocate();
        reg
    }

    /// Gives each ServiceEntry host without addresses (and not a wildcard,
    /// and not resolution NONE) a VIP in 240.240.0.0/16: start at a hash
    /// of `namespace/host`, probe upward on collision.
    fn auto_allocate(&mut self) {
        const SIZE: u32 = 65534; // 240.240.0.1 ..= 240.240.255.254
        let mut used = std::collections::HashSet::new();
        for svc in self.services.values_mut() {
            let eligible = svc.source == ServiceSource::ServiceEntry
                && svc.addresses.is_empty()
                && !svc.hostname.starts_with('*')
                && svc.resolution != Resolution::Passthrough;
            if !eligible {
                continue;
            }
            let mut slot = fnv1a(format!("{}/{}", svc.namespace, svc.hostname).as_bytes()) % SIZE;
            while !used.insert(slot) {
                slot = (slot + 1) % SIZE;
            }
            let n = slot + 1;
            svc.auto_allocated_address = Some(format!("240.240.{}.{}", n / 256, n % 256));
        }
    }

    fn insert(&mut self, svc: Service, eps: Vec<Endpoint>) {
        if let Some(existing) = self.services.get(&svc.hostname) {
            self.conflicts.push(format!(
                "host {} defined by {:?} {}/{} and {:?} {}/{}; keeping the first",
                svc.hostname,
                existing.source,
                existing.namespace,
                existing.name,
                svc.source,
                svc.namespace,
                svc.name
            ));
            return;
        }
        self.endpoints.insert(svc.hostname.clone(), eps);
        self.services.insert(svc.hostname.clone(), svc);
    }
}

/// FNV-1a, 32 bits: a hash that is stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Workloads indexed by namespace and by `(namespace, label, value)`, so a
/// selector only looks at workloads carrying its first label.
struct WorkloadIndex<'w, 'a> {
    all: &'w [Workload<'a>],
    by_ns: HashMap<&'a str, Vec<usize>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
    pods: HashMap<(&'a str, &'a str), usize>,
}

impl<'w, 'a> WorkloadIndex<'w, 'a> {
    fn new(all: &'w [Workload<'a>]) -> Self {
        let mut idx = WorkloadIndex {
            all,
            by_ns: HashMap::new(),
            by_label: HashMap::new(),
            pods: HashMap::new(),
        };
        for (i, w) in all.iter().enumerate() {
            idx.by_ns.entry(w.namespace).or_default().push(i);
            for (k, v) in w.labels {
                idx.by_label
                    .entry((w.namespace, k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
            if matches!(w.kind, WorkloadKind::Pod(_)) {
                idx.pods.insert((w.namespace, w.name), i);
            }
        }
        idx
    }

    /// Workloads in `ns` whose labels include `selector` (all of `ns` for an
    /// empty selector).
    fn select(&self, ns: &str, selector: &BTreeMap<String, String>) -> Vec<&'w Workload<'a>> {
        let candidates = match selector.iter().next() {
            None => self.by_ns.get(ns),
            Some((k, v)) => self.by_label.get(&(ns, k.as_str(), v.as_str())),
        };
        candidates
            .into_iter()
            .flatten()
            .map(|&i| &self.all[i])
            .filter(|w| labels_match(selector, w.labels))
            .collect()
    }

    fn pod(&self, ns: &str, name: &str) -> Option<&'w Workload<'a>> {
        self.pods.get(&(ns, name)).map(|&i| &self.all[i])
    }
}

fn workload(o: &Object) -> Option<Workload<'_>> {
    match &o.spec {
        Resource::Pod(pod) => {
            let phase = pod.status.phase.as_deref().unwrap_or("Running");
            if pod.spec.host_network || matches!(phase, "Succeeded" | "Failed") {
                return None;
            }
            Some(Workload {
                name: o.name(),
                namespace: o.namespace(),
                labels: &o.meta.labels,
                addresses: pod.ips(),
                locality: locality_from_labels(&o.meta.labels),
                service_account: pod
                    .spec
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                network: o
                    .meta
                    .labels
                    .get("topology.istio.io/network")
                    .cloned()
                    .unwrap_or_default(),
                weight: 1,
                kind: WorkloadKind::Pod(pod),
            })
        }
        Resource::WorkloadEntry(we) => Some(Workload {
            name: o.name(),
            namespace: o.namespace(),
            labels: &we.labels,
            addresses: vec![we.address.as_str()],
            locality: we
                .locality
                .as_deref()
                .map(|l| Locality::parse(l, '/'))
                .unwrap_or_else(|| locality_from_labels(&we.labels)),
            service_account: we
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            network: we.network.clone().unwrap_or_default(),
            weight: we.weight.unwrap_or(1),
            kind: WorkloadKind::Entry(we),
        }),
        _ => None,
    }
}

/// Locality from workload labels: `istio-locality` (`region.zone.subzone`),
/// else the topology labels.
fn locality_from_labels(labels: &BTreeMap<String, String>) -> Locality {
    if let Some(l) = labels.get(LABEL_ISTIO_LOCALITY) {
        return Locality::parse(l, '.');
    }
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Locality {
        region: get(LABEL_REGION),
        zone: get(LABEL_ZONE),
        subzone: get(LABEL_SUBZONE),
    }
}

fn kube_service(
    o: &Object,
    spec: &ServiceSpec,
    slices: &[&crate::k8s::EndpointSlice],
    index: &WorkloadIndex<'_, '_>,
    domain: &str,
) -> (Service, Vec<Endpoint>) {
    let ns = o.namespace();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let external = spec.service_type.as_deref() == Some("ExternalName");
    let mut addresses: Vec<String> = if spec.cluster_ips.is_empty() {
        spec.cluster_ip.iter().cloned().collect()
    } else {
        spec.cluster_ips.clone()
    };
    addresses.retain(|a| a != "None" && !a.is_empty());
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port: p.port,
            protocol: match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                _ => Protocol::from_port(p.name.as_deref(), p.app_protocol.as_deref()),
            },
        })
        .collect();
    let svc = Service {
        hostname: kube_fqdn(o.name(), ns, domain),
        namespace: ns.to_string(),
        name: o.name().to_string(),
        source: ServiceSource::Kubernetes,
        addresses,
        ports,
        resolution: if external {
            Resolution::DnsLb
        } else if headless {
            Resolution::Passthrough
        } else {
            Resolution::ClientSideLb
        },
        location: MeshLocation::Internal,
        export_to: o
            .meta
            .annotations
            .get("networking.istio.io/exportTo")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
        labels: o.meta.labels.clone(),
        selector: spec.selector.clone(),
        auto_allocated_address: None,
    };

    let mut eps = Vec::new();
    if external {
        if let Some(target) = &spec.external_name {
            for p in &spec.ports {
                eps.push(Endpoint {
                    address: target.clone(),
                    port: p.port,
                    service_port: p.port,
                    labels: BTreeMap::new(),
                    locality: Locality::default(),
                    service_account: String::new(),
                    namespace: ns.to_string(),
                    workload_name: String::new(),
                    network: String::new(),
                    weight: 1,
                    healthy: true,
                });
            }
        }
        return (svc, eps);
    }

    if !slices.is_empty() {
        for slice in slices {
            for sp in &spec.ports {
                let slice_port = slice
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""));
                let Some(target) = slice_port.and_then(|p| p.port) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let pod = ep
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                        .and_then(|r| {
                            index.pod(r.namespace.as_deref().unwrap_or(ns), r.name.as_str())
                        });
                    for addr in &ep.addresses {
                        let mut locality = pod.map(|w| w.locality.clone()).unwrap_or_default();
                        if locality.zone.is_empty()
                            && let Some(z) = &ep.zone
                        {
                            locality.zone = z.clone();
                        }
                        eps.push(Endpoint {
                            address: addr.clone(),
                            port: target,
                            service_port: sp.port,
                            labels: pod.map(|w| w.labels.clone()).unwrap_or_default(),
                            locality,
                            service_account: pod
                                .map(|w| w.service_account.clone())
                                .unwrap_or_default(),
                            namespace: ns.to_string(),
                            workload_name: pod.map(|w| w.name.to_string()).unwrap_or_default(),
                            network: pod.map(|w| w.network.clone()).unwrap_or_default(),
                            weight: 1,
                            healthy: ep.conditions.ready != Some(false),
                        });
                    }
                }
            }
        }
        return (svc, eps);
    }

    // No EndpointSlices (no Kubernetes controller, e.g. the local runtime):
    // select Pods and WorkloadEntries by the service selector, as the
    // endpoints controller and Istio's WorkloadEntry support would.
    if let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
        for w in index.select(ns, selector) {
            for sp in &spec.ports {
                let target = match (&w.kind, &sp.target_port) {
                    (WorkloadKind::Entry(we), _) => sp
                        .name
                        .as_ref()
                        .and_then(|n| we.ports.get(n).copied())
                        .or(match &sp.target_port {
                            Some(IntOrString::Int(n)) => Some(*n),
                            _ => None,
                        })
                        .unwrap_or(sp.port),
                    (WorkloadKind::Pod(_), None) => sp.port,
                    (WorkloadKind::Pod(_), Some(IntOrString::Int(n))) => *n,
                    (WorkloadKind::Pod(pod), Some(IntOrString::String(name))) => {
                        match pod.named_port(name) {
                            Some(n) => n,
                            None => continue,
                        }
                    }
                };
                for addr in &w.addresses {
                    eps.push(endpoint_of(w, addr, target, sp.port));
                }
            }
        }
    }
    (svc, eps)
}

fn endpoint_of(w: &Workload<'_>, addr: &str, port: u32, service_port: u32) -> Endpoint {
    Endpoint {
        address: addr.to_string(),
        port,
        service_port,
        labels: w.labels.clone(),
        locality: w.locality.clone(),
        service_account: w.service_account.clone(),
        namespace: w.namespace.to_string(),
        workload_name: w.name.to_string(),
        network: w.network.clone(),
        weight: w.weight,
        healthy: true,
    }
}

fn service_entry(
    o: &Object,
    se: &net::ServiceEntry,
    index: &WorkloadIndex<'_, '_>,
) -> Vec<(Service, Vec<Endpoint>)> {
    let ns = o.namespace();
    let resolution = match se.resolution.unwrap_or(net::Resolution::None) {
        net::Resolution::None => Resolution::Passthrough,
        net::Resolution::Static => Resolution::ClientSideLb,
        net::Resolution::Dns => Resolution::DnsLb,
        net::Resolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        net::Resolution::DynamicDns => Resolution::DynamicDns,
    };
    let location = match se.location.unwrap_or(Location::MeshExternal) {
        Location::MeshExternal => MeshLocation::External,
        Location::MeshInternal => MeshLocation::Internal,
    };
    let ports: Vec<ServicePort> = se
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.number,
            protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("")),
        })
        .collect();
    let mut out = Vec::new();
    for host in &se.hosts {
        let svc = Service {
            hostname: host.clone(),
            namespace: ns.to_string(),
            name: o.name().to_string(),
            source: ServiceSource::ServiceEntry,
            addresses: se.addresses.clone(),
            ports: ports.clone(),
            resolution,
            location,
            export_to: se.export_to.clone(),
            labels: o.meta.labels.clone(),
            selector: se.workload_selector.as_ref().map(|w| w.labels.clone()),
            auto_allocated_address: None,
        };
        let mut eps = Vec::new();
        for p in &se.ports {
            let default_target = p.target_port.unwrap_or(p.number);
            if !se.endpoints.is_empty() {
                for we in &se.endpoints {
                    let target = we.ports.get(&p.name).copied().unwrap_or(default_target);
                    eps.push(Endpoint {
                        address: we.address.clone(),
                        port: target,
                        service_port: p.number,
                        labels: we.labels.clone(),
                        locality: we
                            .locality
                            .as_deref()
                            .map(|l| Locality::parse(l, '/'))
                            .unwrap_or_else(|| locality_from_labels(&we.labels)),
                        service_account: we.service_account.clone().unwrap_or_default(),
                        namespace: ns.to_string(),
                        workload_name: String::new(),
                        network: we.network.clone().unwrap_or_default(),
                        weight: we.weight.unwrap_or(1),
                        healthy: true,
                    });
                }
            } else if let Some(sel) = &se.workload_selector {
                for w in index.select(ns, &sel.labels) {
                    let target = match &w.kind {
                        WorkloadKind::Entry(we) => {
                            we.ports.get(&p.name).copied().unwrap_or(default_target)
                        }
                        WorkloadKind::Pod(_) => default_target,
                    };
                    for addr in &w.addresses {
                        eps.push(endpoint_of(w, addr, target, p.number));
                    }
                }
            } else if matches!(resolution, Resolution::DnsLb | Resolution::DnsRoundRobin)
                && !host.starts_with('*')
            {
                eps.push(Endpoint {
                    address: host.clone(),
                    port: default_target,
                    service_port: p.number,
                    labels: BTreeMap::new(),
                    locality: Locality::default(),
                    service_account: String::new(),
                    namespace: ns.to_string(),
                    workload_name: String::new(),
                    network: String::new(),
                    weight: 1,
                    healthy: true,
                });
            }
        }
        out.push((svc, eps));
    }
    out
}
