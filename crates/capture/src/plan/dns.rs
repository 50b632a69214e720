//! DNS capture (`--redirect-dns`): port 53 to the resolvers goes to the
//! agent's DNS proxy, with conntrack zones keeping the two legs of a query
//! apart. Part of the pure capture plan.

use super::{DNS_PROXY_PORT, Planner, TCP, UDP, dport, owner};
use crate::rules::{Chain, Family, Match, OwnerKind, Table, Target};

impl Planner<'_> {
    /// `--redirect-dns`: DNS to the resolvers goes to the agent on 15053,
    /// with conntrack zones that keep the two legs of a query apart.
    pub(super) fn dns(&mut self) {
        let cfg = self.cfg;
        let all = cfg.capture_all_dns;
        self.rules.append(
            Table::Raw,
            Chain::Output,
            vec![],
            Target::Jump(Chain::IstioOutputDns),
        );
        let servers = [
            (Family::V4, self.dns_v4.clone(), 32),
            (Family::V6, self.dns_v6.clone(), 128),
        ];
        for (family, list, _) in &servers {
            if all || !list.is_empty() {
                self.rules.append_to(
                    *family,
                    Table::Nat,
                    Chain::IstioOutput,
                    vec![],
                    Target::Jump(Chain::IstioOutputDns),
                );
            }
        }
        for (proto, singular) in [(TCP, false), (UDP, true)] {
            let target = Target::Redirect {
                port: DNS_PROXY_PORT,
                singular,
            };
            if all {
                self.rules.append(
                    Table::Nat,
                    Chain::IstioOutputDns,
                    vec![proto.clone(), dport(53)],
                    target.clone(),
                );
                continue;
            }
            for (family, list, bits) in &servers {
                for server in list {
                    self.rules.append_to(
                        *family,
                        Table::Nat,
                        Chain::IstioOutputDns,
                        vec![
                            proto.clone(),
                            dport(53),
                            Match::DstText(format!("{server}/{bits}")),
                        ],
                        target.clone(),
                    );
                }
            }
        }
        // Conntrack zones: the proxy's queries upstream in zone 1, its
        // answers to apps in zone 2.
        let owners = cfg
            .proxy_uids
            .iter()
            .map(|id| (OwnerKind::Uid, *id))
            .chain(cfg.proxy_gids.iter().map(|id| (OwnerKind::Gid, *id)))
            .collect::<Vec<_>>();
        for (kind, id) in owners {
            self.rules.append(
                Table::Raw,
                Chain::IstioOutputDns,
                vec![UDP, dport(53), owner(kind, id, false)],
                Target::CtZone(1),
            );
            self.rules.append(
                Table::Raw,
                Chain::IstioOutputDns,
                vec![UDP, Match::Sport(DNS_PROXY_PORT), owner(kind, id, false)],
                Target::CtZone(2),
            );
        }
        if all {
            self.rules.append(
                Table::Raw,
                Chain::Prerouting,
                vec![],
                Target::Jump(Chain::IstioInbound),
            );
            self.rules.append(
                Table::Raw,
                Chain::IstioOutputDns,
                vec![UDP, dport(53)],
                Target::CtZone(2),
            );
            self.rules.append(
                Table::Raw,
                Chain::IstioInbound,
                vec![UDP, Match::Sport(53)],
                Target::CtZone(1),
            );
            return;
        }
        for (family, list, bits) in &servers {
            if !list.is_empty() {
                self.rules.append_to(
                    *family,
                    Table::Raw,
                    Chain::Prerouting,
                    vec![],
                    Target::Jump(Chain::IstioInbound),
                );
            }
            for server in list {
                let host = format!("{server}/{bits}");
                self.rules.append_to(
                    *family,
                    Table::Raw,
                    Chain::IstioOutputDns,
                    vec![UDP, dport(53), Match::DstText(host.clone())],
                    Target::CtZone(2),
                );
                self.rules.append_to(
                    *family,
                    Table::Raw,
                    Chain::IstioInbound,
                    vec![UDP, Match::Sport(53), Match::SrcText(host)],
                    Target::CtZone(1),
                );
            }
        }
    }
}
