//! The capture logic: which rules exist, in which order, for a
//! `CaptureConfig`. It follows the behaviour of Istio's `istio-iptables`
//! (checked against Istio's golden files in `tests/golden.rs`) and is pure:
//! no I/O, no rendering (see `iptables` and `nft` for the text forms).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{CaptureConfig, InboundPorts, InterceptionMode, OutboundRanges, OwnerGroups};
use crate::rules::{Chain, CtState, Family, Match, OwnerKind, Proto, RulePlan, Table, Target};

mod dns;
mod tproxy;

/// Istio's DNS proxy port (the agent's resolver).
pub const DNS_PROXY_PORT: u16 = 15053;
/// The mark Istio puts on proxy-to-app packets in TPROXY mode.
pub const OUTBOUND_MARK: u32 = 1338;

const TCP: Match = Match::Proto(Proto::Tcp);
const UDP: Match = Match::Proto(Proto::Udp);

fn net(s: &str) -> IpNet {
    s.parse().expect("constant CIDR is valid")
}

fn lo_out() -> Match {
    Match::OutIface("lo".into())
}

fn owner(kind: OwnerKind, id: impl ToString, negate: bool) -> Match {
    Match::Owner {
        kind,
        id: id.to_string(),
        negate,
    }
}

fn dport(port: u16) -> Match {
    Match::Dport {
        port,
        negate: false,
    }
}

/// The address inbound passthrough traffic is sent from (`127.0.0.6`/`::6`).
fn passthrough_src(family: Family) -> IpNet {
    match family {
        Family::V4 => net("127.0.0.6/32"),
        Family::V6 => net("::6/128"),
    }
}

/// The loopback range outbound rules treat as "the pod itself".
fn loopback(cfg: &CaptureConfig, family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::V4(cfg.ipv4_loopback_cidr),
        Family::V6 => net("::1/128"),
    }
}

/// A configured outbound range list split per family.
#[derive(Default)]
struct FamilyRanges {
    wildcard: bool,
    v4: Vec<IpNet>,
    v6: Vec<IpNet>,
}

impl FamilyRanges {
    fn split(nets: &[IpNet], wildcard: bool) -> Self {
        FamilyRanges {
            wildcard,
            v4: nets
                .iter()
                .filter(|n| matches!(n, IpNet::V4(_)))
                .copied()
                .collect(),
            v6: nets
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)))
                .copied()
                .collect(),
        }
    }

    fn get(&self, family: Family) -> &[IpNet] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn has_loopback(&self) -> bool {
        self.v4
            .iter()
            .chain(&self.v6)
            .any(|n| n.addr().is_loopback())
    }
}

/// Builds the full rule plan for a configuration.
pub fn plan(cfg: &CaptureConfig) -> RulePlan {
    Planner::new(cfg).build()
}

struct Planner<'a> {
    cfg: &'a CaptureConfig,
    rules: RulePlan,
    redirect_dns: bool,
    dns_v4: Vec<&'a str>,
    dns_v6: Vec<&'a str>,
}

impl<'a> Planner<'a> {
    fn new(cfg: &'a CaptureConfig) -> Self {
        let mut dns_v4 = Vec::new();
        let mut dns_v6 = Vec::new();
        for server in &cfg.dns_servers {
            match server.addr {
                IpAddr::V4(_) => dns_v4.push(server.text.as_str()),
                IpAddr::V6(_) => dns_v6.push(server.text.as_str()),
            }
        }
        Planner {
            cfg,
            rules: RulePlan::new(cfg.enable_ipv6),
            redirect_dns: cfg.effective_redirect_dns(),
            dns_v4,
            dns_v6,
        }
    }

    fn tproxy(&self) -> bool {
        self.cfg.mode == InterceptionMode::Tproxy
    }

