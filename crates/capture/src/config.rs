//! The validated capture settings (`CaptureConfig`) and the parsers that turn
//! istio-iptables flag and environment values into them. Everything here is
//! pure: reading the pod's addresses or resolv.conf lives in `detect`.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::error::CaptureError;

/// How inbound connections reach the proxy (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterceptionMode {
    /// NAT `REDIRECT` to the inbound capture port; the proxy reads the
    /// original destination with `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// `TPROXY` in the mangle table; the proxy sees the original destination
    /// as the socket's local address. Needs a policy route (`-t`, `-r`).
    Tproxy,
}

/// Inbound ports to capture (`-b`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InboundPorts {
    /// `-b ""`: capture no inbound traffic.
    #[default]
    None,
    /// `-b '*'`: capture every inbound TCP port except `-d`.
    All,
    /// `-b 80,443`: capture only these.
    Only(Vec<u16>),
}

/// Outbound destinations to capture (`-i`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OutboundRanges {
    /// `-i ""`: capture nothing by address (ports from `-q` still apply).
    #[default]
    None,
    /// `-i '*'`: capture every destination except `-x`.
    All,
    /// `-i 10.0.0.0/8,...`: capture only these.
    Only(Vec<IpNet>),
}

/// Which groups' outbound traffic is captured
/// (`ISTIO_OUTBOUND_OWNER_GROUPS` / `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Capture all groups except these (include is `*`).
    AllExcept(Vec<String>),
    /// Capture only these groups.
    Only(Vec<String>),
}

impl Default for OwnerGroups {
    fn default() -> Self {
        OwnerGroups::AllExcept(Vec::new())
    }
}

/// A DNS resolver address, with its text kept as written (Istio writes the
/// resolver as it appears in resolv.conf, e.g. `::127.0.0.53`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServer {
    pub addr: IpAddr,
    pub text: String,
}

impl From<IpAddr> for DnsServer {
    fn from(addr: IpAddr) -> Self {
        DnsServer {
            addr,
            text: addr.to_string(),
        }
    }
}

/// Which iptables binaries to use (Istio's `--force-iptables-binary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBinary {
    /// `iptables-legacy*`: the x_tables kernel interface.
    Legacy,
    /// `iptables-nft*`: iptables rules stored in nf_tables.
    Nft,
}

/// Which rule backend applies the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// `iptables-restore` / `ip6tables-restore`, Istio's chains (`ISTIO_*`).
    #[default]
    Iptables,
    /// Native nftables, in the tables `ip weft` and `ip6 weft`.
    Nftables,
}

