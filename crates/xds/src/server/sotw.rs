//! State-of-the-world ADS (`StreamAggregatedResources`).
//!
//! Per type the stream keeps the subscription (wildcard for LDS/CDS, names
//! for RDS/EDS/SDS), the last nonce and version sent, the per-resource
//! versions the proxy holds and what it ACKed. Rules, as Envoy expects:
//! a request without nonce (first on the stream, or after a reconnect) is
//! always answered with the full current set; a request whose nonce is not
//! the latest sent is stale and ignored; a NACK leaves the proxy on its last
//! accepted version and the rejected version is not sent again until the
//! generated set changes. LDS and CDS responses always carry the full set;
//! RDS and EDS pushes carry only resources whose version changed (Envoy
//! keeps named resources absent from a response), plus the load assignments
//! of EDS clusters whose definition just changed: Envoy re-warms such a
//! cluster and waits for its endpoints again (checked against Envoy 1.40).
//!
//! Subscriptions are [`Names`]: one sorted allocation per stream and type,
//! shared with the status entry, each name sharing the generated
//! resource's allocation. Every ACK repeats the whole list (24,000 EDS
//! names at 10,000 services), so it is checked against the subscription
//! in one linear pass when sorted, by an order-sensitive hash when it
//! repeats an unsorted list already found equal, and only otherwise
//! sorted and compared.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use tokio::time::Instant;
use tonic::Status;

use super::request::SotwRequest;
use super::requests::Requests;
use super::{ResponseTx, Shared, StreamCtx, first_request, nack_message};
use crate::names::eds_names;
use crate::push::PushState;
use crate::resources::{NodeInfo, Resource, ResourceSet};
use crate::status::{Nack, Names, StreamKind};
use crate::types::{XdsType, short_name};

/// The proxy went away; the stream's task ends.
struct Closed;

pub(super) async fn run(shared: Arc<Shared>, mut requests: Requests<SotwRequest>, tx: ResponseTx) {
    let mut closed = shared.closed.subscribe();
    let Some(first) = first_request(&mut requests, &mut closed).await else {
        return;
    };
    let node = match NodeInfo::from_node(first.head.node.clone()) {
        Ok(node) => node,
        Err(e) => {
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
    };
    let mut pushes = shared.pushes.clone();
    let mut pushes_open = true;
    let seen = pushes.borrow_and_update().version;
    let ctx = StreamCtx::open(shared, node, StreamKind::StateOfTheWorld);
    let mut conn = SotwStream {
        ctx,
        tx,
        watches: BTreeMap::new(),
        seen,
    };
    if conn.on_request(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            msg = requests.message() => match msg {
                Ok(Some(req)) => {
                    if conn.on_request(req).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(proxy = %conn.ctx.node.id, %status, "xDS stream ended");
                    return;
                }
            },
            changed = pushes.changed(), if pushes_open => {
                if changed.is_err() {
                    // The Pusher is gone: keep answering requests, push no more.
                    pushes_open = false;
                    continue;
                }
                let state = pushes.borrow_and_update().clone();
                if conn.on_push(&state).await.is_err() {
                    return;
                }
            }
            _ = closed.changed() => return,
        }
    }
}

/// One type's bookkeeping on one stream.
#[derive(Default)]
struct Watch {
    /// `None`: wildcard.
    names: Option<Names>,
    /// Hash of the last request's name list when it was unsorted and
    /// found equal to `names` (Envoy repeats its list in a stable order).
    unsorted_digest: Option<u64>,
    nonce: String,
    sent_version: String,
    /// What the proxy holds (of its subscription) if it accepts what was
    /// sent: a snapshot shared with the generated set, not a copy.
    sent: ResourceSet,
    /// What the proxy ACKed.
    acked: ResourceSet,
    /// Trigger time of the oldest push not yet ACKed.
    pending_trigger: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer a fresh request: send the whole set even if unchanged.
    Full,
    /// Send only if something changed for this proxy.
    Changed,
}

struct SotwStream {
    ctx: StreamCtx,
    tx: ResponseTx,
    watches: BTreeMap<String, Watch>,
    seen: u64,
}

