//! Applying and cleaning for real, in network namespaces these tests
//! create: idempotence (twice leaves one copy), clean restores exactly the
//! state before (other people's rules untouched), a refused rule is named
//! by line and text and leaves nothing behind, and a failure half-way
//! through is rolled back. Root is required (the tests panic without it).

mod support;

use support::NetNs;
use weft_capture::cli::IptablesArgs;
use weft_capture::{CaptureConfig, CaptureEnv, CaptureError};

fn config(argv: &[&str], env: &[(&str, &str)]) -> CaptureConfig {
    let args = IptablesArgs::parse_from_iter(argv.iter().copied()).expect("flags parse");
    args.to_config(&CaptureEnv::from_pairs(env.iter().copied()))
        .expect("valid config")
}

/// Rules and a chain that belong to "someone else".
fn add_foreign_rules(ns: &NetNs) {
    ns.ok(&["iptables", "-t", "nat", "-N", "KUBE-FOREIGN"]);
    ns.ok(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "KUBE-FOREIGN",
        "-j",
        "RETURN",
    ]);
    ns.ok(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        "9999",
        "-j",
        "KUBE-FOREIGN",
    ]);
    ns.ok(&[
        "iptables",
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
        "-i",
        "lo",
        "-j",
        "RETURN",
    ]);
    ns.ok(&[
        "ip6tables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "9998",
        "-j",
        "RETURN",
    ]);
    ns.ok(&["nft", "add", "table", "inet", "someone_else"]);
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn count_lines(haystack: &str, line: &str) -> usize {
    haystack.lines().filter(|l| l.trim() == line).count()
}

fn apply_twice_then_clean(argv: &[&str], env: &[(&'static str, &'static str)]) {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    let cfg = config(argv, env);

    let c = cfg.clone();
    ns.run_in(move || weft_capture::apply(&c))
        .expect("first apply");
    let once = ns.state();
    let families = if cfg.enable_ipv6 { 2 } else { 1 };
    assert_eq!(count_lines(&once, ":ISTIO_OUTPUT -"), families, "{once}");
    assert_eq!(
        count_lines(&once, "-A OUTPUT -j ISTIO_OUTPUT"),
        families,
        "{once}"
    );

    let c = cfg.clone();
    ns.run_in(move || weft_capture::apply(&c))
        .expect("second apply");
    let twice = ns.state();
    pretty_assertions::assert_eq!(once, twice, "a second apply must leave exactly one copy");

    let c = cfg.clone();
    ns.run_in(move || weft_capture::clean(&c)).expect("clean");
    let after = ns.state();
    pretty_assertions::assert_eq!(before, after, "clean must restore the state before apply");
    assert!(after.contains("KUBE-FOREIGN") && after.contains("someone_else"));
}

#[test]
fn redirect_apply_is_idempotent_and_clean_restores_state() {
    apply_twice_then_clean(
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "10.1.0.0/16",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "-q",
            "9090",
            "-o",
            "25",
            "-c",
            "eth9",
            "-k",
            "veth7",
            "--drop-invalid",
            "--redirect-dns",
            "--dns-servers",
            "10.96.0.10",
            "--ipv6=false",
        ],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "0")],
    );
}

#[test]
fn tproxy_dual_stack_apply_is_idempotent_and_clean_restores_state() {
    apply_twice_then_clean(
        &[
            "-m",
            "TPROXY",
            "-b",
            "8080,9090",
            "-i",
            "10.0.0.0/8,fd00::/8",
            "--ipv6",
            "--redirect-dns",
            "--capture-all-dns",
            "-c",
            "eth9",
        ],
        &[],
    );
}

#[test]
fn tproxy_route_is_added_once_and_removed() {
    let ns = NetNs::new();
    let cfg = config(
        &[
            "-m",
            "TPROXY",
            "-b",
            "*",
            "-t",
            "77",
            "-r",
            "99",
            "--ipv6=false",
        ],
        &[],
    );
    for _ in 0..2 {
        let c = cfg.clone();
        ns.run_in(move || weft_capture::apply(&c)).expect("apply");
    }
    let rules = ns.ok(&["ip", "-4", "rule"]);
    assert_eq!(count(&rules, "fwmark 0x4d lookup 99"), 1, "{rules}");
    let routes = ns.ok(&["ip", "-4", "route", "show", "table", "99"]);
    assert!(routes.contains("local default dev lo"), "{routes}");
    let c = cfg.clone();
    ns.run_in(move || weft_capture::clean(&c)).expect("clean");
    let rules = ns.ok(&["ip", "-4", "rule"]);
    assert_eq!(count(&rules, "lookup 99"), 0, "{rules}");
}

