//! Rendering the rule plan as `iptables-restore` input, in Istio's exact
//! spelling (so it can be compared with Istio's golden files), and reading
//! `iptables-save` output back. Pure text; running the tools lives in
//! `apply`.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::rules::{Chain, CtState, Match, Op, OwnerKind, Rule, Table, Target};

/// The restore payload of one family: per table, the lines between
/// `* table` and `COMMIT`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePayloads {
    /// `(table, lines)` in payload order (mangle, nat, raw); tables without
    /// rules are left out.
    pub tables: Vec<(Table, Vec<String>)>,
}

impl TablePayloads {
    /// Renders `* table ... COMMIT` blocks, one line per rule.
    pub fn to_restore(&self) -> String {
        let mut out = String::new();
        for (table, lines) in &self.tables {
            let _ = writeln!(out, "* {}", table.name());
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// Groups rules per table: first `-N` for every chain of ours that has rules
/// or is jumped to (in order of first use), then the rules in plan order.
pub fn render_tables(rules: &[Rule]) -> TablePayloads {
    let mut payloads = TablePayloads::default();
    for table in Table::ALL {
        let in_table: Vec<&Rule> = rules.iter().filter(|r| r.table == table).collect();
        if in_table.is_empty() {
            continue;
        }
        let mut declared = HashSet::new();
        let mut lines = Vec::new();
        let owned_chains = in_table.iter().map(|r| r.chain);
        let jump_targets = in_table.iter().filter_map(|r| match r.target {
            Target::Jump(chain) => Some(chain),
            _ => None,
        });
        for chain in owned_chains.chain(jump_targets) {
            if !chain.is_builtin() && declared.insert(chain) {
                lines.push(format!("-N {}", chain.iptables_name()));
            }
        }
        lines.extend(in_table.iter().map(|r| render_rule(r)));
        payloads.tables.push((table, lines));
    }
    payloads
}

/// The restore payload for a list of rules (one family).
pub fn render_restore(rules: &[Rule]) -> String {
    render_tables(rules).to_restore()
}

/// One rule as an iptables command tail: `-A CHAIN matches -j TARGET`.
pub fn render_rule(rule: &Rule) -> String {
    let mut out = match rule.op {
        Op::Append => format!("-A {}", rule.chain.iptables_name()),
        Op::Insert(pos) => format!("-I {} {pos}", rule.chain.iptables_name()),
    };
    let spec = render_spec(&rule.matches, &rule.target);
    if !spec.is_empty() {
        out.push(' ');
        out.push_str(&spec);
    }
    out
}

/// The rule specification without the chain (for `-C`/`-D`).
pub fn render_spec(matches: &[Match], target: &Target) -> String {
    let mut parts: Vec<String> = matches.iter().map(render_match).collect();
    parts.push(render_target(target));
    parts.join(" ")
}

fn not(negate: bool) -> &'static str {
    if negate { "! " } else { "" }
}

fn render_match(m: &Match) -> String {
    match m {
        Match::Proto(p) => format!("-p {}", p.name()),
        Match::InIface(i) => format!("-i {i}"),
        Match::OutIface(i) => format!("-o {i}"),
        Match::Src(net) => format!("-s {net}"),
        Match::SrcText(text) => format!("-s {text}"),
        Match::Dst { net, negate } => format!("{}-d {net}", not(*negate)),
        Match::DstText(text) => format!("-d {text}"),
        Match::Dport { port, negate } => format!("{}--dport {port}", not(*negate)),
        Match::Sport(port) => format!("--sport {port}"),
        Match::Dports { ports, negate } => {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("-m multiport {}--dports {}", not(*negate), list.join(","))
        }
        Match::Owner { kind, id, negate } => {
            let opt = match kind {
                OwnerKind::Uid => "--uid-owner",
                OwnerKind::Gid => "--gid-owner",
            };
            format!("-m owner {}{opt} {id}", not(*negate))
        }
        Match::CtState(state) => {
            let s = match state {
                CtState::RelatedEstablished => "RELATED,ESTABLISHED",
                CtState::Invalid => "INVALID",
            };
            format!("-m conntrack --ctstate {s}")
        }
        Match::Mark { value, negate } => format!("-m mark {}--mark {value}", not(*negate)),
        Match::Connmark(value) => format!("-m connmark --mark {value}"),
    }
}

fn render_target(t: &Target) -> String {
    match t {
        Target::Return => "-j RETURN".into(),
        Target::Accept => "-j ACCEPT".into(),
        Target::Drop => "-j DROP".into(),
        Target::Jump(chain) => format!("-j {}", chain.iptables_name()),
        Target::Redirect { port, singular } => {
            let opt = if *singular { "--to-port" } else { "--to-ports" };
            format!("-j REDIRECT {opt} {port}")
        }
        Target::Tproxy { mark, port } => {
            format!("-j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {port}")
        }
        Target::SetMark(mark) => format!("-j MARK --set-mark {mark}"),
        Target::SaveMark => "-j CONNMARK --save-mark".into(),
        Target::RestoreMark => "-j CONNMARK --restore-mark".into(),
        Target::CtZone(zone) => format!("-j CT --zone {zone}"),
    }
}

// === iptables-save parsing ===

/// One table of `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// `:CHAIN POLICY [counters]` lines, chain names only, in order.
    pub chains: Vec<(String, String)>,
    /// `-A CHAIN ...` lines as saved.
    pub rules: Vec<String>,
    /// The raw block from `*table` through `COMMIT`, restorable as-is.
    pub text: String,
}

impl SavedTable {
    /// True for a table holding nothing but the built-in chains with an
    /// ACCEPT policy: as if it did not exist.
    pub fn is_pristine(&self) -> bool {
        self.rules.is_empty()
            && self
                .chains
                .iter()
                .all(|(name, policy)| is_builtin_name(name) && policy == "ACCEPT")
    }

    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|(c, _)| c == name)
    }
}

