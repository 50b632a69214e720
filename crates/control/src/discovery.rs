//! Distribution: the config store feeding translation and the ADS server.
//!
//! [`Discovery`] owns the file config source (a watched
//! [`weft_api::store::Store`]), the [`TranslationGenerator`] serving the
//! current [`MeshView`], the debounced [`Pusher`], the [`AdsServer`]
//! (state of the world and delta) and the Prometheus registry holding the
//! `pilot_*` metrics and weftd's config metrics. On every new snapshot it
//! swaps in a new view and triggers a push ([`apply_snapshot`]):
//! endpoints-only when only workload objects changed and every service
//! kept its ports and VIPs, full otherwise. The generator serves encoded
//! resources from [`crate::xds_cache`]: scope parts shared between
//! proxies, and on endpoint changes only the changed services'
//! assignments rebuilt; when a headless service's endpoints changed, the
//! push names Istio's NDS too, so proxies with DNS capture whose
//! NameTable changed get it (and only they). The cache's sizes are
//! exported as `weft_xds_cache_*` gauges; they fall back as proxies
//! disconnect ([`weft_xds::Generator::forget`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use weft_api::store::{Snapshot, Store, StoreError, StoreOptions};
use weft_api::watch::{self, WatchError, Watcher};
use weft_xds::{
    AdsServer, DebounceConfig, PushRequest, Pusher, ServerOptions, XdsMetrics, XdsType,
};

use crate::sds::SecretGenerator;
use crate::translate::{MeshView, TranslateOptions, TranslationGenerator};
use crate::xds_cache::{CacheStats, ViewChange};

/// Errors starting discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The config directory could not be loaded.
    #[error("--config {dir}: {source}")]
    Store {
        /// The directory.
        dir: String,
        /// Why.
        source: StoreError,
    },
    /// The config directory could not be watched.
    #[error("--config {dir}: cannot watch: {source}")]
    Watch {
        /// The directory.
        dir: String,
        /// Why.
        source: WatchError,
    },
}

/// Settings of [`Discovery`].
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Translation settings (domain, root namespace).
    pub translate: TranslateOptions,
    /// Quiet period of the file watch (bursts of file events coalesce).
    pub watch_debounce: Duration,
    /// Push debouncing (Istio's `PILOT_DEBOUNCE_AFTER` / `_MAX`).
    pub push_debounce: DebounceConfig,
    /// The mesh root (PEM): when set, SDS answers `ROOTCA` with it
    /// ([`crate::sds`]).
    pub root_ca_pem: Option<String>,
    /// The TLS port's xDS authenticator, whose refusals `/metrics` shows
    /// (`pilot_xds_auth_failures_total`, [`crate::xds_auth`]).
    pub xds_auth: Option<Arc<crate::xds_auth::XdsAuthenticator>>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            translate: TranslateOptions::default(),
            watch_debounce: watch::DEFAULT_DEBOUNCE,
            push_debounce: DebounceConfig::default(),
            root_ca_pem: None,
            xds_auth: None,
        }
    }
}

/// Config metrics weftd exports beside the `pilot_*` ones.
#[derive(Debug, Default, Clone)]
struct ConfigMetrics {
    /// Error problems in the current snapshot.
    errors: Gauge,
    /// Objects served from their last good version.
    stale: Gauge,
    /// Snapshots applied (initial load included).
    snapshots: Counter,
    /// Pushes triggered, full and endpoints-only.
    full_pushes: Counter,
    eds_pushes: Counter,
}

impl ConfigMetrics {
    fn register(&self, r: &mut PromRegistry) {
        r.register(
            "weft_config_errors",
            "Invalid config objects in the current snapshot (their last good version is served).",
            self.errors.clone(),
        );
        r.register(
            "weft_config_stale_objects",
            "Objects served from their last good version because the current one is invalid.",
            self.stale.clone(),
        );
        r.register(
            "weft_config_snapshots",
            "Config snapshots applied.",
            self.snapshots.clone(),
        );
        r.register(
            "weft_push_triggers_full",
            "Full xDS pushes triggered by config changes.",
            self.full_pushes.clone(),
        );
        r.register(
            "weft_push_triggers_eds",
            "Endpoints-only xDS pushes triggered by workload changes.",
            self.eds_pushes.clone(),
        );
    }

