//! The state-of-the-world ADS client weft-proxy runs against weftd.
//!
//! It sends the node on each new stream, subscribes to CDS and LDS
//! (wildcard), then to the EDS and RDS names the accepted clusters and
//! listeners need, hands every response to a [`ConfigHandler`] and ACKs or
//! NACKs by its verdict. For each type the handler always gets the complete
//! set it would hold if it accepts (RDS/EDS responses are merged into what
//! was accepted before). When the stream breaks it reconnects with
//! exponential backoff and jitter and re-requests with the versions it last
//! accepted, so the handler keeps serving its last good config meanwhile.
//!
//! Owns the protocol loop; must not interpret resources beyond their names.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;

use crate::error::XdsError;

mod handler;
use crate::names::{eds_names, rds_names, resource_name};
use crate::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE, XdsType, short_name};
pub use handler::{ConfigHandler, ResourceView, Update};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// weftd's xDS address, e.g. `http://127.0.0.1:15010`.
    pub address: String,
    /// The node sent on each new stream.
    pub node: Node,
    /// First reconnect delay; doubles per failed attempt.
    pub initial_backoff: Duration,
    /// Reconnect delay cap.
    pub max_backoff: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Largest response accepted, in bytes.
    pub max_response_bytes: usize,
    /// Type URLs subscribed as wildcards besides CDS and LDS; by default
    /// Istio's NDS ([`crate::nds::NAME_TABLE`]) when the node's metadata
    /// has `DNS_CAPTURE: "true"`, as Istio's agent does.
    pub extra_types: Vec<String>,
}

impl ClientConfig {
    /// Defaults: backoff 100 ms doubling to 15 s, 5 s connect timeout, 256 MiB responses.
    pub fn new(address: impl Into<String>, node: Node) -> Self {
        ClientConfig {
            address: address.into(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 256 * 1024 * 1024,
            extra_types: dns_capture(&node)
                .then(|| crate::nds::NAME_TABLE.to_string())
                .into_iter()
                .collect(),
            node,
        }
    }
}

/// Whether the node's metadata asks for DNS capture (`DNS_CAPTURE: "true"`).
fn dns_capture(node: &Node) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    node.metadata
        .as_ref()
        .and_then(|m| m.fields.get("DNS_CAPTURE"))
        .and_then(|v| v.kind.as_ref())
        .is_some_and(|k| matches!(k, Kind::StringValue(s) if s.eq_ignore_ascii_case("true")))
}

/// What the handler accepted for one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptedType {
    /// `version_info` of the last accepted response.
    pub version: String,
    /// Number of resources held.
    pub resources: usize,
}

/// The client's observable state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientState {
    /// Whether a stream is open now.
    pub connected: bool,
    /// Streams opened so far.
    pub streams: u64,
    /// Responses received so far.
    pub responses: u64,
    /// Per type URL.
    pub accepted: BTreeMap<String, AcceptedType>,
    /// Responses NACKed so far.
    pub nacks: u64,
    /// The last NACK: type URL and message.
    pub last_nack: Option<(String, String)>,
    /// The last connection or stream error.
    pub last_error: Option<String>,
}

impl ClientState {
    /// The accepted version of `type_url`, empty if none.
    pub fn version(&self, type_url: &str) -> &str {
        self.accepted
            .get(type_url)
            .map(|a| a.version.as_str())
            .unwrap_or("")
    }
}

