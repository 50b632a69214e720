//! Shared by the `netns_*` tests: applying and cleaning capture inside a
//! testbed pod through the library form of `weft-proxy iptables` /
//! `clean-iptables`, the flags Istio's injector passes, and a macro that runs
//! one scenario for both inbound modes and both backends.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;

use weft_capture::CaptureEnv;
use weft_capture::cli::{CleanArgs, IptablesArgs};
use weft_testbed::probe::{Answer, ListenMode, Responder, probe, probe_as};
use weft_testbed::{Node, Pod, RunAs, require_root};

/// An application user: neither the proxy's uid nor its gid (1337).
pub const APP: RunAs = RunAs::User {
    uid: 1000,
    gid: 1000,
};

/// The flag that selects the native nftables backend.
pub const NFTABLES: &str = "--native-nftables";

/// The flags Istio's injector passes for a pod (`-d 15090,15021,15020`),
/// with `mode`, `backend` (`""` or [`NFTABLES`]) and `extra` flags.
pub fn istio_flags(mode: &str, backend: &str, extra: &str) -> String {
    format!("-p 15001 -z 15006 -u 1337 -m {mode} -d 15090,15021,15020 {backend} {extra}")
}

/// How the 15006 listener must be set up for `mode`: TPROXY delivers to a
/// listener only if it has IP_TRANSPARENT.
pub fn inbound_listen_mode(mode: &str) -> ListenMode {
    if mode == "TPROXY" {
        ListenMode::Transparent
    } else {
        ListenMode::Plain
    }
}

fn argv(flags: &str) -> Vec<&str> {
    flags.split_whitespace().collect()
}

/// Applies `weft-proxy iptables FLAGS` (split on whitespace) inside `pod`,
/// and checks the rules landed in the backend the flags chose.
pub fn capture(pod: &Pod, flags: &str) {
    let parsed = IptablesArgs::parse_from_iter(argv(flags))
        .unwrap_or_else(|e| panic!("parsing {flags:?}: {e}"));
    pod.enter(|| parsed.run())
        .unwrap()
        .unwrap_or_else(|e| panic!("applying {flags:?} in pod {}: {e}", pod.name()));
    let iptables = weft_testbed::run(&mut pod.command("iptables-save").unwrap()).unwrap();
    let nft_tables =
        weft_testbed::run(pod.command("nft").unwrap().args(["list", "tables"])).unwrap();
    if flags.contains(NFTABLES) {
        assert!(
            nft_tables.contains("table ip weft"),
            "no nft table: {nft_tables}"
        );
        assert!(
            !iptables.contains("ISTIO_"),
            "iptables rules with {NFTABLES}: {iptables}"
        );
    } else {
        assert!(iptables.contains(":ISTIO_"), "no ISTIO chains: {iptables}");
        assert!(
            !nft_tables.contains("weft"),
            "nft table without {NFTABLES}: {nft_tables}"
        );
    }
}

/// [`capture`] with Istio's environment variables given as `NAME=value`
/// pairs instead of read from this process's environment.
pub fn capture_with_env(pod: &Pod, flags: &str, env: &[(&str, &str)]) {
    let parsed = IptablesArgs::parse_from_iter(argv(flags))
        .unwrap_or_else(|e| panic!("parsing {flags:?}: {e}"));
    let env = CaptureEnv::from_pairs(env.iter().copied());
    pod.enter(|| {
        let cfg = parsed.to_config(&env)?;
        weft_capture::apply(&cfg)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("applying {flags:?} with {env:?} in pod {}: {e}", pod.name()));
}

/// Runs `weft-proxy clean-iptables FLAGS` inside `pod`.
pub fn clean(pod: &Pod, flags: &str) {
    let parsed = CleanArgs::parse_from_iter(argv(flags))
        .unwrap_or_else(|e| panic!("parsing {flags:?}: {e}"));
    pod.enter(|| parsed.run())
        .unwrap()
        .unwrap_or_else(|e| panic!("cleaning {flags:?} in pod {}: {e}", pod.name()));
}

/// A node with pod `app` (capture listeners on 15001 and 15006, an app
/// server on 8080) and pod `peer` (a server on 8080): enough to see who
/// answers in each direction.
pub struct TwoWay {
    _responders: Vec<Responder>,
    pub app: Pod,
    pub peer: Pod,
    _node: Node,
}

impl TwoWay {
    /// The 15006 listener is transparent when `mode` is TPROXY.
    pub fn new(mode: &str) -> Self {
        require_root();
        let node = Node::new().unwrap();
        let app = node.add_pod("app").unwrap();
        let peer = node.add_pod("peer").unwrap();
        let at = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let inbound = inbound_listen_mode(mode);
        let responders = vec![
            Responder::start(&app, "outbound", at(15001), ListenMode::Plain).unwrap(),
            Responder::start(&app, "inbound", at(15006), inbound).unwrap(),
            Responder::start(&app, "app-8080", at(8080), ListenMode::Plain).unwrap(),
            Responder::start(&peer, "peer-8080", at(8080), ListenMode::Plain).unwrap(),
        ];
        Self {
            _responders: responders,
            app,
            peer,
            _node: node,
        }
    }

    /// Who answers the app's outbound connection (as [`APP`]) to the peer,
    /// and the peer's inbound connection to the app, both on 8080.
    pub fn who_answers(&self) -> (String, String) {
        let out = probe_as(&self.app, APP, (self.peer.addr(), 8080).into()).unwrap();
        let inb = probe(&self.peer, (self.app.addr(), 8080).into()).unwrap();
        let name = |a: Result<Answer, String>| a.unwrap_or_else(|e| panic!("{e}")).name;
        (name(out), name(inb))
    }
}

/// Both directions captured.
pub fn captured() -> (String, String) {
    ("outbound".into(), "inbound".into())
}

/// Neither direction captured.
pub fn direct() -> (String, String) {
    ("peer-8080".into(), "app-8080".into())
}

/// Defines `mod SCENARIO` with one test per inbound mode and backend, each
/// calling `SCENARIO(mode, backend)`.
macro_rules! for_each_mode_and_backend {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn iptables_redirect() {
                super::$scenario("REDIRECT", "");
            }
            #[test]
            fn iptables_tproxy() {
                super::$scenario("TPROXY", "");
            }
            #[test]
            fn nftables_redirect() {
                super::$scenario("REDIRECT", $crate::netns_support::NFTABLES);
            }
            #[test]
            fn nftables_tproxy() {
                super::$scenario("TPROXY", $crate::netns_support::NFTABLES);
            }
        }
    };
}