/// Validated capture settings: the input of [`crate::generate`].
///
/// Built from flags by [`crate::cli::IptablesArgs::to_config`]; every field is
/// already checked, so generation cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// `-p`: outbound capture port (15001).
    pub proxy_port: u16,
    /// `-z`: inbound capture port (15006).
    pub inbound_capture_port: u16,
    /// `-e`: inbound tunnel port, never captured (15008).
    pub inbound_tunnel_port: u16,
    /// `-u`: uids whose traffic is not captured (1337).
    pub proxy_uids: Vec<u32>,
    /// `-g`: gids whose traffic is not captured (defaults to `-u`).
    pub proxy_gids: Vec<u32>,
    /// `-m`.
    pub mode: InterceptionMode,
    /// `-b`.
    pub inbound_ports: InboundPorts,
    /// `-d`: only meaningful with `-b '*'`.
    pub inbound_ports_exclude: Vec<u16>,
    /// `-i`.
    pub outbound_ranges: OutboundRanges,
    /// `-x`.
    pub outbound_ranges_exclude: Vec<IpNet>,
    /// `-q`.
    pub outbound_ports_include: Vec<u16>,
    /// `-o`.
    pub outbound_ports_exclude: Vec<u16>,
    /// `-c`: interfaces whose traffic is never captured.
    pub exclude_interfaces: Vec<String>,
    /// `-k`: virtual interfaces whose inbound traffic is treated as outbound.
    pub reroute_virtual_interfaces: Vec<String>,
    /// `-t`: TPROXY packet mark (1337).
    pub tproxy_mark: u32,
    /// `-r`: TPROXY policy routing table (133).
    pub tproxy_route_table: u32,
    /// `--redirect-dns` (or `ISTIO_META_DNS_CAPTURE=true`).
    pub redirect_dns: bool,
    /// `--capture-all-dns`.
    pub capture_all_dns: bool,
    /// `--drop-invalid`.
    pub drop_invalid: bool,
    /// `--dual-stack`.
    pub dual_stack: bool,
    /// `--ipv6` or detected: also emit the IPv6 rule set.
    pub enable_ipv6: bool,
    /// `--dns-servers` or resolv.conf: the resolvers whose port 53 is captured.
    pub dns_servers: Vec<DnsServer>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    pub owner_groups: OwnerGroups,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` (127.0.0.1/32).
    pub ipv4_loopback_cidr: Ipv4Net,
    /// `--native-nftables` selects nftables.
    pub backend: Backend,
    /// `--force-iptables-binary`; `None`: the variant that already holds
    /// rules in the namespace, else the system default (like Istio).
    pub iptables_binary: Option<IptablesBinary>,
}

impl Default for CaptureConfig {
    /// Istio's defaults: `-p 15001 -z 15006 -e 15008 -u 1337 -g 1337 -t 1337
    /// -r 133 -m REDIRECT`, nothing captured inbound, IPv4 only.
    fn default() -> Self {
        CaptureConfig {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            inbound_tunnel_port: 15008,
            proxy_uids: vec![1337],
            proxy_gids: vec![1337],
            mode: InterceptionMode::Redirect,
            inbound_ports: InboundPorts::None,
            inbound_ports_exclude: Vec::new(),
            outbound_ranges: OutboundRanges::None,
            outbound_ranges_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            exclude_interfaces: Vec::new(),
            reroute_virtual_interfaces: Vec::new(),
            tproxy_mark: 1337,
            tproxy_route_table: 133,
            redirect_dns: false,
            capture_all_dns: false,
            drop_invalid: false,
            dual_stack: false,
            enable_ipv6: false,
            dns_servers: Vec::new(),
            owner_groups: OwnerGroups::default(),
            ipv4_loopback_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 1), 32)
                .expect("32 is a valid prefix length"),
            backend: Backend::Iptables,
            iptables_binary: None,
        }
    }
}

impl CaptureConfig {
    /// Whether DNS capture is really on: `--redirect-dns` needs either
    /// `--capture-all-dns` or at least one resolver (Istio's rule).
    pub fn effective_redirect_dns(&self) -> bool {
        self.redirect_dns && (self.capture_all_dns || !self.dns_servers.is_empty())
    }

    /// Whether the TPROXY policy route (`ip rule` / `ip route`) is needed.
    pub fn needs_tproxy_route(&self) -> bool {
        self.mode == InterceptionMode::Tproxy && self.inbound_ports != InboundPorts::None
    }
}

// === parsers: one per flag shape ===

