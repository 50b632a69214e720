//! The ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`)
//! that weftd serves on 15010: state of the world in `sotw.rs`, incremental
//! in `delta.rs`. Each stream runs on its own task, follows the
//! [`crate::Pusher`]'s state and asks the [`crate::Generator`] for the
//! proxy's resources.
//!
//! Owns stream lifecycle, nonces and the per-stream bookkeeping; must not
//! compute resources. Nothing outlives the proxies it was kept for: a
//! stream's status row, its share of the sets cached per
//! [`Generator::cache_key`] and (through [`Generator::forget`], when a
//! proxy's last stream closes) the generator's per-proxy state go with
//! the stream.

mod delta;
mod grpc;
mod request;
mod requests;
mod sotw;

pub use grpc::AdsService;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use self::requests::Requests;

use crate::error::XdsError;
use crate::metrics::XdsMetrics;
use crate::push::{PushState, Pusher};
use crate::resources::{Generator, NodeInfo, ResourceSet};
use crate::status::{ProxySyncStatus, StatusEntry, StreamKind, SyncRegistry, SyncStatus};
use crate::types::XdsType;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Responses queued per stream before the stream's task waits for the
    /// proxy to read.
    pub response_buffer: usize,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// HTTP/2 PING interval, so streams of vanished proxies close and
    /// `pilot_xds` counts only live ones. `None` disables it.
    pub keepalive_interval: Option<std::time::Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: std::time::Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            response_buffer: 16,
            max_request_bytes: 16 * 1024 * 1024,
            keepalive_interval: Some(std::time::Duration::from_secs(30)),
            keepalive_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// The ADS server: a cheap handle, clone it freely.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    generator: Arc<dyn Generator>,
    pushes: watch::Receiver<Arc<PushState>>,
    metrics: Arc<XdsMetrics>,
    status: SyncRegistry,
    options: ServerOptions,
    next_conn: AtomicU64,
    closed: watch::Sender<bool>,
    /// (cache key, type URL) → the set generated for the streams using
    /// that key; dropped with its last user.
    cache: Mutex<HashMap<CacheKey, CachedSet>>,
    /// Open streams per node id: when a proxy's last one closes, the
    /// generator forgets it.
    streams: Mutex<HashMap<String, usize>>,
}

/// (cache key, type URL).
type CacheKey = (String, String);

/// A set shared by the streams whose generator cache key is the same.
#[derive(Default)]
struct CachedSet {
    /// Streams that asked for it (each counted once).
    users: usize,
    /// (push version, resources), once generated.
    set: Option<(u64, ResourceSet)>,
}

impl AdsServer {
    /// A server computing resources with `generator` and pushing whenever
    /// `pusher` publishes.
    pub fn new(
        generator: Arc<dyn Generator>,
        pusher: &Pusher,
        metrics: Arc<XdsMetrics>,
        options: ServerOptions,
    ) -> AdsServer {
        let (closed, _) = watch::channel(false);
        AdsServer {
            shared: Arc::new(Shared {
                generator,
                pushes: pusher.subscribe(),
                metrics,
                status: SyncRegistry::default(),
                options,
                next_conn: AtomicU64::new(1),
                closed,
                cache: Mutex::new(HashMap::new()),
                streams: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The gRPC service, to add to a `tonic::transport::Server` next to
    /// other services. Responses are encoded per message ([`AdsService`]),
    /// not into a buffer kept per stream.
    pub fn service(&self) -> AdsService {
        AdsService::new(self.clone())
    }

    /// Binds `addr` (e.g. `0.0.0.0:15010`) and serves until `shutdown`
    /// resolves; then ends every stream and returns.
    pub async fn serve_addr(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), XdsError> {
        let listener = bind(addr)?;
        self.serve(listener, shutdown).await
    }

    /// Serves on an already bound listener until `shutdown` resolves; then
    /// ends every stream and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), XdsError> {
        let shared = self.shared.clone();
        let signal = async move {
            shutdown.await;
            shared.closed.send_replace(true);
        };
        let options = &self.shared.options;
        tonic::transport::Server::builder()
            .http2_keepalive_interval(options.keepalive_interval)
            .http2_keepalive_timeout(Some(options.keepalive_timeout))
            .tcp_nodelay(true)
            .add_service(self.service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
            .await
            .map_err(XdsError::Serve)
    }

    /// Ends every open stream (proxies reconnect); new streams are refused.
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }

    /// Sync status of every open stream, sorted by proxy id.
    pub fn sync_status(&self) -> SyncStatus {
        self.shared.status.snapshot()
    }

    /// The node of a connected proxy (its newest stream), e.g. to compute
    /// its config for `/debug/config_dump?proxyID=`.
    pub fn node(&self, proxy_id: &str) -> Option<NodeInfo> {
        self.shared.status.node(proxy_id)
    }

    /// The metrics this server updates.
    pub fn metrics(&self) -> &Arc<XdsMetrics> {
        &self.shared.metrics
    }

    /// Distinct proxies (node ids) with an open stream.
    pub fn connected_proxies(&self) -> usize {
        lock(&self.shared.streams).len()
    }

    /// Sets kept per [`Generator::cache_key`] for the open streams.
    pub fn cached_sets(&self) -> usize {
        lock(&self.shared.cache).len()
    }
}

/// Binds a TCP listener with `SO_REUSEADDR`, so a restarted weftd gets its
/// port back at once.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, XdsError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let err = |source| XdsError::Bind { addr, source };
    let socket = socket.map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

// === stream plumbing shared by both variants ===

/// Encoded gRPC frames of a stream's responses ([`grpc`]).
type ResponseTx = mpsc::Sender<Result<bytes::Bytes, Status>>;

/// What every stream holds: identity, status entry, nonce counter.
pub(crate) struct StreamCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) node: NodeInfo,
    pub(crate) status: StatusEntry,
    pub(crate) conn_id: String,
    nonces: u64,
    /// Entries of the shared cache this stream counts as a user of.
    cache_keys: HashSet<CacheKey>,
}

impl StreamCtx {
    fn open(shared: Arc<Shared>, node: NodeInfo, kind: StreamKind) -> StreamCtx {
        let n = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn_id = format!("{}-{n}", node.id);
        let status = shared.status.register(
            node.clone(),
            ProxySyncStatus {
                proxy_id: node.id.clone(),
                cluster: node.cluster.clone(),
                cluster_id: node
                    .metadata_str("CLUSTER_ID")
                    .filter(|c| !c.is_empty())
                    .unwrap_or(&node.cluster)
                    .to_string(),
                istio_version: node.metadata_str("ISTIO_VERSION").unwrap_or("").to_string(),
                connection_id: conn_id.clone(),
                kind,
                connected_at: std::time::SystemTime::now(),
                types: Default::default(),
            },
        );
        shared.metrics.connected();
        *lock(&shared.streams).entry(node.id.clone()).or_default() += 1;
        tracing::info!(proxy = %node.id, conn = %conn_id, kind = kind.as_str(), "xDS stream opened");
        StreamCtx {
            shared,
            node,
            status,
            conn_id,
            nonces: 0,
            cache_keys: HashSet::new(),
        }
    }

    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("{}/{}", self.conn_id, self.nonces)
    }

