//! Push triggers: something changed, proxies must be brought up to date.
//!
//! [`Pusher`] collects [`PushRequest`]s, coalesces a burst into one push
//! (Istio's debounce: wait until no request came for `after`, but never
//! longer than `max` since the first one) and publishes a [`PushState`] on
//! a `watch` channel that every ADS connection follows. The state is
//! cumulative (for each type, the push version that last changed it), so a
//! connection that skipped intermediate versions still learns every type it
//! must recompute. Types outside [`XdsType`] (Istio's NDS) are recomputed
//! by every full push and by typed pushes that name their URL
//! ([`PushRequest::with_type_url`]).
//!
//! Owns timing only; it does not know which proxies exist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::types::XdsType;

/// Which types a push recomputes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushScope {
    /// Every type (configuration changed).
    Full,
    /// Only these types (e.g. only EDS when endpoints changed).
    Types(BTreeSet<XdsType>),
}

impl PushScope {
    fn merge(&mut self, other: PushScope) {
        match (&mut *self, other) {
            (PushScope::Full, _) => {}
            (_, PushScope::Full) => *self = PushScope::Full,
            (PushScope::Types(a), PushScope::Types(b)) => a.extend(b),
        }
    }
}

/// A request to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRequest {
    /// What to recompute.
    pub scope: PushScope,
    /// Type URLs outside [`XdsType`] to recompute too (e.g. Istio's NDS
    /// when an endpoint change altered name tables); a full push
    /// recomputes them all anyway.
    pub type_urls: BTreeSet<String>,
    /// Why (for logs), e.g. `config file reviews.yaml changed`.
    pub reason: String,
}

impl PushRequest {
    /// Recompute everything.
    pub fn full(reason: impl Into<String>) -> Self {
        PushRequest {
            scope: PushScope::Full,
            type_urls: BTreeSet::new(),
            reason: reason.into(),
        }
    }

    /// Recompute endpoints only (EDS).
    pub fn endpoints(reason: impl Into<String>) -> Self {
        Self::types([XdsType::Endpoint], reason)
    }

    /// Recompute the given types.
    pub fn types(types: impl IntoIterator<Item = XdsType>, reason: impl Into<String>) -> Self {
        PushRequest {
            scope: PushScope::Types(types.into_iter().collect()),
            type_urls: BTreeSet::new(),
            reason: reason.into(),
        }
    }

    /// Also recompute `type_url`, a type outside [`XdsType`] (for those
    /// inside, name them in [`Self::types`]).
    pub fn with_type_url(mut self, type_url: impl Into<String>) -> Self {
        self.type_urls.insert(type_url.into());
        self
    }
}

/// Debounce settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebounceConfig {
    /// Quiet period: a push goes out once no request came for this long
    /// (Istio's `PILOT_DEBOUNCE_AFTER`, 100 ms). Zero pushes at once.
    pub after: Duration,
    /// Upper bound from the first request of a burst to its push (Istio's
    /// `PILOT_DEBOUNCE_MAX`, 10 s).
    pub max: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            after: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// The published push state, cumulative over all pushes so far.
#[derive(Clone, Debug)]
pub struct PushState {
    /// Global push version: 0 before any push, then 1, 2, …
    pub version: u64,
    /// For each type, the version of the push that last recomputed it.
    pub type_versions: BTreeMap<XdsType, u64>,
    /// The version of the last full push (also recomputes unknown types).
    pub full_version: u64,
    /// For type URLs outside [`XdsType`] that a typed push named, the
    /// version of the push that last did ([`Self::url_version`]).
    pub url_versions: BTreeMap<String, u64>,
    /// When the first request of the latest push's burst arrived; the
    /// convergence histogram measures from here to the proxy's ACK.
    pub triggered_at: Instant,
    /// How many requests the latest push coalesced.
    pub coalesced: usize,
    /// The reasons of the latest push, deduplicated.
    pub reasons: Vec<String>,
}

