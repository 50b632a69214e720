//! Translation: a pure function from a config [`Snapshot`] and one proxy's
//! [`ProxyNode`] to the Envoy v3 resources that proxy needs, with Istio's
//! names and shapes.
//!
//! - [`node`]: the proxy's identity, parsed from the Envoy `Node` Istio's
//!   agent (or weft-proxy) sends;
//! - [`scope`]: what the proxy may see (exportTo, Sidecar egress hosts,
//!   which VirtualServices and DestinationRules apply, outbound policy);
//! - [`protocol`]: protocol selection from port names / `appProtocol`;
//! - [`cluster`] and [`policy`]: clusters (`outbound|PORT|SUBSET|FQDN`,
//!   `inbound|PORT||`, passthrough/blackhole) with DestinationRule settings;
//! - [`endpoint`]: ClusterLoadAssignments for EDS clusters;
//! - [`route`] and [`http`]: RDS route configurations (named by port) from
//!   VirtualServices, with Istio's default route and retry policy;
//! - [`listener`]: `virtualOutbound` (15001), per-port outbound listeners,
//!   HTTP connection managers, TCP proxies and access logs; [`inbound`]:
//!   `virtualInbound` (15006) with per-port chains by PeerAuthentication
//!   mode ([`authn`]) and AuthorizationPolicy RBAC filters ([`authz`],
//!   [`rbac`], [`trustdomain`]);
//! - [`tls`] and [`upstream`]: mesh TLS contexts (SDS `default`/`ROOTCA`
//!   via `sds-grpc`), DestinationRule `tls` modes and auto mTLS;
//! - [`metadata`]: the `filter_metadata` keys weft-proxy reads for Istio's
//!   standard metrics labels;
//! - [`generator`]: the [`weft_xds::Generator`] weftd serves.
//!
//! Nothing here performs I/O. Output is deterministic: every list is sorted
//! by resource name, and [`ProxyResources::resource_set`] encodes map fields
//! in sorted order ([`canonical`]), so equal inputs give byte-equal
//! resources and equal xDS versions.
//!
//! Not translated yet (accepted by weft-api, ignored here): Sidecar egress
//! listeners' `bind`/`captureMode` (their `port` scopes the hosts) and
//! `ingress` listeners,
//! VirtualService `delegate` and hosts that name no service, TLS routes by
//! SNI beyond picking a service's destinations, `localityLbSetting`,
//! gateways (`router` proxies get the sidecar shape), RequestAuthentication
//! (JWT) and AuthorizationPolicy CUSTOM (ext_authz; validation rejects it,
//! translation fails closed).

pub mod authn;
pub mod authz;
pub mod canonical;
pub mod cluster;
pub mod endpoint;
pub mod filters;
pub mod generator;
pub mod http;
pub mod inbound;
pub mod listener;
pub mod metadata;
pub mod nds;
pub mod node;
pub mod pb;
pub mod policy;
pub mod protocol;
pub mod rbac;
pub mod route;
pub mod scope;
pub mod tls;
pub mod trustdomain;
pub mod upstream;

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use weft_api::mesh::MeshConfig;
use weft_api::registry::{Registry, RegistryOptions};
use weft_api::store::Snapshot;
use weft_api::{Kind, Object};
use weft_xds::Any;
use weft_xds::ResourceSet;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

pub use generator::TranslationGenerator;
pub use node::{NodeError, ProxyNode};

/// Settings of translation that do not come from the config snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    /// Cluster domain (`cluster.local`).
    pub domain: String,
    /// Root namespace holding mesh-wide Sidecar/DestinationRule defaults.
    pub root_namespace: String,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            domain: weft_api::registry::DEFAULT_DOMAIN.to_string(),
            root_namespace: "istio-system".to_string(),
        }
    }
}

/// Everything translation reads from one snapshot, computed once and shared
/// by every proxy: the registry, the mesh config and the routing objects.
#[derive(Debug, Clone)]
pub struct MeshView {
    pub version: u64,
    pub registry: Registry,
    pub mesh: MeshConfig,
    pub options: TranslateOptions,
    pub virtual_services: Vec<Arc<Object>>,
    pub destination_rules: Vec<Arc<Object>>,
    pub sidecars: Vec<Arc<Object>>,
    /// PeerAuthentications, indexed by scope.
    pub peer_authn: authn::PeerAuthentications,
    /// AuthorizationPolicies, in key order.
    pub authorization_policies: Vec<Arc<Object>>,
    /// Istio's "service accounts" of each service by hostname: the SPIFFE
    /// identities its workloads present, plus a ServiceEntry's
    /// `subjectAltNames` (mesh TLS SAN matching), computed once per view.
    pub service_accounts: std::collections::HashMap<String, Vec<String>>,
}