/// A running client. Dropping it (or [`ClientHandle::shutdown`]) stops the client.
#[derive(Debug)]
pub struct ClientHandle {
    state: watch::Receiver<ClientState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ClientHandle {
    /// Follows the client's state.
    pub fn state(&self) -> watch::Receiver<ClientState> {
        self.state.clone()
    }

    /// Stops the client and waits for its task.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Entry point of the client.
#[derive(Debug)]
pub struct AdsClient;

impl AdsClient {
    /// Starts the client loop on the current runtime.
    pub fn spawn(
        config: ClientConfig,
        handler: impl ConfigHandler,
    ) -> Result<ClientHandle, XdsError> {
        let endpoint = Endpoint::from_shared(config.address.clone())
            .map_err(|e| XdsError::BadAddress {
                address: config.address.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // Notice a vanished weftd (no FIN) and reconnect.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let (state_tx, state) = watch::channel(ClientState::default());
        let (stop, stop_rx) = watch::channel(false);
        let runner = Runner {
            config,
            endpoint,
            handler: Box::new(handler),
            state: state_tx,
            stop: stop_rx,
            types: BTreeMap::new(),
        };
        let task = tokio::spawn(runner.run());
        Ok(ClientHandle { state, stop, task })
    }
}

// === the loop ===

/// Per-type client state, kept across reconnects.
#[derive(Default)]
struct TypeState {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    version: String,
    nonce: String,
    resources: BTreeMap<String, Any>,
    /// Names pruned since the last update (reported as removed with it).
    dropped: Vec<String>,
    /// Whether this stream already carried a request for the type.
    requested: bool,
}

struct Runner {
    config: ClientConfig,
    endpoint: Endpoint,
    handler: Box<dyn ConfigHandler>,
    state: watch::Sender<ClientState>,
    stop: watch::Receiver<bool>,
    types: BTreeMap<String, TypeState>,
}

enum StreamEnd {
    Stopped,
    Ended { got_response: bool },
    Failed { got_response: bool, error: String },
}

impl Runner {
    async fn run(mut self) {
        self.types.entry(CLUSTER.to_string()).or_default();
        self.types.entry(LISTENER.to_string()).or_default();
        for url in self.config.extra_types.clone() {
            self.types.entry(url).or_default();
        }
        let mut attempt: u32 = 0;
        loop {
            let end = self.stream_once().await;
            self.state.send_modify(|s| s.connected = false);
            match end {
                StreamEnd::Stopped => return,
                StreamEnd::Ended { got_response } => {
                    tracing::info!(address = %self.config.address, "xDS stream closed by server; reconnecting");
                    if got_response {
                        attempt = 0;
                    }
                }
                StreamEnd::Failed {
                    got_response,
                    error,
                } => {
                    tracing::warn!(address = %self.config.address, %error, "xDS stream failed; reconnecting");
                    self.state.send_modify(|s| s.last_error = Some(error));
                    if got_response {
                        attempt = 0;
                    }
                }
            }
            let delay = backoff(&self.config, attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn stream_once(&mut self) -> StreamEnd {
        if *self.stop.borrow() {
            return StreamEnd::Stopped;
        }
        let channel = tokio::select! {
            c = self.endpoint.connect() => c,
            _ = self.stop.wait_for(|s| *s) => return StreamEnd::Stopped,
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                return StreamEnd::Failed {
                    got_response: false,
                    error: format!("cannot connect to xDS server {}: {e}", self.config.address),
                };
            }
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_response_bytes);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sender = RequestSender {
            tx,
            node: Some(self.config.node.clone()),
        };
        for t in self.types.values_mut() {
            t.requested = false;
            t.nonce.clear();
        }
        for t in XdsType::ALL {
            let url = t.type_url();
            if let Some(state) = self.types.get_mut(url)
                && (state.names.is_none() || state.names.as_ref().is_some_and(|n| !n.is_empty()))
            {
                sender.request(url, state, None);
            }
        }
        for url in &self.config.extra_types {
            if let Some(state) = self.types.get_mut(url.as_str()) {
                sender.request(url, state, None);
            }
        }
        let call = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx));
        let mut responses = tokio::select! {
            r = call => match r {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    return StreamEnd::Failed {
                        got_response: false,
                        error: format!("xDS server {} refused the stream: {status}", self.config.address),
                    };
                }
            },
            _ = self.stop.wait_for(|s| *s) => return StreamEnd::Stopped,
        };
        self.state.send_modify(|s| {
            s.connected = true;
            s.streams += 1;
        });
        tracing::info!(address = %self.config.address, node = %self.config.node.id, "xDS stream open");
        let mut got_response = false;
        loop {
            let msg = tokio::select! {
                m = responses.message() => m,
                _ = self.stop.wait_for(|s| *s) => return StreamEnd::Stopped,
            };
            match msg {
                Ok(Some(resp)) => {
                    got_response = true;
                    self.on_response(resp, &mut sender);
                }
                Ok(None) => return StreamEnd::Ended { got_response },
                Err(status) => {
                    return StreamEnd::Failed {
                        got_response,
                        error: format!("xDS stream error: {status}"),
                    };
                }
            }
        }
    }

    fn on_response(&mut self, resp: DiscoveryResponse, sender: &mut RequestSender) {
        let type_url = resp.type_url.clone();
        let wildcard_type = crate::types::is_wildcard_type_url(&type_url);
        let state = self
            .types
            .entry(type_url.clone())
            .or_insert_with(|| TypeState {
                names: (!wildcard_type).then(BTreeSet::new),
                ..TypeState::default()
            });
        state.nonce = resp.nonce.clone();
        let mut incoming: BTreeMap<String, Any> = BTreeMap::new();
        let mut problem = None;
        for any in resp.resources {
            if any.type_url != type_url {
                problem = Some(format!(
                    "{} response carries a resource of type {}",
                    short_name(&type_url),
                    any.type_url
                ));
                break;
            }
            match resource_name(&any) {
                Ok(name) => {
                    if state.names.as_ref().is_none_or(|n| n.contains(&name)) {
                        incoming.insert(name, any);
                    }
                }
                Err(e) => {
                    problem = Some(e.to_string());
                    break;
                }
            }
        }
        let verdict = match problem {
            Some(p) => Err(p),
            None => {
                // The set the proxy would hold: the response alone for LDS
                // and CDS, merged into what it holds for named types.
                let view = ResourceView {
                    held: state.names.is_some().then_some(&state.resources),
                    incoming: &incoming,
                };
                let changed: Vec<&str> = incoming
                    .iter()
                    .filter(|(k, v)| state.resources.get(k.as_str()) != Some(*v))
                    .map(|(k, _)| k.as_str())
                    .collect();
                let mut removed: Vec<&str> = state.dropped.iter().map(String::as_str).collect();
                if state.names.is_none() {
                    removed.extend(
                        state
                            .resources
                            .keys()
                            .filter(|k| !incoming.contains_key(k.as_str()))
                            .map(String::as_str),
                    );
                }
                let update = Update {
                    type_url: &type_url,
                    resources: view,
                    changed: &changed,
                    removed: &removed,
                };
                // A panicking handler NACKs instead of ending the client.
                let handler = &mut self.handler;
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handler.apply_update(&update)
                }))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(format!(
                        "weft-proxy failed applying {}: panic: {what}",
                        short_name(&type_url)
                    ))
                })
            }
        };
        self.state.send_modify(|s| s.responses += 1);
        match verdict {
            Ok(()) => {
                if state.names.is_none() {
                    state.resources.clear();
                }
                state.resources.extend(incoming);
                state.dropped.clear();
                state.version = resp.version_info;
                let accepted = AcceptedType {
                    version: state.version.clone(),
                    resources: state.resources.len(),
                };
                sender.request(&type_url, state, None);
                tracing::debug!(r#type = short_name(&type_url), version = %accepted.version, "xDS ACK");
                self.state.send_modify(|s| {
                    s.accepted.insert(type_url.clone(), accepted);
                });
                self.follow_dependencies(&type_url, sender);
            }
            Err(message) => {
                tracing::warn!(
                    r#type = short_name(&type_url),
                    version = %resp.version_info,
                    %message,
                    "xDS NACK: keeping the last accepted config"
                );
                sender.request(&type_url, state, Some(message.clone()));
                self.state.send_modify(|s| {
                    s.nacks += 1;
                    s.last_nack = Some((type_url.clone(), message));
                });
            }
        }
    }

    /// After CDS or LDS is accepted, (re)subscribes EDS or RDS to the names
    /// they need.
    fn follow_dependencies(&mut self, type_url: &str, sender: &mut RequestSender) {
        let (dependent, names) = match type_url {
            CLUSTER => (ENDPOINT, eds_names(self.types[CLUSTER].resources.values())),
            LISTENER => (ROUTE, rds_names(self.types[LISTENER].resources.values())),
            _ => return,
        };
        let state = self
            .types
            .entry(dependent.to_string())
            .or_insert_with(|| TypeState {
                names: Some(BTreeSet::new()),
                ..TypeState::default()
            });
        if state.names.as_ref() == Some(&names) && (state.requested || names.is_empty()) {
            return;
        }
        let dropped: Vec<String> = state
            .resources
            .keys()
            .filter(|k| !names.contains(*k))
            .cloned()
            .collect();
        for name in &dropped {
            state.resources.remove(name);
        }
        state.dropped.extend(dropped);
        state.names = Some(names);
        sender.request(dependent, state, None);
    }
}

