//! Applying and removing the iptables rule set in the current network
//! namespace.
//!
//! Per family, one `iptables-restore --noflush` payload holds, per table,
//! first the removal of what we own (jumps from built-in chains into our
//! `ISTIO_*` chains, our other built-in-chain rules that exist, then our
//! chains) and then the new rules, so a second run replaces instead of
//! duplicating. The payload is checked with `--test` first; if the real run
//! still fails half-way (iptables commits table by table), the tables are
//! restored from the snapshot taken before. Other rules are never touched.

use crate::config::{CaptureConfig, InboundPorts, InterceptionMode, IptablesBinary};
use crate::error::CaptureError;
use crate::exec;
use crate::iptables::{self, SavedTable, jumps_into_ours, parse_save, render_spec};
use crate::plan;
use crate::route;
use crate::rules::{Chain, Family, Rule, Table, Target};

/// The iptables binaries used for one family: the system's default
/// (`iptables-restore`), or explicitly the nf_tables or legacy variant.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub family: Family,
    pub restore: String,
    pub save: String,
    pub iptables: String,
    pub nft_family: &'static str,
}

impl Tools {
    pub(crate) fn new(family: Family, variant: Option<IptablesBinary>) -> Tools {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let infix = match variant {
            None => "",
            Some(IptablesBinary::Nft) => "-nft",
            Some(IptablesBinary::Legacy) => "-legacy",
        };
        Tools {
            family,
            restore: format!("{base}{infix}-restore"),
            save: format!("{base}{infix}-save"),
            iptables: format!("{base}{infix}"),
            nft_family: match family {
                Family::V4 => "ip",
                Family::V6 => "ip6",
            },
        }
    }

    /// The variant to use, like Istio decides it: the forced one, else the
    /// one that already holds rules in this namespace (legacy if only it
    /// does, nf_tables if it does), else the system default.
    pub(crate) fn detect(family: Family, forced: Option<IptablesBinary>) -> Tools {
        if forced.is_some() {
            return Tools::new(family, forced);
        }
        let rules = |variant| -> usize {
            let t = Tools::new(family, Some(variant));
            if exec::find_tool(&t.save).is_none() {
                return 0;
            }
            exec::run(&t.save, &[], None)
                .map(|o| o.stdout.lines().filter(|l| l.starts_with("-A ")).count())
                .unwrap_or(0)
        };
        let (legacy, nft) = (rules(IptablesBinary::Legacy), rules(IptablesBinary::Nft));
        let variant = match (legacy, nft) {
            (l, 0) if l > 0 => Some(IptablesBinary::Legacy),
            (_, n) if n > 0 => Some(IptablesBinary::Nft),
            _ => None,
        };
        tracing::debug!(?family, legacy, nft, ?variant, "iptables variant");
        Tools::new(family, variant)
    }

    /// Whether all three binaries are installed.
    pub(crate) fn available(&self) -> bool {
        [&self.restore, &self.save, &self.iptables]
            .iter()
            .all(|tool| exec::find_tool(tool).is_some())
    }
}

