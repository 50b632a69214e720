//! What an endpoints-only change touches, decided from the old and the new
//! view ([`super::XdsCache::update_endpoints`]):
//!
//! - assignments of the changed EDS services (always);
//! - name tables, when a changed service is passthrough (headless,
//!   `resolution: NONE`): NameTables list its endpoint IPs;
//! - the own part (inbound listeners and clusters) of proxies whose
//!   workload a changed service selects and whose address is among its
//!   endpoints before or after: inbound ports follow the endpoint of the
//!   proxy's own address;
//! - everything, when a changed service is DNS-resolved (endpoints inside
//!   clusters) or changed what clusters read from endpoints: service
//!   accounts (SANs) and, for original-destination clusters, whether every
//!   instance runs a sidecar (auto mTLS). Istio pushes in full then too.
//!
//! Pure: no locks, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use weft_api::registry::{Resolution, labels_match};
use weft_xds::Node;

use crate::translate::tls::{TLS_MODE_ISTIO, TLS_MODE_LABEL};
use crate::translate::{MeshView, ProxyNode};

/// Whether the change from `prev` to `view` of the endpoints of `changed`
/// services can stay endpoints-only; if so, whether name tables changed.
pub(super) fn classify(
    prev: &MeshView,
    view: &MeshView,
    changed: &BTreeSet<String>,
) -> Option<bool> {
    let lb_passthrough = passthrough_lb(view);
    let mut name_tables = false;
    for host in changed {
        let resolution = view.registry.service(host)?.resolution;
        match resolution {
            Resolution::ClientSideLb => {}
            Resolution::Passthrough => name_tables = true,
            _ => return None,
        }
        if cluster_inputs(prev, host, lb_passthrough) != cluster_inputs(view, host, lb_passthrough)
        {
            return None;
        }
    }
    Some(name_tables)
}

/// Whether some DestinationRule load-balances with `PASSTHROUGH` (its
/// clusters' auto mTLS then depends on endpoints, as headless ones do).
fn passthrough_lb(view: &MeshView) -> bool {
    use weft_api::networking::{SimpleLb, TrafficPolicy};
    let in_policy = |p: &TrafficPolicy| {
        let lbs = p.load_balancer.iter();
        lbs.chain(p.port_level_settings.iter().flat_map(|s| &s.load_balancer))
            .any(|lb| lb.simple == Some(SimpleLb::Passthrough))
    };
    view.destination_rules
        .iter()
        .filter_map(|o| o.as_destination_rule())
        .any(|dr| {
            let subsets = dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref());
            dr.traffic_policy.iter().chain(subsets).any(in_policy)
        })
}

/// What clusters read from a service's endpoints: its service accounts
/// (SANs) and, per port, whether every endpoint runs a sidecar (auto mTLS
/// of original-destination clusters: passthrough services, or any service
/// when `lb_passthrough` says a DestinationRule may make it one).
fn cluster_inputs<'v>(
    view: &'v MeshView,
    host: &str,
    lb_passthrough: bool,
) -> (&'v [String], Vec<bool>) {
    let accounts = view
        .service_accounts
        .get(host)
        .map_or(&[][..], Vec::as_slice);
    let sidecars = view
        .registry
        .service(host)
        .filter(|svc| lb_passthrough || svc.resolution == Resolution::Passthrough)
        .map(|svc| {
            svc.ports
                .iter()
                .map(|p| {
                    let eps = view.registry.endpoints(host, p.port);
                    !eps.is_empty()
                        && eps.iter().all(|e| {
                            e.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO)
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    (accounts, sidecars)
}

/// A changed service's namespace, workload selector and endpoint
/// addresses (old and new).
type Selector<'v> = (&'v str, &'v BTreeMap<String, String>, BTreeSet<&'v str>);

/// The workload selectors of the changed services.
pub(super) struct Selectors<'v>(Vec<Selector<'v>>);

impl<'v> Selectors<'v> {
    pub(super) fn of(
        prev: &'v MeshView,
        view: &'v MeshView,
        changed: &BTreeSet<String>,
    ) -> Selectors<'v> {
        Selectors(
            changed
                .iter()
                .filter_map(|h| {
                    let s = view.registry.service(h)?;
                    let sel = s.selector.as_ref().filter(|sel| !sel.is_empty())?;
                    let addresses = [prev, view]
                        .iter()
                        .flat_map(|v| v.registry.all_endpoints(h))
                        .map(|e| e.address.as_str())
                        .collect();
                    Some((s.namespace.as_str(), sel, addresses))
                })
                .collect(),
        )
    }

    /// Whether one of them selects the workload of `node` and had or has
    /// an endpoint at its address (an unreadable node counts as selected:
    /// recomputed rather than kept).
    pub(super) fn select(&self, node: &Node) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let Ok(p) = ProxyNode::from_node(node) else {
            return true;
        };
        self.0.iter().any(|(ns, sel, addresses)| {
            *ns == p.namespace
                && labels_match(sel, &p.labels)
                && p.ips.iter().any(|ip| addresses.contains(ip.as_str()))
        })
    }
}
