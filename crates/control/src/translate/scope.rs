//! What one proxy may see and which routing objects apply to it: services
//! visible through `exportTo` and imported by the proxy's Sidecar egress
//! hosts, VirtualServices bound to the mesh, the DestinationRule of each
//! host (Istio's lookup order) and the outbound traffic policy.

use std::collections::HashMap;
use std::sync::Arc;

use weft_api::Object;
use weft_api::networking::{DestinationRule, OutboundTrafficMode, Sidecar, VirtualService};
use weft_api::registry::{
    EgressHost, Service, export_visible, host_matches, resolve_config_host, sidecar_for_workload,
};

use super::MeshView;
use super::node::ProxyNode;

/// The proxy's view of the mesh.
#[derive(Debug)]
pub struct ProxyScope<'a> {
    /// Services the proxy may reach, sorted by hostname.
    pub services: Vec<&'a Service>,
    /// VirtualServices for sidecars (gateway `mesh`) the proxy imports.
    pub virtual_services: Vec<&'a Object>,
    /// DestinationRules visible to the proxy.
    pub destination_rules: Vec<&'a Object>,
    /// The Sidecar resource that applies, if any.
    pub sidecar: Option<&'a Object>,
    pub outbound_mode: OutboundTrafficMode,
    /// Sidecar egress hosts with the port of their egress listener.
    egress: Option<Vec<(Option<u32>, EgressHost)>>,
    /// Visible services by hostname.
    by_host: HashMap<&'a str, &'a Service>,
    /// Resolved hosts of each visible VirtualService and DestinationRule.
    vs_hosts: Vec<(String, &'a Object)>,
    dr_hosts: Vec<(String, &'a Object)>,
    domain: &'a str,
    root_namespace: &'a str,
    proxy_namespace: String,
}

impl<'a> ProxyScope<'a> {
    /// Computes the scope of `node`.
    pub fn new(view: &'a MeshView, node: &ProxyNode) -> ProxyScope<'a> {
        let root = view.options.root_namespace.as_str();
        let sidecar = sidecar_for_workload(
            view.sidecars.iter().map(Arc::as_ref),
            &node.namespace,
            &node.labels,
            root,
        );
        let spec: Option<&Sidecar> = sidecar.and_then(|o| o.as_sidecar());
        let egress = spec.filter(|s| !s.egress.is_empty()).map(|s| {
            let ns = sidecar.map_or("", |o| o.namespace());
            s.egress
                .iter()
                .flat_map(|e| {
                    let port = e.port.as_ref().map(|p| p.number).filter(|n| *n > 0);
                    e.hosts
                        .iter()
                        .filter_map(move |h| Some((port, EgressHost::parse(h, ns)?)))
                })
                .collect::<Vec<_>>()
        });
        let outbound_mode = spec
            .and_then(|s| s.outbound_traffic_policy.as_ref())
            .and_then(|p| p.mode)
            .unwrap_or_else(|| view.mesh.outbound_mode());
        let mut scope = ProxyScope {
            services: Vec::new(),
            virtual_services: Vec::new(),
            destination_rules: Vec::new(),
            sidecar,
            outbound_mode,
            egress,
            by_host: HashMap::new(),
            vs_hosts: Vec::new(),
            dr_hosts: Vec::new(),
            domain: view.registry.domain(),
            root_namespace: root,
            proxy_namespace: node.namespace.clone(),
        };
        let mesh = &view.mesh;
        scope.services = view
            .registry
            .services()
            .filter(|s| {
                export_visible(
                    &s.export_to,
                    &s.namespace,
                    &node.namespace,
                    &mesh.default_service_export_to,
                ) && scope.imports(&s.namespace, &s.hostname)
            })
            .collect();
        scope.virtual_services = view
            .virtual_services
            .iter()
            .map(Arc::as_ref)
            .filter(|o| {
                let Some(vs) = o.as_virtual_service() else {
                    return false;
                };
                let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
                for_mesh
                    && export_visible(
                        &vs.export_to,
                        o.namespace(),
                        &node.namespace,
                        &mesh.default_virtual_service_export_to,
                    )
                    && vs.hosts.iter().any(|h| {
                        let host = resolve_config_host(h, o.namespace(), scope.domain);
                        scope.imports(o.namespace(), &host)
                    })
            })
            .collect();
        scope.destination_rules = view
            .destination_rules
            .iter()
            .map(Arc::as_ref)
            .filter(|o| {
                o.as_destination_rule().is_some_and(|dr| {
                    let selected = dr.workload_selector.as_ref().is_none_or(|ws| {
                        o.namespace() == node.namespace
                            && weft_api::registry::labels_match(&ws.match_labels, &node.labels)
                    });
                    selected
                        && export_visible(
                            &dr.export_to,
                            o.namespace(),
                            &node.namespace,
                            &mesh.default_destination_rule_export_to,
                        )
                })
            })
            .collect();
        scope.by_host = scope
            .services
            .iter()
            .map(|s| (s.hostname.as_str(), *s))
            .collect();
        scope.vs_hosts = scope
            .virtual_services
            .iter()
            .flat_map(|o| {
                let hosts = o.as_virtual_service().map_or(&[][..], |vs| &vs.hosts[..]);
                hosts
                    .iter()
                    .map(|h| (resolve_config_host(h, o.namespace(), scope.domain), *o))
            })
            .collect();
        scope.dr_hosts = scope
            .destination_rules
            .iter()
            .filter_map(|o| {
                let dr = o.as_destination_rule()?;
                Some((
                    resolve_config_host(&dr.host, o.namespace(), scope.domain),
                    *o,
                ))
            })
            .collect();
        scope
    }

    /// Whether the Sidecar egress hosts import `hostname` defined in
    /// `namespace` (everything when no Sidecar restricts egress).
    pub fn imports(&self, namespace: &str, hostname: &str) -> bool {
        match &self.egress {
            None => true,
            Some(hosts) => hosts.iter().any(|(_, h)| h.matches(namespace, hostname)),
        }
    }

    /// Whether `hostname` is imported on `port`: an egress listener with a
    /// port imports its hosts on that port only.
    pub fn imports_port(&self, namespace: &str, hostname: &str, port: u32) -> bool {
        match &self.egress {
            None => true,
            Some(hosts) => hosts
                .iter()
                .any(|(p, h)| p.is_none_or(|p| p == port) && h.matches(namespace, hostname)),
        }
    }

    /// The service `host` (as written in config of an object in
    /// `namespace`) resolves to, if the proxy may see it.
    pub fn service(&self, host: &str, namespace: &str) -> Option<&'a Service> {
        let fqdn = resolve_config_host(host, namespace, self.domain);
        self.by_host
            .get(fqdn.as_str())
            .or_else(|| {
                // A wildcard ServiceEntry host covering the name.
                self.services
                    .iter()
                    .filter(|s| s.hostname.starts_with('*') && host_matches(&s.hostname, &fqdn))
                    .max_by_key(|s| s.hostname.len())
            })
            .copied()
    }

    /// The cluster domain.
    pub fn domain(&self) -> &'a str {
        self.domain
    }

    /// The FQDN a destination host written in `namespace` names.
    pub fn fqdn(&self, host: &str, namespace: &str) -> String {
        self.service(host, namespace).map_or_else(
            || resolve_config_host(host, namespace, self.domain),
            |s| s.hostname.clone(),
        )
    }

    /// The VirtualService that routes `hostname`: an exact host match wins
    /// over a wildcard; among equals, the proxy's namespace first, then by
    /// namespace/name.
    pub fn virtual_service_for(&self, hostname: &str) -> Option<(&'a Object, &'a VirtualService)> {
        let mut best: Option<(u8, &Object)> = None;
        for (host, o) in &self.vs_hosts {
            let rank = if host == hostname {
                0
            } else if host_matches(host, hostname) {
                2
            } else {
                continue;
            };
            let rank = rank + u8::from(o.namespace() != self.proxy_namespace);
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, o));
            }
        }
        best.and_then(|(_, o)| o.as_virtual_service().map(|vs| (o, vs)))
    }

    /// The DestinationRule for `hostname` (a service defined in
    /// `service_ns`), as Istio picks it: in the proxy's namespace, else the
    /// service's namespace, else the root namespace; an exact host match
    /// beats a wildcard.
    pub fn destination_rule_for(
        &self,
        hostname: &str,
        service_ns: &str,
    ) -> Option<(&'a Object, &'a DestinationRule)> {
        let mut best: Option<((u8, u8), &Object)> = None;
        for (host, o) in &self.dr_hosts {
            let exact = if host == hostname {
                0
            } else if host_matches(host, hostname) {
                1
            } else {
                continue;
            };
            let ns = o.namespace();
            let ns_rank = if ns == self.proxy_namespace {
                0
            } else if ns == service_ns {
                1
            } else if ns == self.root_namespace {
                2
            } else {
                3
            };
            let rank = (ns_rank, exact);
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, o));
            }
        }
        best.and_then(|(_, o)| o.as_destination_rule().map(|dr| (o, dr)))
    }
}
