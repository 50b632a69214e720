//! TPROXY inbound capture: the connection marks that route replies and
//! proxy-to-app packets through the policy table without capturing them
//! again. Part of the pure capture plan.

use super::{OUTBOUND_MARK, Planner, TCP, lo_out, loopback, owner, passthrough_src};
use crate::rules::{Chain, Family, Match, OwnerKind, Table, Target};

impl Planner<'_> {
    /// TPROXY: connection marks so replies and proxy-to-app packets route
    /// through the policy table and are not captured again.
    pub(super) fn tproxy_marks(&mut self) {
        let cfg = self.cfg;
        let mark = cfg.tproxy_mark;
        self.rules.append(
            Table::Mangle,
            Chain::Prerouting,
            vec![
                TCP,
                Match::Mark {
                    value: mark,
                    negate: false,
                },
            ],
            Target::SaveMark,
        );
        self.rules.append(
            Table::Mangle,
            Chain::Output,
            vec![
                TCP,
                lo_out(),
                Match::Mark {
                    value: mark,
                    negate: false,
                },
            ],
            Target::Return,
        );
        let owners = cfg
            .proxy_uids
            .iter()
            .map(|id| (OwnerKind::Uid, *id))
            .chain(cfg.proxy_gids.iter().map(|id| (OwnerKind::Gid, *id)))
            .collect::<Vec<_>>();
        for (kind, id) in owners {
            self.rules.append_versioned(
                Table::Mangle,
                Chain::Output,
                Target::SetMark(OUTBOUND_MARK),
                |f| {
                    vec![
                        Match::Dst {
                            net: loopback(cfg, f),
                            negate: true,
                        },
                        TCP,
                        lo_out(),
                        owner(kind, id, false),
                    ]
                },
            );
        }
        self.rules.append(
            Table::Mangle,
            Chain::Output,
            vec![TCP, Match::Connmark(mark)],
            Target::RestoreMark,
        );
        self.rules.insert(
            Table::Mangle,
            Chain::IstioInbound,
            1,
            vec![
                TCP,
                Match::Mark {
                    value: mark,
                    negate: false,
                },
            ],
            Target::Return,
        );
        for family in [Family::V4, Family::V6] {
            self.rules.insert_to(
                family,
                Table::Mangle,
                Chain::IstioInbound,
                2,
                vec![
                    TCP,
                    Match::Src(passthrough_src(family)),
                    Match::InIface("lo".into()),
                ],
                Target::Return,
            );
        }
        self.rules.insert(
            Table::Mangle,
            Chain::IstioInbound,
            3,
            vec![
                TCP,
                Match::InIface("lo".into()),
                Match::Mark {
                    value: OUTBOUND_MARK,
                    negate: true,
                },
            ],
            Target::Return,
        );
    }
}
