//! The typed rule model shared by both backends: tables, chains, matches and
//! targets, and the `RulePlan` builder that collects them per IP family.
//! Rendering to text lives in `iptables` and `nft`; the capture logic that
//! decides which rules exist lives in `plan`.

use ipnet::IpNet;

/// A netfilter table as iptables names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Mangle,
    Nat,
    Raw,
}

impl Table {
    /// All tables we touch, in the order iptables-restore payloads list them
    /// (alphabetical, like Istio).
    pub const ALL: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];

    pub fn name(self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }
}

/// A chain: one of the kernel's built-in chains or one of ours (Istio's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    IstioInbound,
    IstioRedirect,
    IstioInRedirect,
    IstioOutput,
    IstioOutputDns,
    IstioDivert,
    IstioTproxy,
    IstioDrop,
}

impl Chain {
    /// Every chain we create (never a built-in one).
    pub const OURS: [Chain; 8] = [
        Chain::IstioInbound,
        Chain::IstioRedirect,
        Chain::IstioInRedirect,
        Chain::IstioOutput,
        Chain::IstioOutputDns,
        Chain::IstioDivert,
        Chain::IstioTproxy,
        Chain::IstioDrop,
    ];

    pub fn is_builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }

    /// The iptables name (`ISTIO_OUTPUT`, `PREROUTING`, ...).
    pub fn iptables_name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::IstioInbound => "ISTIO_INBOUND",
            Chain::IstioRedirect => "ISTIO_REDIRECT",
            Chain::IstioInRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::IstioOutputDns => "ISTIO_OUTPUT_DNS",
            Chain::IstioDivert => "ISTIO_DIVERT",
            Chain::IstioTproxy => "ISTIO_TPROXY",
            Chain::IstioDrop => "ISTIO_DROP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Whether an owner match is on the socket's uid or gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Uid,
    Gid,
}

/// One match of a rule. Order within a rule is kept as written, because the
/// iptables text (and thus the golden files) depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Proto(Proto),
    InIface(String),
    OutIface(String),
    Src(IpNet),
    /// Like `Src`, but with the address text kept as the user wrote it.
    SrcText(String),
    Dst {
        net: IpNet,
        negate: bool,
    },
    DstText(String),
    Dport {
        port: u16,
        negate: bool,
    },
    Sport(u16),
    /// `-m multiport [!] --dports a,b`.
    Dports {
        ports: Vec<u16>,
        negate: bool,
    },
    /// `-m owner [!] --uid-owner X` / `--gid-owner X` (X may be a group name).
    Owner {
        kind: OwnerKind,
        id: String,
        negate: bool,
    },
    /// `-m conntrack --ctstate ...`.
    CtState(CtState),
    /// `-m mark [!] --mark N`.
    Mark {
        value: u32,
        negate: bool,
    },
    /// `-m connmark --mark N`.
    Connmark(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    RelatedEstablished,
    Invalid,
}

/// What a rule does with a matching packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Return,
    Accept,
    Drop,
    Jump(Chain),
    /// NAT redirect to a local port. `singular` keeps Istio's spelling
    /// `--to-port` (both spellings mean the same to iptables).
    Redirect {
        port: u16,
        singular: bool,
    },
    /// TPROXY to a local port, marking the packet.
    Tproxy {
        mark: u32,
        port: u16,
    },
    SetMark(u32),
    /// `CONNMARK --save-mark`: copy the packet mark to the connection.
    SaveMark,
    /// `CONNMARK --restore-mark`: copy the connection mark to the packet.
    RestoreMark,
    /// `CT --zone N`.
    CtZone(u16),
}

/// Append to the end of the chain, or insert at a 1-based position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Append,
    Insert(u32),
}

/// One rule in one table and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: Chain,
    pub op: Op,
    pub matches: Vec<Match>,
    pub target: Target,
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

/// The rules of both families, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulePlan {
    pub v4: Vec<Rule>,
    /// Empty unless IPv6 is enabled.
    pub v6: Vec<Rule>,
    pub ipv6: bool,
}

impl RulePlan {
    pub fn new(ipv6: bool) -> Self {
        RulePlan {
            v4: Vec::new(),
            v6: Vec::new(),
            ipv6,
        }
    }

    pub fn rules(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn push(&mut self, family: Family, rule: Rule) {
        match family {
            Family::V4 => self.v4.push(rule),
            Family::V6 if self.ipv6 => self.v6.push(rule),
            Family::V6 => {}
        }
    }

    /// Appends a rule to one family.
    pub fn append_to(
        &mut self,
        family: Family,
        table: Table,
        chain: Chain,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            family,
            Rule {
                table,
                chain,
                op: Op::Append,
                matches,
                target,
            },
        );
    }

    /// Inserts a rule at `position` (1-based) in one family.
    pub fn insert_to(
        &mut self,
        family: Family,
        table: Table,
        chain: Chain,
        position: u32,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            family,
            Rule {
                table,
                chain,
                op: Op::Insert(position),
                matches,
                target,
            },
        );
    }

    /// Appends the same rule to both families.
    pub fn append(&mut self, table: Table, chain: Chain, matches: Vec<Match>, target: Target) {
        self.append_to(Family::V4, table, chain, matches.clone(), target.clone());
        self.append_to(Family::V6, table, chain, matches, target);
    }

    /// Inserts the same rule in both families.
    pub fn insert(
        &mut self,
        table: Table,
        chain: Chain,
        position: u32,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.insert_to(
            Family::V4,
            table,
            chain,
            position,
            matches.clone(),
            target.clone(),
        );
        self.insert_to(Family::V6, table, chain, position, matches, target);
    }

    /// Appends a rule whose matches depend on the family (e.g. the loopback
    /// address): `build` is called once per family.
    pub fn append_versioned(
        &mut self,
        table: Table,
        chain: Chain,
        target: Target,
        build: impl Fn(Family) -> Vec<Match>,
    ) {
        self.append_to(Family::V4, table, chain, build(Family::V4), target.clone());
        self.append_to(Family::V6, table, chain, build(Family::V6), target);
    }
}