/// Whether a request's `names` ask for every resource of `type_url`.
fn is_wildcard(type_url: &str, names: &[&str]) -> bool {
    (crate::types::is_wildcard_type_url(type_url) && names.is_empty()) || names.contains(&"*")
}

/// The subscription a request asks for: `None` for wildcard. Names the
/// generated set `known` holds share its allocations.
fn subscription(type_url: &str, names: &[&str], known: &ResourceSet) -> Option<Names> {
    if is_wildcard(type_url, names) {
        return None;
    }
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    Some(
        sorted
            .into_iter()
            .map(|n| {
                known
                    .shared_name(n)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(n))
            })
            .collect(),
    )
}

/// An order-sensitive hash of a request's name list.
fn digest(names: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    names.hash(&mut h);
    h.finish()
}

/// Whether `names` (as a request lists them, any order) asks for exactly
/// `current`. `unsorted` remembers an unsorted list found equal, so its
/// repetitions are recognised by hash.
fn same_subscription(
    type_url: &str,
    names: &[&str],
    current: &Option<Names>,
    unsorted: &mut Option<u64>,
) -> bool {
    let Some(set) = current else {
        return is_wildcard(type_url, names);
    };
    if names.is_empty() {
        return set.is_empty() && !crate::types::is_wildcard_type_url(type_url);
    }
    // The subscription never holds "*", so an equal list has none.
    if names.len() == set.len() && names.iter().zip(set.iter()).all(|(a, b)| *a == &**b) {
        return true;
    }
    if names.len() < set.len() {
        return false;
    }
    let d = digest(names);
    if *unsorted == Some(d) {
        return true;
    }
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let same = sorted.len() == set.len() && sorted.iter().zip(set.iter()).all(|(a, b)| *a == &**b);
    if same {
        *unsorted = Some(d);
    }
    same
}

/// What the status shows for a subscription.
fn subscribed_list(names: &Option<Names>) -> Names {
    match names {
        None => crate::status::names(["*"]),
        Some(n) => n.clone(),
    }
}

/// The names of a subscription as `&str`, sorted.
fn name_strs(names: &Names) -> impl Iterator<Item = &str> + Clone {
    names.iter().map(|n| &**n)
}

impl SotwStream {
    /// The subscription `names` ask for, sharing the names of the
    /// generated set (not generated for wildcards).
    fn subscribe(&mut self, type_url: &str, names: &[&str]) -> Option<Names> {
        if is_wildcard(type_url, names) {
            return None;
        }
        subscription(type_url, names, &self.ctx.generate(type_url))
    }

