//! Incremental ADS (`DeltaAggregatedResources`).
//!
//! Per type the stream keeps the subscription (wildcard and/or names), the
//! per-resource versions the proxy is believed to hold (`sent`), those it
//! ACKed, the responses in flight by nonce, and the resource versions the
//! proxy rejected (not sent again until they change). Each response carries
//! only added or changed resources and the names removed; after a CDS push
//! the load assignments of changed EDS clusters are sent again, because
//! Envoy re-warms those clusters and waits for their endpoints.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tokio::time::Instant;
use tonic::Status;

use super::requests::Requests;
use super::{ResponseTx, Shared, StreamCtx, first_request, nack_message};
use crate::names::eds_names;
use crate::push::PushState;
use crate::resources::{NodeInfo, Resource};
use crate::status::{Nack, Names, StreamKind};
use crate::types::{XdsType, short_name};

/// Responses kept per type awaiting ACK; older ones are forgotten.
const MAX_IN_FLIGHT: usize = 32;

struct Closed;

pub(super) async fn run(
    shared: Arc<Shared>,
    mut requests: Requests<DeltaDiscoveryRequest>,
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
    let ctx = StreamCtx::open(shared, node, StreamKind::Delta);
    let mut conn = DeltaStream {
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
                    tracing::debug!(proxy = %conn.ctx.node.id, %status, "delta xDS stream ended");
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

struct InFlight {
    nonce: String,
    version: String,
    updated: Vec<(String, String)>,
    removed: Vec<String>,
    trigger: Option<Instant>,
}

#[derive(Default)]
struct DeltaWatch {
    wildcard: bool,
    /// Shared with the status entry's list, not copied into it.
    names: BTreeSet<Arc<str>>,
    sent: BTreeMap<String, String>,
    acked: BTreeMap<String, String>,
    rejected: BTreeMap<String, String>,
    in_flight: VecDeque<InFlight>,
}

impl DeltaWatch {
    fn subscribed_list(&self) -> Names {
        // Sorted: "*" sorts before any resource name.
        let star = self.wildcard.then(|| Arc::from("*"));
        star.into_iter().chain(self.names.iter().cloned()).collect()
    }

    fn restore(&mut self, name: &str) {
        match self.acked.get(name) {
            Some(v) => {
                self.sent.insert(name.to_string(), v.clone());
            }
            None => {
                self.sent.remove(name);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// First request of a type: always answer.
    Full,
    /// Answer only if something changed.
    Changed,
}

struct DeltaStream {
    ctx: StreamCtx,
    tx: ResponseTx,
    watches: BTreeMap<String, DeltaWatch>,
    seen: u64,
}

impl DeltaStream {
    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let type_url = req.type_url.clone();
        if type_url.is_empty() {
            tracing::warn!(proxy = %self.ctx.node.id, "delta request without type_url ignored");
            return Ok(());
        }
        if !self.watches.contains_key(&type_url) {
            let wildcard_type = crate::types::is_wildcard_type_url(&type_url);
            let mut watch = DeltaWatch {
                wildcard: (wildcard_type && req.resource_names_subscribe.is_empty())
                    || req.resource_names_subscribe.iter().any(|n| n == "*"),
                names: req
                    .resource_names_subscribe
                    .iter()
                    .filter(|n| *n != "*")
                    .map(|n| Arc::from(n.as_str()))
                    .collect(),
                ..DeltaWatch::default()
            };
            // A reconnecting proxy says what it holds; send only the difference.
            for (name, version) in &req.initial_resource_versions {
                if watch.wildcard || watch.names.contains(name.as_str()) {
                    watch.sent.insert(name.clone(), version.clone());
                    watch.acked.insert(name.clone(), version.clone());
                }
            }
            let initial = format!("{} resources", req.initial_resource_versions.len());
            let subscribed = watch.subscribed_list();
            self.ctx.status.update(&type_url, |s| {
                s.initial_version = initial;
                s.subscribed = subscribed;
            });
            let announce: Vec<String> = watch.names.iter().map(|n| n.to_string()).collect();
            self.watches.insert(type_url.clone(), watch);
            self.respond(&type_url, Mode::Full, None, &announce, &[])
                .await?;
            return Ok(());
        }
        let watch = self.watches.get_mut(&type_url).expect("checked above");
        if !req.response_nonce.is_empty() {
            match watch
                .in_flight
                .iter()
                .position(|f| f.nonce == req.response_nonce)
            {
                None => tracing::debug!(
                    proxy = %self.ctx.node.id,
                    nonce = %req.response_nonce,
                    "delta ACK/NACK for an unknown nonce ignored"
                ),
                Some(i) => {
                    let flight = watch.in_flight.remove(i).expect("index from position");
                    match nack_message(&req.error_detail) {
                        Some(message) => {
                            tracing::warn!(
                                proxy = %self.ctx.node.id,
                                r#type = short_name(&type_url),
                                version = %flight.version,
                                %message,
                                "delta xDS NACK: proxy keeps its last accepted resources"
                            );
                            self.ctx.shared.metrics.rejected(&type_url);
                            for (name, version) in &flight.updated {
                                watch.rejected.insert(name.clone(), version.clone());
                                watch.restore(name);
                            }
                            for name in &flight.removed {
                                watch.restore(name);
                            }
                            let nack = Nack {
                                version: flight.version.clone(),
                                nonce: flight.nonce.clone(),
                                message,
                                at: std::time::SystemTime::now(),
                            };
                            let held = watch.sent.len();
                            self.ctx.status.update(&type_url, |s| {
                                s.nacks += 1;
                                s.last_nack = Some(nack);
                                s.sent_resources = held;
                            });
                        }
                        None => {
                            for (name, version) in flight.updated {
                                watch.acked.insert(name, version);
                            }
                            for name in &flight.removed {
                                watch.acked.remove(name);
                            }
                            if let Some(t) = flight.trigger {
                                self.ctx.shared.metrics.converged(t.elapsed().as_secs_f64());
                            }
                            self.ctx.status.update(&type_url, |s| {
                                s.acked_version = flight.version;
                                s.acked_nonce = flight.nonce;
                            });
                        }
                    }
                }
            }
        }
        let mut changed = false;
        let mut added = Vec::new();
        for name in &req.resource_names_subscribe {
            if name == "*" {
                changed |= !watch.wildcard;
                watch.wildcard = true;
            } else if watch.names.insert(Arc::from(name.as_str())) {
                changed = true;
                added.push(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                changed |= watch.wildcard;
                watch.wildcard = false;
            } else if watch.names.remove(name.as_str()) {
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        if !watch.wildcard {
            // The proxy drops what it unsubscribed from.
            let names = &watch.names;
            watch.sent.retain(|k, _| names.contains(k.as_str()));
            watch.acked.retain(|k, _| names.contains(k.as_str()));
            watch.rejected.retain(|k, _| names.contains(k.as_str()));
        }
        let subscribed = watch.subscribed_list();
        self.ctx
            .status
            .update(&type_url, |s| s.subscribed = subscribed);
        self.respond(&type_url, Mode::Changed, None, &added, &[])
            .await?;
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
            let force: Vec<String> = if t == XdsType::Endpoint {
                std::mem::take(&mut rewarm).into_iter().collect()
            } else {
                Vec::new()
            };
            let updated = self
                .respond(url, Mode::Changed, Some(state.triggered_at), &[], &force)
                .await?;
            if t == XdsType::Cluster {
                rewarm = eds_names(updated.iter().map(|r| &r.any));
            }
        }
        // Types outside XdsType (Istio's NDS): on full pushes and pushes
        // naming them; sent only if something changed for the proxy.
        let others: Vec<String> = self
            .watches
            .keys()
            .filter(|u| XdsType::from_type_url(u).is_none() && state.url_changed_since(u, seen))
            .cloned()
            .collect();
        for url in others {
            self.respond(&url, Mode::Changed, Some(state.triggered_at), &[], &[])
                .await?;
        }
        Ok(())
    }

    /// Sends what changed. `announce` are names just subscribed to: those
    /// the generator does not have are listed as removed, so the proxy
    /// stops waiting for them. `force` names resources to send even if the
    /// proxy has their version. Returns the resources sent.
    async fn respond(
        &mut self,
        type_url: &str,
        mode: Mode,
        trigger: Option<Instant>,
        announce: &[String],
        force: &[String],
    ) -> Result<Vec<Arc<Resource>>, Closed> {
        let all = self.ctx.generate(type_url);
        let Some(watch) = self.watches.get_mut(type_url) else {
            return Ok(Vec::new());
        };
        let desired = if watch.wildcard {
            all
        } else {
            all.filtered(watch.names.iter().map(|n| &**n))
        };
        // A rejection stands only while the rejected version is current.
        watch
            .rejected
            .retain(|name, v| desired.get(name).is_some_and(|r| &r.version == v));
        let updated: Vec<_> = desired
            .iter()
            .filter(|r| {
                (watch.sent.get(&r.name) != Some(&r.version) || force.contains(&r.name))
                    && watch.rejected.get(&r.name) != Some(&r.version)
            })
            .cloned()
            .collect();
        let mut removed: Vec<String> = watch
            .sent
            .keys()
            .filter(|name| desired.get(name).is_none())
            .cloned()
            .collect();
        for name in announce {
            if desired.get(name).is_none() && !removed.contains(name) {
                removed.push(name.clone());
            }
        }
        if mode == Mode::Changed && updated.is_empty() && removed.is_empty() {
            return Ok(Vec::new());
        }
        let version = desired.version();
        let nonce = self.ctx.next_nonce();
        let head = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            type_url: type_url.to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: "weftd".to_string(),
            }),
            ..Default::default()
        };
        let entries: Vec<(&str, &str, &envoy_types::pb::google::protobuf::Any)> = updated
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str(), &r.any))
            .collect();
        let frame = super::grpc::delta_frame(&head, &entries);
        drop(entries);
        let sent_resources = updated;
        let updated: Vec<(String, String)> = sent_resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        for (name, v) in &updated {
            watch.sent.insert(name.clone(), v.clone());
        }
        for name in &removed {
            watch.sent.remove(name);
        }
        let count = updated.len();
        watch.in_flight.push_back(InFlight {
            nonce: nonce.clone(),
            version: version.clone(),
            updated,
            removed,
            trigger,
        });
        if watch.in_flight.len() > MAX_IN_FLIGHT {
            watch.in_flight.pop_front();
        }
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
            "delta xDS push"
        );
        self.tx.send(Ok(frame)).await.map_err(|_| Closed)?;
        Ok(sent_resources)
    }
}
