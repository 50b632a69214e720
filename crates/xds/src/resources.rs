//! What a proxy should have: named, versioned resources grouped per type
//! ([`ResourceSet`]), the proxy's identity as it introduced itself
//! ([`NodeInfo`]) and the pluggable [`Generator`] that computes one from the
//! other.
//!
//! Owns version hashing. Must not know how resources are translated from
//! mesh configuration: that is the generator's job.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Any, Struct, value::Kind};

use crate::error::XdsError;

/// One named resource with a content version.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The resource name (listener, cluster, route configuration name; the
    /// cluster name for a ClusterLoadAssignment).
    pub name: String,
    /// A version string that changes whenever the content changes.
    pub version: String,
    /// The encoded resource.
    pub any: Any,
}

/// The desired resources of one type for one proxy, by name, with a
/// version for the whole set derived from the names and per-resource
/// versions (so an unchanged set keeps its version across pushes).
///
/// Cloning is cheap (the map is shared until modified), so a generator can
/// hand the same set to many proxies; the set version is computed once.
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    /// Keys share one allocation per name with every set built from this
    /// one ([`Self::union`], [`Self::filtered`]), so a set per proxy costs
    /// a map, not copies of names.
    resources: Arc<BTreeMap<Arc<str>, Arc<Resource>>>,
    /// Shared by clones until one of them is modified.
    version: Arc<OnceLock<String>>,
}

impl PartialEq for ResourceSet {
    fn eq(&self, other: &Self) -> bool {
        self.resources == other.resources
    }
}

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `name`, versioned by a hash of its encoding.
    pub fn insert(&mut self, name: impl Into<String>, any: Any) {
        let version = hex(content_hash(&any));
        self.insert_with_version(name, version, any);
    }

    /// Adds (or replaces) `name` with a version chosen by the caller.
    pub fn insert_with_version(
        &mut self,
        name: impl Into<String>,
        version: impl Into<String>,
        any: Any,
    ) {
        let name = name.into();
        let key: Arc<str> = Arc::from(name.as_str());
        let resource = Resource {
            name,
            version: version.into(),
            any,
        };
        self.version = Arc::default();
        Arc::make_mut(&mut self.resources).insert(key, Arc::new(resource));
    }

    /// Every resource of `self` and of `other`; `other`'s wins a name both
    /// hold. Resources and names are shared with both inputs, not copied.
    pub fn union(&self, other: &ResourceSet) -> ResourceSet {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut map = (*self.resources).clone();
        for (k, r) in other.resources.iter() {
            map.insert(k.clone(), r.clone());
        }
        ResourceSet {
            resources: Arc::new(map),
            version: Arc::default(),
        }
    }

    /// The resources whose name satisfies `keep`, sharing resources and
    /// names with `self`.
    pub fn retain_names(&self, mut keep: impl FnMut(&str) -> bool) -> ResourceSet {
        if self.resources.keys().all(|k| keep(k)) {
            return self.clone();
        }
        let map = self
            .resources
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        ResourceSet {
            resources: Arc::new(map),
            version: Arc::default(),
        }
    }

    /// Whether both sets are the same shared map (so equal without
    /// comparing).
    pub fn ptr_eq(&self, other: &ResourceSet) -> bool {
        Arc::ptr_eq(&self.resources, &other.resources)
    }

    /// Removes `name`, returning whether it was present.
    pub fn remove(&mut self, name: &str) -> bool {
        if !self.resources.contains_key(name) {
            return false;
        }
        self.version = Arc::default();
        Arc::make_mut(&mut self.resources).remove(name).is_some()
    }

    /// The resource called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(name)
    }

    /// The shared allocation of the name `name`, if the set holds it (so a
    /// subscription naming it can share it instead of keeping a copy).
    pub fn shared_name(&self, name: &str) -> Option<&Arc<str>> {
        self.resources.get_key_value(name).map(|(k, _)| k)
    }

    /// Resources in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.resources.values()
    }

    /// Resource names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(|k| &**k)
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The subset whose names are in `names`, which must be sorted and
    /// without duplicates (a `BTreeSet`'s or a [`crate::status::Names`]'
    /// order). A cheap clone when every resource is named.
    pub fn filtered<'a, I>(&self, names: I) -> ResourceSet
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: Clone,
    {
        let names = names.into_iter();
        if is_subset(self.resources.keys().map(|k| &**k), names.clone()) {
            return self.clone();
        }
        let resources = names
            .filter_map(|n| {
                self.resources
                    .get_key_value(n)
                    .map(|(k, r)| (k.clone(), r.clone()))
            })
            .collect();
        ResourceSet {
            resources: Arc::new(resources),
            version: Arc::default(),
        }
    }

    /// Resources of this set that `held` lacks or holds at another
    /// version, in name order. One pass over both sets; resources shared
    /// between them (same `Arc`) are skipped without comparing names.
    pub fn changed_from(&self, held: &ResourceSet) -> Vec<Arc<Resource>> {
        if Arc::ptr_eq(&self.resources, &held.resources) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut held = held.resources.values().peekable();
        for r in self.resources.values() {
            loop {
                match held.peek() {
                    Some(h) if Arc::ptr_eq(h, r) => {
                        held.next();
                        break;
                    }
                    Some(h) if h.name < r.name => {
                        held.next();
                    }
                    Some(h) if h.name == r.name => {
                        if h.version != r.version {
                            out.push(r.clone());
                        }
                        held.next();
                        break;
                    }
                    _ => {
                        out.push(r.clone());
                        break;
                    }
                }
            }
        }
        out
    }

    /// The version of the whole set: a hash over every name and version.
    /// Two sets with the same names and versions share it.
    pub fn version(&self) -> String {
        self.version
            .get_or_init(|| {
                let mut h = Fnv::new();
                for r in self.resources.values() {
                    h.write(r.name.as_bytes());
                    h.write(&[0]);
                    h.write(r.version.as_bytes());
                    h.write(&[0]);
                }
                hex(h.finish())
            })
            .clone()
    }
}

