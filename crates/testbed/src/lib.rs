//! Weft's testbed: pods as Linux network namespaces on a private bridge.
//!
//! A [`Node`] is a dedicated "node" network namespace holding a Linux bridge
//! (`br0`) and a private IPv4 /24 and IPv6 /64. Each [`Pod`] is its own network
//! namespace attached to that bridge by a veth pair, with an address from the
//! node's subnets and a default route via the bridge, so pods of one node reach
//! each other. Nothing lives in the host's root namespace: no test packet can
//! leave the machine.
//!
//! Code runs inside a pod either as a process ([`Pod::command`],
//! [`Pod::command_as`] for a chosen uid/gid, [`Pod::command_detached`] for
//! long-running ones; supervised by [`Pod::spawn`]) or as a closure on a
//! thread that joined the pod's namespace ([`Pod::enter`]; with
//! [`Pod::enter_as`], sockets made there count as a chosen user's for
//! netfilter owner matches). [`Pod::link_to`] wires two pods directly, for
//! a VM-like extra interface.
//!
//! Everything is torn down on drop, also while unwinding from a panic. Names
//! carry a per-process unique prefix (`wtb-<pid>-<n>-`), so parallel test
//! processes never collide and teardown never touches a namespace this
//! process did not create. [`cleanup_prefix`] removes what a crashed run left
//! behind.
//!
//! For capture tests, [`probe`] has TCP and UDP responders and clients that
//! report the original destination, and [`snapshot`] a normalized picture
//! of a pod's iptables, nftables and routing state.
//!
//! ```no_run
//! use weft_testbed::probe::{ListenMode, Responder, probe_as};
//! use weft_testbed::{Node, RunAs, require_root};
//!
//! require_root();
//! let node = Node::new()?;
//! let app = node.add_pod("app")?;
//! let svc = node.add_pod("svc")?;
//! let server = Responder::start(&svc, "svc", (svc.addr(), 8080).into(), ListenMode::Plain)?;
//! // A process as uid/gid 1000 inside `app` connects to `svc`.
//! let answer = probe_as(&app, RunAs::user(1000, 1000), server.addr())?;
//! assert_eq!(answer.unwrap().peer.ip(), std::net::IpAddr::from(app.addr()));
//! # Ok::<(), weft_testbed::Error>(())
//! ```
//!
//! This crate needs root (it creates namespaces); [`require_root`] makes a
//! test fail loudly when it is not.

mod cleanup;
mod error;
mod ip;
mod netns;
mod node;
mod pod;
pub mod probe;
mod process;
pub mod snapshot;

pub use cleanup::{DEFAULT_PREFIX, cleanup_prefix, cleanup_stale};
pub use error::Error;
pub use netns::Netns;
pub use netns::run;
pub use node::{Node, NodeBuilder};
pub use pod::{POD_INTERFACE, Pod};
pub use process::{PodProcess, RunAs};

/// Panics with a clear message unless the effective uid is 0.
///
/// Tests that create namespaces call this first, so that running them
/// without root fails loudly instead of skipping or failing obscurely.
#[track_caller]
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root: run ./scripts/test as root \
             (it creates network namespaces, veth pairs and iptables rules); \
             current euid is {}",
            nix::unistd::geteuid()
        );
    }
}