fn is_builtin_name(name: &str) -> bool {
    matches!(
        name,
        "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
    )
}

/// Parses `iptables-save` output into its tables (name -> table).
pub fn parse_save(text: &str) -> Vec<(String, SavedTable)> {
    let mut tables = Vec::new();
    let mut current: Option<(String, SavedTable)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('*') {
            let mut table = SavedTable::default();
            table.text.push_str(trimmed);
            table.text.push('\n');
            current = Some((name.trim().to_owned(), table));
            continue;
        }
        let Some((_, table)) = current.as_mut() else {
            continue;
        };
        table.text.push_str(trimmed);
        table.text.push('\n');
        if trimmed == "COMMIT" {
            if let Some(done) = current.take() {
                tables.push(done);
            }
        } else if let Some(decl) = trimmed.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            let name = it.next().unwrap_or_default().to_owned();
            let policy = it.next().unwrap_or("-").to_owned();
            table.chains.push((name, policy));
        } else if trimmed.starts_with("-A ") {
            table.rules.push(trimmed.to_owned());
        }
    }
    tables
}

/// Saved rules in built-in chains that jump to one of our chains, as
/// `(chain, spec)` ready for `-D chain spec`.
pub fn jumps_into_ours(table: &SavedTable) -> Vec<(String, String)> {
    let ours: HashSet<&str> = Chain::OURS.iter().map(|c| c.iptables_name()).collect();
    table
        .rules
        .iter()
        .filter_map(|line| {
            let rest = line.strip_prefix("-A ")?;
            let (chain, spec) = rest.split_once(' ')?;
            if !is_builtin_name(chain) {
                return None;
            }
            let tokens: Vec<&str> = spec.split_whitespace().collect();
            let jumps = tokens
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && ours.contains(w[1]));
            jumps.then(|| (chain.to_owned(), spec.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
