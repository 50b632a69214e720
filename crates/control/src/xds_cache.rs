//! Encoded xDS output per proxy without a full translation per proxy.
//!
//! Istio computes what does not depend on the proxy once per Sidecar scope
//! and shares it; so does this cache. A proxy's output splits into:
//!
//! - its **own part**: what translation gives it when it may reach no
//!   service at all (`virtualInbound`, `virtualOutbound`, `inbound|PORT||`
//!   clusters, the fixed passthrough/blackhole clusters). Computed per
//!   proxy; cheap, since it does not walk the services.
//! - its **scope part**: everything else (outbound listeners, every route
//!   configuration, outbound clusters, every ClusterLoadAssignment).
//!   Computed once per [`ScopeKey`] (namespace, Sidecar, workload-selected
//!   DestinationRules, sourceLabels that matter, DNS auto-allocation) by
//!   translating for the first proxy of that key, and shared by every
//!   proxy with the same key: same `Arc`s, same versions.
//!
//! Only encoded [`ResourceSet`]s are kept (never decoded protobuf
//! structs), and a proxy's clusters and listeners are a union sharing the
//! scope part's resources and names.
//!
//! On an endpoints-only change ([`XdsCache::update_endpoints`], what it
//! touches decided in `endpoints.rs`) the scope parts are carried over,
//! and so are the own parts of proxies no changed service selects; only
//! the ClusterLoadAssignments of services whose endpoints changed are
//! rebuilt (lazily, once per scope key), so an
//! EDS push costs a map lookup per proxy and the diff against what the
//! proxy holds is by pointer for unchanged assignments.
//!
//! Headless services and ServiceEntries with `resolution: NONE` have no
//! assignments, but their endpoint IPs are in Istio's NameTable: when
//! their endpoints change (and nothing clusters depend on, their service
//! accounts or whether every instance runs a sidecar, changed), the
//! update stays endpoints-only and says so
//! ([`ViewChange::Endpoints::name_tables`]); name tables are cached per
//! scope key too ([`XdsCache::name_table`]) and rebuilt once per scope.
//!
//! Per-proxy entries go when the proxy's last stream closes
//! ([`XdsCache::forget`]); scope entries go with the last proxy of their
//! key, so the cache's size follows the connected proxies
//! ([`XdsCache::stats`], `/debug/cachez`).
//!
//! `tests/xds_cache.rs` checks that own part ∪ scope part equals a full
//! [`MeshView::translate`] for every golden scenario and several proxies;
//! a translation change that makes the scope part depend on something the
//! key misses fails there.

mod endpoints;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use weft_api::registry::{labels_match, sidecar_for_workload};
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{Node, ResourceSet};

use crate::translate::cluster::{build_clusters, parse_outbound};
use crate::translate::endpoint::build_endpoints;
use crate::translate::listener::build_listeners;
use crate::translate::scope::ProxyScope;
use crate::translate::{MeshView, NodeError, ProxyNode, ProxyResources};

/// What makes two proxies' scope parts equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    kind: String,
    namespace: String,
    /// `namespace/name` of the Sidecar that applies.
    sidecar: Option<String>,
    /// `namespace/name` of DestinationRules selecting the workload by label.
    destination_rules: Vec<String>,
    dns_auto_allocate: bool,
    /// The proxy's labels restricted to keys some `sourceLabels` names.
    source_labels: BTreeMap<String, String>,
}