fn families(cfg: &CaptureConfig) -> Vec<Family> {
    if cfg.enable_ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Tools present and privileges held, before anything is changed
/// (`need_ip`: the `ip` tool will be needed too).
fn preflight(cfg: &CaptureConfig, action: &str, need_ip: bool) -> Result<(), CaptureError> {
    for family in families(cfg) {
        let t = Tools::new(family, cfg.iptables_binary);
        for tool in [&t.restore, &t.save, &t.iptables] {
            exec::require_tool(tool, "iptables")?;
        }
    }
    if need_ip {
        exec::require_tool("ip", "iproute2")?;
    }
    exec::require_net_admin(action)
}

/// The tables as `iptables-save` shows them now (only existing tables).
fn snapshot(t: &Tools) -> Result<Vec<(String, SavedTable)>, CaptureError> {
    let text = exec::run_ok(&t.save, &[], None)?;
    Ok(parse_save(&text))
}

fn saved(snap: &[(String, SavedTable)], table: Table) -> Option<&SavedTable> {
    snap.iter()
        .find(|(name, _)| name == table.name())
        .map(|(_, t)| t)
}

/// Lines that remove what we own from one table, given its saved state.
fn removal_lines(
    t: &Tools,
    table: Table,
    generated: &[Rule],
    current: Option<&SavedTable>,
) -> Result<Vec<String>, CaptureError> {
    let Some(current) = current else {
        return Ok(Vec::new());
    };
    let mut lines: Vec<String> = jumps_into_ours(current)
        .into_iter()
        .map(|(chain, spec)| format!("-D {chain} {spec}"))
        .collect();
    let mut seen = Vec::new();
    for rule in generated {
        if !rule.chain.is_builtin() || matches!(rule.target, Target::Jump(c) if !c.is_builtin()) {
            continue;
        }
        let spec = render_spec(&rule.matches, &rule.target);
        let chain = rule.chain.iptables_name();
        if seen.contains(&(chain, spec.clone())) {
            continue;
        }
        seen.push((chain, spec.clone()));
        let mut args = vec!["-w", "-t", table.name(), "-C", chain];
        args.extend(spec.split_whitespace());
        if exec::run(&t.iptables, &args, None)?.success {
            lines.push(format!("-D {chain} {spec}"));
        }
    }
    let ours: Vec<&str> = Chain::OURS
        .iter()
        .map(|c| c.iptables_name())
        .filter(|name| current.has_chain(name))
        .collect();
    lines.extend(ours.iter().map(|c| format!("-F {c}")));
    lines.extend(ours.iter().map(|c| format!("-X {c}")));
    Ok(lines)
}

/// The full payload for one family: per table, removal then (when
/// `install`) the new rules.
fn payload(
    t: &Tools,
    rules: &[Rule],
    snap: &[(String, SavedTable)],
    install: bool,
) -> Result<String, CaptureError> {
    let rendered = iptables::render_tables(rules);
    let mut out = String::new();
    for table in Table::ALL {
        let in_table: Vec<Rule> = rules.iter().filter(|r| r.table == table).cloned().collect();
        let mut lines = removal_lines(t, table, &in_table, saved(snap, table))?;
        if install && let Some((_, new)) = rendered.tables.iter().find(|(t, _)| *t == table) {
            lines.extend(new.iter().cloned());
        }
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("* {}\n", table.name()));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    Ok(out)
}

/// Extracts the failing line number from iptables-restore's stderr:
/// `Error occurred at line: N` (parse errors), `line N failed` (legacy
/// commit errors) or `line N: ... failed` (nf_tables commit errors).
pub(crate) fn failed_line(stderr: &str) -> Option<usize> {
    if let Some(pos) = stderr.find("Error occurred at line:") {
        let rest = &stderr[pos + "Error occurred at line:".len()..];
        return rest.split_whitespace().next()?.parse().ok();
    }
    stderr.match_indices("line ").find_map(|(pos, _)| {
        let rest = &stderr[pos + 5..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let tail = &rest[digits.len()..];
        let shaped = tail.starts_with(" failed") || tail.starts_with(':');
        if shaped { digits.parse().ok() } else { None }
    })
}

/// Runs the restore tool; maps a refused line back to its text.
fn restore(t: &Tools, payload: &str, extra: &[&str]) -> Result<(), CaptureError> {
    let tool = t.restore.as_str();
    let mut args = vec!["-w"];
    args.extend_from_slice(extra);
    let out = exec::run(tool, &args, Some(payload))?;
    if out.success {
        return Ok(());
    }
    if let Some(line) = failed_line(&out.stderr) {
        let rule = payload
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .to_owned();
        let detail = out
            .stderr
            .lines()
            .filter(|l| !l.starts_with("Error occurred") && !l.starts_with("Try `"))
            .collect::<Vec<_>>()
            .join("; ");
        let detail = if detail.contains("Device or resource busy") {
            format!(
                "{detail} (hint: a rule outside our chains still jumps to this chain; remove it first)"
            )
        } else {
            detail
        };
        return Err(CaptureError::RuleRejected {
            tool: tool.to_owned(),
            line,
            rule,
            detail,
        });
    }
    Err(exec::failure(tool, &args, &out))
}

/// Puts the tables back as they were in `snap`: existing tables restored
/// verbatim, tables that did not exist flushed (and, on the nf_tables
/// variant, deleted again).
fn rollback(t: &Tools, snap: &[(String, SavedTable)]) {
    let mut text = String::new();
    let mut created = Vec::new();
    for table in Table::ALL {
        match saved(snap, table) {
            Some(t) => text.push_str(&t.text),
            None => {
                text.push_str(&format!("*{}\nCOMMIT\n", table.name()));
                created.push(table);
            }
        }
    }
    if let Err(e) = restore(t, &text, &[]) {
        tracing::error!(error = %e, "rollback of the iptables tables failed");
    }
    drop_pristine(t, &created);
}

/// On the nf_tables variant, deletes the given tables if they hold nothing
/// but empty built-in chains (as if they had never been used).
fn drop_pristine(t: &Tools, tables: &[Table]) {
    let nft_variant = exec::run(&t.iptables, &["--version"], None)
        .map(|o| o.stdout.contains("nf_tables"))
        .unwrap_or(false);
    if !nft_variant || exec::find_tool("nft").is_none() {
        return;
    }
    let Ok(now) = snapshot(t) else { return };
    for table in tables {
        if saved(&now, *table).is_some_and(SavedTable::is_pristine) {
            let _ = exec::run(
                "nft",
                &["delete", "table", t.nft_family, table.name()],
                None,
            );
        }
    }
}

/// See [`crate::apply`]. With IPv6 off, IPv6 rules left by an earlier
/// dual-stack run are removed in the same step.
pub(crate) fn apply_iptables(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    preflight(
        cfg,
        "applying iptables rules",
        cfg.needs_tproxy_route() || cfg.enable_ipv6,
    )?;
    let plan = plan::plan(cfg);
    let mut done: Vec<(Tools, Vec<(String, SavedTable)>)> = Vec::new();
    let undo = |done: &[(Tools, Vec<(String, SavedTable)>)]| {
        for (t, snap) in done.iter().rev() {
            rollback(t, snap);
        }
    };
    for family in families(cfg) {
        let t = Tools::detect(family, cfg.iptables_binary);
        let snap = snapshot(&t)?;
        let text = payload(&t, plan.rules(family), &snap, true)?;
        tracing::debug!(?family, tool = %t.restore, payload = %text, "iptables-restore payload");
        if let Err(e) = restore(&t, &text, &["--noflush", "--test"]) {
            undo(&done);
            return Err(e);
        }
        let result = restore(&t, &text, &["--noflush"]);
        done.push((t, snap));
        if let Err(e) = result {
            undo(&done);
            return Err(e);
        }
    }
    // IPv6 off now: IPv6 rules of an earlier run are ours to replace too.
    let v6 = Tools::detect(Family::V6, cfg.iptables_binary);
    if !cfg.enable_ipv6 && v6.available() {
        let snap = snapshot(&v6)?;
        match remove_family(cfg, &v6) {
            Ok(true) => {
                done.push((v6, snap));
                let _ = route::remove_family(cfg, Family::V6);
                let _ = route::remove_ipv6_address();
            }
            Ok(false) => {}
            Err(e) => {
                undo(&done);
                return Err(e);
            }
        }
    }
    if let Err(e) = route::add(cfg) {
        let _ = route::remove(cfg, cfg.enable_ipv6);
        undo(&done);
        return Err(e);
    }
    Ok(())
}

/// The configurations whose rules `clean` looks for: the given one with
/// IPv6 on, and the same with the other interception mode (capturing all
/// inbound ports, so every TPROXY rule appears). Removing is by exact rule
/// specification, so looking for more variants only finds our own rules.
fn cleanup_variants(cfg: &CaptureConfig) -> Vec<CaptureConfig> {
    let base = CaptureConfig {
        enable_ipv6: true,
        ..cfg.clone()
    };
    let other = CaptureConfig {
        mode: match base.mode {
            InterceptionMode::Redirect => InterceptionMode::Tproxy,
            InterceptionMode::Tproxy => InterceptionMode::Redirect,
        },
        inbound_ports: InboundPorts::All,
        ..base.clone()
    };
    let inbound_all = CaptureConfig {
        inbound_ports: InboundPorts::All,
        ..base.clone()
    };
    vec![base, other, inbound_all]
}

/// Removes everything of ours from one family's tables in one restore;
/// returns whether there was anything to remove.
fn remove_family(cfg: &CaptureConfig, t: &Tools) -> Result<bool, CaptureError> {
    let rules: Vec<Rule> = cleanup_variants(cfg)
        .iter()
        .flat_map(|variant| plan::plan(variant).rules(t.family).to_vec())
        .collect();
    let snap = snapshot(t)?;
    let text = payload(t, &rules, &snap, false)?;
    if text.is_empty() {
        return Ok(false);
    }
    tracing::debug!(family = ?t.family, tool = %t.restore, payload = %text, "iptables-restore removal payload");
    restore(t, &text, &["--noflush", "--test"])?;
    if let Err(e) = restore(t, &text, &["--noflush"]) {
        rollback(t, &snap);
        return Err(e);
    }
    let touched: Vec<Table> = Table::ALL
        .into_iter()
        .filter(|table| text.contains(&format!("* {}\n", table.name())))
        .collect();
    drop_pristine(t, &touched);
    Ok(true)
}

/// See [`crate::clean`]. Both families are cleaned whenever their tools
/// exist, whatever IPv6 detection says now.
pub(crate) fn clean_iptables(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    preflight(cfg, "removing iptables rules", true)?;
    remove_family(cfg, &Tools::detect(Family::V4, cfg.iptables_binary))?;
    let v6 = Tools::detect(Family::V6, cfg.iptables_binary);
    let removed_v6 = v6.available() && remove_family(cfg, &v6)?;
    route::remove(cfg, cfg.enable_ipv6 || removed_v6)
}

#[cfg(test)]
mod tests {
    use super::failed_line;

    #[test]
    fn failed_line_formats() {
        let parse = "iptables-restore v1.8.9 (nf_tables): Chain 'X' does not exist\n\
                     Error occurred at line: 8\nTry `iptables-restore -h' for more information.";
        assert_eq!(failed_line(parse), Some(8));
        assert_eq!(failed_line("iptables-restore: line 17 failed"), Some(17));
        let commit = "iptables-restore v1.8.9 (nf_tables): \n\
                      line 16: CHAIN_DEL failed (Device or resource busy): chain ISTIO_OUTPUT";
        assert_eq!(failed_line(commit), Some(16));
        assert_eq!(failed_line("no such thing"), None);
        assert_eq!(failed_line("online 5 more"), None);
    }
}