    fn observe(&self, s: &Snapshot) {
        let errors = s.problems.iter().filter(|p| p.is_error()).count();
        self.errors.set(i64::try_from(errors).unwrap_or(i64::MAX));
        self.stale
            .set(i64::try_from(s.stale.len()).unwrap_or(i64::MAX));
        self.snapshots.inc();
    }
}

/// Applies a new snapshot to `generator` and says what to push: EDS only
/// when only workload objects changed, every service kept its ports and
/// VIPs and every changed service is EDS-resolved or passthrough (then
/// only the changed services' assignments are rebuilt, once per scope),
/// with NDS as well when a passthrough service's endpoints (which name
/// tables list) changed, and CDS/LDS when a changed service selects a
/// connected proxy's workload (its inbound ports; only those proxies'
/// listeners and clusters are recomputed); everything otherwise. weftd's config watch and
/// the control benchmark both use it.
pub fn apply_snapshot(
    generator: &TranslationGenerator,
    prev_snap: &Snapshot,
    snap: &Snapshot,
    options: &TranslateOptions,
) -> PushRequest {
    let next = MeshView::new(snap, options.clone());
    let prev = generator.view();
    let changes = snap.diff(prev_snap);
    let reason = format!(
        "config v{} -> v{}: {} object(s) changed",
        prev_snap.version,
        snap.version,
        changes.keys().count()
    );
    let same_services =
        prev.registry.services().eq(next.registry.services()) && prev.mesh == next.mesh;
    if !changes.is_empty() && changes.only_workloads() && same_services {
        match generator.update_endpoints(next) {
            ViewChange::Endpoints {
                hosts,
                name_tables,
                own_parts,
            } => {
                let reason = format!("{reason}; endpoints of {} service(s)", hosts.len());
                let request = if own_parts {
                    // Inbound listeners and clusters of the selected
                    // workloads' proxies follow; the rest are unchanged.
                    PushRequest::types(
                        [XdsType::Endpoint, XdsType::Cluster, XdsType::Listener],
                        reason,
                    )
                } else {
                    PushRequest::endpoints(reason)
                };
                if name_tables {
                    request.with_type_url(weft_xds::nds::NAME_TABLE)
                } else {
                    request
                }
            }
            ViewChange::Full => {
                PushRequest::full(format!("{reason}; a DNS-resolved service changed"))
            }
        }
    } else {
        generator.update(next);
        PushRequest::full(reason)
    }
}

/// A gauge read from the xDS cache at scrape time.
#[derive(Debug)]
struct CacheGauge {
    generator: Arc<TranslationGenerator>,
    pick: fn(&CacheStats) -> usize,
}