    async fn on_request(&mut self, request: SotwRequest) -> Result<(), Closed> {
        let names = request.names();
        let req = &request.head;
        let type_url = req.type_url.clone();
        if type_url.is_empty() {
            tracing::warn!(proxy = %self.ctx.node.id, "discovery request without type_url ignored");
            return Ok(());
        }
        let known = self.watches.contains_key(&type_url);
        if req.response_nonce.is_empty() || !known {
            let names = self.subscribe(&type_url, &names);
            // First request of this type on this stream (possibly a proxy
            // reconnecting with the version it kept): answer in full.
            tracing::debug!(
                proxy = %self.ctx.node.id,
                r#type = short_name(&type_url),
                version = %req.version_info,
                "xDS subscribe"
            );
            let watch = Watch {
                names,
                ..Watch::default()
            };
            self.ctx.status.update(&type_url, |s| {
                s.initial_version = req.version_info.clone();
                s.subscribed = subscribed_list(&watch.names);
            });
            self.watches.insert(type_url.clone(), watch);
            self.respond(&type_url, Mode::Full, None, &BTreeSet::new())
                .await?;
            return Ok(());
        }
        let Some(watch) = self.watches.get_mut(&type_url) else {
            return Ok(());
        };
        if req.response_nonce != watch.nonce {
            tracing::debug!(
                proxy = %self.ctx.node.id,
                r#type = short_name(&type_url),
                nonce = %req.response_nonce,
                latest = %watch.nonce,
                "stale xDS request ignored"
            );
            return Ok(());
        }
        match nack_message(&req.error_detail) {
            Some(message) => {
                tracing::warn!(
                    proxy = %self.ctx.node.id,
                    r#type = short_name(&type_url),
                    version = %watch.sent_version,
                    %message,
                    "xDS NACK: proxy keeps its last accepted version"
                );
                self.ctx.shared.metrics.rejected(&type_url);
                // The proxy still holds what it last accepted.
                watch.sent = watch.acked.clone();
                watch.pending_trigger = None;
                let nack = Nack {
                    version: watch.sent_version.clone(),
                    nonce: req.response_nonce.clone(),
                    message,
                    at: std::time::SystemTime::now(),
                };
                self.ctx.status.update(&type_url, |s| {
                    s.nacks += 1;
                    s.last_nack = Some(nack);
                    s.sent_resources = watch.sent.len();
                });
            }
            None => {
                watch.acked = watch.sent.clone();
                if let Some(t) = watch.pending_trigger.take() {
                    self.ctx.shared.metrics.converged(t.elapsed().as_secs_f64());
                }
                let version = watch.sent_version.clone();
                self.ctx.status.update(&type_url, |s| {
                    s.acked_version = version;
                    s.acked_nonce = req.response_nonce.clone();
                });
            }
        }
        // ACKs repeat the subscription; build a new one only if it changed.
        if !same_subscription(&type_url, &names, &watch.names, &mut watch.unsorted_digest) {
            let names = self.subscribe(&type_url, &names);
            let Some(watch) = self.watches.get_mut(&type_url) else {
                return Ok(());
            };
            watch.unsorted_digest = None;
            if let Some(n) = &names {
                // Unsubscribed resources are dropped by the proxy.
                watch.sent = watch.sent.filtered(name_strs(n));
                watch.acked = watch.acked.filtered(name_strs(n));
            }
            self.ctx
                .status
                .update(&type_url, |s| s.subscribed = subscribed_list(&names));
            watch.names = names;
            self.respond(&type_url, Mode::Changed, None, &BTreeSet::new())
                .await?;
            return Ok(());
        }
        Ok(())
    }

    async fn on_push(&mut self, state: &PushState) -> Result<(), Closed> {
        let seen = self.seen;
        let changed = state.changed_since(seen);
        self.seen = state.version;
        // Clusters whose definition changed re-warm in Envoy and wait for
        // their load assignment again, even when it did not change.
        let mut rewarm = BTreeSet::new();
        for t in XdsType::ALL {
            let url = t.type_url();
            let forced = t == XdsType::Endpoint && !rewarm.is_empty();
            if !(changed.contains(&t) || forced) || !self.watches.contains_key(url) {
                continue;
            }
            let force = if t == XdsType::Endpoint {
                std::mem::take(&mut rewarm)
            } else {
                BTreeSet::new()
            };
            let updated = self
                .respond(url, Mode::Changed, Some(state.triggered_at), &force)
                .await?;
            if t == XdsType::Cluster {
                rewarm = eds_names(updated.iter().map(|r| &r.any));
            }
        }
        // Types outside XdsType (Istio's NDS): on full pushes and pushes
        // naming them; sent only if the proxy's set changed.
        let others: Vec<String> = self
            .watches
            .keys()
            .filter(|u| XdsType::from_type_url(u).is_none() && state.url_changed_since(u, seen))
            .cloned()
            .collect();
        for url in others {
            self.respond(
                &url,
                Mode::Changed,
                Some(state.triggered_at),
                &BTreeSet::new(),
            )
            .await?;
        }
        Ok(())
    }

