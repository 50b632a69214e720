//! Istio's standard metrics, emitted by weft-proxy itself:
//! `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes` (HTTP) and
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total` (TCP),
//! with Istio's label set, served with the other stats on 15090
//! `/stats/prometheus` and the admin port.
//!
//! Where label values come from: the proxy's own node metadata (bootstrap
//! `node.metadata`, or the sidecar environment), the listener's
//! `traffic_direction` (INBOUND: `reporter="destination"`, else
//! `"source"`), the cluster's `istio.services` metadata, the peer workload
//! from Istio's metadata exchange headers or EDS endpoint metadata, and the
//! peer's mTLS identity. Unknown values print `unknown`, as Istio's do.
//!
//! Cost on the request path: each HTTP manager / tcp_proxy holds its
//! resolved [`Scope`]; a request builds a key of pointers and small
//! integers and bumps one cell in its thread's shard (a mutex no other
//! worker takes; the scrape takes each briefly). Label strings are built
//! only at scrape time. Metadata exchange headers (added on outbound
//! requests and inbound responses, read and removed on the other side)
//! are only exchanged on listeners with an explicit `traffic_direction`.

pub mod peer;
mod render;

use crate::accesslog::Flags;
use crate::model::cluster::{Cluster, Host};
use crate::server::conn::ConnMeta;
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::{Metadata, Node as PbNode};
use http::{HeaderMap, HeaderValue};
use peer::{Node, Workload};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

pub const PEER_ID: &str = "x-envoy-peer-metadata-id";
pub const PEER_METADATA: &str = "x-envoy-peer-metadata";

/// Which side of the call this proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

/// What an HTTP manager or tcp_proxy records under: resolved per listener.
#[derive(Debug)]
pub struct Scope {
    pub reporter: Reporter,
    /// Exchange peer metadata headers (explicit traffic direction only).
    pub exchange: bool,
    node: Arc<Node>,
    shards: Arc<[Mutex<Shard>]>,
}

const SHARDS: usize = 16;

/// The process's Istio metrics.
#[derive(Debug)]
pub struct IstioMetrics {
    node: ArcSwap<Node>,
    shards: Arc<[Mutex<Shard>]>,
    scopes: Mutex<Vec<Arc<Scope>>>,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        IstioMetrics {
            node: ArcSwap::from_pointee(default_node().unwrap_or_default()),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            scopes: Mutex::new(Vec::new()),
        }
    }
}

static DEFAULT_NODE: OnceLock<Node> = OnceLock::new();

/// The sidecar mode's node (from the environment), used when the
/// configuration's bootstrap carries no node metadata (xDS mode).
pub fn set_default_node(node: &PbNode) {
    let md = node.metadata.clone().unwrap_or_default();
    let _ = DEFAULT_NODE.set(Node::from_metadata(&node.id, &md));
}

fn default_node() -> Option<Node> {
    DEFAULT_NODE.get().cloned()
}

impl IstioMetrics {
    /// Takes this proxy's workload from a bootstrap `node` (its metadata
    /// with Istio's keys). Without metadata the sidecar node (if set) stays.
    pub fn set_node(&self, node: Option<&PbNode>) {
        let fresh = match node.and_then(|n| n.metadata.as_ref().map(|m| (n, m))) {
            Some((n, md)) if !md.fields.is_empty() => Node::from_metadata(&n.id, md),
            _ => default_node().unwrap_or_default(),
        };
        // Unchanged node: keep the Arc, so scopes (and series) are reused.
        if *self.node.load_full() != fresh {
            self.node.store(Arc::new(fresh));
        }
    }

    /// The scope of a listener's filters (one per reporter and exchange
    /// setting for a given node, reused across config versions so series
    /// do not multiply with xDS pushes).
    pub fn scope(&self, reporter: Reporter, exchange: bool) -> Arc<Scope> {
        let node = self.node.load_full();
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        scopes.retain(|s| Arc::ptr_eq(&s.node, &node));
        if let Some(s) = scopes
            .iter()
            .find(|s| s.reporter == reporter && s.exchange == exchange)
        {
            return s.clone();
        }
        let s = Arc::new(Scope {
            reporter,
            exchange,
            node,
            shards: self.shards.clone(),
        });
        scopes.push(s.clone());
        s
    }

    /// Appends the Prometheus text of every istio_* family.
    pub fn render(&self, out: &mut String) {
        render::render(&self.shards, out);
    }
}

/// The reporter of a listener, and whether its direction was explicit:
/// `traffic_direction`, else the listener's name (`virtualInbound`,
/// `inbound...`).
pub fn reporter_of(l: &envoy_types::pb::envoy::config::listener::v3::Listener) -> (Reporter, bool) {
    match l.traffic_direction {
        1 => (Reporter::Destination, true),
        2 => (Reporter::Source, true),
        _ if l.name == "virtualInbound" || l.name.starts_with("inbound") => {
            (Reporter::Destination, false)
        }
        _ => (Reporter::Source, false),
    }
}

/// Gives every HTTP manager and tcp_proxy of a listener's chains its scope.
pub fn bind_chains<'a>(
    stats: &crate::stats::Stats,
    l: &envoy_types::pb::envoy::config::listener::v3::Listener,
    chains: impl Iterator<Item = &'a crate::model::listener::FilterChain>,
) {
    use crate::model::listener::ChainKind;
    let (reporter, exchange) = reporter_of(l);
    let scope = stats.istio.scope(reporter, exchange);
    for c in chains {
        match &c.kind {
            ChainKind::Http(h) => {
                let _ = h.istio.set(scope.clone());
            }
            ChainKind::Tcp(t) => {
                let _ = t.istio.set(scope.clone());
            }
        }
    }
}

// === keys and cells ===

/// An `Arc` compared and hashed by address (the key holds it, so the
/// address cannot be reused while the series exists).
#[derive(Debug)]
struct ByPtr<T: ?Sized>(Arc<T>);

impl<T: ?Sized> Clone for ByPtr<T> {
    fn clone(&self) -> Self {
        ByPtr(self.0.clone())
    }
}
impl<T: ?Sized> PartialEq for ByPtr<T> {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}
impl<T: ?Sized> Eq for ByPtr<T> {}
impl<T: ?Sized> Hash for ByPtr<T> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (Arc::as_ptr(&self.0) as *const () as usize).hash(h)
    }
}

/// The destination service of a cluster: (host, name, namespace).
type Service = (String, String, String);

/// The label-bearing parts shared by HTTP and TCP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Series {
    scope: ByPtr<Scope>,
    /// The other workload (source on inbound, destination on outbound).
    peer: Option<ByPtr<Workload>>,
    service: Option<ByPtr<Service>>,
    /// The peer's mTLS identity (inbound).
    principal: Option<ByPtr<str>>,
    /// The observed hop was TLS: the downstream connection's mutual TLS
    /// (inbound), or the upstream transport (outbound).
    mtls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HttpKey {
    series: Series,
    grpc: bool,
    code: u16,
    grpc_status: Option<u16>,
    flags: Flags,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TcpKey {
    series: Series,
    flags: Flags,
}

/// Istio's bucket bounds.
const DURATION_BOUNDS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const BYTES_BOUNDS: [f64; 8] = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1e6, 1e7];

#[derive(Debug, Clone, Default)]
struct Hist<const N: usize> {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl<const N: usize> Hist<N> {
    fn observe(&mut self, bounds: &[f64; N], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; N + 1];
        }
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
    }
}

#[derive(Debug, Clone, Default)]
struct HttpCell {
    requests: u64,
    duration: Hist<19>,
    request_bytes: Hist<8>,
    response_bytes: Hist<8>,
}

#[derive(Debug, Clone, Default)]
struct TcpCell {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

/// A cluster's resolved service and the metadata object it came from.
type ServiceEntry = (Option<Arc<Metadata>>, Option<Arc<Service>>);

/// One thread's series and lookup caches.
#[derive(Debug, Default)]
struct Shard {
    http: HashMap<HttpKey, HttpCell>,
    tcp: HashMap<TcpKey, TcpCell>,
    /// Peers by their exchange header value.
    exchanged: HashMap<HeaderValue, Arc<Workload>>,
    /// Peers by endpoint address, with the `istio.workload` they came from.
    endpoints: HashMap<SocketAddr, (String, Arc<Workload>)>,
    /// Services by cluster name, with the metadata they came from.
    services: HashMap<Arc<str>, ServiceEntry>,
    principals: HashSet<Arc<str>>,
}

/// Caches are bounded; past this they start over.
const CACHE_LIMIT: usize = 4096;

fn shard_index() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|i| *i)
}

impl Shard {
    fn peer_from_header(&mut self, v: &HeaderValue) -> Option<Arc<Workload>> {
        if let Some(w) = self.exchanged.get(v) {
            return Some(w.clone());
        }
        let w = Arc::new(Workload::from_exchange(v.as_bytes())?);
        if self.exchanged.len() >= CACHE_LIMIT {
            self.exchanged.clear();
        }
        self.exchanged.insert(v.clone(), w.clone());
        Some(w)
    }

    fn peer_from_host(&mut self, host: &Host) -> Option<Arc<Workload>> {
        let md = host.metadata()?;
        let spec = peer::endpoint_workload(md)?;
        if let Some((s, w)) = self.endpoints.get(&host.address)
            && s == spec
        {
            return Some(w.clone());
        }
        let w = Arc::new(Workload::from_endpoint(md)?);
        if self.endpoints.len() >= CACHE_LIMIT {
            self.endpoints.clear();
        }
        self.endpoints
            .insert(host.address, (spec.to_owned(), w.clone()));
        Some(w)
    }

    fn service(&mut self, cluster: &Cluster) -> Option<Arc<Service>> {
        let same_md = |held: &Option<Arc<Metadata>>| match (held, &cluster.metadata) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let previous = match self.services.get(&cluster.name) {
            Some((md, s)) if same_md(md) => return s.clone(),
            Some((_, s)) => s.clone(),
            None => None,
        };
        let fresh = cluster.metadata.as_deref().and_then(peer::service);
        // A new config version with the same service keeps its Arc, so the
        // series (keyed by address) stay the same across xDS pushes.
        let s = match (previous, fresh) {
            (Some(p), Some(f)) if *p == f => Some(p),
            (_, f) => f.map(Arc::new),
        };
        if self.services.len() >= CACHE_LIMIT {
            self.services.clear();
        }
        self.services
            .insert(cluster.name.clone(), (cluster.metadata.clone(), s.clone()));
        s
    }

    fn principal(&mut self, p: &str) -> Arc<str> {
        if let Some(a) = self.principals.get(p) {
            return a.clone();
        }
        if self.principals.len() >= CACHE_LIMIT {
            self.principals.clear();
        }
        let a: Arc<str> = p.into();
        self.principals.insert(a.clone());
        a
    }
}

// === HTTP ===

/// The per-request record an HTTP exchange carries.
#[derive(Debug, Default)]
pub struct HttpObs {
    scope: Option<Arc<Scope>>,
    /// The peer's exchange header (request on inbound, response on outbound).
    peer_header: Option<HeaderValue>,
    pub cluster: Option<Arc<Cluster>>,
    pub host: Option<Arc<Host>>,
    grpc: bool,
}

impl HttpObs {
    /// On the request headers (after the connection manager's own
    /// changes): reads or adds the metadata exchange headers.
    pub fn start(scope: Option<&Arc<Scope>>, headers: &mut HeaderMap) -> HttpObs {
        let Some(scope) = scope else {
            return HttpObs::default();
        };
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut peer_header = None;
        if scope.exchange {
            match scope.reporter {
                Reporter::Destination => {
                    headers.remove(PEER_ID);
                    peer_header = headers.remove(PEER_METADATA);
                }
                // Added once the upstream cluster is known (`upstream`).
                Reporter::Source => {}
            }
        }
        HttpObs {
            scope: Some(scope.clone()),
            peer_header,
            cluster: None,
            host: None,
            grpc,
        }
    }

    /// Once the route chose `cluster`: records it, and on the outbound side
    /// adds this proxy's exchange headers for mesh services only (clusters
    /// with Istio's `istio` metadata), never for PassthroughCluster or other
    /// destinations outside the mesh.
    pub fn upstream(&mut self, cluster: &Arc<Cluster>, headers: &mut HeaderMap) {
        self.cluster = Some(cluster.clone());
        let Some(scope) = self.scope.as_ref() else {
            return;
        };
        let in_mesh = cluster
            .metadata
            .as_ref()
            .is_some_and(|m| m.filter_metadata.contains_key("istio"));
        if scope.exchange && scope.reporter == Reporter::Source && in_mesh {
            add_exchange(&scope.node, headers);
        }
    }

    /// On the response headers: the outbound side reads (and removes) the
    /// server's metadata, the inbound side adds its own.
    pub fn response(&mut self, headers: &mut HeaderMap) {
        let Some(scope) = self.scope.as_ref().filter(|s| s.exchange) else {
            return;
        };
        match scope.reporter {
            Reporter::Source => {
                headers.remove(PEER_ID);
                self.peer_header = headers.remove(PEER_METADATA);
            }
            Reporter::Destination => add_exchange(&scope.node, headers),
        }
    }

    /// Whether anything will be recorded.
    pub fn active(&self) -> bool {
        self.scope.is_some()
    }

    /// Records the finished request.
    pub fn finish(self, done: HttpDone<'_>) {
        let Some(scope) = self.scope else { return };
        let mut shard = scope.shards[shard_index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut peer = self
            .peer_header
            .as_ref()
            .and_then(|h| shard.peer_from_header(h));
        if peer.is_none()
            && scope.reporter == Reporter::Source
            && let Some(h) = &self.host
        {
            peer = shard.peer_from_host(h);
        }
        let service = self.cluster.as_deref().and_then(|c| shard.service(c));
        let (principal, mut mtls) = downstream_identity(&scope, done.meta, &mut shard);
        if let (Some(c), Some(h)) = (&self.cluster, &self.host) {
            mtls |= upstream_tls(&scope, c, h);
        }
        let key = HttpKey {
            series: Series {
                scope: ByPtr(scope.clone()),
                peer: peer.map(ByPtr),
                service: service.map(ByPtr),
                principal: principal.map(ByPtr),
                mtls,
            },
            grpc: self.grpc,
            code: done.status,
            grpc_status: done.grpc_status,
            flags: done.flags,
        };
        let cell = shard.http.entry(key).or_default();
        cell.requests += 1;
        cell.duration.observe(&DURATION_BOUNDS, done.duration_ms);
        cell.request_bytes
            .observe(&BYTES_BOUNDS, done.request_bytes as f64);
        cell.response_bytes
            .observe(&BYTES_BOUNDS, done.response_bytes as f64);
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub struct HttpDone<'a> {
    pub meta: &'a ConnMeta,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub flags: Flags,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
}

/// A `grpc-status` header or trailer value.
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn add_exchange(node: &Node, headers: &mut HeaderMap) {
    if let (Some(id), Some(md)) = (&node.exchange_id, &node.exchange) {
        headers.insert(PEER_ID, id.clone());
        headers.insert(PEER_METADATA, md.clone());
    }
}

/// The downstream peer's principal and whether the connection is mutual
/// TLS (inbound only: outbound connections are the app's plaintext).
fn downstream_identity(
    scope: &Scope,
    meta: &ConnMeta,
    shard: &mut Shard,
) -> (Option<Arc<str>>, bool) {
    if scope.reporter != Reporter::Destination {
        return (None, false);
    }
    let p = meta.peer_principal().map(|p| shard.principal(p));
    (p, meta.is_mutual_tls())
}

/// Whether the outbound side reached `host` over TLS (Istio's
/// auto-mTLS: its principals are then this proxy's own identity and the
/// peer workload's).
fn upstream_tls(scope: &Scope, cluster: &Cluster, host: &Host) -> bool {
    scope.reporter == Reporter::Source
        && matches!(
            cluster.client.transports.for_endpoint(host.address),
            crate::upstream::Transport::Tls(_)
        )
}

// === TCP ===

/// An open tcp_proxy connection's record.
#[derive(Debug)]
pub struct TcpObs {
    scope: Arc<Scope>,
    series: Series,
}

impl TcpObs {
    /// Counts a connection as opened (once its upstream is chosen).
    pub fn open(
        scope: Option<&Arc<Scope>>,
        meta: &ConnMeta,
        cluster: &Cluster,
        host: Option<&Arc<Host>>,
    ) -> Option<TcpObs> {
        let scope = scope?.clone();
        let series = {
            let mut shard = scope.shards[shard_index()]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let peer = match (scope.reporter, host) {
                (Reporter::Source, Some(h)) => shard.peer_from_host(h),
                _ => None,
            };
            let service = shard.service(cluster);
            let (principal, mut mtls) = downstream_identity(&scope, meta, &mut shard);
            if let Some(h) = host {
                mtls |= upstream_tls(&scope, cluster, h);
            }
            let series = Series {
                scope: ByPtr(scope.clone()),
                peer: peer.map(ByPtr),
                service: service.map(ByPtr),
                principal: principal.map(ByPtr),
                mtls,
            };
            let key = TcpKey {
                series: series.clone(),
                flags: Flags::default(),
            };
            shard.tcp.entry(key).or_default().opened += 1;
            series
        };
        Some(TcpObs { scope, series })
    }

    /// Counts the close and the bytes (`received`: from downstream).
    pub fn close(self, received: u64, sent: u64, flags: Flags) {
        let mut shard = self.scope.shards[shard_index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let cell = shard
            .tcp
            .entry(TcpKey {
                series: self.series,
                flags,
            })
            .or_default();
        cell.closed += 1;
        cell.received += received;
        cell.sent += sent;
    }
}

#[cfg(test)]
mod tests;