impl EncodeMetric for CacheGauge {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let v = (self.pick)(&self.generator.cache().detail());
        encoder.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

fn register_cache_gauges(r: &mut PromRegistry, generator: &Arc<TranslationGenerator>) {
    let gauge = |pick| CacheGauge {
        generator: Arc::clone(generator),
        pick,
    };
    r.register(
        "weft_xds_cache_proxies",
        "Proxies weftd keeps translated xDS state for (dropped when their last stream closes).",
        gauge(|s| s.scope_keys),
    );
    r.register(
        "weft_xds_cache_scopes",
        "Sidecar scopes weftd keeps shared xDS parts for (dropped with their last proxy).",
        gauge(|s| s.scopes),
    );
}

/// Keeps allocations of 256 KiB and more (encoded xDS responses of a few
/// MB each, one per proxy and push) in their own mappings that go back to
/// the OS when freed. glibc otherwise raises that threshold to the size of
/// the largest freed block, after which those responses come from the heap
/// and a push to a thousand proxies leaves hundreds of MB of freed but
/// unreturned heap behind (measured: weftd RSS with 100 proxies at 1,000
/// services 404 MiB with the default, 209 MiB with a fixed threshold).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_large_allocations() {
    // SAFETY: mallopt only changes allocator tunables; glibc serialises it
    // with allocation internally and it has no memory-safety preconditions.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
    if ok != 1 {
        tracing::debug!(
            "mallopt(M_MMAP_THRESHOLD) was refused; large responses may stay in the heap"
        );
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_large_allocations() {}

/// The running discovery service. Keep it alive for as long as weftd runs:
/// dropping it stops the config watch.
pub struct Discovery {
    store: Arc<Store>,
    generator: Arc<TranslationGenerator>,
    pusher: Pusher,
    server: AdsServer,
    metrics: Arc<PromRegistry>,
    _watcher: Watcher,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Loads `dir`, starts watching it and prepares the ADS server (serve
    /// it with [`Self::server`]). Must run inside a Tokio runtime.
    pub fn start(
        dir: &std::path::Path,
        options: DiscoveryOptions,
    ) -> Result<Discovery, DiscoveryError> {
        bound_large_allocations();
        let shown = dir.display().to_string();
        let store = Arc::new(
            Store::load(
                dir,
                StoreOptions {
                    domain: options.translate.domain.clone(),
                },
            )
            .map_err(|source| DiscoveryError::Store {
                dir: shown.clone(),
                source,
            })?,
        );
        let mut prom = PromRegistry::default();
        let xds_metrics = Arc::new(XdsMetrics::new(&mut prom));
        let config_metrics = ConfigMetrics::default();
        config_metrics.register(&mut prom);

        let first = store.snapshot();
        config_metrics.observe(&first);
        let view = MeshView::new(&first, options.translate.clone());
        let generator = Arc::new(TranslationGenerator::new(view));
        register_cache_gauges(&mut prom, &generator);
        if let Some(auth) = &options.xds_auth {
            auth.register(&mut prom);
        }
        let pusher = Pusher::spawn(options.push_debounce);
        let served: Arc<dyn weft_xds::Generator> = match &options.root_ca_pem {
            Some(root) => Arc::new(SecretGenerator::new(generator.clone(), root)),
            None => generator.clone(),
        };
        let server = AdsServer::new(served, &pusher, xds_metrics, ServerOptions::default());
        pusher.trigger(PushRequest::full(format!(
            "initial config v{}",
            first.version
        )));

        let last = Mutex::new(first);
        let (gen2, push2, translate) = (generator.clone(), pusher.clone(), options.translate);
        let watcher = watch::watch(Arc::clone(&store), options.watch_debounce, move |snap| {
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            config_metrics.observe(&snap);
            let request = apply_snapshot(&gen2, &last, &snap, &translate);
            tracing::info!(
                version = snap.version,
                objects = snap.len(),
                errors = snap.problems.iter().filter(|p| p.is_error()).count(),
                stale = snap.stale.len(),
                scope = ?request.scope,
                "config changed; pushing"
            );
            if matches!(request.scope, weft_xds::PushScope::Full) {
                config_metrics.full_pushes.inc();
            } else {
                config_metrics.eds_pushes.inc();
            }
            push2.trigger(request);
            *last = snap;
        })
        .map_err(|source| DiscoveryError::Watch { dir: shown, source })?;
        Ok(Discovery {
            store,
            generator,
            pusher,
            server,
            metrics: Arc::new(prom),
            _watcher: watcher,
        })
    }

    /// The ADS server (serve it on `--xds-addr`; read its sync status).
    pub fn server(&self) -> &AdsServer {
        &self.server
    }

    /// The translation generator (current view, per-proxy resources).
    pub fn generator(&self) -> &Arc<TranslationGenerator> {
        &self.generator
    }

    /// The config store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The config store's namespaces, read live on each lookup (for the
    /// injection webhook: namespace label changes apply without restart).
    pub fn namespaces(&self) -> crate::namespaces::NamespaceStore {
        crate::namespaces::NamespaceStore::live(Arc::clone(&self.store))
    }

    /// The pusher, to trigger pushes from other sources.
    pub fn pusher(&self) -> &Pusher {
        &self.pusher
    }

    /// Every metric weftd exports on `/metrics`.
    pub fn metrics(&self) -> &Arc<PromRegistry> {
        &self.metrics
    }
}
