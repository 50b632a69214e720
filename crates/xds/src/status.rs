//! Per-proxy sync status for `/debug/syncz` and `weft proxy-status`: for
//! each connected stream and each type, what was sent, what was ACKed and
//! the last NACK.
//!
//! Connections write their own entry; readers take a [`ProxySyncStatus`]
//! snapshot. Owns no protocol logic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::resources::NodeInfo;

/// Which ADS variant a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// `StreamAggregatedResources`.
    StateOfTheWorld,
    /// `DeltaAggregatedResources`.
    Delta,
}

impl StreamKind {
    /// `sotw` or `delta`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::StateOfTheWorld => "sotw",
            StreamKind::Delta => "delta",
        }
    }
}

/// Resource names, sorted and without duplicates, shared rather than
/// copied: a stream's subscription and its status entry hold the same
/// allocation, and each name shares its allocation with the generated
/// resource of that name where there is one. Compare with
/// `names.iter().map(|n| &**n)`.
pub type Names = Arc<[Arc<str>]>;

/// The [`Names`] of `names` (any order, duplicates dropped).
pub fn names<'a>(names: impl IntoIterator<Item = &'a str>) -> Names {
    let mut v: Vec<&str> = names.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v.into_iter().map(Arc::from).collect()
}

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The version the proxy rejected.
    pub version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// `error_detail.message` as the proxy sent it.
    pub message: String,
    /// When it arrived.
    pub at: SystemTime,
}

/// Sync state of one type on one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeSyncStatus {
    /// The version the proxy reported on its first request of this type on
    /// this stream (what it kept from an earlier stream); empty when new.
    pub initial_version: String,
    /// Version of the last response sent.
    pub sent_version: String,
    /// Nonce of the last response sent.
    pub sent_nonce: String,
    /// Resources the proxy is believed to hold after the last response.
    pub sent_resources: usize,
    /// Version of the last ACKed response.
    pub acked_version: String,
    /// Nonce of the last ACKed response (Istio's syncz compares nonces).
    pub acked_nonce: String,
    /// Names the proxy subscribed to, sorted; `["*"]` for a wildcard
    /// subscription. Shared with the stream's own bookkeeping.
    pub subscribed: Names,
    /// Responses sent.
    pub responses: u64,
    /// NACKs received.
    pub nacks: u64,
    /// The last NACK, kept after later ACKs for diagnosis.
    pub last_nack: Option<Nack>,
}

impl TypeSyncStatus {
    /// Whether the proxy ACKed everything sent.
    pub fn synced(&self) -> bool {
        !self.sent_version.is_empty() && self.sent_version == self.acked_version
    }
}

/// Sync state of one ADS stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySyncStatus {
    /// `node.id`.
    pub proxy_id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// The cluster the proxy runs in (`CLUSTER_ID` node metadata, else
    /// `node.cluster`), istioctl's CLUSTER column.
    pub cluster_id: String,
    /// The proxy's `ISTIO_VERSION` node metadata (istioctl's VERSION).
    pub istio_version: String,
    /// Unique per stream, so a reconnecting proxy briefly shows twice.
    pub connection_id: String,
    /// ADS variant.
    pub kind: StreamKind,
    /// When the stream opened.
    pub connected_at: SystemTime,
    /// Per type URL.
    pub types: BTreeMap<String, TypeSyncStatus>,
}

/// One stream's row: who it is and its live status.
#[derive(Debug)]
struct Row {
    node: NodeInfo,
    status: Mutex<ProxySyncStatus>,
}

