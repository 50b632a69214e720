//! A comparable picture of a pod's packet-filter and routing state:
//! `iptables-save` and `ip6tables-save` normalized (no comment lines, no
//! counters, empty tables dropped), the native nftables ruleset beside
//! them, `ip rule`, all routing tables and the addresses. Used to check that applying and cleaning capture leaves a pod
//! exactly as it was.

use crate::error::Result;
use crate::netns::run;
use crate::pod::Pod;

/// A normalized snapshot of a pod's netfilter and routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `iptables-save`, normalized by [`normalize_save`].
    pub iptables: String,
    /// `ip6tables-save`, normalized by [`normalize_save`].
    pub ip6tables: String,
    /// `nft list ruleset`, normalized by [`normalize_nft`].
    pub nft: String,
    /// `ip -4 rule` and `ip -6 rule`.
    pub rules: String,
    /// `ip -4 route show table all` and `ip -6 route show table all`,
    /// without the kernel's `table local` entries (they follow the
    /// addresses, compared in `addrs`, and appear asynchronously after an
    /// IPv6 address is added).
    pub routes: String,
    /// `ip -o addr`.
    pub addrs: String,
}

impl Snapshot {
    /// Takes the snapshot inside `pod` (commands run as root in its namespace).
    pub fn take(pod: &Pod) -> Result<Self> {
        let out = |program: &str, args: &[&str]| -> Result<String> {
            run(pod.command(program)?.args(args))
        };
        Ok(Self {
            iptables: normalize_save(&out("iptables-save", &[])?),
            ip6tables: normalize_save(&out("ip6tables-save", &[])?),
            nft: normalize_nft(&out("nft", &["list", "ruleset"])?),
            rules: out("ip", &["-4", "rule"])? + &out("ip", &["-6", "rule"])?,
            routes: without_local_table(
                &(out("ip", &["-4", "route", "show", "table", "all"])?
                    + &out("ip", &["-6", "route", "show", "table", "all"])?),
            ),
            addrs: out("ip", &["-o", "addr"])?,
        })
    }
}

/// Normalizes `iptables-save` output for comparison: drops `#` comment
/// lines (they carry timestamps) and packet counters, and drops tables that
/// hold no rule, no user chain and only ACCEPT policies (iptables-nft leaves
/// such a table behind once a chain in it was touched; it filters nothing,
/// so it counts as absent).
pub fn normalize_save(save: &str) -> String {
    let mut out = String::new();
    let mut table: Vec<String> = Vec::new();
    for line in save.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = strip_counters(line);
        let is_commit = line == "COMMIT";
        table.push(line);
        if is_commit {
            if !is_empty_table(&table) {
                for l in &table {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            table.clear();
        }
    }
    for l in &table {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Drops the routes of the kernel's `local` table.
fn without_local_table(routes: &str) -> String {
    routes
        .lines()
        .filter(|l| !l.contains(" table local "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The tables iptables-nft manages; `iptables-save` already covers them.
const XTABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// Normalizes `nft list ruleset` output for comparison: drops the tables
/// iptables-nft manages (`ip`/`ip6` `filter`, `nat`, `mangle`, `raw`,
/// `security`: compared through `iptables-save`) and counter values.
pub fn normalize_nft(ruleset: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in ruleset.lines() {
        if let Some(header) = line.strip_prefix("table ") {
            let mut words = header.split_whitespace();
            let (family, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            skipping = matches!(family, "ip" | "ip6") && XTABLES.contains(&name);
        }
        if !skipping {
            out.push_str(&strip_nft_counter(line));
            out.push('\n');
        }
        if line == "}" {
            skipping = false;
        }
    }
    out
}

/// `counter packets 3 bytes 180` becomes `counter`.
fn strip_nft_counter(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut kept = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        kept.push(words[i]);
        let is_counter = words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
            && i + 4 < words.len();
        i += if is_counter { 5 } else { 1 };
    }
    kept.join(" ")
}

/// `:CHAIN POLICY [p:b]` becomes `:CHAIN POLICY`; `[p:b] -A ...` becomes `-A ...`.
fn strip_counters(line: &str) -> String {
    if line.starts_with(':')
        && let Some(at) = line.rfind(" [")
    {
        return line[..at].to_owned();
    }
    if line.starts_with('[')
        && let Some(at) = line.find("] ")
    {
        return line[at + 2..].to_owned();
    }
    line.to_owned()
}

fn is_empty_table(lines: &[String]) -> bool {
    lines.iter().all(|l| {
        l.starts_with('*')
            || l == "COMMIT"
            || (l.starts_with(':') && l.split_whitespace().nth(1) == Some("ACCEPT"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_counters_and_empty_tables_go() {
        let save = "# Generated by iptables-save v1.8.9 (nf_tables) on Sat\n\
            *mangle\n:PREROUTING ACCEPT [3:180]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n\
            # Completed on Sat\n\
            *nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [7:420]\n:ISTIO_OUTPUT - [0:0]\n\
            -A OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n\
            *filter\n:INPUT DROP [0:0]\nCOMMIT\n";
        assert_eq!(
            normalize_save(save),
            "*nat\n:PREROUTING ACCEPT\n:OUTPUT ACCEPT\n:ISTIO_OUTPUT -\n\
             -A OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n\
             *filter\n:INPUT DROP\nCOMMIT\n"
        );
    }

    #[test]
    fn a_table_with_only_a_user_chain_is_kept() {
        let save = "*nat\n:OUTPUT ACCEPT [0:0]\n:MINE - [0:0]\nCOMMIT\n";
        assert_eq!(
            normalize_save(save),
            "*nat\n:OUTPUT ACCEPT\n:MINE -\nCOMMIT\n"
        );
    }

    #[test]
    fn nft_drops_xtables_tables_and_counters() {
        let ruleset = "table ip nat {\n\tchain OUTPUT {\n\t\tcounter packets 1 bytes 60 return\n\t}\n}\n\
            table ip weft {\n\tchain nat_output {\n\t\tmeta l4proto tcp counter packets 12 bytes 720 redirect to :15001\n\t}\n}\n";
        assert_eq!(
            normalize_nft(ruleset),
            "table ip weft {\n\tchain nat_output {\n\t\tmeta l4proto tcp counter redirect to :15001\n\t}\n}\n"
        );
    }

    #[test]
    fn counters_before_rules_go() {
        assert_eq!(
            strip_counters("[5:300] -A OUTPUT -j RETURN"),
            "-A OUTPUT -j RETURN"
        );
    }
}