    /// The proxy's desired set of `type_url`, shared between proxies with
    /// the same [`Generator::cache_key`] within one push version.
    pub(crate) fn generate(&mut self, type_url: &str) -> ResourceSet {
        let generator = self.shared.generator.as_ref();
        let Some(key) = generator.cache_key(&self.node, type_url) else {
            return generator.generate(&self.node, type_url);
        };
        // Read the version before generating: the cached data is then at
        // least as new as the version it is filed under.
        let version = {
            let state = self.shared.pushes.borrow();
            match XdsType::from_type_url(type_url) {
                Some(t) => state.type_versions.get(&t).copied().unwrap_or(0),
                None => state.url_version(type_url),
            }
        };
        let cache_key = (key, type_url.to_string());
        {
            let mut cache = lock(&self.shared.cache);
            if !self.cache_keys.contains(&cache_key) {
                cache.entry(cache_key.clone()).or_default().users += 1;
                self.cache_keys.insert(cache_key.clone());
            }
            if let Some(CachedSet {
                set: Some((v, set)),
                ..
            }) = cache.get(&cache_key)
                && *v == version
            {
                return set.clone();
            }
        }
        let set = generator.generate(&self.node, type_url);
        // Computed once here, shared by every proxy that gets this set.
        set.version();
        let mut cache = lock(&self.shared.cache);
        if let Some(entry) = cache.get_mut(&cache_key)
            && entry.set.as_ref().is_none_or(|(v, _)| *v <= version)
        {
            entry.set = Some((version, set.clone()));
        }
        set
    }

    pub(crate) fn metrics(&self) -> &XdsMetrics {
        &self.shared.metrics
    }
}

impl Drop for StreamCtx {
    fn drop(&mut self) {
        if !self.cache_keys.is_empty() {
            let mut cache = lock(&self.shared.cache);
            for key in self.cache_keys.drain() {
                if let Some(entry) = cache.get_mut(&key) {
                    entry.users = entry.users.saturating_sub(1);
                    if entry.users == 0 {
                        cache.remove(&key);
                    }
                }
            }
        }
        {
            // Under the lock, so a stream of the same proxy opening now
            // counts either before (nothing forgotten) or after.
            let mut streams = lock(&self.shared.streams);
            let last = match streams.get_mut(&self.node.id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    streams.remove(&self.node.id);
                    true
                }
                None => false,
            };
            if last {
                self.shared.generator.forget(&self.node);
            }
        }
        self.shared.metrics.disconnected();
        tracing::info!(proxy = %self.node.id, conn = %self.conn_id, "xDS stream closed");
    }
}

/// Reads the first request of a stream, waiting also for shutdown.
async fn first_request<T: prost::Message + Default>(
    requests: &mut Requests<T>,
    closed: &mut watch::Receiver<bool>,
) -> Option<T> {
    tokio::select! {
        msg = requests.message() => match msg {
            Ok(Some(req)) => Some(req),
            Ok(None) => None,
            Err(status) => {
                tracing::debug!(%status, "xDS stream failed before its first request");
                None
            }
        },
        _ = closed.wait_for(|c| *c) => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a NACK's `error_detail` is present (an ACK has none or code 0
/// with no message).
pub(crate) fn nack_message(
    detail: &Option<envoy_types::pb::google::rpc::Status>,
) -> Option<String> {
    let d = detail.as_ref()?;
    if d.code == 0 && d.message.is_empty() {
        return None;
    }
    Some(if d.message.is_empty() {
        format!("rejected with code {}", d.code)
    } else {
        d.message.clone()
    })
}