    fn build(mut self) -> RulePlan {
        let cfg = self.cfg;
        let include = match &cfg.outbound_ranges {
            OutboundRanges::All => FamilyRanges::split(&[], true),
            OutboundRanges::None => FamilyRanges::default(),
            OutboundRanges::Only(nets) => FamilyRanges::split(nets, false),
        };
        let exclude = FamilyRanges::split(&cfg.outbound_ranges_exclude, false);

        self.exclude_interfaces();
        for iface in &cfg.reroute_virtual_interfaces {
            self.rules.insert(
                Table::Nat,
                Chain::Prerouting,
                1,
                vec![Match::InIface(iface.clone())],
                Target::Return,
            );
        }
        if cfg.drop_invalid {
            self.rules.append(
                Table::Mangle,
                Chain::Prerouting,
                vec![Match::CtState(CtState::Invalid)],
                Target::Jump(Chain::IstioDrop),
            );
            self.rules
                .append(Table::Mangle, Chain::IstioDrop, vec![], Target::Drop);
        }
        self.rules.append(
            Table::Nat,
            Chain::IstioInbound,
            vec![TCP, dport(cfg.inbound_tunnel_port)],
            Target::Return,
        );
        self.rules.append(
            Table::Nat,
            Chain::IstioRedirect,
            vec![TCP],
            Target::Redirect {
                port: cfg.proxy_port,
                singular: false,
            },
        );
        self.rules.append(
            Table::Nat,
            Chain::IstioInRedirect,
            vec![TCP],
            Target::Redirect {
                port: cfg.inbound_capture_port,
                singular: false,
            },
        );
        self.inbound();
        self.rules.append(
            Table::Nat,
            Chain::Output,
            vec![],
            Target::Jump(Chain::IstioOutput),
        );
        for port in &cfg.outbound_ports_exclude {
            for proto in [TCP, UDP] {
                self.rules.append(
                    Table::Nat,
                    Chain::IstioOutput,
                    vec![proto, dport(*port)],
                    Target::Return,
                );
            }
        }
        self.rules
            .append_versioned(Table::Nat, Chain::IstioOutput, Target::Return, |f| {
                vec![lo_out(), Match::Src(passthrough_src(f))]
            });
        self.proxy_owner_exceptions(include.has_loopback());
        self.owner_groups();
        if self.redirect_dns {
            self.dns();
        }
        let loopback_return = |f| {
            vec![Match::Dst {
                net: loopback(cfg, f),
                negate: false,
            }]
        };
        let (v4, v6) = (loopback_return(Family::V4), loopback_return(Family::V6));
        self.rules.append_to(
            Family::V4,
            Table::Nat,
            Chain::IstioOutput,
            v4,
            Target::Return,
        );
        self.rules.append_to(
            Family::V6,
            Table::Nat,
            Chain::IstioOutput,
            v6,
            Target::Return,
        );
        for family in [Family::V4, Family::V6] {
            for cidr in exclude.get(family) {
                self.rules.append_to(
                    family,
                    Table::Nat,
                    Chain::IstioOutput,
                    vec![Match::Dst {
                        net: *cidr,
                        negate: false,
                    }],
                    Target::Return,
                );
            }
        }
        for port in &cfg.outbound_ports_include {
            self.rules.append(
                Table::Nat,
                Chain::IstioOutput,
                vec![TCP, dport(*port)],
                Target::Jump(Chain::IstioRedirect),
            );
        }
        for family in [Family::V4, Family::V6] {
            self.outbound_include(family, &include);
        }
        if self.tproxy() {
            self.tproxy_marks();
        }
        self.rules
    }

    /// `-c`: neither inbound nor outbound traffic of these interfaces.
    fn exclude_interfaces(&mut self) {
        let mut tables = vec![Table::Nat];
        if self.tproxy() {
            tables.push(Table::Mangle);
        }
        for table in tables {
            for iface in &self.cfg.exclude_interfaces {
                self.rules.append(
                    table,
                    Chain::Prerouting,
                    vec![Match::InIface(iface.clone())],
                    Target::Return,
                );
                self.rules.append(
                    table,
                    Chain::Output,
                    vec![Match::OutIface(iface.clone())],
                    Target::Return,
                );
            }
        }
    }

    /// `-b`/`-d`: inbound capture, by REDIRECT (nat) or TPROXY (mangle).
    fn inbound(&mut self) {
        let cfg = self.cfg;
        if cfg.inbound_ports == InboundPorts::None {
            return;
        }
        let table = if self.tproxy() {
            self.rules.append(
                Table::Mangle,
                Chain::IstioDivert,
                vec![],
                Target::SetMark(cfg.tproxy_mark),
            );
            self.rules
                .append(Table::Mangle, Chain::IstioDivert, vec![], Target::Accept);
            let target = Target::Tproxy {
                mark: cfg.tproxy_mark,
                port: cfg.inbound_capture_port,
            };
            self.rules
                .append_versioned(Table::Mangle, Chain::IstioTproxy, target, |f| {
                    vec![
                        Match::Dst {
                            net: loopback(cfg, f),
                            negate: true,
                        },
                        TCP,
                    ]
                });
            Table::Mangle
        } else {
            Table::Nat
        };
        self.rules.append(
            table,
            Chain::Prerouting,
            vec![TCP],
            Target::Jump(Chain::IstioInbound),
        );
        let established = Match::CtState(CtState::RelatedEstablished);
        match &cfg.inbound_ports {
            InboundPorts::None => {}
            InboundPorts::All => {
                for port in &cfg.inbound_ports_exclude {
                    self.rules.append(
                        table,
                        Chain::IstioInbound,
                        vec![TCP, dport(*port)],
                        Target::Return,
                    );
                }
                if self.tproxy() {
                    self.rules.append(
                        table,
                        Chain::IstioInbound,
                        vec![TCP, established],
                        Target::Jump(Chain::IstioDivert),
                    );
                    self.rules.append(
                        table,
                        Chain::IstioInbound,
                        vec![TCP],
                        Target::Jump(Chain::IstioTproxy),
                    );
                } else {
                    self.rules.append(
                        table,
                        Chain::IstioInbound,
                        vec![TCP],
                        Target::Jump(Chain::IstioInRedirect),
                    );
                }
            }
            InboundPorts::Only(ports) => {
                for port in ports {
                    if self.tproxy() {
                        self.rules.append(
                            table,
                            Chain::IstioInbound,
                            vec![TCP, dport(*port), established.clone()],
                            Target::Jump(Chain::IstioDivert),
                        );
                        self.rules.append(
                            table,
                            Chain::IstioInbound,
                            vec![TCP, dport(*port)],
                            Target::Jump(Chain::IstioTproxy),
                        );
                    } else {
                        self.rules.append(
                            table,
                            Chain::IstioInbound,
                            vec![TCP, dport(*port)],
                            Target::Jump(Chain::IstioInRedirect),
                        );
                    }
                }
            }
        }
    }