/// Splits Istio's comma lists, dropping empty items (`"6000,7000,"` is two).
pub fn split_list(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// A TCP/UDP port, 1-65535.
pub fn parse_port(flag: &'static str, value: &str) -> Result<u16, CaptureError> {
    match value.trim().parse::<u16>() {
        Ok(0) => Err(CaptureError::flag(
            flag,
            value,
            "port 0 is not a valid port (1-65535)",
        )),
        Ok(p) => Ok(p),
        Err(_) => Err(CaptureError::flag(
            flag,
            value,
            "expected a port number between 1 and 65535",
        )),
    }
}

/// A comma list of ports; `""` is the empty list.
pub fn parse_port_list(flag: &'static str, value: &str) -> Result<Vec<u16>, CaptureError> {
    let mut out = Vec::new();
    for item in split_list(value) {
        let port = parse_port(flag, item).map_err(|_| {
            CaptureError::flag(
                flag,
                value,
                format!("{item:?} is not a port number between 1 and 65535"),
            )
        })?;
        out.push(port);
    }
    Ok(out)
}

/// `-b`: `*`, a port list, or empty.
pub fn parse_inbound_ports(flag: &'static str, value: &str) -> Result<InboundPorts, CaptureError> {
    if value.trim() == "*" {
        return Ok(InboundPorts::All);
    }
    let ports = parse_port_list(flag, value)?;
    Ok(if ports.is_empty() {
        InboundPorts::None
    } else {
        InboundPorts::Only(ports)
    })
}

/// A CIDR such as `10.0.0.0/8` or `2001:db8::/32` (the address is kept as
/// written, like Istio; a bare address is refused).
pub fn parse_cidr(flag: &'static str, list: &str, item: &str) -> Result<IpNet, CaptureError> {
    item.parse::<IpNet>().map_err(|_| {
        CaptureError::flag(
            flag,
            list,
            format!("{item:?} is not a CIDR (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"),
        )
    })
}

/// A comma list of CIDRs.
pub fn parse_cidr_list(flag: &'static str, value: &str) -> Result<Vec<IpNet>, CaptureError> {
    split_list(value)
        .into_iter()
        .map(|item| parse_cidr(flag, value, item))
        .collect()
}

/// `-i`: `*`, a CIDR list, or empty.
pub fn parse_outbound_ranges(
    flag: &'static str,
    value: &str,
) -> Result<OutboundRanges, CaptureError> {
    if value.trim() == "*" {
        return Ok(OutboundRanges::All);
    }
    let nets = parse_cidr_list(flag, value)?;
    Ok(if nets.is_empty() {
        OutboundRanges::None
    } else {
        OutboundRanges::Only(nets)
    })
}

/// A uid or gid list (at least one): numbers, or user/group names that
/// `resolve` turns into numbers (istio-iptables passes names through to
/// iptables; we resolve them here so a missing name is refused up front).
pub fn parse_id_list(
    flag: &'static str,
    value: &str,
    resolve: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<u32>, CaptureError> {
    let items = split_list(value);
    if items.is_empty() {
        return Err(CaptureError::flag(
            flag,
            value,
            "expected at least one id, e.g. 1337",
        ));
    }
    items
        .into_iter()
        .map(|item| {
            if let Ok(id) = item.parse::<u32>() {
                return if id == u32::MAX {
                    Err(CaptureError::flag(
                        flag,
                        value,
                        format!("{item:?} is not an id between 0 and 4294967294"),
                    ))
                } else {
                    Ok(id)
                };
            }
            let name_like = !item.starts_with('-')
                && item
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !name_like {
                return Err(CaptureError::flag(
                    flag,
                    value,
                    format!("{item:?} is neither a numeric id nor a user/group name"),
                ));
            }
            resolve(item).ok_or_else(|| {
                CaptureError::flag(
                    flag,
                    value,
                    format!("{item:?} is not a numeric id and no such user/group exists here"),
                )
            })
        })
        .collect()
}

/// Resolves a user name to its uid via the system's user database.
pub fn lookup_uid(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// Resolves a group name to its gid via the system's group database.
pub fn lookup_gid(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// `--force-iptables-binary`: `legacy`, `nft` or empty (detect).
pub fn parse_iptables_binary(
    flag: &'static str,
    value: &str,
) -> Result<Option<IptablesBinary>, CaptureError> {
    match value.trim() {
        "" => Ok(None),
        "legacy" => Ok(Some(IptablesBinary::Legacy)),
        "nft" => Ok(Some(IptablesBinary::Nft)),
        _ => Err(CaptureError::flag(flag, value, "expected legacy or nft")),
    }
}

/// `-m`: `REDIRECT` or `TPROXY` (case-insensitive; empty means REDIRECT).
pub fn parse_mode(flag: &'static str, value: &str) -> Result<InterceptionMode, CaptureError> {
    match value.trim().to_ascii_uppercase().as_str() {
        "" | "REDIRECT" => Ok(InterceptionMode::Redirect),
        "TPROXY" => Ok(InterceptionMode::Tproxy),
        _ => Err(CaptureError::flag(
            flag,
            value,
            "expected REDIRECT or TPROXY",
        )),
    }
}

/// A Linux interface name: 1-15 bytes, not `.`/`..`, no `/`, `:`,
/// whitespace, quotes or control characters. A trailing `+` is iptables'
/// prefix wildcard and is allowed.
pub fn validate_interface(flag: &'static str, list: &str, name: &str) -> Result<(), CaptureError> {
    let bad = |reason: String| CaptureError::flag(flag, list, reason);
    if name.is_empty() || name.len() > 15 {
        return Err(bad(format!(
            "interface name {name:?} must be 1 to 15 bytes long"
        )));
    }
    if name == "." || name == ".." {
        return Err(bad(format!("interface name {name:?} is reserved")));
    }
    if let Some(c) = name.chars().find(|c| {
        *c == '/' || *c == ':' || *c == '"' || *c == '\'' || c.is_whitespace() || c.is_control()
    }) {
        return Err(bad(format!(
            "interface name {name:?} contains {c:?} (no '/', ':', quotes or whitespace allowed)"
        )));
    }
    if name.starts_with('-') || name.starts_with('!') {
        return Err(bad(format!(
            "interface name {name:?} must not start with '-' or '!'"
        )));
    }
    if name.trim_end_matches('+').contains('+') {
        return Err(bad(format!(
            "interface name {name:?}: '+' is only allowed as the last character (prefix wildcard)"
        )));
    }
    Ok(())
}

/// A comma list of interface names.
pub fn parse_interfaces(flag: &'static str, value: &str) -> Result<Vec<String>, CaptureError> {
    split_list(value)
        .into_iter()
        .map(|name| validate_interface(flag, value, name).map(|()| name.to_owned()))
        .collect()
}

/// A packet mark or routing table number.
pub fn parse_u32(flag: &'static str, value: &str, what: &str) -> Result<u32, CaptureError> {
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| CaptureError::flag(flag, value, format!("expected a {what} (0-4294967295)")))
}

/// A group name or numeric gid, as `iptables -m owner --gid-owner` takes.
fn validate_group(var: &'static str, list: &str, group: &str) -> Result<(), CaptureError> {
    let ok = !group.starts_with('-')
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if ok {
        Ok(())
    } else {
        Err(CaptureError::env(
            var,
            list,
            format!("{group:?} is not a group name or numeric gid"),
        ))
    }
}

/// Istio's owner-group filter: with include `*`, capture all but `exclude`.
pub fn parse_owner_groups(include: &str, exclude: &str) -> Result<OwnerGroups, CaptureError> {
    const INCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS";
    const EXCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE";
    const MAX_INCLUDE: usize = 64;
    if include.trim() == "*" {
        let groups = split_list(exclude);
        for g in &groups {
            validate_group(EXCLUDE, exclude, g)?;
        }
        return Ok(OwnerGroups::AllExcept(
            groups.into_iter().map(str::to_owned).collect(),
        ));
    }
    let groups = split_list(include);
    for g in &groups {
        validate_group(INCLUDE, include, g)?;
    }
    if groups.len() > MAX_INCLUDE {
        return Err(CaptureError::env(
            INCLUDE,
            include,
            format!(
                "at most {MAX_INCLUDE} groups can be listed (one iptables rule holds them all), got {}",
                groups.len()
            ),
        ));
    }
    Ok(OwnerGroups::Only(
        groups.into_iter().map(str::to_owned).collect(),
    ))
}

/// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: an IPv4 loopback CIDR with a /8-/32 mask.
pub fn parse_loopback_cidr(value: &str) -> Result<Ipv4Net, CaptureError> {
    const VAR: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
    let net: Ipv4Net = value
        .trim()
        .parse()
        .map_err(|_| CaptureError::env(VAR, value, "expected an IPv4 CIDR such as 127.0.0.1/32"))?;
    if !net.addr().is_loopback() {
        return Err(CaptureError::env(
            VAR,
            value,
            "the address must be an IPv4 loopback address (127.0.0.0/8)",
        ));
    }
    if net.prefix_len() < 8 {
        return Err(CaptureError::env(
            VAR,
            value,
            "the prefix length must be between 8 and 32",
        ));
    }
    Ok(net)
}

/// An IP address list such as `--dns-servers 127.0.0.53,::1`.
pub fn parse_dns_servers(flag: &'static str, value: &str) -> Result<Vec<DnsServer>, CaptureError> {
    split_list(value)
        .into_iter()
        .map(|item| {
            let addr = item.parse::<IpAddr>().map_err(|_| {
                CaptureError::flag(flag, value, format!("{item:?} is not an IP address"))
            })?;
            Ok(DnsServer {
                addr,
                text: item.to_owned(),
            })
        })
        .collect()
}

/// A boolean environment value the way Go's `strconv.ParseBool` reads it.
pub fn parse_env_bool(var: &'static str, value: &str) -> Result<bool, CaptureError> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(CaptureError::env(var, value, "expected true or false")),
    }
}

#[cfg(test)]
mod tests;