impl PushState {
    fn initial() -> Self {
        PushState {
            version: 0,
            type_versions: BTreeMap::new(),
            full_version: 0,
            url_versions: BTreeMap::new(),
            triggered_at: Instant::now(),
            coalesced: 0,
            reasons: Vec::new(),
        }
    }

    /// Types recomputed by some push after version `seen`, in push order.
    pub fn changed_since(&self, seen: u64) -> Vec<XdsType> {
        XdsType::ALL
            .into_iter()
            .filter(|t| self.type_versions.get(t).is_some_and(|v| *v > seen))
            .collect()
    }

    /// Whether a full push happened after version `seen`.
    pub fn full_since(&self, seen: u64) -> bool {
        self.full_version > seen
    }

    /// The version of the push that last recomputed `type_url`, a type
    /// outside [`XdsType`]: the last full push or a typed push naming it.
    pub fn url_version(&self, type_url: &str) -> u64 {
        let named = self.url_versions.get(type_url).copied().unwrap_or(0);
        named.max(self.full_version)
    }

    /// Whether some push after version `seen` recomputed `type_url` (a
    /// type outside [`XdsType`]).
    pub fn url_changed_since(&self, type_url: &str, seen: u64) -> bool {
        self.url_version(type_url) > seen
    }
}

/// Accepts push requests and publishes debounced pushes.
#[derive(Clone, Debug)]
pub struct Pusher {
    tx: mpsc::UnboundedSender<PushRequest>,
    state: watch::Receiver<Arc<PushState>>,
}

impl Pusher {
    /// Starts the debounce task on the current tokio runtime. It ends when
    /// every clone of the returned `Pusher` is dropped.
    pub fn spawn(config: DebounceConfig) -> Pusher {
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(Arc::new(PushState::initial()));
        tokio::spawn(debounce_loop(config, rx, state_tx));
        Pusher { tx, state }
    }

    /// Asks for a push. Never blocks.
    pub fn trigger(&self, request: PushRequest) {
        if self.tx.send(request).is_err() {
            tracing::warn!("xDS push requested after the debounce task ended");
        }
    }

    /// Follows the published push state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PushState>> {
        self.state.clone()
    }

    /// The latest published state.
    pub fn current(&self) -> Arc<PushState> {
        self.state.borrow().clone()
    }
}

