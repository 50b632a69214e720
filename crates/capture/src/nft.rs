//! The native nftables backend (`--native-nftables`): the same rule plan as
//! the iptables backend, written as nftables tables of our own,
//! `table ip weft` (and `table ip6 weft` with IPv6). Each iptables table
//! and chain becomes one nft chain (`nat_prerouting`, `nat_istio_output`,
//! ...); built-in chains become base chains hooked at the same priority
//! iptables uses. Applying is one atomic `nft -f` transaction that replaces
//! our tables; cleaning deletes them.

use std::fmt::Write as _;

use crate::config::CaptureConfig;
use crate::error::CaptureError;
use crate::exec;
use crate::plan;
use crate::route;
use crate::rules::{Chain, CtState, Family, Match, Op, OwnerKind, Proto, Rule, Table, Target};

/// The name of our nft tables (one per family).
pub const TABLE: &str = "weft";

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn chain_name(table: Table, chain: Chain) -> String {
    format!(
        "{}_{}",
        table.name(),
        chain.iptables_name().to_ascii_lowercase()
    )
}

/// The base-chain declaration for a built-in chain, with iptables' priority.
fn hook(table: Table, chain: Chain) -> Option<String> {
    let hook = match chain {
        Chain::Prerouting => "prerouting",
        Chain::Output => "output",
        _ => return None,
    };
    let (kind, priority) = match (table, chain) {
        (Table::Nat, _) => ("nat", -100),
        (Table::Mangle, Chain::Output) => ("route", -150),
        (Table::Mangle, _) => ("filter", -150),
        (Table::Raw, _) => ("filter", -300),
    };
    Some(format!(
        "type {kind} hook {hook} priority {priority}; policy accept;"
    ))
}

/// The chains of one family with their rules in final order (inserts
/// applied), in order of first appearance.
fn ordered_chains(rules: &[Rule]) -> Vec<((Table, Chain), Vec<&Rule>)> {
    type Chains<'r> = Vec<((Table, Chain), Vec<&'r Rule>)>;
    fn touch(chains: &mut Chains<'_>, key: (Table, Chain)) -> usize {
        if let Some(i) = chains.iter().position(|(k, _)| *k == key) {
            i
        } else {
            chains.push((key, Vec::new()));
            chains.len() - 1
        }
    }
    let mut chains: Chains<'_> = Vec::new();
    for rule in rules {
        let i = touch(&mut chains, (rule.table, rule.chain));
        if let Target::Jump(target) = rule.target {
            touch(&mut chains, (rule.table, target));
        }
        let list = &mut chains[i].1;
        match rule.op {
            Op::Append => list.push(rule),
            Op::Insert(pos) => {
                let at = (pos.max(1) as usize - 1).min(list.len());
                list.insert(at, rule);
            }
        }
    }
    chains
}

fn iface(name: &str) -> String {
    // iptables' prefix wildcard `eth+` is `eth*` in nft.
    match name.strip_suffix('+') {
        Some(prefix) => format!("\"{prefix}*\""),
        None => format!("\"{name}\""),
    }
}

fn neq(negate: bool) -> &'static str {
    if negate { "!= " } else { "" }
}

fn render_rule(family: Family, rule: &Rule) -> String {
    let ip = family_name(family);
    let mut proto = Proto::Tcp;
    let mut parts: Vec<String> = Vec::new();
    for m in &rule.matches {
        parts.push(match m {
            Match::Proto(p) => {
                proto = *p;
                format!("meta l4proto {}", p.name())
            }
            Match::InIface(i) => format!("iifname {}", iface(i)),
            Match::OutIface(i) => format!("oifname {}", iface(i)),
            Match::Src(net) => format!("{ip} saddr {net}"),
            Match::SrcText(text) => format!("{ip} saddr {text}"),
            Match::Dst { net, negate } => format!("{ip} daddr {}{net}", neq(*negate)),
            Match::DstText(text) => format!("{ip} daddr {text}"),
            Match::Dport { port, negate } => {
                format!("{} dport {}{port}", proto.name(), neq(*negate))
            }
            Match::Sport(port) => format!("{} sport {port}", proto.name()),
            Match::Dports { ports, negate } => {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!(
                    "{} dport {}{{ {} }}",
                    proto.name(),
                    neq(*negate),
                    list.join(", ")
                )
            }
            Match::Owner { kind, id, negate } => {
                let key = match kind {
                    OwnerKind::Uid => "skuid",
                    OwnerKind::Gid => "skgid",
                };
                let value = if id.chars().all(|c| c.is_ascii_digit()) {
                    id.clone()
                } else {
                    format!("\"{id}\"")
                };
                format!("meta {key} {}{value}", neq(*negate))
            }
            Match::CtState(CtState::RelatedEstablished) => {
                "ct state related,established".to_owned()
            }
            Match::CtState(CtState::Invalid) => "ct state invalid".to_owned(),
            Match::Mark { value, negate } => format!("meta mark {}{value}", neq(*negate)),
            Match::Connmark(value) => format!("ct mark {value}"),
        });
    }
    parts.push(match &rule.target {
        Target::Return => "return".to_owned(),
        Target::Accept => "accept".to_owned(),
        Target::Drop => "drop".to_owned(),
        Target::Jump(chain) => format!("jump {}", chain_name(rule.table, *chain)),
        Target::Redirect { port, .. } => format!("redirect to :{port}"),
        Target::Tproxy { mark, port } => {
            format!("tproxy to :{port} meta mark set {mark} accept")
        }
        Target::SetMark(mark) => format!("meta mark set {mark}"),
        Target::SaveMark => "ct mark set meta mark".to_owned(),
        Target::RestoreMark => "meta mark set ct mark".to_owned(),
        Target::CtZone(zone) => format!("ct zone set {zone}"),
    });
    parts.join(" ")
}