#[test]
fn refused_rule_is_named_and_nothing_is_left_behind() {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    // The group does not exist: iptables-restore refuses that line.
    let cfg = config(
        &["-b", "*", "--ipv6=false"],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "no-such-group-weft")],
    );
    let err = ns
        .run_in(move || weft_capture::apply(&cfg))
        .expect_err("a missing group must be refused");
    match &err {
        CaptureError::RuleRejected { line, rule, .. } => {
            assert!(*line > 0);
            assert!(rule.contains("--gid-owner no-such-group-weft"), "{err}");
        }
        other => panic!("expected RuleRejected, got {other:?}"),
    }
    pretty_assertions::assert_eq!(before, ns.state());
}

#[test]
fn failure_half_way_is_rolled_back() {
    let ns = NetNs::new();
    let first = config(&["-b", "80", "--ipv6=false"], &[]);
    ns.run_in(move || weft_capture::apply(&first))
        .expect("first apply");
    // Someone else's chain now jumps into ours: our re-apply cannot
    // delete ISTIO_OUTPUT. The kernel refuses that at commit time, after
    // the mangle table (new with --drop-invalid) was already committed.
    ns.ok(&["iptables", "-t", "nat", "-N", "KUBE-FOREIGN"]);
    ns.ok(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "KUBE-FOREIGN",
        "-j",
        "ISTIO_OUTPUT",
    ]);
    let before = ns.state();
    let second = config(&["-b", "80", "--drop-invalid", "--ipv6=false"], &[]);
    let err = ns
        .run_in(move || weft_capture::apply(&second))
        .expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("ISTIO_OUTPUT"), "{text}");
    pretty_assertions::assert_eq!(before, ns.state(), "tables must be as before: {text}");
}

#[test]
fn nftables_apply_is_idempotent_and_clean_removes_only_our_tables() {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    let cfg = config(
        &[
            "--native-nftables",
            "-m",
            "TPROXY",
            "-b",
            "*",
            "-i",
            "*",
            "--ipv6",
            "--redirect-dns",
            "--dns-servers",
            "10.96.0.10,fd00::10",
        ],
        &[],
    );
    for _ in 0..2 {
        let c = cfg.clone();
        ns.run_in(move || weft_capture::apply(&c)).expect("apply");
    }
    let tables = ns.ok(&["nft", "list", "tables"]);
    assert_eq!(count(&tables, "table ip weft"), 1, "{tables}");
    assert_eq!(count(&tables, "table ip6 weft"), 1, "{tables}");
    let rules = ns.ok(&["ip", "-4", "rule"]);
    assert_eq!(count(&rules, "lookup 133"), 1, "{rules}");
    let c = cfg.clone();
    ns.run_in(move || weft_capture::clean(&c)).expect("clean");
    pretty_assertions::assert_eq!(before, ns.state());
}

#[test]
fn nftables_refused_rule_is_named_and_nothing_is_left_behind() {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    let cfg = config(
        &["--native-nftables", "-b", "*", "--ipv6=false"],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS", "no-such-group-weft")],
    );
    let err = ns
        .run_in(move || weft_capture::apply(&cfg))
        .expect_err("a missing group must be refused");
    match &err {
        CaptureError::RuleRejected {
            tool, line, rule, ..
        } => {
            assert_eq!(tool, "nft");
            assert!(*line > 0);
            assert!(rule.contains("no-such-group-weft"), "{err}");
        }
        other => panic!("expected RuleRejected, got {other:?}"),
    }
    pretty_assertions::assert_eq!(before, ns.state());
}

#[test]
fn clean_with_default_flags_removes_tproxy_and_ipv6_rules_too() {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    let cfg = config(
        &[
            "-m",
            "TPROXY",
            "-b",
            "*",
            "-i",
            "*",
            "--ipv6",
            "--drop-invalid",
            "--redirect-dns",
            "--dns-servers",
            "10.96.0.10,fd00::10",
        ],
        &[],
    );
    ns.run_in(move || weft_capture::apply(&cfg)).expect("apply");
    // Plain `clean-iptables`: REDIRECT, IPv6 not detected in this namespace.
    let plain = config(&[], &[]);
    assert!(!plain.enable_ipv6);
    ns.run_in(move || weft_capture::clean(&plain))
        .expect("clean");
    pretty_assertions::assert_eq!(before, ns.state());
}

