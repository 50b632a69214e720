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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use super::{ResponseTx, Shared, StreamCtx, first_request, nack_message};
use crate::names::eds_names;
use crate::push::PushState;
use crate::resources::{NodeInfo, Resource, ResourceSet};
use crate::status::{Nack, StreamKind};
use crate::types::{XdsType, short_name};

/// The proxy went away; the stream's task ends.
struct Closed;

pub(super) async fn run(
    shared: Arc<Shared>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: ResponseTx,
) {
    let mut closed = shared.closed.subscribe();
    let Some(first) = first_request(&mut requests, &mut closed).await else {
        return;
    };
    let node = match NodeInfo::from_node(first.node.clone()) {
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
    names: Option<BTreeSet<String>>,
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

/// The subscription a request asks for: `None` for wildcard.
fn subscription(type_url: &str, names: &[String]) -> Option<BTreeSet<String>> {
    let wildcard_type = crate::types::is_wildcard_type_url(type_url);
    if (wildcard_type && names.is_empty()) || names.iter().any(|n| n == "*") {
        return None;
    }
    Some(names.iter().cloned().collect())
}

/// Whether `names` (as a request lists them, any order) asks for exactly `current`.
fn same_subscription(type_url: &str, names: &[String], current: &Option<BTreeSet<String>>) -> bool {
    match current {
        None => {
            let wildcard_type = crate::types::is_wildcard_type_url(type_url);
            (wildcard_type && names.is_empty()) || names.iter().any(|n| n == "*")
        }
        Some(set) => {
            if names.iter().any(|n| n == "*") {
                return false;
            }
            if names.is_empty() {
                let wildcard_type = crate::types::is_wildcard_type_url(type_url);
                return set.is_empty() && !wildcard_type;
            }
            // Fast path without allocating: strictly sorted names (no
            // duplicates), as many as the set, all in it.
            if names.len() == set.len() && names.windows(2).all(|w| w[0] < w[1]) {
                return names.iter().all(|n| set.contains(n));
            }
            names.iter().cloned().collect::<BTreeSet<_>>() == *set
        }
    }
}

fn subscribed_list(names: &Option<BTreeSet<String>>) -> Vec<String> {
    match names {
        None => vec!["*".to_string()],
        Some(n) => n.iter().cloned().collect(),
    }
}

impl SotwStream {
    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Closed> {
        let type_url = req.type_url.clone();
        if type_url.is_empty() {
            tracing::warn!(proxy = %self.ctx.node.id, "discovery request without type_url ignored");
            return Ok(());
        }
        let known = self.watches.contains_key(&type_url);
        if req.response_nonce.is_empty() || !known {
            let names = subscription(&type_url, &req.resource_names);
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
        if !same_subscription(&type_url, &req.resource_names, &watch.names) {
            let names = subscription(&type_url, &req.resource_names);
            if let Some(n) = &names {
                // Unsubscribed resources are dropped by the proxy.
                watch.sent = watch.sent.filtered(n);
                watch.acked = watch.acked.filtered(n);
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
        let changed = state.changed_since(self.seen);
        let full = state.full_since(self.seen);
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
        if full {
            let unknown: Vec<String> = self
                .watches
                .keys()
                .filter(|u| XdsType::from_type_url(u).is_none())
                .cloned()
                .collect();
            for url in unknown {
                self.respond(
                    &url,
                    Mode::Changed,
                    Some(state.triggered_at),
                    &BTreeSet::new(),
                )
                .await?;
            }
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
            Some(names) => all.filtered(names),
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
        let lists: [&[&str]; 7] = [
            &[],
            &["*"],
            &["a"],
            &["a", "b"],
            &["b", "a"],
            &["a", "a"],
            &["a", "*"],
        ];
        for type_url in [CLUSTER, ENDPOINT] {
            for current in lists {
                let current: Vec<String> = current.iter().map(|s| s.to_string()).collect();
                let current = subscription(type_url, &current);
                for names in lists {
                    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
                    assert_eq!(
                        same_subscription(type_url, &names, &current),
                        subscription(type_url, &names) == current,
                        "{type_url} {names:?} vs {current:?}"
                    );
                }
            }
        }
    }
}
