//! What Istio reads from the environment and the pod: the four Istio
//! environment variables (`CaptureEnv`, passed explicitly so it is
//! testable), whether the pod has an IPv6 address, and the resolvers in
//! resolv.conf. Read-only: nothing here changes the system.

use std::net::IpAddr;

use crate::config::DnsServer;
use crate::error::CaptureError;

/// The environment variables istio-iptables reads. `None` means unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureEnv {
    /// `ISTIO_OUTBOUND_OWNER_GROUPS` (default `*`).
    pub outbound_owner_groups: Option<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE` (default empty).
    pub outbound_owner_groups_exclude: Option<String>,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` (default `127.0.0.1/32`).
    pub outbound_ipv4_loopback_cidr: Option<String>,
    /// `ISTIO_META_DNS_CAPTURE`: `true` turns on `--redirect-dns`.
    pub meta_dns_capture: Option<String>,
}

impl CaptureEnv {
    pub const OWNER_GROUPS: &'static str = "ISTIO_OUTBOUND_OWNER_GROUPS";
    pub const OWNER_GROUPS_EXCLUDE: &'static str = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE";
    pub const IPV4_LOOPBACK_CIDR: &'static str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
    pub const META_DNS_CAPTURE: &'static str = "ISTIO_META_DNS_CAPTURE";

    /// Reads the variables from this process's environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup` (e.g. a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        CaptureEnv {
            outbound_owner_groups: lookup(Self::OWNER_GROUPS),
            outbound_owner_groups_exclude: lookup(Self::OWNER_GROUPS_EXCLUDE),
            outbound_ipv4_loopback_cidr: lookup(Self::IPV4_LOOPBACK_CIDR),
            meta_dns_capture: lookup(Self::META_DNS_CAPTURE),
        }
    }

    /// Reads the variables from `NAME=value` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        Self::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }
}

/// Istio's IPv6 detection: the first non-loopback, non-link-local address
/// decides; with `dual_stack`, any IPv6 address among them turns IPv6 on.
pub fn pod_has_ipv6(dual_stack: bool) -> Result<bool, CaptureError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| CaptureError::Detect {
        path: "getifaddrs(3)".into(),
        reason: e.to_string(),
    })?;
    let mut ips = Vec::new();
    for ifa in addrs {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            ips.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            ips.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(decide_ipv6(&ips, dual_stack))
}

/// The pure part of [`pod_has_ipv6`].
pub fn decide_ipv6(addrs: &[IpAddr], dual_stack: bool) -> bool {
    let usable = addrs.iter().filter(|ip| match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            let ip = v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(*v6));
            match ip {
                IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                IpAddr::V6(v6) => {
                    !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified()
                }
            }
        }
    });
    for ip in usable {
        let is_v6 = ip.to_canonical().is_ipv6();
        if !dual_stack || is_v6 {
            return is_v6;
        }
    }
    false
}

/// The `nameserver` entries of a resolv.conf file.
pub fn resolv_conf_servers(path: &str) -> Result<Vec<DnsServer>, CaptureError> {
    let text = std::fs::read_to_string(path).map_err(|e| CaptureError::Detect {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(parse_resolv_conf(&text))
}

/// The pure part of [`resolv_conf_servers`]: unparsable entries are skipped
/// (as the resolver library does); zone suffixes (`%eth0`) are dropped.
pub fn parse_resolv_conf(text: &str) -> Vec<DnsServer> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let raw = words.next()?;
            let text = raw.split('%').next().unwrap_or(raw);
            let addr: IpAddr = text.parse().ok()?;
            Some(DnsServer {
                addr,
                text: text.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn first_usable_address_decides_unless_dual_stack() {
        let pod = ips(&["127.0.0.1", "::1", "192.0.2.2", "fd00::2", "fe80::1"]);
        assert!(!decide_ipv6(&pod, false));
        assert!(decide_ipv6(&pod, true));
        assert!(decide_ipv6(
            &ips(&["::1", "fe80::1", "fd00::2", "10.0.0.1"]),
            false
        ));
        assert!(!decide_ipv6(&ips(&["127.0.0.1", "::1"]), true));
        assert!(!decide_ipv6(&ips(&["::ffff:10.0.0.1"]), false));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver fe80::1%eth0\nnameserver ::127.0.0.53\nnameserver bogus\noptions ndots:5\n";
        let servers: Vec<String> = parse_resolv_conf(text)
            .into_iter()
            .map(|s| s.text)
            .collect();
        assert_eq!(servers, vec!["10.96.0.10", "fe80::1", "::127.0.0.53"]);
    }

    #[test]
    fn env_from_pairs_and_lookup() {
        let env = CaptureEnv::from_pairs([("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888")]);
        assert_eq!(env.outbound_owner_groups_exclude.as_deref(), Some("888"));
        assert_eq!(env.outbound_owner_groups, None);
    }
}
