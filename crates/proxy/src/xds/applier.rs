//! The configuration side of the sidecar mode: the latest accepted
//! LDS/CDS/RDS/EDS sets, each resource checked when it arrives (decoded
//! from its `Any` and walked with the same field-support check as bootstrap
//! files, so errors read `Listener virtualOutbound: filter_chains[0]...:
//! unsupported`), assembled ([`super::assemble`]) into one configuration
//! that `crate::model` compiles and swaps into the running proxy. A set that
//! does not check or compile is NACKed and the previous snapshot keeps
//! serving. With DNS capture it also owns the DNS proxy ([`crate::dns`]) and
//! feeds it the NDS name table. The protocol loop itself is
//! `weft_xds::client`; the connection to weftd is [`super::relay`]'s.

use super::assemble::{Held, decode_all, eds_name, inline_routes, rds_names, with_endpoints};
use crate::config::{ConfigError, LoadedBootstrap};
use crate::dns::{DnsConfig, DnsProxy};
use crate::model::Snapshot;
use crate::model::http::HttpManager;
use crate::model::listener::ChainKind;
use crate::model::route::RouteTable;
use crate::server::Shared;
use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use weft_xds::nds::{NAME_TABLE, NAME_TABLE_RESOURCE, NameTable};
use weft_xds::{Any, ConfigHandler};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The configuration the proxy starts with in the sidecar mode, before
/// weftd sent anything: the node, no listeners, no clusters. Starting on
/// it brings up the admin, health and metrics ports at once (answering
/// not-ready with the reason), as pilot-agent and Envoy do.
pub fn empty_bootstrap(node: &Node) -> LoadedBootstrap {
    let bootstrap = Bootstrap {
        node: Some(Node {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources::default()),
        ..Default::default()
    };
    let json = serde_json::json!({
        "dynamic_listeners": [],
        "dynamic_clusters": [],
        "dynamic_route_configs": [],
        "dynamic_endpoint_configs": [],
    });
    LoadedBootstrap {
        origin: "xds".to_owned(),
        bootstrap,
        json: json.to_string().into(),
    }
}

/// The latest accepted set of each type, and the running proxy compiled
/// snapshots go to. With DNS capture on, also the DNS proxy the NDS name
/// table goes to.
pub struct XdsApplier {
    listeners: BTreeMap<String, Held<Listener>>,
    clusters: BTreeMap<String, Held<Cluster>>,
    routes: BTreeMap<String, Held<RouteConfiguration>>,
    endpoints: BTreeMap<String, Held<ClusterLoadAssignment>>,
    seen_lds: bool,
    seen_cds: bool,
    node_id: String,
    /// The running proxy (started on [`empty_bootstrap`]); `None` only in
    /// the scratch copy a set is checked in.
    shared: Option<Arc<Shared>>,
    /// Turns true once listeners and clusters are serving.
    configured: watch::Sender<bool>,
    warmed: Arc<AtomicBool>,
    dns: Option<DnsProxy>,
    /// The newest route table per RDS name, shared with every config
    /// version's HTTP connection managers of that name.
    route_slots: HashMap<Arc<str>, RouteSlot>,
}

/// Where the newest route table of one name is published.
type RouteSlot = Arc<arc_swap::ArcSwap<RouteTable>>;

impl XdsApplier {
    /// Applies updates to `shared`, the proxy started on
    /// [`empty_bootstrap`]: listeners are bound and served once both
    /// listeners and clusters were accepted, and the proxy turns ready once
    /// the routes and endpoints they name arrived too.
    ///
    /// When the process environment has `ISTIO_META_DNS_CAPTURE=true`, the
    /// DNS proxy starts here too (see [`crate::dns`] for its variables), as
    /// Istio's agent starts it beside Envoy; the error says why it cannot.
    pub fn new(node_id: String, shared: Arc<Shared>) -> Result<Self, String> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let dns = DnsConfig::from_env(&env)
            .and_then(|c| c.map(DnsProxy::start).transpose())
            .map_err(|e| e.to_string())?;
        Ok(XdsApplier {
            listeners: BTreeMap::new(),
            clusters: BTreeMap::new(),
            routes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            seen_lds: false,
            seen_cds: false,
            node_id,
            shared: Some(shared),
            configured: watch::Sender::new(false),
            warmed: Arc::new(AtomicBool::new(false)),
            dns,
            route_slots: HashMap::new(),
        })
    }

    /// Turns true once the first listeners and clusters are serving.
    pub fn configured(&self) -> watch::Receiver<bool> {
        self.configured.subscribe()
    }

    /// Route names the listeners fetch over RDS.
    fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| rds_names(&l.msg))
            .collect()
    }

    /// `message` about the assembled bootstrap (`xds:
    /// static_resources.listeners[I]...`) rewritten to name the xDS resource
    /// and the field path inside it: `RouteConfiguration NAME: virtual_hosts...`
    /// for an inlined RDS route, `ClusterLoadAssignment NAME: ...` for an
    /// inlined EDS assignment, else `Listener NAME: ...` / `Cluster NAME: ...`.
    fn locate(&self, message: &str) -> String {
        let Some(rest) = message.strip_prefix("xds: static_resources.") else {
            return message.to_owned();
        };
        let indexed = |rest: &str, field: &str| -> Option<(usize, String)> {
            let r = rest.strip_prefix(field)?.strip_prefix('[')?;
            let (i, tail) = r.split_once(']')?;
            Some((i.parse().ok()?, tail.trim_start_matches('.').to_owned()))
        };
        if let Some((i, tail)) = indexed(rest, "listeners")
            && let Some((name, l)) = self.listeners.iter().nth(i)
        {
            if let Some((_, inner)) = tail.split_once(".typed_config.route_config.") {
                let route = rds_names(&l.msg).into_iter().next().unwrap_or_default();
                return format!("RouteConfiguration {route}: {inner} (listener {name})");
            }
            return format!("Listener {name}: {tail}");
        }
        if let Some((i, tail)) = indexed(rest, "clusters")
            && let Some((name, c)) = self.clusters.iter().nth(i)
        {
            if let Some(inner) = tail.strip_prefix("load_assignment.")
                && let Some(eds) = eds_name(&c.msg)
            {
                return format!("ClusterLoadAssignment {eds}: {inner}");
            }
            return format!("Cluster {name}: {tail}");
        }
        message.to_owned()
    }

    /// Attaches each HTTP connection manager of `snap` whose routes came
    /// over RDS (`rds` names) to the route slot of that name (creating
    /// slots for new names, dropping slots no longer named). Inline routes
    /// stay with their listener, as in Envoy.
    fn link_routes(&mut self, snap: &Snapshot, rds: &BTreeSet<String>) {
        let mut slots = HashMap::new();
        for hcm in http_managers(snap) {
            if !rds.contains(&*hcm.routes.name) {
                continue;
            }
            let name = hcm.routes.name.clone();
            let slot = slots
                .entry(name.clone())
                .or_insert_with(|| {
                    self.route_slots
                        .remove(&name)
                        .unwrap_or_else(|| Arc::new(arc_swap::ArcSwap::new(hcm.routes.clone())))
                })
                .clone();
            let _ = hcm.rds.set(slot);
        }
        self.route_slots = slots;
    }

    /// Publishes `snap`'s route tables: from now on every connection,
    /// also those accepted under older listeners, routes by them.
    fn publish_routes(snap: &Snapshot) {
        for hcm in http_managers(snap) {
            if let Some(slot) = hcm.rds.get() {
                slot.store(hcm.routes.clone());
            }
        }
    }

    /// The DNS proxy, when DNS capture is on.
    pub fn dns(&self) -> Option<&DnsProxy> {
        self.dns.as_ref()
    }

    /// Hands an accepted NDS table to the DNS proxy (without DNS capture
    /// the table is checked and dropped).
    fn apply_name_table(&mut self, resources: &[Any]) -> Result<(), String> {
        let mut table = NameTable::default();
        for any in resources {
            let t = NameTable::from_any(any)
                .map_err(|e| format!("NameTable {NAME_TABLE_RESOURCE}: {e}"))?;
            table.table.extend(t.table);
        }
        match &self.dns {
            Some(dns) => dns.update(&table),
            None => tracing::debug!("name table received without DNS capture; ignored"),
        }
        Ok(())
    }

    /// Set once the proxy reported ready for the first time.
    pub fn warmed(&self) -> Arc<AtomicBool> {
        self.warmed.clone()
    }

    /// Whether every route the listeners name over RDS and every EDS
    /// cluster's assignment has arrived (Envoy's warming).
    fn is_warm(&self) -> bool {
        let routes_ok = self.listeners.values().all(|l| {
            rds_names(&l.msg)
                .iter()
                .all(|n| self.routes.contains_key(n))
        });
        let eds_ok = self
            .clusters
            .values()
            .all(|c| eds_name(&c.msg).is_none_or(|n| self.endpoints.contains_key(&n)));
        self.seen_lds && self.seen_cds && routes_ok && eds_ok
    }

    fn assemble(&self) -> Result<LoadedBootstrap, ConfigError> {
        let mut listeners = Vec::new();
        for (name, l) in &self.listeners {
            listeners.push(inline_routes(name, &l.msg, &self.routes)?);
        }
        let clusters = self
            .clusters
            .values()
            .map(|c| with_endpoints(&c.msg, &self.endpoints))
            .collect();
        let bootstrap = Bootstrap {
            node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                id: self.node_id.clone(),
                ..Default::default()
            }),
            static_resources: Some(StaticResources {
                listeners,
                clusters,
                ..Default::default()
            }),
            ..Default::default()
        };
        let dump = |m: &dyn Fn() -> Vec<serde_json::Value>| serde_json::Value::Array(m());
        let json = serde_json::json!({
            "dynamic_listeners": dump(&|| self.listeners.values().map(|h| h.json.clone()).collect()),
            "dynamic_clusters": dump(&|| self.clusters.values().map(|h| h.json.clone()).collect()),
            "dynamic_route_configs": dump(&|| self.routes.values().map(|h| h.json.clone()).collect()),
            "dynamic_endpoint_configs": dump(&|| self.endpoints.values().map(|h| h.json.clone()).collect()),
        });
        Ok(LoadedBootstrap {
            origin: "xds".to_owned(),
            bootstrap,
            json: json.to_string().into(),
        })
    }

    fn apply_set(&mut self, type_url: &str, resources: &[Any]) -> Result<(), String> {
        if type_url == NAME_TABLE {
            return self.apply_name_table(resources);
        }
        let mut next = XdsApplier {
            listeners: self.listeners.clone(),
            clusters: self.clusters.clone(),
            routes: self.routes.clone(),
            endpoints: self.endpoints.clone(),
            seen_lds: self.seen_lds,
            seen_cds: self.seen_cds,
            node_id: self.node_id.clone(),
            shared: None,
            configured: watch::Sender::new(false),
            warmed: self.warmed.clone(),
            dns: None,
            route_slots: HashMap::new(),
        };
        let err = |e: ConfigError| e.to_string();
        match type_url {
            LISTENER => {
                next.listeners = decode_all(resources, "Listener", |l: &Listener| l.name.clone())
                    .map_err(err)?;
                next.seen_lds = true;
            }
            CLUSTER => {
                next.clusters =
                    decode_all(resources, "Cluster", |c: &Cluster| c.name.clone()).map_err(err)?;
                next.seen_cds = true;
            }
            ROUTE => {
                next.routes =
                    decode_all(resources, "RouteConfiguration", |r: &RouteConfiguration| {
                        r.name.clone()
                    })
                    .map_err(err)?;
            }
            ENDPOINT => {
                next.endpoints = decode_all(
                    resources,
                    "ClusterLoadAssignment",
                    |c: &ClusterLoadAssignment| c.cluster_name.clone(),
                )
                .map_err(err)?;
            }
            other => return Err(format!("type {other}: not supported by weft-proxy")),
        }
        let loaded = next.assemble().map_err(err)?;
        // Compile errors name paths in the assembled bootstrap; report them
        // against the xDS resource they come from.
        let err = |e: ConfigError| next.locate(&e.to_string());
        let Some(shared) = self.shared.clone() else {
            return Err("internal: no running proxy to apply xDS updates to".into());
        };
        if next.seen_lds && next.seen_cds {
            let snap = Snapshot::compile(&loaded, &shared.stats).map_err(err)?;
            self.link_routes(&snap, &next.rds_names());
            shared
                .swap_in(snap)
                .map_err(|e| next.locate(&e.to_string()))?;
            Self::publish_routes(&shared.snapshot.load());
            self.configured
                .send_if_modified(|c| !std::mem::replace(c, true));
        } else {
            // Not serving it yet: still compile, so errors NACK now.
            let stats = crate::stats::Stats::new();
            Snapshot::compile(&loaded, &stats).map_err(err)?;
        }
        self.listeners = next.listeners;
        self.clusters = next.clusters;
        self.routes = next.routes;
        self.endpoints = next.endpoints;
        self.seen_lds = next.seen_lds;
        self.seen_cds = next.seen_cds;
        if self.is_warm() && !self.warmed.swap(true, Ordering::SeqCst) {
            tracing::info!("listeners, clusters, routes and endpoints received: ready");
            shared.ready.store(true, Ordering::SeqCst);
        }
        tracing::info!(type_url, resources = resources.len(), "applied xDS update");
        Ok(())
    }
}

impl ConfigHandler for XdsApplier {
    fn apply(&mut self, type_url: &str, resources: &[Any]) -> Result<(), String> {
        self.apply_set(type_url, resources).inspect_err(|e| {
            tracing::warn!(type_url, error = %e, "rejected xDS update; keeping the previous config");
        })
    }
}

/// Every HTTP connection manager of `snap`'s listeners.
fn http_managers(snap: &Snapshot) -> impl Iterator<Item = &Arc<HttpManager>> {
    snap.listeners
        .iter()
        .flat_map(|l| l.chains.iter().chain(l.default_chain.as_ref()))
        .filter_map(|c| match &c.kind {
            ChainKind::Http(h) => Some(h),
            ChainKind::Tcp(_) => None,
        })
}