    /// Sends the type's current state if the proxy needs it. `force` names
    /// resources to include even if unchanged. Returns the resources whose
    /// version changed for the proxy (empty when nothing was sent).
    async fn respond(
        &mut self,
        type_url: &str,
        mode: Mode,
        trigger: Option<Instant>,
        force: &BTreeSet<String>,
    ) -> Result<Vec<Arc<Resource>>, Closed> {
        let all = self.ctx.generate(type_url);
        let Some(watch) = self.watches.get(type_url) else {
            return Ok(Vec::new());
        };
        let desired = match &watch.names {
            None => all,
            Some(names) => all.filtered(name_strs(names)),
        };
        let version = desired.version();
        let whole = mode == Mode::Full || watch.names.is_none();
        let forced = desired.iter().any(|r| force.contains(&r.name));
        if mode == Mode::Changed && version == watch.sent_version && !forced {
            return Ok(Vec::new());
        }
        let updated = desired.changed_from(&watch.sent);
        let resources: Vec<Arc<Resource>> = if whole {
            desired.iter().cloned().collect()
        } else {
            let mut picked = updated.clone();
            picked.extend(
                desired
                    .iter()
                    .filter(|r| {
                        force.contains(&r.name) && !updated.iter().any(|u| u.name == r.name)
                    })
                    .cloned(),
            );
            picked.sort_by(|a, b| a.name.cmp(&b.name));
            if picked.is_empty() {
                // Only removals: state of the world cannot say so for
                // named types; the proxy drops them when it unsubscribes.
                return Ok(Vec::new());
            }
            picked
        };
        let nonce = self.ctx.next_nonce();
        let head = DiscoveryResponse {
            version_info: version.clone(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: "weftd".to_string(),
            }),
            ..Default::default()
        };
        let count = resources.len();
        let anys: Vec<&Any> = resources.iter().map(|r| &r.any).collect();
        let frame = super::grpc::sotw_frame(&head, &anys);
        drop(anys);
        let watch = self.watches.get_mut(type_url).expect("watch checked above");
        // Everything that differed was sent: the proxy now holds `desired`
        // (plus, for named types, resources SotW cannot remove; irrelevant).
        watch.sent = desired;
        watch.nonce = nonce.clone();
        watch.sent_version = version.clone();
        watch.pending_trigger = watch.pending_trigger.or(trigger);
        let held = watch.sent.len();
        self.ctx.metrics().push_sent(type_url);
        self.ctx.status.update(type_url, |s| {
            s.sent_version = version.clone();
            s.sent_nonce = nonce;
            s.sent_resources = held;
            s.responses += 1;
        });
        tracing::debug!(
            proxy = %self.ctx.node.id,
            r#type = short_name(type_url),
            %version,
            resources = count,
            "xDS push"
        );
        self.tx.send(Ok(frame)).await.map_err(|_| Closed)?;
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CLUSTER, ENDPOINT};

    #[test]
    fn same_subscription_agrees_with_building_one() {
        let lists: [&[&str]; 8] = [
            &[],
            &["*"],
            &["a"],
            &["a", "b"],
            &["b", "a"],
            &["a", "a"],
            &["a", "*"],
            &["b", "a", "a"],
        ];
        let known = ResourceSet::new();
        for type_url in [CLUSTER, ENDPOINT] {
            for current in lists {
                let current = subscription(type_url, current, &known);
                let mut unsorted = None;
                // Twice: the second time an unsorted list goes by its hash.
                for _ in 0..2 {
                    for names in lists {
                        assert_eq!(
                            same_subscription(type_url, names, &current, &mut unsorted),
                            subscription(type_url, names, &known) == current,
                            "{type_url} {names:?} vs {current:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn subscriptions_share_generated_names() {
        let any = |v: &[u8]| Any {
            type_url: "t".into(),
            value: v.to_vec(),
        };
        let known: ResourceSet = [("a".to_string(), any(b"1")), ("b".to_string(), any(b"2"))]
            .into_iter()
            .collect();
        let sub = subscription(ENDPOINT, &["b", "c", "a"], &known).expect("named subscription");
        assert_eq!(name_strs(&sub).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(Arc::ptr_eq(&sub[0], known.shared_name("a").unwrap()));
        assert!(Arc::ptr_eq(&sub[1], known.shared_name("b").unwrap()));
        assert_eq!(subscription(CLUSTER, &[], &known), None);
    }
}