    /// The proxy's own traffic (`-u`, `-g`) is not captured, except its
    /// calls to the pod's own address, which go back through inbound.
    fn proxy_owner_exceptions(&mut self, include_has_loopback: bool) {
        let cfg = self.cfg;
        let tunnel = cfg.inbound_tunnel_port;
        let owners = cfg
            .proxy_uids
            .iter()
            .map(|id| (OwnerKind::Uid, *id))
            .chain(cfg.proxy_gids.iter().map(|id| (OwnerKind::Gid, *id)))
            .collect::<Vec<_>>();
        for (kind, id) in owners {
            // Istio skips port 53 here only for uids: the gid rule keeps 53.
            let skip_dns = self.redirect_dns && kind == OwnerKind::Uid;
            self.rules.append_versioned(
                Table::Nat,
                Chain::IstioOutput,
                Target::Jump(Chain::IstioInRedirect),
                |f| {
                    let port_match = if skip_dns {
                        Match::Dports {
                            ports: vec![53, tunnel],
                            negate: true,
                        }
                    } else {
                        Match::Dport {
                            port: tunnel,
                            negate: true,
                        }
                    };
                    vec![
                        lo_out(),
                        Match::Dst {
                            net: loopback(cfg, f),
                            negate: true,
                        },
                        TCP,
                        port_match,
                        owner(kind, id, false),
                    ]
                },
            );
            if !include_has_loopback {
                let matches = if self.redirect_dns {
                    vec![
                        lo_out(),
                        TCP,
                        Match::Dport {
                            port: 53,
                            negate: true,
                        },
                        owner(kind, id, true),
                    ]
                } else {
                    vec![lo_out(), owner(kind, id, true)]
                };
                self.rules
                    .append(Table::Nat, Chain::IstioOutput, matches, Target::Return);
            }
            self.rules.append(
                Table::Nat,
                Chain::IstioOutput,
                vec![owner(kind, id, false)],
                Target::Return,
            );
        }
    }

    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    fn owner_groups(&mut self) {
        match &self.cfg.owner_groups {
            OwnerGroups::AllExcept(groups) => {
                for group in groups {
                    self.rules.append(
                        Table::Nat,
                        Chain::IstioOutput,
                        vec![owner(OwnerKind::Gid, group, false)],
                        Target::Return,
                    );
                }
            }
            OwnerGroups::Only(groups) => {
                let matches = groups
                    .iter()
                    .map(|g| owner(OwnerKind::Gid, g, true))
                    .collect();
                self.rules
                    .append(Table::Nat, Chain::IstioOutput, matches, Target::Return);
            }
        }
    }

    /// `-i` (and `-k`, whose inbound traffic is treated as outbound).
    fn outbound_include(&mut self, family: Family, include: &FamilyRanges) {
        let virt = self.cfg.reroute_virtual_interfaces.clone();
        let redirect = Target::Jump(Chain::IstioRedirect);
        if include.wildcard {
            self.rules.append_to(
                family,
                Table::Nat,
                Chain::IstioOutput,
                vec![],
                redirect.clone(),
            );
            for iface in virt {
                self.rules.insert_to(
                    family,
                    Table::Nat,
                    Chain::Prerouting,
                    1,
                    vec![Match::InIface(iface)],
                    redirect.clone(),
                );
            }
            return;
        }
        for cidr in include.get(family) {
            let dst = Match::Dst {
                net: *cidr,
                negate: false,
            };
            for iface in &virt {
                self.rules.insert_to(
                    family,
                    Table::Nat,
                    Chain::Prerouting,
                    1,
                    vec![Match::InIface(iface.clone()), dst.clone()],
                    redirect.clone(),
                );
            }
            self.rules.append_to(
                family,
                Table::Nat,
                Chain::IstioOutput,
                vec![dst],
                redirect.clone(),
            );
        }
    }
}
