//! The testbed's error type. Every variant names the command, namespace,
//! path or name involved, so a failing test says what to check.

use std::io;
use std::path::PathBuf;

/// Errors from creating, using or tearing down testbed namespaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper program (`ip`, ...) could not be started.
    #[error("could not run `{command}`: {source} (hint: is iproute2 installed and are we root?)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// A pod, node or prefix name is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What the name is for ("pod name", "prefix", ...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Two pods of one node were given the same name.
    #[error("node {node}: a pod named {pod:?} already exists")]
    DuplicatePod {
        /// The node's namespace name.
        node: String,
        /// The repeated pod name.
        pod: String,
    },
    /// The node's /24 has no address left.
    #[error("node {node}: subnet {subnet}/24 has no free address for pod {pod:?}")]
    SubnetFull {
        /// The node's namespace name.
        node: String,
        /// The node's IPv4 subnet base.
        subnet: std::net::Ipv4Addr,
        /// The pod that did not fit.
        pod: String,
    },
    /// The subnet given to [`crate::NodeBuilder::subnet`] is not a /24 base.
    #[error("subnet {0}: must be the base address of a /24 (last octet 0)")]
    InvalidSubnet(std::net::Ipv4Addr),
    /// A file under /run/netns or /proc could not be read or opened.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `setns(2)` into a namespace failed.
    #[error("setns into network namespace {path}: {source}")]
    Setns {
        /// The namespace file.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
}

/// Shorthand for results with the testbed's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
