//! Envoy v3 type URLs for the resource types weft serves over ADS, their
//! short names (as Istio's metrics label them) and the order in which a
//! state-of-the-world push sends them.
//!
//! Owns nothing but constants and the small [`XdsType`] enum; it must not
//! know how resources are computed.

use std::fmt;

/// `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// One of the xDS resource types weft knows. Ordered as a push sends them:
/// clusters before endpoints, listeners before routes, as Envoy expects for
/// warming over one aggregated stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdsType {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// LDS.
    Listener,
    /// RDS.
    Route,
    /// SDS.
    Secret,
}

impl XdsType {
    /// Every type in push order.
    pub const ALL: [XdsType; 5] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
        XdsType::Secret,
    ];

    /// The Envoy v3 type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            XdsType::Cluster => CLUSTER,
            XdsType::Endpoint => ENDPOINT,
            XdsType::Listener => LISTENER,
            XdsType::Route => ROUTE,
            XdsType::Secret => SECRET,
        }
    }

    /// The type for a type URL, if weft serves it.
    pub fn from_type_url(url: &str) -> Option<XdsType> {
        XdsType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Istio's short name, used as the `type` label of the pilot metrics.
    pub fn short_name(self) -> &'static str {
        match self {
            XdsType::Cluster => "cds",
            XdsType::Endpoint => "eds",
            XdsType::Listener => "lds",
            XdsType::Route => "rds",
            XdsType::Secret => "sds",
        }
    }

    /// Whether an empty state-of-the-world subscription means "all
    /// resources" (LDS, CDS) rather than "none" (RDS, EDS, SDS).
    pub fn is_wildcard_type(self) -> bool {
        matches!(self, XdsType::Cluster | XdsType::Listener)
    }
}

impl fmt::Display for XdsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// Istio's NDS type URL (`istio.networking.nds.v1.NameTable`).
pub use crate::nds::NAME_TABLE;

/// Whether an empty state-of-the-world subscription to `type_url` means
/// "all resources": LDS, CDS and Istio's NDS (which its agent requests
/// without names).
pub fn is_wildcard_type_url(type_url: &str) -> bool {
    type_url == NAME_TABLE || XdsType::from_type_url(type_url).is_some_and(|t| t.is_wildcard_type())
}

/// A short name for any type URL: the Istio name for known types, else the
/// URL's last path segment.
pub fn short_name(type_url: &str) -> &str {
    match XdsType::from_type_url(type_url) {
        Some(t) => t.short_name(),
        None if type_url == NAME_TABLE => "nds",
        None => type_url.rsplit('/').next().unwrap_or(type_url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders() {
        for t in XdsType::ALL {
            assert_eq!(XdsType::from_type_url(t.type_url()), Some(t));
        }
        assert!(XdsType::Cluster < XdsType::Endpoint);
        assert!(XdsType::Endpoint < XdsType::Listener);
        assert!(XdsType::Listener < XdsType::Route);
        assert_eq!(short_name(ROUTE), "rds");
        assert_eq!(short_name("type.googleapis.com/foo.Bar"), "foo.Bar");
        assert_eq!(XdsType::from_type_url("type.googleapis.com/foo.Bar"), None);
    }
}
