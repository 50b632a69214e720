//! A pod: a network namespace attached to its node's bridge by a veth pair
//! (`vp<slot>` in the node, `eth0` in the pod), with an IPv4 and an IPv6
//! address and default routes via the bridge. Owns running code and
//! processes inside it, and its teardown.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::node::{BRIDGE, NodeShared};
use crate::process::{PodProcess, RunAs};

/// The pod's interface towards the node bridge.
pub const POD_INTERFACE: &str = "eth0";
const MAX_NAME: usize = 24;

/// A pod on a [`crate::Node`]. Dropping it kills what runs inside and
/// deletes its namespace and veth pair.
#[derive(Debug)]
pub struct Pod {
    name: String,
    index: u8,
    /// `None` only during drop.
    netns: Option<Netns>,
    veth_created: bool,
    node: Arc<NodeShared>,
}

impl Pod {
    pub(crate) fn create(node: Arc<NodeShared>, name: &str) -> Result<Self> {
        validate_name(name)?;
        let index = node.reserve(name)?;
        let netns = match Netns::create(&format!("{}{name}", node.prefix())) {
            Ok(netns) => netns,
            Err(err) => {
                node.release(index);
                return Err(err);
            }
        };
        let mut pod = Self {
            name: name.to_owned(),
            index,
            netns: Some(netns),
            veth_created: false,
            node,
        };
        pod.attach()?;
        tracing::debug!(pod = pod.netns().name(), addr = %pod.addr(), "testbed: pod up");
        Ok(pod)
    }

    /// Creates the veth pair, addresses and routes.
    fn attach(&mut self) -> Result<()> {
        let node = &self.node.netns;
        let host_side = self.host_veth();
        let pod_ns = self.netns().name().to_owned();
        node.ip(&[
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            POD_INTERFACE,
            "netns",
            &pod_ns,
        ])?;
        self.veth_created = true;
        node.ip(&["link", "set", &host_side, "master", BRIDGE, "up"])?;

        let addr = format!("{}/24", self.addr());
        let addr6 = format!("{}/64", self.addr_v6());
        let gw = self.node.gateway().to_string();
        let gw6 = self.node.gateway_v6().to_string();
        let ns = self.netns();
        ns.ip(&["addr", "add", &addr, "dev", POD_INTERFACE])?;
        ns.ip(&["-6", "addr", "add", &addr6, "dev", POD_INTERFACE, "nodad"])?;
        ns.ip(&["link", "set", POD_INTERFACE, "up"])?;
        ns.ip(&["route", "add", "default", "via", &gw])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gw6])?;
        Ok(())
    }

    /// The name given to [`crate::Node::add_pod`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's IPv4 address (a /24 shared with the node's other pods).
    pub fn addr(&self) -> Ipv4Addr {
        self.node.addr(self.index)
    }

    /// The pod's IPv6 address (a /64 shared with the node's other pods).
    pub fn addr_v6(&self) -> Ipv6Addr {
        self.node.addr_v6(self.index)
    }

    /// The pod's network namespace.
    pub fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("a pod's namespace is only taken while the pod is dropped")
    }

    /// Connects this pod directly to `other` with a veth pair that bypasses
    /// the node bridge (for example a VM's tap-like interface, as `-k`
    /// expects): `here` gets `here_addr/prefix_len` in this pod, `there`
    /// gets `there_addr/prefix_len` in `other`. Both ends go away with the
    /// pods.
    pub fn link_to(
        &self,
        other: &Pod,
        (here, here_addr): (&str, Ipv4Addr),
        (there, there_addr): (&str, Ipv4Addr),
        prefix_len: u8,
    ) -> Result<()> {
        for name in [here, there] {
            validate_interface(name)?;
        }
        let ns = self.netns();
        ns.ip(&[
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            other.netns().name(),
        ])?;
        for (pod, name, addr) in [(self, here, here_addr), (other, there, there_addr)] {
            let cidr = format!("{addr}/{prefix_len}");
            pod.netns().ip(&["addr", "add", &cidr, "dev", name])?;
            pod.netns().ip(&["link", "set", name, "up"])?;
        }
        Ok(())
    }

    /// The veth end that sits in the node namespace, on the bridge.
    pub fn host_veth(&self) -> String {
        format!("vp{}", self.index)
    }

    /// Runs `f` on a thread inside the pod's network namespace; see
    /// [`Netns::enter`].
    pub fn enter<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.netns().enter(f)
    }

    /// Runs `f` on a thread inside the pod whose sockets netfilter sees as
    /// owned by `run_as`; see [`Netns::enter_as`].
    pub fn enter_as<F, T>(&self, run_as: RunAs, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.netns().enter_as(run_as, f)
    }

    /// A [`Command`] for `program` that runs as root inside the pod.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        self.netns().command(program, RunAs::Root)
    }

    /// A [`Command`] for `program` that runs inside the pod as `run_as`.
    pub fn command_as(&self, program: impl AsRef<OsStr>, run_as: RunAs) -> Result<Command> {
        self.netns().command(program, run_as)
    }

    /// A [`Command`] for `program` inside the pod as `run_as` that does not
    /// die with the spawning thread; see [`Netns::command_detached`].
    pub fn command_detached(&self, program: impl AsRef<OsStr>, run_as: RunAs) -> Result<Command> {
        self.netns().command_detached(program, run_as)
    }

    /// Spawns `cmd` (from [`Pod::command`]) as a supervised process that is
    /// killed when the returned handle, or at the latest the pod, is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> Result<PodProcess> {
        PodProcess::spawn(cmd)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.veth_created
            && let Err(err) = self.node.netns.ip(&["link", "del", &self.host_veth()])
        {
            eprintln!("weft-testbed: teardown: {err}");
        }
        // Kills what runs inside and deletes the namespace.
        drop(self.netns.take());
        self.node.release(self.index);
    }
}

/// Linux interface names: 1 to 15 bytes, no `/`, `:` or whitespace.
fn validate_interface(name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > 15 {
        Some("interface names are 1 to 15 characters")
    } else if name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        Some("'/', ':' and whitespace are not allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what: "interface name",
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > MAX_NAME {
        Some("must be 1 to 24 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("only lowercase letters, digits and '-' are allowed")
    } else if name == "node" {
        Some("\"node\" names the node's own namespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what: "pod name",
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