async fn debounce_loop(
    config: DebounceConfig,
    mut rx: mpsc::UnboundedReceiver<PushRequest>,
    state_tx: watch::Sender<Arc<PushState>>,
) {
    while let Some(first) = rx.recv().await {
        let started = Instant::now();
        let mut last = started;
        let mut scope = first.scope;
        let mut type_urls = first.type_urls;
        let mut reasons = vec![first.reason];
        let mut coalesced = 1;
        let mut open = true;
        while open {
            let deadline = (last + config.after).min(started + config.max);
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(req) => {
                        scope.merge(req.scope);
                        type_urls.extend(req.type_urls);
                        if !reasons.contains(&req.reason) {
                            reasons.push(req.reason);
                        }
                        coalesced += 1;
                        last = Instant::now();
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let previous = state_tx.borrow().clone();
        let mut next = (*previous).clone();
        next.version += 1;
        match &scope {
            PushScope::Full => {
                next.full_version = next.version;
                for t in XdsType::ALL {
                    next.type_versions.insert(t, next.version);
                }
            }
            PushScope::Types(types) => {
                for t in types {
                    next.type_versions.insert(*t, next.version);
                }
                for url in &type_urls {
                    next.url_versions.insert(url.clone(), next.version);
                }
            }
        }
        next.triggered_at = started;
        next.coalesced = coalesced;
        next.reasons = reasons;
        tracing::debug!(
            version = next.version,
            coalesced,
            scope = ?scope,
            ?type_urls,
            reasons = ?next.reasons,
            "xDS push"
        );
        state_tx.send_replace(Arc::new(next));
        if !open {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_within_window_is_one_push() {
        let pusher = Pusher::spawn(DebounceConfig::default());
        let mut rx = pusher.subscribe();
        for i in 0..5 {
            pusher.trigger(PushRequest::endpoints(format!("ep {i}")));
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        // 50 ms after the last trigger: still inside the quiet period.
        assert_eq!(pusher.current().version, 0);
        rx.changed().await.unwrap();
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.version, 1);
        assert_eq!(state.coalesced, 5);
        assert_eq!(state.changed_since(0), vec![XdsType::Endpoint]);
        assert!(!state.full_since(0));
        assert_eq!(state.reasons.len(), 5);

        pusher.trigger(PushRequest::full("config"));
        rx.changed().await.unwrap();
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.version, 2);
        assert_eq!(state.coalesced, 1);
        assert_eq!(state.changed_since(1), XdsType::ALL.to_vec());
        assert!(state.full_since(1));
        // An EDS-only push after it leaves the others at version 2.
        pusher.trigger(PushRequest::endpoints("ep"));
        rx.changed().await.unwrap();
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.changed_since(2), vec![XdsType::Endpoint]);
        assert_eq!(state.changed_since(1), XdsType::ALL.to_vec());
    }

    #[tokio::test(start_paused = true)]
    async fn endless_burst_is_cut_at_max() {
        let config = DebounceConfig {
            after: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let pusher = Pusher::spawn(config);
        let mut rx = pusher.subscribe();
        let mut sent = 0;
        while !rx.has_changed().unwrap() {
            pusher.trigger(PushRequest::types([XdsType::Cluster], "churn"));
            sent += 1;
            tokio::time::advance(Duration::from_millis(60)).await;
            assert!(
                sent < 100,
                "debounce never published under a constant stream"
            );
        }
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.version, 1);
        // 1 s of 60 ms steps is 17 requests; the debounce task may take one
        // or two more queued before it observes its expired deadline.
        assert!((16..=20).contains(&state.coalesced), "{}", state.coalesced);
        assert!(sent <= 20, "published only after {sent} requests");
    }

    #[tokio::test(start_paused = true)]
    async fn named_type_urls_follow_typed_and_full_pushes() {
        const NDS: &str = crate::nds::NAME_TABLE;
        let pusher = Pusher::spawn(DebounceConfig::default());
        let mut rx = pusher.subscribe();
        pusher.trigger(PushRequest::endpoints("eds only"));
        rx.changed().await.unwrap();
        let state = rx.borrow_and_update().clone();
        assert!(!state.url_changed_since(NDS, 0));
        pusher.trigger(PushRequest::endpoints("eds and names").with_type_url(NDS));
        pusher.trigger(PushRequest::types([XdsType::Route], "coalesced"));
        rx.changed().await.unwrap();
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.version, 2);
        assert!(state.url_changed_since(NDS, 1));
        assert!(!state.url_changed_since("type.googleapis.com/other.T", 1));
        assert_eq!(state.url_version(NDS), 2);
        pusher.trigger(PushRequest::full("config"));
        rx.changed().await.unwrap();
        let state = rx.borrow_and_update().clone();
        // A full push recomputes every type URL, named or not.
        assert!(state.url_changed_since("type.googleapis.com/other.T", 2));
        assert_eq!(state.url_version(NDS), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn merges_scopes() {
        let pusher = Pusher::spawn(DebounceConfig::default());
        let mut rx = pusher.subscribe();
        pusher.trigger(PushRequest::endpoints("a"));
        pusher.trigger(PushRequest::types([XdsType::Route], "b"));
        rx.changed().await.unwrap();
        let state = rx.borrow_and_update().clone();
        assert_eq!(
            state.changed_since(0),
            vec![XdsType::Endpoint, XdsType::Route]
        );
    }
}
