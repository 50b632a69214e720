//! The sidecar mode: weft-proxy as an ADS client of weftd (`weft-proxy run
//! --xds-address HOST:PORT`).
//!
//! Owns three things: the node weft-proxy reports (built from the
//! environment the injector sets, as Istio's agent does), the checking of
//! each received resource (decoded from its `Any` and walked with the same
//! field-support check as bootstrap files, so errors read
//! `Listener virtualOutbound: filter_chains[0]...: unsupported`), and the
//! assembly of the latest accepted LDS/CDS/RDS/EDS sets into one
//! configuration that `crate::model` compiles: listeners whose
//! `http_connection_manager` names an RDS route get that route inlined, EDS
//! clusters get their `ClusterLoadAssignment` as `load_assignment`. A set
//! that does not check or compile is NACKed and the previous snapshot keeps
//! serving. With DNS capture, it also owns the DNS proxy ([`crate::dns`])
//! and feeds it the NDS name table. The protocol loop itself is
//! `weft_xds::client`.

use crate::config::{ConfigError, LoadedBootstrap, check_supported, pool};
use crate::dns::{DnsConfig, DnsProxy};
use crate::model::Snapshot;
use crate::model::http::HttpManager;
use crate::model::listener::ChainKind;
use crate::model::route::RouteTable;
use crate::server::{Options, Proxy, Shared};
use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use prost::Message;
use prost_reflect::DynamicMessage;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use weft_xds::nds::{NAME_TABLE, NAME_TABLE_RESOURCE, NameTable};
use weft_xds::{Any, ConfigHandler, ProxyMetadata};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The proxy's node metadata from the environment variables Istio's
/// injector sets on the proxy container (`POD_NAME`, `POD_NAMESPACE`,
/// `INSTANCE_IP`, `SERVICE_ACCOUNT`, `ISTIO_META_*`,
/// `ISTIO_METAJSON_LABELS`).
pub fn metadata_from_env(env: &HashMap<String, String>) -> Result<ProxyMetadata, String> {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    let mut md = ProxyMetadata {
        pod_name: get("POD_NAME"),
        namespace: get("POD_NAMESPACE"),
        service_account: get("SERVICE_ACCOUNT"),
        istio_version: env
            .get("ISTIO_META_ISTIO_VERSION")
            .cloned()
            .unwrap_or_else(|| crate::admin::VERSION.to_owned()),
        ..Default::default()
    };
    if md.namespace.is_empty() {
        md.namespace = "default".to_owned();
    }
    let ips = env
        .get("INSTANCE_IP")
        .or_else(|| env.get("ISTIO_META_INSTANCE_IPS"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    md.ips = ips
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(labels) = env.get("ISTIO_METAJSON_LABELS").filter(|s| !s.is_empty()) {
        md.labels = serde_json::from_str(labels).map_err(|e| {
            format!("ISTIO_METAJSON_LABELS: {labels:?} is not a JSON string map: {e}")
        })?;
    }
    for (k, v) in env {
        let Some(key) = k.strip_prefix("ISTIO_META_") else {
            continue;
        };
        match key {
            "WORKLOAD_NAME" => md.workload_name = v.clone(),
            "CLUSTER_ID" => md.cluster_id = v.clone(),
            "MESH_ID" => md.mesh_id = v.clone(),
            "INTERCEPTION_MODE" => md.interception_mode = v.clone(),
            "DNS_DOMAIN" => md.domain = v.clone(),
            "ISTIO_VERSION" | "INSTANCE_IPS" => {}
            other => {
                md.extra.insert(other.to_owned(), v.clone());
            }
        }
    }
    if md.cluster_id.is_empty() {
        md.cluster_id = "Kubernetes".to_owned();
    }
    if md.interception_mode.is_empty() {
        md.interception_mode = "REDIRECT".to_owned();
    }
    if md.workload_name.is_empty() {
        md.workload_name = md.pod_name.clone();
    }
    Ok(md)
}

/// The xDS address from the environment: `XDS_ADDRESS`, `PILOT_ADDRESS`,
/// or `discoveryAddress` of the `PROXY_CONFIG` JSON.
pub fn address_from_env(env: &HashMap<String, String>) -> Result<Option<String>, String> {
    for k in ["XDS_ADDRESS", "PILOT_ADDRESS"] {
        if let Some(v) = env.get(k).filter(|v| !v.is_empty()) {
            return Ok(Some(v.clone()));
        }
    }
    let Some(pc) = env.get("PROXY_CONFIG").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(pc).map_err(|e| format!("PROXY_CONFIG: not JSON ({e}): {pc:?}"))?;
    Ok(v.get("discoveryAddress")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .map(str::to_owned))
}

/// `HOST:PORT` (or a URL) as the client's URL.
pub fn address_url(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// One accepted resource, decoded.
#[derive(Clone, Debug)]
struct Held<T> {
    msg: T,
    json: serde_json::Value,
}

/// The latest accepted set of each type, and where to put compiled snapshots.
/// With DNS capture on, also the DNS proxy the NDS name table goes to.
pub struct XdsApplier {
    listeners: BTreeMap<String, Held<Listener>>,
    clusters: BTreeMap<String, Held<Cluster>>,
    routes: BTreeMap<String, Held<RouteConfiguration>>,
    endpoints: BTreeMap<String, Held<ClusterLoadAssignment>>,
    seen_lds: bool,
    seen_cds: bool,
    node_id: String,
    opts: Options,
    shared: Option<Arc<Shared>>,
    started: Option<Sender<Result<Proxy, String>>>,
    warmed: Arc<AtomicBool>,
    dns: Option<DnsProxy>,
    /// The newest route table per RDS name, shared with every config
    /// version's HTTP connection managers of that name.
    route_slots: HashMap<Arc<str>, RouteSlot>,
}

/// Where the newest route table of one name is published.
type RouteSlot = Arc<arc_swap::ArcSwap<RouteTable>>;

impl XdsApplier {
    /// The proxy starts (binds listeners, serves, turns ready) once both
    /// listeners and clusters were accepted; it is then sent on `started`.
    ///
    /// When the process environment has `ISTIO_META_DNS_CAPTURE=true`, the
    /// DNS proxy starts here too (see [`crate::dns`] for its variables), as
    /// Istio's agent starts it beside Envoy; if it cannot start, the error
    /// is sent on `started` and nothing else happens.
    pub fn new(node_id: String, opts: Options, started: Sender<Result<Proxy, String>>) -> Self {
        let env: HashMap<String, String> = std::env::vars().collect();
        let dns = DnsConfig::from_env(&env).and_then(|c| c.map(DnsProxy::start).transpose());
        let mut started = Some(started);
        let dns = match dns {
            Ok(d) => d,
            Err(e) => {
                if let Some(tx) = started.take() {
                    let _ = tx.send(Err(e.to_string()));
                }
                None
            }
        };
        XdsApplier {
            listeners: BTreeMap::new(),
            clusters: BTreeMap::new(),
            routes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            seen_lds: false,
            seen_cds: false,
            node_id,
            opts,
            shared: None,
            started,
            warmed: Arc::new(AtomicBool::new(false)),
            dns,
            route_slots: HashMap::new(),
        }
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
            opts: self.opts.clone(),
            shared: None,
            started: None,
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
        match &self.shared {
            Some(shared) => {
                let shared = shared.clone();
                let snap = Snapshot::compile(&loaded, &shared.stats).map_err(err)?;
                self.link_routes(&snap, &next.rds_names());
                shared.swap_in(snap).map_err(|e| e.to_string())?;
                Self::publish_routes(&shared.snapshot.load());
            }
            None if next.seen_lds && next.seen_cds => {
                let proxy = Proxy::start(loaded, self.opts.clone())
                    .map_err(|e| next.locate(&e.to_string()))?;
                let snap = proxy.shared.snapshot.load_full();
                self.link_routes(&snap, &next.rds_names());
                Self::publish_routes(&snap);
                self.shared = Some(proxy.shared.clone());
                if let Some(tx) = self.started.take() {
                    let _ = tx.send(Ok(proxy));
                }
            }
            None => {
                // Not serving yet: still compile, so errors NACK now.
                let stats = crate::stats::Stats::new();
                Snapshot::compile(&loaded, &stats).map_err(err)?;
            }
        }
        self.listeners = next.listeners;
        self.clusters = next.clusters;
        self.routes = next.routes;
        self.endpoints = next.endpoints;
        self.seen_lds = next.seen_lds;
        self.seen_cds = next.seen_cds;
        if let Some(shared) = &self.shared
            && self.is_warm()
            && !self.warmed.swap(true, Ordering::SeqCst)
        {
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

/// Decodes and checks every resource; errors are prefixed `KIND NAME`.
fn decode_all<T: prost::Message + Default>(
    resources: &[Any],
    kind: &str,
    name: impl Fn(&T) -> String,
) -> Result<BTreeMap<String, Held<T>>, ConfigError> {
    let desc = pool()
        .get_message_by_name(&format!(
            "envoy.config.{}",
            match kind {
                "Listener" => "listener.v3.Listener",
                "Cluster" => "cluster.v3.Cluster",
                "RouteConfiguration" => "route.v3.RouteConfiguration",
                _ => "endpoint.v3.ClusterLoadAssignment",
            }
        ))
        .expect("xDS resource types are in the descriptor set");
    let mut out = BTreeMap::new();
    for (i, any) in resources.iter().enumerate() {
        let unnamed = format!("{kind} #{i}");
        let dynamic = DynamicMessage::decode(desc.clone(), any.value.as_slice())
            .map_err(|e| ConfigError::invalid(&unnamed, "", format!("cannot decode: {e}")))?;
        let msg: T = dynamic
            .transcode_to()
            .map_err(|e| ConfigError::invalid(&unnamed, "", format!("cannot decode: {e}")))?;
        let n = name(&msg);
        let origin = format!("{kind} {n}");
        check_supported(&dynamic, &origin)?;
        let json = serde_json::to_value(&dynamic).unwrap_or(serde_json::Value::Null);
        out.insert(n, Held { msg, json });
    }
    Ok(out)
}

/// Route names the listener's HTTP connection managers fetch over RDS.
fn rds_names(l: &Listener) -> Vec<String> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url.rsplit('/').next() == Some(HCM) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|h| match h.route_specifier {
            Some(RouteSpecifier::Rds(r)) => Some(r.route_config_name),
            _ => None,
        })
        .collect()
}

/// The EDS service name of an EDS cluster.
fn eds_name(c: &Cluster) -> Option<String> {
    let is_eds = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Eds as i32
    );
    is_eds.then(|| {
        c.eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| c.name.clone())
    })
}

/// The listener with each RDS reference replaced by the named route from
/// `routes` (an empty route table while it has not arrived: 404s, as
/// Envoy's would be before warming completes).
fn inline_routes(
    name: &str,
    l: &Listener,
    routes: &BTreeMap<String, Held<RouteConfiguration>>,
) -> Result<Listener, ConfigError> {
    let mut l = l.clone();
    let origin = format!("Listener {name}");
    let chains = l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut());
    for (ci, chain) in chains.enumerate() {
        for (fi, f) in chain.filters.iter_mut().enumerate() {
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url.rsplit('/').next() != Some(HCM) {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
                ConfigError::invalid(
                    &origin,
                    format!("filter_chains[{ci}].filters[{fi}].typed_config"),
                    e.to_string(),
                )
            })?;
            let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
                continue;
            };
            let rc = routes
                .get(&rds.route_config_name)
                .map(|h| h.msg.clone())
                .unwrap_or_else(|| RouteConfiguration {
                    name: rds.route_config_name.clone(),
                    ..Default::default()
                });
            hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
            any.value = hcm.encode_to_vec();
        }
    }
    Ok(l)
}

