//! The real `weft-proxy iptables` / `clean-iptables` binary:
//! - the issue's done-when dry run prints Istio's `inbound-ports-wildcard`
//!   rule set for those settings;
//! - bad flags exit non-zero naming the flag and value, and (in a fresh
//!   network namespace) leave every table untouched;
//! - a missing `iptables-restore` and missing privileges give clear errors;
//! - apply twice leaves one copy, clean restores the state before.
//!
//! Network-namespace tests need root and panic without it. Each namespace
//! is named `weft-cli-<pid>-<n>` and deleted on drop (also on panic).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");

/// The issue's done-when command (after `weft-proxy iptables`).
const DONE_WHEN: &[&str] = &[
    "--dry-run",
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
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

fn weft(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run weft-proxy")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn golden(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../capture/tests/golden/iptables")
        .join(format!("{name}.golden"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One table of a restore payload: its name, the sorted `-N` declarations and
/// each chain's rules in order.
type Table = (String, Vec<String>, Vec<(String, Vec<String>)>);

/// Per table (in order) and per chain (rules in order), plus the sorted
/// `-N` declarations; `iptables-save` call lines are ignored.
fn by_table_and_chain(payload: &str) -> Vec<Table> {
    let mut out = Vec::new();
    let mut cur: Option<Table> = None;
    for line in payload.lines().map(str::trim) {
        if line.is_empty() || line.ends_with("tables-save") {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            cur = Some((table.trim().to_owned(), Vec::new(), Vec::new()));
        } else if line == "COMMIT" {
            let (t, mut decl, mut chains) = cur.take().expect("COMMIT outside table");
            decl.sort();
            chains.sort();
            out.push((t, decl, chains));
        } else {
            let (_, decl, chains) = cur.as_mut().expect("rule outside table");
            let chain = line.split_whitespace().nth(1).expect("chain").to_owned();
            if line.starts_with("-N ") {
                decl.push(chain);
            } else {
                match chains.iter_mut().find(|(c, _)| *c == chain) {
                    Some((_, rules)) => rules.push(line.to_owned()),
                    None => chains.push((chain, vec![line.to_owned()])),
                }
            }
        }
    }
    out
}

/// Istio's golden `inbound-ports-wildcard` was generated with `-b '*'` only.
/// The done-when command adds `-d 15090,15021,15020` and `-i '*'`, for which
/// Istio's own logic adds exactly: one `--dport N -j RETURN` per excluded
/// port in ISTIO_INBOUND before the redirect, and the catch-all
/// `-j ISTIO_REDIRECT` at the end of ISTIO_OUTPUT. Those are the only
/// differences allowed.
fn golden_for_done_when() -> String {
    let mut out = Vec::new();
    for line in golden("inbound-ports-wildcard").lines() {
        if line == "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT" {
            for port in ["15090", "15021", "15020"] {
                out.push(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
            }
        }
        out.push(line.to_owned());
        if line == "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN" {
            out.push("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_owned());
        }
    }
    out.join("\n")
}

#[test]
fn done_when_dry_run_prints_istios_rule_set() {
    // `--ipv6=false` pins what Istio would detect from the pod's addresses,
    // so the check does not depend on this host's interfaces (the literal
    // command is run in a fresh namespace below).
    let mut args = vec!["iptables"];
    args.extend_from_slice(DONE_WHEN);
    args.push("--ipv6=false");
    let out = weft(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        by_table_and_chain(&stdout),
        by_table_and_chain(&golden_for_done_when()),
        "{stdout}"
    );
}

#[test]
fn golden_settings_dry_run_equals_golden_exactly() {
    let out = weft(&[
        "iptables",
        "-n",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-x",
        "",
        "-b",
        "*",
        "--ipv6=false",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let theirs: Vec<String> = golden("inbound-ports-wildcard")
        .lines()
        .filter(|l| !l.ends_with("tables-save"))
        .map(str::to_owned)
        .collect();
    let ours: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(ours, theirs);
}

// === network namespace helpers ===

static NEXT: AtomicUsize = AtomicUsize::new(0);

struct NetNs(String);

impl NetNs {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it creates a network namespace and inspects its iptables \
             (run the tests as root, e.g. via scripts/test)"
        );
        let name = format!(
            "weft-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            text(&out.stderr)
        );
        let ns = NetNs(name);
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .env("RUST_LOG", "warn")
            .output()
            .expect("ip netns exec")
    }

    fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn weft(&self, args: &[&str]) -> Output {
        let mut argv = vec![BIN];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// iptables-save of both families (no comments, no counters), the nft
    /// ruleset and the policy rules: everything capture may change.
    fn state(&self) -> String {
        let mut out = String::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            for line in self.ok(&[tool]).lines().filter(|l| !l.starts_with('#')) {
                let line = match line.find(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(&self.ok(&["nft", "list", "tables"]));
        out.push_str(&self.ok(&["ip", "-4", "rule"]));
        out.push_str(&self.ok(&["ip", "-6", "rule"]));
        out
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Someone else's rules, which must survive everything we do.
fn add_foreign_rules(ns: &NetNs) {
    ns.ok(&[
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "RETURN",
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
}

#[test]
fn literal_done_when_command_in_a_fresh_namespace_changes_nothing() {
    let ns = NetNs::new();
    let before = ns.state();
    let mut args = vec!["iptables"];
    args.extend_from_slice(DONE_WHEN);
    let out = ns.weft(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // A fresh namespace has no pod address, so IPv6 is not detected.
    assert_eq!(
        by_table_and_chain(&stdout),
        by_table_and_chain(&golden_for_done_when()),
        "{stdout}"
    );
    assert_eq!(before, ns.state(), "--dry-run must not touch anything");
}

#[test]
fn bad_flags_exit_non_zero_name_the_flag_and_touch_nothing() {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["-p", "70000"], "-p/--envoy-port", "70000"),
        (&["-z", "abc"], "-z/--inbound-capture-port", "abc"),
        (
            &["-u", "no-such-user-weft"],
            "-u/--proxy-uid",
            "no-such-user-weft",
        ),
        (&["-g", "-7"], "-g/--proxy-gid", "-7"),
        (
            &["-m", "DNAT"],
            "-m/--istio-inbound-interception-mode",
            "DNAT",
        ),
        (
            &["-b", "80,eighty"],
            "-b/--istio-inbound-ports",
            "80,eighty",
        ),
        (
            &["-b", "*", "-d", "15090,0"],
            "-d/--istio-local-exclude-ports",
            "15090,0",
        ),
        (
            &["-i", "10.0.0.0/33"],
            "-i/--istio-service-cidr",
            "10.0.0.0/33",
        ),
        (
            &["-x", "10.0.0.1"],
            "-x/--istio-service-exclude-cidr",
            "10.0.0.1",
        ),
        (&["-c", "eth 0"], "-c/--istio-exclude-interfaces", "eth 0"),
        (&["-k", "eth0:1"], "-k/--kube-virt-interfaces", "eth0:1"),
        (
            &["-c", "interface-name-too-long"],
            "-c/--istio-exclude-interfaces",
            "interface-name-too-long",
        ),
        (
            &["-m", "TPROXY", "-r", "main"],
            "-r/--istio-inbound-tproxy-route-table",
            "main",
        ),
    ];
    for (flags, flag, value) in cases {
        for sub in ["iptables", "clean-iptables"] {
            let mut args = vec![sub, "-b", "*", "-i", "*"];
            args.extend_from_slice(flags);
            let out = ns.weft(&args);
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{args:?} must fail");
            assert!(
                stderr.contains(flag),
                "{args:?}: stderr must name {flag}: {stderr}"
            );
            assert!(
                stderr.contains(value),
                "{args:?}: stderr must name {value:?}: {stderr}"
            );
        }
    }
    assert_eq!(
        before,
        ns.state(),
        "refused flags must leave the tables untouched"
    );
}

#[test]
fn apply_twice_leaves_one_copy_and_clean_restores_the_state() {
    let ns = NetNs::new();
    add_foreign_rules(&ns);
    let before = ns.state();
    let flags = [
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
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
        "--ipv6",
    ];
    let run = |sub: &str| {
        let mut args = vec![sub];
        args.extend_from_slice(&flags);
        let out = ns.weft(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    run("iptables");
    let once = ns.state();
    assert_eq!(
        once.lines()
            .filter(|l| *l == "-A OUTPUT -j ISTIO_OUTPUT")
            .count(),
        2,
        "{once}"
    );
    run("iptables");
    assert_eq!(
        once,
        ns.state(),
        "the second apply must not add a second copy"
    );
    run("clean-iptables");
    assert_eq!(
        before,
        ns.state(),
        "clean must restore the state before apply"
    );
}

#[test]
fn missing_iptables_restore_is_a_clear_error() {
    let ns = NetNs::new();
    let before = ns.state();
    // In a private mount namespace, hide the sbin directory (iptables-restore
    // lives there; /sbin is a symlink to it on Debian 12).
    let empty = std::env::temp_dir().join(format!("weft-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let script = format!(
        "mount --bind {} /usr/sbin && exec {BIN} iptables -b '*' --ipv6=false",
        empty.display()
    );
    let out = ns.exec(&[
        "/usr/bin/unshare",
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let _ = std::fs::remove_dir(&empty);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(
        stderr.contains("`iptables-restore` was not found"),
        "{stderr}"
    );
    assert!(stderr.contains("apt-get install -y iptables"), "{stderr}");
    assert_eq!(before, ns.state());
}

#[test]
fn missing_privileges_is_a_clear_error() {
    let ns = NetNs::new();
    let before = ns.state();
    let out = ns.exec(&[
        "/usr/bin/setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        BIN,
        "iptables",
        "-b",
        "*",
        "--ipv6=false",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(stderr.contains("needs root or CAP_NET_ADMIN"), "{stderr}");
    assert_eq!(before, ns.state());
}

#[test]
fn istios_injected_init_args_are_accepted() {
    // The argument list Istio's injector writes for istio-init (after the
    // program name), including its logging flag.
    let out = weft(&[
        "iptables",
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
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
        "--log_output_level=default:info",
        "--ipv6=false",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        by_table_and_chain(&text(&out.stdout)),
        by_table_and_chain(&golden_for_done_when())
    );
}

#[test]
fn run_validation_passes_with_rules_and_fails_without() {
    let ns = NetNs::new();
    let as_proxy = |extra: &[&str]| {
        let mut argv = vec![
            "/usr/bin/setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            BIN,
            "iptables",
            "--skip-rule-apply",
            "--run-validation",
            "--ipv6=false",
            "--probe-timeout",
            "2s",
        ];
        argv.extend_from_slice(extra);
        ns.exec(&argv)
    };
    let out = as_proxy(&[]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "no rules yet: validation must fail: {stderr}"
    );
    assert!(stderr.contains("iptables validation failed"), "{stderr}");

    let apply = ns.weft(&["iptables", "-b", "*", "-i", "*", "--ipv6=false"]);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    let out = as_proxy(&[]);
    assert!(
        out.status.success(),
        "with rules validation must pass: {}",
        text(&out.stderr)
    );
}

#[test]
fn run_validation_on_an_ipv6_pod_uses_ipv6_loopback() {
    let ns = NetNs::new();
    // The pod's only address is IPv6, so validation goes over ::1 / ::6.
    ns.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.ok(&["ip", "link", "set", "eth0p", "up"]);
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    ns.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00::5/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let apply = ns.weft(&["iptables", "-b", "*", "-i", "*", "--ipv6"]);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    let out = ns.exec(&[
        "/usr/bin/setpriv",
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        BIN,
        "iptables",
        "--skip-rule-apply",
        "--run-validation",
        "--ipv6",
        "--probe-timeout",
        "3s",
    ]);
    assert!(
        out.status.success(),
        "IPv6 validation must pass: {}",
        text(&out.stderr)
    );
}