/// The declaration of one family's table.
pub(crate) fn render_table(family: Family, rules: &[Rule]) -> String {
    let fam = family_name(family);
    let mut out = format!("table {fam} {TABLE} {{\n");
    for ((table, chain), list) in ordered_chains(rules) {
        let _ = writeln!(out, "\tchain {} {{", chain_name(table, chain));
        if let Some(decl) = hook(table, chain) {
            let _ = writeln!(out, "\t\t{decl}");
        }
        for rule in list {
            let _ = writeln!(out, "\t\t{}", render_rule(family, rule));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

/// The complete `nft -f` script: for each family, replace our table
/// (create it empty, delete it, declare it anew: one transaction, so a
/// second run leaves one copy). Pure.
pub fn generate(cfg: &CaptureConfig) -> String {
    let plan = plan::plan(cfg);
    let mut out = String::new();
    for family in families(cfg) {
        let fam = family_name(family);
        let _ = writeln!(out, "table {fam} {TABLE} {{}}");
        let _ = writeln!(out, "delete table {fam} {TABLE}");
        out.push_str(&render_table(family, plan.rules(family)));
    }
    out
}

fn families(cfg: &CaptureConfig) -> Vec<Family> {
    if cfg.enable_ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Extracts the line of the first `file:LINE:COL: Error:` in nft's stderr.
pub(crate) fn failed_line(stderr: &str) -> Option<usize> {
    let line = stderr.lines().find(|l| l.contains(": Error:"))?;
    let mut it = line.split(':');
    it.next()?;
    it.next()?.trim().parse().ok()
}

/// Runs `nft -f -` (`check` adds `-c`: validate only) and maps a refused
/// line back to its text.
pub(crate) fn run_script(script: &str, check: bool) -> Result<(), CaptureError> {
    let args: &[&str] = if check {
        &["-c", "-f", "-"]
    } else {
        &["-f", "-"]
    };
    let out = exec::run("nft", args, Some(script))?;
    if out.success {
        return Ok(());
    }
    if let Some(line) = failed_line(&out.stderr) {
        let rule = script
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim()
            .to_owned();
        let detail = out
            .stderr
            .lines()
            .find(|l| l.contains(": Error:"))
            .and_then(|l| l.split_once("Error:"))
            .map(|(_, d)| d.trim().to_owned())
            .unwrap_or_else(|| out.stderr.clone());
        return Err(CaptureError::RuleRejected {
            tool: "nft".into(),
            line,
            rule,
            detail,
        });
    }
    Err(exec::failure("nft", args, &out))
}

/// Our tables as they exist now (`nft list table ...`), for rollback.
fn snapshot() -> Vec<(Family, String)> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|family| {
            let out =
                exec::run("nft", &["list", "table", family_name(family), TABLE], None).ok()?;
            out.success.then_some((family, out.stdout))
        })
        .collect()
}

/// The script that deletes whichever of our tables exist.
fn delete_script() -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        let fam = family_name(family);
        let _ = writeln!(out, "table {fam} {TABLE} {{}}");
        let _ = writeln!(out, "delete table {fam} {TABLE}");
    }
    out
}

fn preflight(action: &str) -> Result<(), CaptureError> {
    exec::require_tool("nft", "nftables")?;
    exec::require_net_admin(action)
}

/// Applies the nft script atomically, then the routes; on a route failure
/// our tables go back to what they were. With IPv6 off, an `ip6 weft`
/// table of an earlier dual-stack run is deleted in the same transaction.
pub fn apply(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    preflight("applying nftables rules")?;
    if cfg.needs_tproxy_route() || cfg.enable_ipv6 {
        exec::require_tool("ip", "iproute2")?;
    }
    let before = snapshot();
    let mut script = generate(cfg);
    // IPv6 off now: an IPv6 table of an earlier run goes in the same
    // transaction.
    let stale_v6 = !cfg.enable_ipv6 && before.iter().any(|(f, _)| *f == Family::V6);
    if stale_v6 {
        let _ = writeln!(script, "delete table ip6 {TABLE}");
    }
    run_script(&script, true)?;
    run_script(&script, false)?;
    if stale_v6 {
        let _ = route::remove_family(cfg, Family::V6);
        let _ = route::remove_ipv6_address();
    }
    if let Err(e) = route::add(cfg) {
        let _ = route::remove(cfg, cfg.enable_ipv6);
        let mut restore = delete_script();
        for (_, text) in before {
            restore.push_str(&text);
        }
        if let Err(rollback) = run_script(&restore, false) {
            tracing::error!(error = %rollback, "rollback of the nft tables failed");
        }
        return Err(e);
    }
    Ok(())
}

/// Deletes our tables (`ip weft`, `ip6 weft`) and the routes.
pub fn clean(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    preflight("removing nftables rules")?;
    exec::require_tool("ip", "iproute2")?;
    run_script(&delete_script(), false)?;
    route::remove(cfg, cfg.enable_ipv6)
}

#[cfg(test)]
mod tests;
