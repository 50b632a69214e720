//! Unit tests for the nftables text.

use super::*;
use crate::config::{InboundPorts, InterceptionMode};

fn cfg() -> CaptureConfig {
    CaptureConfig::default()
}

#[test]
fn redirect_mode_table() {
    let mut c = cfg();
    c.inbound_ports = InboundPorts::All;
    c.inbound_ports_exclude = vec![15090];
    let text = generate(&c);
    let expected = "table ip weft {}
delete table ip weft
table ip weft {
\tchain nat_istio_inbound {
\t\tmeta l4proto tcp tcp dport 15008 return
\t\tmeta l4proto tcp tcp dport 15090 return
\t\tmeta l4proto tcp jump nat_istio_in_redirect
\t}
\tchain nat_istio_redirect {
\t\tmeta l4proto tcp redirect to :15001
\t}
\tchain nat_istio_in_redirect {
\t\tmeta l4proto tcp redirect to :15006
\t}
\tchain nat_prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta l4proto tcp jump nat_istio_inbound
\t}
\tchain nat_output {
\t\ttype nat hook output priority -100; policy accept;
\t\tjump nat_istio_output
\t}
\tchain nat_istio_output {
\t\toifname \"lo\" ip saddr 127.0.0.6/32 return
\t\toifname \"lo\" ip daddr != 127.0.0.1/32 meta l4proto tcp tcp dport != 15008 meta skuid 1337 jump nat_istio_in_redirect
\t\toifname \"lo\" meta skuid != 1337 return
\t\tmeta skuid 1337 return
\t\toifname \"lo\" ip daddr != 127.0.0.1/32 meta l4proto tcp tcp dport != 15008 meta skgid 1337 jump nat_istio_in_redirect
\t\toifname \"lo\" meta skgid != 1337 return
\t\tmeta skgid 1337 return
\t\tip daddr 127.0.0.1/32 return
\t}
}
";
    pretty_assertions::assert_eq!(text, expected);
}

#[test]
fn ipv6_gets_its_own_table_and_addresses() {
    let mut c = cfg();
    c.enable_ipv6 = true;
    let text = generate(&c);
    assert!(text.contains("table ip6 weft {}\ndelete table ip6 weft\ntable ip6 weft {\n"));
    assert!(
        text.contains("oifname \"lo\" ip6 saddr ::6/128 return"),
        "{text}"
    );
    assert!(text.contains("ip6 daddr ::1/128 return"), "{text}");
}

#[test]
fn inserts_land_first_like_iptables() {
    let mut c = cfg();
    c.reroute_virtual_interfaces = vec!["eth1".into(), "eth2".into()];
    c.outbound_ranges = crate::OutboundRanges::All;
    let text = generate(&c);
    let pre = text
        .split("chain nat_prerouting {\n")
        .nth(1)
        .unwrap()
        .split("\t}")
        .next()
        .unwrap();
    let rules: Vec<&str> = pre.lines().map(str::trim).skip(1).collect();
    assert_eq!(
        rules,
        vec![
            "iifname \"eth2\" jump nat_istio_redirect",
            "iifname \"eth1\" jump nat_istio_redirect",
            "iifname \"eth2\" return",
            "iifname \"eth1\" return",
        ]
    );
}

#[test]
fn tproxy_uses_mangle_priorities_and_marks() {
    let mut c = cfg();
    c.mode = InterceptionMode::Tproxy;
    c.inbound_ports = InboundPorts::Only(vec![8080]);
    let text = generate(&c);
    assert!(text.contains("type filter hook prerouting priority -150; policy accept;"));
    assert!(text.contains("type route hook output priority -150; policy accept;"));
    assert!(text.contains(
        "ip daddr != 127.0.0.1/32 meta l4proto tcp tproxy to :15006 meta mark set 1337 accept"
    ));
    assert!(text.contains(
        "meta l4proto tcp tcp dport 8080 ct state related,established jump mangle_istio_divert"
    ));
    assert!(text.contains("meta l4proto tcp meta mark 1337 ct mark set meta mark"));
    assert!(text.contains("meta l4proto tcp ct mark 1337 meta mark set ct mark"));
    // Istio's inserts at 1..3 end up first in the inbound chain.
    let inbound = text.split("chain mangle_istio_inbound {\n").nth(1).unwrap();
    let first: Vec<&str> = inbound.lines().take(3).map(str::trim).collect();
    assert_eq!(
        first,
        vec![
            "meta l4proto tcp meta mark 1337 return",
            "meta l4proto tcp ip saddr 127.0.0.6/32 iifname \"lo\" return",
            "meta l4proto tcp iifname \"lo\" meta mark != 1338 return",
        ]
    );
}

#[test]
fn dns_zones_in_raw_priority_and_group_names_quoted() {
    let mut c = cfg();
    c.redirect_dns = true;
    c.dns_servers = vec![crate::DnsServer::from(
        "10.96.0.10".parse::<std::net::IpAddr>().unwrap(),
    )];
    c.owner_groups = crate::OwnerGroups::Only(vec!["java".into(), "202".into()]);
    let text = generate(&c);
    assert!(text.contains("type filter hook output priority -300; policy accept;"));
    assert!(text.contains("meta l4proto udp udp dport 53 ip daddr 10.96.0.10/32 ct zone set 2"));
    assert!(text.contains("meta l4proto udp udp sport 53 ip saddr 10.96.0.10/32 ct zone set 1"));
    assert!(
        text.contains("meta skgid != \"java\" meta skgid != 202 return"),
        "{text}"
    );
    assert!(
        text.contains("meta l4proto udp udp dport 53 ip daddr 10.96.0.10/32 redirect to :15053")
    );
}

#[test]
fn error_lines_are_found() {
    let err = "/dev/stdin:12:3-20: Error: Could not process rule: No such file or directory\nfoo";
    assert_eq!(failed_line(err), Some(12));
    assert_eq!(failed_line("nothing"), None);
}
