//! Istio conformance: for each of the 27 cases in `golden/cases.tsv`, the
//! rule set Weft generates must equal Istio's golden file per table and per
//! chain (in order within a chain). The data is Istio's (Apache-2.0, see
//! `golden/LICENSE`), copied from the shared conformance directory.
//!
//! How a case becomes flags (from `golden/README.md`): every case starts from
//! `-p 15001 -z 15006 -e 15008 -u 1337 -g 1337 -t 1337 -r 133`, `-b ""`,
//! owner groups `*`, loopback 127.0.0.1/32, IPv4 only; the `flags` column is
//! added; `ipv6` becomes `--ipv6`, `dns-servers=X` becomes `--dns-servers X`
//! (no entry means "no resolvers": `--dns-servers ""`, because Istio's test
//! harness sets none); `NAME=value` entries are environment variables.
//!
//! Deliberate deviations from the golden files: none. Lines
//! `iptables-save` / `ip6tables-save` in the golden files are calls of those
//! commands made by Istio's test harness, not rules, and are ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use weft_capture::CaptureEnv;
use weft_capture::cli::IptablesArgs;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

struct Case {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

/// Splits a flag string the way a POSIX shell would for these simple cases
/// (single and double quotes, no escapes).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn cases() -> Vec<Case> {
    let tsv = std::fs::read_to_string(golden_dir().join("cases.tsv")).expect("read cases.tsv");
    let mut out = Vec::new();
    for line in tsv.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let name = cols[0].to_owned();
        let flags = cols.get(1).copied().unwrap_or("");
        let other = cols.get(2).copied().unwrap_or("");
        let mut argv: Vec<String> =
            shell_words("-p 15001 -z 15006 -e 15008 -u 1337 -g 1337 -t 1337 -r 133 -b ''");
        argv.extend(shell_words(flags));
        let mut env = Vec::new();
        let mut ipv6 = false;
        let mut dns = String::new();
        for item in other.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "ipv6" {
                ipv6 = true;
            } else if let Some(list) = item.strip_prefix("dns-servers=") {
                dns = list.to_owned();
            } else if let Some((k, v)) = item.split_once('=') {
                env.push((k.to_owned(), v.to_owned()));
            } else {
                panic!("case {name}: unknown setting {item:?}");
            }
        }
        argv.push(format!("--ipv6={ipv6}"));
        argv.push(format!("--dns-servers={dns}"));
        out.push(Case { name, argv, env });
    }
    out
}

/// One `* table ... COMMIT` block: declared chains and, per chain, its
/// rules in order.
#[derive(Debug, PartialEq, Eq)]
struct TableBlock {
    table: String,
    declared: Vec<String>,
    chains: BTreeMap<String, Vec<String>>,
}

/// Parses a restore payload (or a golden file) into table blocks in order.
fn blocks(text: &str) -> Vec<TableBlock> {
    let mut out: Vec<TableBlock> = Vec::new();
    let mut current: Option<TableBlock> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line == "iptables-save" || line == "ip6tables-save" {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            current = Some(TableBlock {
                table: table.trim().to_owned(),
                declared: Vec::new(),
                chains: BTreeMap::new(),
            });
        } else if line == "COMMIT" {
            let mut block = current.take().expect("COMMIT outside a table");
            block.declared.sort();
            out.push(block);
        } else {
            let block = current.as_mut().expect("rule outside a table");
            let mut words = line.split_whitespace();
            let op = words.next().unwrap();
            let chain = words.next().expect("chain name").to_owned();
            match op {
                "-N" => block.declared.push(chain),
                "-A" | "-I" => block.chains.entry(chain).or_default().push(line.to_owned()),
                other => panic!("unexpected operation {other} in {line:?}"),
            }
        }
    }
    assert!(current.is_none(), "unterminated table");
    out
}

fn generate(case: &Case) -> String {
    let args = IptablesArgs::parse_from_iter(case.argv.iter().map(String::as_str))
        .unwrap_or_else(|e| panic!("case {}: flags {:?} refused: {e}", case.name, case.argv));
    let env = CaptureEnv::from_pairs(case.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let cfg = args
        .to_config(&env)
        .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
    weft_capture::generate(&cfg).dry_run_text()
}

fn golden(name: &str) -> String {
    let path = golden_dir().join("iptables").join(format!("{name}.golden"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn all_27_istio_cases_match_per_table_and_chain() {
    let cases = cases();
    assert_eq!(cases.len(), 27, "cases.tsv should list 27 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let ours = blocks(&generate(case));
        let theirs = blocks(&golden(&case.name));
        if ours != theirs {
            failures.push(format!(
                "case {}:\n--- golden\n{:#?}\n--- weft\n{:#?}",
                case.name, theirs, ours
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Stronger than required: the payload text is line-for-line Istio's (only
/// the harness's `*-save` lines removed).
#[test]
fn all_27_istio_cases_match_line_for_line() {
    for case in cases() {
        let theirs: Vec<String> = golden(&case.name)
            .lines()
            .filter(|l| *l != "iptables-save" && *l != "ip6tables-save" && !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        let ours: Vec<String> = generate(&case).lines().map(str::to_owned).collect();
        pretty_assertions::assert_eq!(theirs, ours, "case {}", case.name);
    }
}

#[test]
fn every_golden_file_has_a_case() {
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    for entry in std::fs::read_dir(golden_dir().join("iptables")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let name = file.strip_suffix(".golden").expect("only .golden files");
        assert!(
            names.iter().any(|n| n == name),
            "{file} has no row in cases.tsv"
        );
    }
}