#[test]
fn turning_ipv6_off_replaces_the_ipv6_rules_of_an_earlier_run() {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    let dual = config(&["-m", "TPROXY", "-b", "*", "--ipv6"], &[]);
    ns.run_in(move || weft_capture::apply(&dual))
        .expect("dual-stack apply");
    assert!(ns.save("ip6tables-save").contains(":ISTIO_INBOUND -"));
    let v4 = config(&["-m", "TPROXY", "-b", "*", "--ipv6=false"], &[]);
    let c = v4.clone();
    ns.run_in(move || weft_capture::apply(&c))
        .expect("IPv4-only apply");
    let v6 = ns.save("ip6tables-save");
    assert!(!v6.contains("ISTIO"), "{v6}");
    assert!(ns.save("iptables-save").contains(":ISTIO_INBOUND -"));
    let v6_rules = ns.ok(&["ip", "-6", "rule"]);
    assert!(!v6_rules.contains("lookup 133"), "{v6_rules}");
    ns.run_in(move || weft_capture::clean(&v4)).expect("clean");
    pretty_assertions::assert_eq!(before, ns.state());
}

#[test]
fn nftables_turning_ipv6_off_drops_the_ip6_table() {
    let ns = NetNs::new();
    let before = ns.state();
    let dual = config(&["--native-nftables", "-b", "*", "--ipv6"], &[]);
    ns.run_in(move || weft_capture::apply(&dual))
        .expect("dual-stack apply");
    assert!(ns.ok(&["nft", "list", "tables"]).contains("table ip6 weft"));
    let v4 = config(&["--native-nftables", "-b", "*", "--ipv6=false"], &[]);
    let c = v4.clone();
    ns.run_in(move || weft_capture::apply(&c))
        .expect("IPv4-only apply");
    let tables = ns.ok(&["nft", "list", "tables"]);
    assert!(
        tables.contains("table ip weft") && !tables.contains("table ip6 weft"),
        "{tables}"
    );
    ns.run_in(move || weft_capture::clean(&v4)).expect("clean");
    pretty_assertions::assert_eq!(before, ns.state());
}

#[test]
fn concurrent_applies_in_one_namespace_all_succeed_with_one_copy() {
    let ns = NetNs::new();
    let cfg = config(&["-b", "*", "-i", "*", "--ipv6=false"], &[]);
    let path = format!("/run/netns/{}", ns.name);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (cfg, path) = (cfg.clone(), path.clone());
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                weft_capture::apply(&cfg)
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .expect("no panic")
            .expect("every apply succeeds");
    }
    let save = ns.save("iptables-save");
    assert_eq!(count_lines(&save, "-A OUTPUT -j ISTIO_OUTPUT"), 1, "{save}");
    assert_eq!(count_lines(&save, ":ISTIO_OUTPUT -"), 1, "{save}");
}

#[test]
fn rules_go_where_existing_rules_are_legacy_or_forced() {
    let ns = NetNs::new();
    // Someone set up this namespace with legacy iptables.
    ns.ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        "9999",
        "-j",
        "RETURN",
    ]);
    let legacy_before = ns.save("iptables-legacy-save");
    let nft_before = ns.save("iptables-nft-save");
    let cfg = config(&["-b", "*", "-i", "*", "--ipv6=false"], &[]);
    for _ in 0..2 {
        let c = cfg.clone();
        ns.run_in(move || weft_capture::apply(&c)).expect("apply");
    }
    let legacy = ns.save("iptables-legacy-save");
    assert_eq!(
        count_lines(&legacy, "-A OUTPUT -j ISTIO_OUTPUT"),
        1,
        "{legacy}"
    );
    assert_eq!(
        ns.save("iptables-nft-save"),
        nft_before,
        "nothing may go to nf_tables"
    );
    let c = cfg.clone();
    ns.run_in(move || weft_capture::clean(&c)).expect("clean");
    assert_eq!(ns.save("iptables-legacy-save"), legacy_before);

    // Forced: nf_tables although legacy holds rules.
    let forced = config(
        &["-b", "*", "--ipv6=false", "--force-iptables-binary", "nft"],
        &[],
    );
    let c = forced.clone();
    ns.run_in(move || weft_capture::apply(&c))
        .expect("forced apply");
    assert!(ns.save("iptables-nft-save").contains(":ISTIO_INBOUND -"));
    assert_eq!(ns.save("iptables-legacy-save"), legacy_before);
    ns.run_in(move || weft_capture::clean(&forced))
        .expect("forced clean");
    assert_eq!(ns.save("iptables-nft-save"), nft_before);
}