struct RequestSender {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    /// Sent with the first request of the stream only.
    node: Option<Node>,
}

impl RequestSender {
    /// A request for `type_url` carrying the accepted version, the current
    /// subscription and the latest nonce (empty on the type's first request
    /// of the stream); with `error`, a NACK.
    fn request(&mut self, type_url: &str, state: &mut TypeState, error: Option<String>) {
        let nonce = if state.requested {
            state.nonce.clone()
        } else {
            String::new()
        };
        state.requested = true;
        let req = DiscoveryRequest {
            version_info: state.version.clone(),
            node: self.node.take(),
            resource_names: state
                .names
                .as_ref()
                .map(|n| n.iter().cloned().collect())
                .unwrap_or_default(),
            type_url: type_url.to_string(),
            response_nonce: nonce,
            error_detail: error.map(|message| RpcStatus {
                // google.rpc.Code.INVALID_ARGUMENT
                code: 3,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        };
        // The stream may be gone; the reconnect resends everything.
        let _ = self.tx.send(req);
    }
}

/// Exponential backoff with jitter: uniformly within [d/2, d] where d is
/// `initial * 2^attempt` capped at `max`.
fn backoff(config: &ClientConfig, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    let d = config
        .initial_backoff
        .saturating_mul(factor)
        .min(config.max_backoff);
    let half = d / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    // RandomState is seeded randomly per process and per instance.
    let r = std::collections::hash_map::RandomState::new().hash_one(attempt);
    half + Duration::from_nanos(if span == 0 { 0 } else { r % (span + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let config = ClientConfig::new("http://127.0.0.1:1", Node::default());
        for attempt in 0..30 {
            let d = backoff(&config, attempt);
            let full = config
                .initial_backoff
                .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
                .min(config.max_backoff);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        assert!(backoff(&config, 30) >= config.max_backoff / 2);
        let distinct: BTreeSet<Duration> = (0..20).map(|_| backoff(&config, 5)).collect();
        assert!(distinct.len() > 1, "no jitter");
    }
}