impl ScopeKey {
    /// The key of `node` under `view`; `source_keys` are the label keys
    /// any VirtualService match uses in `sourceLabels`.
    pub fn of(view: &MeshView, node: &ProxyNode, source_keys: &BTreeSet<String>) -> ScopeKey {
        let sidecar = sidecar_for_workload(
            view.sidecars.iter().map(Arc::as_ref),
            &node.namespace,
            &node.labels,
            &view.options.root_namespace,
        )
        .map(|o| format!("{}/{}", o.namespace(), o.name()));
        let destination_rules = view
            .destination_rules
            .iter()
            .filter(|o| {
                o.namespace() == node.namespace
                    && o.as_destination_rule()
                        .and_then(|dr| dr.workload_selector.as_ref())
                        .is_some_and(|ws| labels_match(&ws.match_labels, &node.labels))
            })
            .map(|o| format!("{}/{}", o.namespace(), o.name()))
            .collect();
        ScopeKey {
            kind: format!("{:?}", node.kind),
            namespace: node.namespace.clone(),
            sidecar,
            destination_rules,
            dns_auto_allocate: node.dns_auto_allocate,
            source_labels: node
                .labels
                .iter()
                .filter(|(k, _)| source_keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Label keys used by `sourceLabels` in any VirtualService match.
fn source_label_keys(view: &MeshView) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for o in &view.virtual_services {
        let Some(vs) = o.as_virtual_service() else {
            continue;
        };
        let http = vs
            .http
            .iter()
            .flat_map(|r| &r.matches)
            .map(|m| &m.source_labels);
        let tls = vs
            .tls
            .iter()
            .flat_map(|r| &r.matches)
            .map(|m| &m.source_labels);
        let tcp = vs
            .tcp
            .iter()
            .flat_map(|r| &r.matches)
            .map(|m| &m.source_labels);
        for labels in http.chain(tls).chain(tcp) {
            keys.extend(labels.keys().cloned());
        }
    }
    keys
}

/// The part shared by every proxy of one [`ScopeKey`].
#[derive(Debug)]
pub struct ScopePart {
    /// The proxy it was translated for (used to rebuild assignments).
    representative: ProxyNode,
    /// Listeners other than the proxy's own.
    pub listeners: ResourceSet,
    pub routes: ResourceSet,
    /// Clusters other than the proxy's own.
    pub clusters: ResourceSet,
    pub endpoints: ResourceSet,
}

/// One proxy's output: its own part joined with its scope part.
#[derive(Debug)]
struct ProxyEntry {
    node: Node,
    listeners: ResourceSet,
    clusters: ResourceSet,
}

/// A scope part of one view, computed on first use (once, even when many
/// proxies ask at the same time).
#[derive(Debug, Default)]
struct Slot {
    cell: OnceLock<Arc<ScopePart>>,
    /// After an endpoints-only change: the part of an older view and the
    /// hosts whose endpoints changed since.
    base: Option<(Arc<ScopePart>, Arc<BTreeSet<String>>)>,
}

/// Everything cached for one view.
#[derive(Debug)]
struct State {
    view: Arc<MeshView>,
    source_keys: BTreeSet<String>,
    keys: Mutex<HashMap<String, (Node, Arc<ScopeKey>)>>,
    scopes: Mutex<HashMap<Arc<ScopeKey>, Arc<Slot>>>,
    proxies: Mutex<HashMap<String, Arc<ProxyEntry>>>,
    /// NDS per scope key (for proxies with DNS capture).
    names: Mutex<HashMap<Arc<ScopeKey>, NameSlot>>,
}

/// A scope's name table, computed on first use.
type NameSlot = Arc<OnceLock<ResourceSet>>;

impl State {
    fn new(view: Arc<MeshView>) -> State {
        State {
            source_keys: source_label_keys(&view),
            view,
            keys: Mutex::default(),
            scopes: Mutex::default(),
            proxies: Mutex::default(),
            names: Mutex::default(),
        }
    }

    /// Drops the entries of `key` if no proxy has it any more.
    fn release(&self, key: &ScopeKey) {
        if lock(&self.keys).values().any(|(_, k)| **k == *key) {
            return;
        }
        lock(&self.scopes).remove(key);
        lock(&self.names).remove(key);
    }
}

/// Sizes of the cache ([`XdsCache::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Proxies whose own part (listeners, clusters) is kept.
    pub proxies: usize,
    /// Proxies whose scope key is known.
    pub scope_keys: usize,
    /// Scope entries (distinct keys of those proxies).
    pub scopes: usize,
    /// Scope parts computed under the current view.
    pub computed_scopes: usize,
    /// Name tables computed under the current view.
    pub name_tables: usize,
}

/// How a new view was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    /// Everything is recomputed on demand.
    Full,
    /// Only endpoints of these service hostnames changed: their
    /// assignments; when `name_tables` the NameTables of proxies that see
    /// them (a headless or `resolution: NONE` service among them); when
    /// `own_parts` the listeners and clusters of proxies whose workload
    /// one of them selects (inbound ports follow the endpoints).
    Endpoints {
        hosts: BTreeSet<String>,
        name_tables: bool,
        own_parts: bool,
    },
}

/// The cache; see the module docs.
#[derive(Debug)]
pub struct XdsCache {
    state: RwLock<Arc<State>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl XdsCache {
    /// A cache serving `view`.
    pub fn new(view: MeshView) -> XdsCache {
        XdsCache {
            state: RwLock::new(Arc::new(State::new(Arc::new(view)))),
        }
    }

    fn state(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The current view.
    pub fn view(&self) -> Arc<MeshView> {
        Arc::clone(&self.state().view)
    }

    /// Replaces the view; everything is recomputed on demand.
    pub fn update(&self, view: MeshView) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(State::new(Arc::new(view)));
    }

    /// Replaces the view after a change of workload objects only (the
    /// caller checked that services, ports, VIPs and every config object
    /// are unchanged). Scope parts carry over with the assignments of
    /// changed services rebuilt on demand, and name tables are rebuilt
    /// when a changed service is passthrough (headless, `resolution:
    /// NONE`). Everything is recomputed instead when a changed service is
    /// DNS-resolved (its endpoints live in the cluster) or changed what
    /// clusters read from endpoints (service accounts, sidecar on every
    /// instance), as Istio pushes in full then. Returns what was applied.
    pub fn update_endpoints(&self, view: MeshView) -> ViewChange {
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        let prev = Arc::clone(&guard);
        let view = Arc::new(view);
        let changed: BTreeSet<String> = view
            .registry
            .services()
            .filter(|s| {
                prev.view.registry.all_endpoints(&s.hostname)
                    != view.registry.all_endpoints(&s.hostname)
            })
            .map(|s| s.hostname.clone())
            .collect();
        let Some(name_tables) = endpoints::classify(&prev.view, &view, &changed) else {
            *guard = Arc::new(State::new(view));
            return ViewChange::Full;
        };
        // Own parts read the endpoints of the services selecting the
        // proxy's workload (its inbound ports): others carry over.
        let selectors = endpoints::Selectors::of(&prev.view, &view, &changed);
        let mut own_parts = false;
        let proxies = lock(&prev.proxies)
            .iter()
            .filter(|(_, e)| {
                let hit = selectors.select(&e.node);
                own_parts |= hit;
                !hit
            })
            .map(|(id, e)| (id.clone(), Arc::clone(e)))
            .collect();
        let next = State::new(view);
        *lock(&next.keys) = lock(&prev.keys).clone();
        *lock(&next.proxies) = proxies;
        if !name_tables {
            *lock(&next.names) = lock(&prev.names).clone();
        }
        let changed = Arc::new(changed);
        let mut scopes = HashMap::new();
        for (key, slot) in lock(&prev.scopes).iter() {
            let base = match (slot.cell.get(), &slot.base) {
                (Some(part), _) => (Arc::clone(part), Arc::clone(&changed)),
                (None, Some((part, hosts))) => {
                    let mut all = (**hosts).clone();
                    all.extend(changed.iter().cloned());
                    (Arc::clone(part), Arc::new(all))
                }
                (None, None) => continue,
            };
            let slot = Slot {
                cell: OnceLock::new(),
                base: Some(base),
            };
            scopes.insert(Arc::clone(key), Arc::new(slot));
        }
        *lock(&next.scopes) = scopes;
        *guard = Arc::new(next);
        ViewChange::Endpoints {
            hosts: Arc::unwrap_or_clone(changed),
            name_tables,
            own_parts,
        }
    }

    /// The resources of `type_url` for `node` (empty for types translation
    /// does not produce).
    pub fn generate(&self, node: &Node, type_url: &str) -> Result<ResourceSet, NodeError> {
        let state = self.state();
        Ok(match type_url {
            ENDPOINT => scope_part(&state, node)?.endpoints.clone(),
            ROUTE => scope_part(&state, node)?.routes.clone(),
            LISTENER => proxy_entry(&state, node)?.listeners.clone(),
            CLUSTER => proxy_entry(&state, node)?.clusters.clone(),
            _ => ResourceSet::new(),
        })
    }

    /// The NDS set of `node`: its NameTable when it asked for DNS
    /// capture, computed once per scope key (empty otherwise).
    pub fn name_table(&self, node: &Node) -> Result<ResourceSet, NodeError> {
        if !ProxyNode::from_node(node)?.dns_capture {
            return Ok(ResourceSet::new());
        }
        let state = self.state();
        let (proxy, key) = scope_key(&state, node)?;
        let slot = Arc::clone(lock(&state.names).entry(key).or_default());
        Ok(slot
            .get_or_init(|| crate::translate::nds::name_table_set(&state.view, &proxy))
            .clone())
    }

    /// Drops what is kept for the proxy `node_id` alone, and the scope
    /// entries no other proxy shares; call it when the proxy's last
    /// stream closed. A proxy asking again is computed afresh.
    pub fn forget(&self, node_id: &str) {
        // Held throughout, so an endpoints-only update (which copies the
        // keys) sees the proxy either fully there or fully gone.
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        lock(&guard.proxies).remove(node_id);
        let removed = lock(&guard.keys).remove(node_id);
        if let Some((_, key)) = removed {
            guard.release(&key);
        }
    }

    /// Proxies served from the current view, and distinct scope parts
    /// computed for them.
    pub fn stats(&self) -> (usize, usize) {
        let s = self.detail();
        (s.proxies, s.computed_scopes)
    }

    /// Every size the cache keeps, for `/debug/cachez` and metrics.
    pub fn detail(&self) -> CacheStats {
        let state = self.state();
        let scope_keys = lock(&state.keys).len();
        let proxies = lock(&state.proxies).len();
        let (scopes, computed_scopes) = {
            let scopes = lock(&state.scopes);
            let computed = scopes.values().filter(|s| s.cell.get().is_some()).count();
            (scopes.len(), computed)
        };
        let name_tables = lock(&state.names)
            .values()
            .filter(|n| n.get().is_some())
            .count();
        CacheStats {
            proxies,
            scope_keys,
            scopes,
            computed_scopes,
            name_tables,
        }
    }
}

// === computing parts ===

fn scope_key(state: &State, node: &Node) -> Result<(ProxyNode, Arc<ScopeKey>), NodeError> {
    let proxy = ProxyNode::from_node(node)?;
    if let Some((n, key)) = lock(&state.keys).get(&node.id)
        && n == node
    {
        return Ok((proxy, Arc::clone(key)));
    }
    let key = Arc::new(ScopeKey::of(&state.view, &proxy, &state.source_keys));
    let old = lock(&state.keys).insert(node.id.clone(), (node.clone(), Arc::clone(&key)));
    // The same proxy id with another node (new labels): its old scope may
    // have no proxy left.
    if let Some((_, old)) = old
        && *old != *key
    {
        state.release(&old);
    }
    Ok((proxy, key))
}

fn scope_part(state: &State, node: &Node) -> Result<Arc<ScopePart>, NodeError> {
    let (proxy, key) = scope_key(state, node)?;
    let slot = Arc::clone(lock(&state.scopes).entry(key).or_default());
    // Computed outside the map's lock; proxies of one key wait for the
    // first, proxies of other keys go on.
    Ok(Arc::clone(slot.cell.get_or_init(|| {
        Arc::new(match &slot.base {
            Some((base, hosts)) => with_new_endpoints(&state.view, base, hosts),
            None => translate_scope(&state.view, proxy),
        })
    })))
}

fn proxy_entry(state: &State, node: &Node) -> Result<Arc<ProxyEntry>, NodeError> {
    if let Some(e) = lock(&state.proxies).get(&node.id)
        && e.node == *node
    {
        return Ok(Arc::clone(e));
    }
    let scope = scope_part(state, node)?;
    let proxy = ProxyNode::from_node(node)?;
    let (own_listeners, own_clusters) = own_part(&state.view, &proxy);
    let entry = Arc::new(ProxyEntry {
        node: node.clone(),
        listeners: scope.listeners.union(&own_listeners),
        clusters: scope.clusters.union(&own_clusters),
    });
    lock(&state.proxies).insert(node.id.clone(), Arc::clone(&entry));
    Ok(entry)
}

fn encode(
    listeners: Vec<envoy_types::pb::envoy::config::listener::v3::Listener>,
    clusters: Vec<Cluster>,
) -> (ResourceSet, ResourceSet) {
    let res = ProxyResources {
        listeners,
        clusters,
        ..ProxyResources::default()
    };
    (res.resource_set(LISTENER), res.resource_set(CLUSTER))
}

/// What translation gives `proxy` when it may reach no service.
fn own_part(view: &MeshView, proxy: &ProxyNode) -> (ResourceSet, ResourceSet) {
    let mut scope = ProxyScope::new(view, proxy);
    scope.services.clear();
    let listeners = build_listeners(view, &scope, proxy);
    let clusters = build_clusters(view, &scope, proxy);
    encode(listeners, clusters)
}

/// The scope part: a full translation for `proxy` minus its own part.
fn translate_scope(view: &MeshView, proxy: ProxyNode) -> ScopePart {
    let full = view.translate(&proxy);
    let (own_listeners, own_clusters) = own_part(view, &proxy);
    let listeners = full
        .resource_set(LISTENER)
        .retain_names(|n| own_listeners.get(n).is_none());
    let clusters = full
        .resource_set(CLUSTER)
        .retain_names(|n| own_clusters.get(n).is_none());
    ScopePart {
        listeners,
        routes: full.resource_set(ROUTE),
        clusters,
        endpoints: full.resource_set(ENDPOINT),
        representative: proxy,
    }
}

/// `base` with the assignments of clusters of `hosts` rebuilt under `view`.
fn with_new_endpoints(view: &MeshView, base: &ScopePart, hosts: &BTreeSet<String>) -> ScopePart {
    let affected: BTreeSet<&str> = base
        .endpoints
        .names()
        .filter(|n| parse_outbound(n).is_some_and(|(_, _, h)| hosts.contains(h)))
        .collect();
    let endpoints = if affected.is_empty() {
        base.endpoints.clone()
    } else {
        let scope = ProxyScope::new(view, &base.representative);
        let clusters: Vec<Cluster> = affected
            .iter()
            .map(|name| Cluster {
                name: (*name).to_string(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
                ..Cluster::default()
            })
            .collect();
        let rebuilt = ProxyResources {
            endpoints: build_endpoints(view, &scope, &clusters),
            ..ProxyResources::default()
        }
        .resource_set(ENDPOINT);
        base.endpoints
            .retain_names(|n| !affected.contains(n))
            .union(&rebuilt)
    };
    ScopePart {
        representative: base.representative.clone(),
        listeners: base.listeners.clone(),
        routes: base.routes.clone(),
        clusters: base.clusters.clone(),
        endpoints,
    }
}