impl FromIterator<(String, Any)> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = (String, Any)>>(iter: I) -> Self {
        let mut set = ResourceSet::new();
        for (name, any) in iter {
            set.insert(name, any);
        }
        set
    }
}

/// Who a proxy says it is: the `node` of its first discovery request.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// `node.id`; Istio's form is `sidecar~IP~POD.NS~NS.svc.cluster.local`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// The whole node message as sent.
    pub node: Node,
}

impl NodeInfo {
    /// Takes the identity from a request's node, which must carry an id.
    pub fn from_node(node: Option<Node>) -> Result<NodeInfo, XdsError> {
        let node = node.ok_or(XdsError::MissingNode)?;
        if node.id.is_empty() {
            return Err(XdsError::MissingNode);
        }
        Ok(NodeInfo {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            node,
        })
    }

    /// A string field of `node.metadata` (e.g. `NAMESPACE`, `WORKLOAD_NAME`).
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        let value = self.node.metadata.as_ref()?.fields.get(key)?;
        match value.kind.as_ref()? {
            Kind::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// A struct field of `node.metadata` (e.g. `LABELS`) as string pairs;
    /// non-string values are skipped.
    pub fn metadata_map(&self, key: &str) -> BTreeMap<String, String> {
        let Some(Kind::StructValue(s)) = self
            .node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .and_then(|v| v.kind.as_ref())
        else {
            return BTreeMap::new();
        };
        s.fields
            .iter()
            .filter_map(|(k, v)| match v.kind.as_ref()? {
                Kind::StringValue(s) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Builds a `google.protobuf.Struct` of string values (for node metadata).
pub fn string_struct<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Struct {
    use envoy_types::pb::google::protobuf::Value;
    Struct {
        fields: pairs
            .into_iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                };
                (k.to_string(), value)
            })
            .collect(),
    }
}

/// Computes the resources a proxy should have. weftd implements it with
/// translation; tests implement it with fixed sets. It is called on the
/// connection's task for each push, so it should be quick or cached.
pub trait Generator: Send + Sync + 'static {
    /// The full desired set of `type_url` for `node`. The server filters it
    /// by the names the proxy subscribed to (for RDS, EDS and SDS).
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet;

    /// Proxies with the same key get the same resources of `type_url` (for
    /// example same namespace, same Sidecar scope, same metadata that
    /// translation reads). The server then generates once per key and push
    /// and shares the result. `None` (the default) generates per proxy.
    fn cache_key(&self, node: &NodeInfo, type_url: &str) -> Option<String> {
        let _ = (node, type_url);
        None
    }

    /// The last open stream of `node` (by `node.id`) closed: drop whatever
    /// was kept for this proxy alone. A proxy that connects again is
    /// computed afresh. The default keeps nothing, so does nothing.
    fn forget(&self, node: &NodeInfo) {
        let _ = node;
    }
}

impl<F> Generator for F
where
    F: Fn(&NodeInfo, &str) -> ResourceSet + Send + Sync + 'static,
{
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet {
        self(node, type_url)
    }
}

/// Whether every item of sorted `a` is in sorted `b`: one pass over both.
fn is_subset<'a, 'b>(
    a: impl Iterator<Item = &'a str>,
    mut b: impl Iterator<Item = &'b str>,
) -> bool {
    'outer: for x in a {
        for y in b.by_ref() {
            match y.cmp(x) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => continue 'outer,
                std::cmp::Ordering::Greater => return false,
            }
        }
        return false;
    }
    true
}

// === hashing ===

