//! Errors of the xDS plumbing. Each names what to check.

use std::net::SocketAddr;

/// Errors of the ADS server and client.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The first discovery request on a stream had no `node` or an empty `node.id`.
    #[error(
        "discovery request has no node.id: the first request on an ADS stream must carry \
         node.id (Envoy: --service-node or node.id in the bootstrap)"
    )]
    MissingNode,
    /// Binding the xDS listener failed.
    #[error("cannot listen for xDS on {addr}: {source} (hint: is the port already in use?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("xDS gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The xDS server address given to the client is not a valid URI.
    #[error("invalid xDS address {address:?}: {reason} (expected e.g. http://127.0.0.1:15010)")]
    BadAddress {
        /// The address as given.
        address: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A resource in a response could not be decoded.
    #[error("cannot decode {type_url} resource: {reason}")]
    Decode {
        /// The resource's type URL.
        type_url: String,
        /// What failed.
        reason: String,
    },
}