/// The cluster with its EDS assignment (by `service_name`, else its name)
/// as `load_assignment`; no endpoints while none has arrived.
fn with_endpoints(c: &Cluster, eds: &BTreeMap<String, Held<ClusterLoadAssignment>>) -> Cluster {
    let mut c = c.clone();
    if let Some(key) = eds_name(&c) {
        c.load_assignment = Some(eds.get(&key).map(|h| h.msg.clone()).unwrap_or(
            ClusterLoadAssignment {
                cluster_name: key,
                ..Default::default()
            },
        ));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn node_from_injector_env() {
        let md = metadata_from_env(&env(&[
            ("POD_NAME", "reviews-v1-abc"),
            ("POD_NAMESPACE", "bookinfo"),
            ("INSTANCE_IP", "10.0.0.5"),
            ("SERVICE_ACCOUNT", "reviews"),
            ("ISTIO_META_WORKLOAD_NAME", "reviews-v1"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"reviews","version":"v1"}"#,
            ),
        ]))
        .unwrap();
        let node = md.to_node();
        assert_eq!(
            node.id,
            "sidecar~10.0.0.5~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(node.cluster, "reviews.bookinfo");
        let back = ProxyMetadata::from_node(&node).unwrap();
        assert_eq!(back.workload_name, "reviews-v1");
        assert_eq!(back.service_account, "reviews");
        assert_eq!(back.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(back.cluster_id, "Kubernetes");
        assert_eq!(back.interception_mode, "REDIRECT");
        assert_eq!(
            back.extra.get("DNS_CAPTURE").map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn bad_labels_json_names_the_variable() {
        let e = metadata_from_env(&env(&[("ISTIO_METAJSON_LABELS", "{nope")])).unwrap_err();
        assert!(e.starts_with("ISTIO_METAJSON_LABELS:"), "{e}");
    }

    #[test]
    fn address_from_proxy_config() {
        let e = env(&[(
            "PROXY_CONFIG",
            r#"{"discoveryAddress":"weftd.weft-system.svc:15010"}"#,
        )]);
        assert_eq!(
            address_from_env(&e).unwrap().as_deref(),
            Some("weftd.weft-system.svc:15010")
        );
        let e = env(&[("PILOT_ADDRESS", "a:1"), ("PROXY_CONFIG", "{}")]);
        assert_eq!(address_from_env(&e).unwrap().as_deref(), Some("a:1"));
        assert_eq!(address_from_env(&env(&[])).unwrap(), None);
        assert_eq!(address_url("a:1"), "http://a:1");
    }
}