/// 64-bit FNV-1a: stable across processes and Rust versions, which the
/// standard hasher does not promise.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn content_hash(any: &Any) -> u64 {
    let mut h = Fnv::new();
    h.write(any.type_url.as_bytes());
    h.write(&[0]);
    h.write(&any.value);
    h.finish()
}

fn hex(v: u64) -> String {
    let mut s = String::with_capacity(16);
    let _ = write!(s, "{v:016x}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: &[u8]) -> Any {
        Any {
            type_url: "t".into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn set_version_tracks_content() {
        let a: ResourceSet = [("x".to_string(), any(b"1")), ("y".to_string(), any(b"2"))]
            .into_iter()
            .collect();
        let b: ResourceSet = [("y".to_string(), any(b"2")), ("x".to_string(), any(b"1"))]
            .into_iter()
            .collect();
        assert_eq!(a.version(), b.version());
        let mut c = a.clone();
        c.insert("x", any(b"changed"));
        assert_ne!(a.version(), c.version());
        assert_ne!(a.get("x").unwrap().version, c.get("x").unwrap().version);
        assert_eq!(a.get("y").unwrap().version, c.get("y").unwrap().version);
        let only_y = a.filtered(["y", "z"]);
        assert_eq!(only_y.names().collect::<Vec<_>>(), vec!["y"]);
        let all = a.filtered(["w", "x", "y", "z"]);
        assert_eq!(all, a);
        assert!(
            Arc::ptr_eq(&all.resources, &a.resources),
            "superset filter copies"
        );
        let none = a.filtered([]);
        assert!(none.is_empty());
        let x_only = a.filtered(["x"]);
        assert_eq!(x_only.names().collect::<Vec<_>>(), vec!["x"]);
        // Clones share the computed version until modified.
        let v = a.version();
        let mut d = a.clone();
        assert!(Arc::ptr_eq(&d.version, &a.version));
        assert_eq!(d.version(), v);
        d.insert("x", any(b"3"));
        assert_ne!(d.version(), v);
        assert_eq!(a.version(), v);
        // changed_from: changed and added, in name order.
        let mut e = a.clone();
        e.insert("x", any(b"9"));
        e.insert("z", any(b"1"));
        e.insert("0", any(b"1"));
        let changed: Vec<_> = e.changed_from(&a).iter().map(|r| r.name.clone()).collect();
        assert_eq!(changed, ["0", "x", "z"]);
        assert!(a.changed_from(&a.clone()).is_empty());
        assert_eq!(a.changed_from(&ResourceSet::new()).len(), 2);
        assert!(ResourceSet::new().changed_from(&a).is_empty());
        assert_ne!(ResourceSet::new().version(), a.version());
    }

    #[test]
    fn union_and_retain_share_resources() {
        let a: ResourceSet = [("x".to_string(), any(b"1")), ("y".to_string(), any(b"2"))]
            .into_iter()
            .collect();
        let b: ResourceSet = [("y".to_string(), any(b"3")), ("z".to_string(), any(b"4"))]
            .into_iter()
            .collect();
        let u = a.union(&b);
        assert_eq!(u.names().collect::<Vec<_>>(), ["x", "y", "z"]);
        assert!(Arc::ptr_eq(u.get("x").unwrap(), a.get("x").unwrap()));
        assert!(Arc::ptr_eq(u.get("y").unwrap(), b.get("y").unwrap()));
        assert!(a.union(&ResourceSet::new()).ptr_eq(&a));
        assert!(ResourceSet::new().union(&b).ptr_eq(&b));
        let only_x = u.retain_names(|n| n == "x");
        assert_eq!(only_x.names().collect::<Vec<_>>(), ["x"]);
        assert_ne!(only_x.version(), u.version());
        assert!(u.retain_names(|_| true).ptr_eq(&u));
        // Unchanged resources are recognised by pointer after a union.
        let changed: Vec<_> = u.changed_from(&a).iter().map(|r| r.name.clone()).collect();
        assert_eq!(changed, ["y", "z"]);
    }

    #[test]
    fn node_metadata() {
        let mut md = string_struct([("NAMESPACE", "default")]);
        md.fields.insert(
            "LABELS".into(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(Kind::StructValue(string_struct([("app", "reviews")]))),
            },
        );
        let node = Node {
            id: "sidecar~10.0.0.1~reviews-1.default~default.svc.cluster.local".into(),
            metadata: Some(md),
            ..Default::default()
        };
        let info = NodeInfo::from_node(Some(node)).unwrap();
        assert_eq!(info.metadata_str("NAMESPACE"), Some("default"));
        assert_eq!(info.metadata_str("LABELS"), None);
        assert_eq!(info.metadata_map("LABELS")["app"], "reviews");
        assert!(NodeInfo::from_node(Some(Node::default())).is_err());
        assert!(NodeInfo::from_node(None).is_err());
    }
}