impl MeshView {
    /// Indexes a snapshot for translation.
    pub fn new(snapshot: &Snapshot, options: TranslateOptions) -> MeshView {
        let mut mesh = snapshot.mesh_config();
        let root = mesh
            .root_namespace
            .clone()
            .unwrap_or_else(|| options.root_namespace.clone());
        mesh.root_namespace = Some(root.clone());
        let of = |k: Kind| snapshot.of_kind(&k).cloned().collect::<Vec<_>>();
        let peer_authn = authn::PeerAuthentications::new(&of(Kind::PeerAuthentication), &root);
        let registry = snapshot.registry(&RegistryOptions {
            domain: options.domain.clone(),
        });
        let service_accounts = upstream::all_service_accounts(snapshot, &registry, &mesh);
        MeshView {
            version: snapshot.version,
            registry,
            mesh,
            options: TranslateOptions {
                root_namespace: root,
                ..options
            },
            virtual_services: of(Kind::VirtualService),
            destination_rules: of(Kind::DestinationRule),
            sidecars: of(Kind::Sidecar),
            peer_authn,
            authorization_policies: of(Kind::AuthorizationPolicy),
            service_accounts,
        }
    }

    /// The resources for one proxy.
    pub fn translate(&self, node: &ProxyNode) -> ProxyResources {
        let scope = scope::ProxyScope::new(self, node);
        let clusters = cluster::build_clusters(self, &scope, node);
        let endpoints = endpoint::build_endpoints(self, &scope, &clusters);
        let routes = route::build_routes(self, &scope, node);
        let listeners = listener::build_listeners(self, &scope, node);
        let mut out = ProxyResources {
            listeners,
            routes,
            clusters,
            endpoints,
            settings: ProxySettings::from_mesh(&self.mesh, node),
        };
        out.sort();
        out
    }
}

/// Proxy-wide settings from MeshConfig `defaultConfig` and the node's
/// `proxyMetadata` that are not xDS resources but shape the proxy (the agent
/// or weft-proxy applies them at start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// `defaultConfig.concurrency` (worker threads; 0 means all cores).
    pub concurrency: Option<i32>,
    /// `defaultConfig.drainDuration` as written.
    pub drain_duration: Option<String>,
    /// `ISTIO_META_DNS_CAPTURE` in effect for this proxy.
    pub dns_capture: bool,
    /// `ISTIO_META_DNS_AUTO_ALLOCATE` in effect for this proxy.
    pub dns_auto_allocate: bool,
    /// The mesh trust domain (SPIFFE identities `spiffe://TD/ns/NS/sa/SA`).
    pub trust_domain: String,
}

impl ProxySettings {
    fn from_mesh(mesh: &MeshConfig, node: &ProxyNode) -> ProxySettings {
        let dc = mesh.default_config.as_ref();
        ProxySettings {
            concurrency: dc.and_then(|d| d.concurrency),
            drain_duration: dc
                .and_then(|d| d.drain_duration.as_ref())
                .map(|d| d.raw().to_string()),
            dns_capture: node.dns_capture,
            dns_auto_allocate: node.dns_auto_allocate,
            trust_domain: mesh.trust_domain_or_default().to_string(),
        }
    }
}

/// The four resource types for one proxy, each sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyResources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub settings: ProxySettings,
}

impl ProxyResources {
    fn sort(&mut self) {
        self.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        self.listeners.dedup_by(|a, b| a.name == b.name);
        self.routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        self.clusters.dedup_by(|a, b| a.name == b.name);
        self.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    }

    /// The resources of one type URL as a [`ResourceSet`] keyed by name;
    /// empty for types translation does not produce. Encoding is
    /// deterministic ([`canonical`]): equal resources get equal versions.
    pub fn resource_set(&self, type_url: &str) -> ResourceSet {
        fn any<M: prost::Name>(m: &M, spec: &canonical::Spec) -> Any {
            Any {
                type_url: M::type_url(),
                value: canonical::canonicalize(&m.encode_to_vec(), spec),
            }
        }
        match type_url {
            LISTENER => self
                .listeners
                .iter()
                .map(|r| (r.name.clone(), any(r, &canonical::LISTENER)))
                .collect(),
            ROUTE => self
                .routes
                .iter()
                .map(|r| (r.name.clone(), any(r, &canonical::ROUTE_CONFIG)))
                .collect(),
            CLUSTER => self
                .clusters
                .iter()
                .map(|r| (r.name.clone(), any(r, &canonical::CLUSTER)))
                .collect(),
            ENDPOINT => self
                .endpoints
                .iter()
                .map(|r| (r.cluster_name.clone(), any(r, &canonical::ASSIGNMENT)))
                .collect(),
            _ => ResourceSet::new(),
        }
    }
}

/// Translates a snapshot for one proxy (builds a [`MeshView`] first; keep a
/// `MeshView` to translate for many proxies).
pub fn translate(snapshot: &Snapshot, node: &ProxyNode) -> ProxyResources {
    MeshView::new(snapshot, TranslateOptions::default()).translate(node)
}
