//! Test support: a network namespace created (and deleted, also on panic)
//! by the test itself, with helpers to run commands or library code in it.
//! Needs root: without it the tests panic and say so.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it creates a network namespace and changes its iptables/nftables \
         rules (run the tests as root, e.g. via scripts/test)"
    );
}

/// A fresh network namespace `weft-cap-<pid>-<n>` with `lo` up.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        require_root();
        let name = format!(
            "weft-cap-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = NetNs { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs a command inside the namespace and returns its stdout; panics
    /// on failure.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables-save` (or `ip6tables-save`) without comment lines and
    /// counters, for before/after comparisons.
    pub fn save(&self, tool: &str) -> String {
        self.ok(&[tool])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" [") {
                Some(i) if l.starts_with(':') => l[..i].to_owned(),
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Everything we may touch: both iptables families, our/others' nft tables, ip rules,
    /// routes of table 133 and the addresses of lo.
    pub fn state(&self) -> String {
        let mut out = String::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            out.push_str(&self.save(tool));
            out.push('\n');
        }
        // nft tables other than the ones iptables-nft manages (those are
        // compared through iptables-save, where chain order is stable).
        for line in self.ok(&["nft", "list", "tables"]).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [_, family, table] = words[..] else {
                continue;
            };
            let xtables = matches!(family, "ip" | "ip6")
                && matches!(table, "nat" | "mangle" | "raw" | "filter" | "security");
            if !xtables {
                out.push_str(&self.ok(&["nft", "list", "table", family, table]));
            }
        }
        for argv in [
            &["ip", "-4", "rule"][..],
            &["ip", "-6", "rule"][..],
            &["ip", "-6", "addr", "show", "dev", "lo"][..],
        ] {
            out.push_str(&self.ok(argv));
        }
        for fam in ["-4", "-6"] {
            let routes = self.exec(&["ip", fam, "route", "show", "table", "133"]);
            out.push_str(&String::from_utf8_lossy(&routes.stdout));
        }
        out
    }

    /// Runs `f` on a thread that has entered this namespace (child
    /// processes it starts inherit the namespace).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
