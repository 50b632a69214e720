//! A node: its own network namespace holding the bridge `br0` that pods
//! attach to, the node's private subnets, and the table of pod slots.
//! The node namespace is deleted when the [`Node`] and all its pods are gone.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};

use crate::cleanup::{DEFAULT_PREFIX, cleanup_own_pid_leftovers, validate_prefix};
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::pod::Pod;

/// The bridge inside the node namespace.
pub(crate) const BRIDGE: &str = "br0";
/// Highest pod slot: the /24's `.1` is the bridge, pods take `.2..=.254`.
const MAX_PODS: u8 = 253;

static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);
static LEFTOVERS: Once = Once::new();

/// Options for a [`Node`].
#[derive(Debug, Clone, Default)]
pub struct NodeBuilder {
    prefix: Option<String>,
    subnet: Option<Ipv4Addr>,
}

impl NodeBuilder {
    /// Names every namespace of the node `PREFIX...` (default
    /// `wtb-<pid>-<n>-`, unique per node). Lowercase letters, digits and `-`,
    /// ending in `-`. [`crate::cleanup_prefix`] with the same prefix removes
    /// what a crashed run left.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The node's IPv4 /24, given by its base address (default
    /// `10.77.<n>.0`). The IPv6 /64 is derived from it:
    /// `fd77:0:<2nd octet>:<3rd octet>::/64`.
    pub fn subnet(mut self, base: Ipv4Addr) -> Self {
        self.subnet = Some(base);
        self
    }

    /// Creates the node namespace and its bridge.
    pub fn build(self) -> Result<Node> {
        let counter = NODE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = match self.prefix {
            Some(prefix) => {
                validate_prefix(&prefix)?;
                prefix
            }
            None => {
                // A namespace named after our pid can only be a leftover of
                // a dead process that had the same pid: clear those once.
                LEFTOVERS.call_once(cleanup_own_pid_leftovers);
                format!("{DEFAULT_PREFIX}{}-{counter}-", std::process::id())
            }
        };
        let subnet = self
            .subnet
            .unwrap_or_else(|| Ipv4Addr::new(10, 77, (counter % 256) as u8, 0));
        if subnet.octets()[3] != 0 {
            return Err(Error::InvalidSubnet(subnet));
        }
        let [_, b, c, _] = subnet.octets();
        let subnet_v6 = Ipv6Addr::new(0xfd77, 0, b.into(), c.into(), 0, 0, 0, 0);

        let netns = Netns::create(&format!("{prefix}node"))?;
        let shared = NodeShared {
            prefix,
            netns,
            subnet,
            subnet_v6,
            slots: Mutex::new(BTreeMap::new()),
        };
        let gw = format!("{}/24", shared.gateway());
        let gw6 = format!("{}/64", shared.gateway_v6());
        let ns = &shared.netns;
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ns.ip(&["addr", "add", &gw, "dev", BRIDGE])?;
        ns.ip(&["-6", "addr", "add", &gw6, "dev", BRIDGE, "nodad"])?;
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        tracing::debug!(node = ns.name(), %subnet, "testbed: node up");
        Ok(Node {
            shared: Arc::new(shared),
        })
    }
}

/// A node: a network namespace with a bridge that [`Pod`]s attach to.
///
/// Dropping the node deletes its namespace once every pod is dropped too.
#[derive(Debug)]
pub struct Node {
    shared: Arc<NodeShared>,
}

impl Node {
    /// A node with the default unique prefix and subnet.
    pub fn new() -> Result<Self> {
        NodeBuilder::default().build()
    }

    /// Options for a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// Adds a pod named `name` (lowercase letters, digits, `-`; up to 24
    /// characters; not `node`), with the next free address of the subnet.
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        Pod::create(Arc::clone(&self.shared), name)
    }

    /// The prefix of every namespace name of this node.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The node's own namespace (where the bridge is).
    pub fn netns(&self) -> &Netns {
        &self.shared.netns
    }

    /// The base address of the node's IPv4 /24.
    pub fn subnet(&self) -> Ipv4Addr {
        self.shared.subnet
    }

    /// The bridge's IPv4 address: every pod's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.shared.gateway()
    }

    /// The bridge's IPv6 address: every pod's IPv6 default gateway.
    pub fn gateway_v6(&self) -> Ipv6Addr {
        self.shared.gateway_v6()
    }
}

// === impl NodeShared ===

/// What a node and its pods share; the node namespace lives as long as this.
#[derive(Debug)]
pub(crate) struct NodeShared {
    prefix: String,
    pub(crate) netns: Netns,
    subnet: Ipv4Addr,
    subnet_v6: Ipv6Addr,
    /// Slot index (1..=253) to pod name.
    slots: Mutex<BTreeMap<u8, String>>,
}

impl NodeShared {
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn gateway(&self) -> Ipv4Addr {
        self.addr(0)
    }

    pub(crate) fn gateway_v6(&self) -> Ipv6Addr {
        self.addr_v6(0)
    }

    /// The IPv4 address of slot `index` (0 is the bridge).
    pub(crate) fn addr(&self, index: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, index + 1)
    }

    /// The IPv6 address of slot `index` (0 is the bridge).
    pub(crate) fn addr_v6(&self, index: u8) -> Ipv6Addr {
        let mut segments = self.subnet_v6.segments();
        segments[7] = u16::from(index) + 1;
        Ipv6Addr::from(segments)
    }

    /// Reserves a slot for pod `name`.
    pub(crate) fn reserve(&self, name: &str) -> Result<u8> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.values().any(|existing| existing == name) {
            return Err(Error::DuplicatePod {
                node: self.netns.name().to_owned(),
                pod: name.to_owned(),
            });
        }
        let index = (1..=MAX_PODS)
            .find(|i| !slots.contains_key(i))
            .ok_or_else(|| Error::SubnetFull {
                node: self.netns.name().to_owned(),
                subnet: self.subnet,
                pod: name.to_owned(),
            })?;
        slots.insert(index, name.to_owned());
        Ok(index)
    }

    /// Frees a slot taken by [`NodeShared::reserve`].
    pub(crate) fn release(&self, index: u8) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&index);
    }
}