impl ProxySyncStatus {
    /// This stream in Istio's `/debug/syncz` shape (what `istioctl
    /// proxy-status` reads): `proxy`, `proxy_type`, `cluster_id`,
    /// `istio_version` (and `proxy_version`), and per type the nonce
    /// sent and the nonce ACKed (`cluster_sent`, `cluster_acked`,
    /// `listener_*`, `route_*`, `endpoint_*`, `secret_*`), plus weft's own
    /// `weft_versions` and `weft_last_nack` per type.
    pub fn istio_syncz(&self) -> serde_json::Value {
        use crate::types::XdsType;
        let mut out = serde_json::Map::new();
        out.insert("proxy".into(), self.proxy_id.clone().into());
        let proxy_type = self.proxy_id.split('~').next().unwrap_or("");
        if matches!(proxy_type, "sidecar" | "router") {
            out.insert("proxy_type".into(), proxy_type.into());
        }
        out.insert("cluster".into(), self.cluster.clone().into());
        out.insert("cluster_id".into(), self.cluster_id.clone().into());
        out.insert("istio_version".into(), self.istio_version.clone().into());
        out.insert("proxy_version".into(), self.istio_version.clone().into());
        out.insert("stream".into(), self.kind.as_str().into());
        let mut versions = serde_json::Map::new();
        let mut nacks = serde_json::Map::new();
        for t in XdsType::ALL {
            let Some(s) = self.types.get(t.type_url()) else {
                continue;
            };
            let prefix = match t {
                XdsType::Cluster => "cluster",
                XdsType::Endpoint => "endpoint",
                XdsType::Listener => "listener",
                XdsType::Route => "route",
                XdsType::Secret => "secret",
            };
            if !s.sent_nonce.is_empty() {
                out.insert(format!("{prefix}_sent"), s.sent_nonce.clone().into());
            }
            if !s.acked_nonce.is_empty() {
                out.insert(format!("{prefix}_acked"), s.acked_nonce.clone().into());
            }
            versions.insert(
                t.short_name().into(),
                serde_json::json!({"sent": s.sent_version, "acked": s.acked_version}),
            );
            if let Some(n) = &s.last_nack {
                nacks.insert(
                    t.short_name().into(),
                    serde_json::json!({"version": n.version, "nonce": n.nonce, "message": n.message}),
                );
            }
        }
        // Istio's NDS (sidecars with DNS capture): weft's fields only.
        if let Some(s) = self.types.get(crate::nds::NAME_TABLE) {
            versions.insert(
                "nds".into(),
                serde_json::json!({"sent": s.sent_version, "acked": s.acked_version}),
            );
            if let Some(n) = &s.last_nack {
                nacks.insert(
                    "nds".into(),
                    serde_json::json!({"version": n.version, "nonce": n.nonce, "message": n.message}),
                );
            }
        }
        out.insert("weft_versions".into(), versions.into());
        if !nacks.is_empty() {
            out.insert("weft_last_nack".into(), nacks.into());
        }
        out.into()
    }
}

/// A `/debug/syncz` snapshot: one entry per open stream, sorted by proxy id.
pub type SyncStatus = Vec<ProxySyncStatus>;

/// Live table of all streams.
#[derive(Clone, Debug, Default)]
pub(crate) struct SyncRegistry {
    entries: Arc<Mutex<BTreeMap<String, Arc<Row>>>>,
}

impl SyncRegistry {
    pub(crate) fn register(&self, node: NodeInfo, status: ProxySyncStatus) -> StatusEntry {
        let id = status.connection_id.clone();
        let entry = Arc::new(Row {
            node,
            status: Mutex::new(status),
        });
        lock(&self.entries).insert(id.clone(), entry.clone());
        StatusEntry {
            registry: self.clone(),
            id,
            entry,
        }
    }

    /// The node of the newest stream of `proxy_id`.
    pub(crate) fn node(&self, proxy_id: &str) -> Option<NodeInfo> {
        lock(&self.entries)
            .values()
            .filter(|r| r.node.id == proxy_id)
            .max_by_key(|r| lock(&r.status).connected_at)
            .map(|r| r.node.clone())
    }

    pub(crate) fn snapshot(&self) -> SyncStatus {
        let entries: Vec<_> = lock(&self.entries).values().cloned().collect();
        let mut out: Vec<ProxySyncStatus> =
            entries.iter().map(|e| lock(&e.status).clone()).collect();
        out.sort_by(|a, b| (&a.proxy_id, &a.connection_id).cmp(&(&b.proxy_id, &b.connection_id)));
        out
    }
}

/// A stream's own entry; removed from the table when dropped.
#[derive(Debug)]
pub(crate) struct StatusEntry {
    registry: SyncRegistry,
    id: String,
    entry: Arc<Row>,
}

impl StatusEntry {
    pub(crate) fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeSyncStatus)) {
        let mut guard = lock(&self.entry.status);
        match guard.types.get_mut(type_url) {
            Some(t) => f(t),
            None => f(guard.types.entry(type_url.to_string()).or_default()),
        }
    }
}

impl Drop for StatusEntry {
    fn drop(&mut self) {
        lock(&self.registry.entries).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
