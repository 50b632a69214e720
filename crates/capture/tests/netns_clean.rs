//! Applying and removing capture in real network namespaces, with both
//! backends and both inbound modes: after `clean-iptables` nothing is
//! captured and the pod's iptables, nftables, policy rules, routes and
//! addresses are exactly as before (someone else's rules included);
//! applying twice leaves one copy; bad flags are refused naming the flag and
//! the value, and change nothing. Needs root.

#[macro_use]
mod netns_support;

use netns_support::{TwoWay, capture, captured, clean, direct, istio_flags};
use weft_capture::cli::IptablesArgs;
use weft_testbed::Pod;
use weft_testbed::snapshot::Snapshot;

/// Rules of another component of the pod, which capture must not touch.
const FOREIGN: &[&str] = &[
    "iptables -t nat -A OUTPUT -p udp --dport 9999 -j RETURN",
    "iptables -t mangle -A PREROUTING -p udp --dport 9999 -j RETURN",
    "iptables -t filter -N FOREIGN",
    "ip6tables -t nat -A OUTPUT -p udp --dport 9999 -j RETURN",
    "nft add table inet foreign",
    "ip rule add fwmark 7 lookup 77",
];

/// A [`TwoWay`] bed whose app pod already has someone else's rules.
fn bed(mode: &str) -> TwoWay {
    let bed = TwoWay::new(mode);
    for line in FOREIGN {
        let mut words = line.split_whitespace();
        let program = words.next().unwrap();
        weft_testbed::run(bed.app.command(program).unwrap().args(words)).unwrap();
    }
    bed
}

fn snapshot(pod: &Pod) -> Snapshot {
    Snapshot::take(pod).unwrap()
}

// === clean-iptables restores the pod ===

fn clean_restores_the_pod_exactly(mode: &str, backend: &str) {
    let bed = bed(mode);
    let flags = istio_flags(mode, backend, "-i * -b * --ipv6");
    let before = snapshot(&bed.app);
    assert!(
        before.iptables.contains("--dport 9999"),
        "{}",
        before.iptables
    );
    assert_eq!(bed.who_answers(), direct());

    capture(&bed.app, &flags);
    assert_ne!(snapshot(&bed.app), before, "applying changed nothing");
    assert_eq!(bed.who_answers(), captured());

    clean(&bed.app, &flags);
    assert_eq!(bed.who_answers(), direct());
    pretty_assertions::assert_eq!(snapshot(&bed.app), before);
}

for_each_mode_and_backend!(clean_restores_the_pod_exactly);

// === applying twice leaves one copy ===

fn applying_twice_leaves_one_copy(mode: &str, backend: &str) {
    let bed = bed(mode);
    let flags = istio_flags(mode, backend, "-i * -b * --ipv6");
    let before = snapshot(&bed.app);
    capture(&bed.app, &flags);
    let once = snapshot(&bed.app);
    capture(&bed.app, &flags);
    pretty_assertions::assert_eq!(snapshot(&bed.app), once);
    assert_eq!(bed.who_answers(), captured());
    clean(&bed.app, &flags);
    pretty_assertions::assert_eq!(snapshot(&bed.app), before);
}

for_each_mode_and_backend!(applying_twice_leaves_one_copy);

// === bad flags change nothing ===

/// A flag (as the error spells it), a bad value, and the argv giving it.
const BAD_FLAGS: &[(&str, &str, &str)] = &[
    ("-p/--envoy-port", "70000", "-p 70000"),
    ("-z/--inbound-capture-port", "0x10", "-z 0x10"),
    (
        "-u/--proxy-uid",
        "no-such-user-weft",
        "-u no-such-user-weft",
    ),
    ("-m/--istio-inbound-interception-mode", "DNAT", "-m DNAT"),
    ("-b/--istio-inbound-ports", "8080,99999", "-b 8080,99999"),
    (
        "-x/--istio-service-exclude-cidr",
        "10.0.0.0/33",
        "-x 10.0.0.0/33",
    ),
    ("-i/--istio-service-cidr", "300.1.1.1/8", "-i 300.1.1.1/8"),
    (
        "-c/--istio-exclude-interfaces",
        "a-name-far-too-long",
        "-c a-name-far-too-long",
    ),
];

fn bad_flags_are_refused_and_change_nothing(mode: &str, backend: &str) {
    let bed = bed(mode);
    capture(&bed.app, &istio_flags(mode, backend, "-i * -b * --ipv6"));
    let applied = snapshot(&bed.app);
    for (flag, value, bad) in BAD_FLAGS {
        let argv = format!("{} {bad}", istio_flags(mode, backend, "-i * -b * --ipv6"));
        let args: Vec<&str> = argv.split_whitespace().collect();
        let parsed = IptablesArgs::parse_from_iter(args.iter().copied()).unwrap();
        let err = bed
            .app
            .enter(|| parsed.run())
            .unwrap()
            .expect_err(&format!("{argv} must be refused"));
        let message = err.to_string();
        assert!(
            message.contains(flag) && message.contains(value),
            "the error for {bad:?} names {flag} and {value:?}: {message}"
        );
        assert_eq!(snapshot(&bed.app), applied, "{bad:?} changed the pod");
    }
    assert_eq!(bed.who_answers(), captured());
}

for_each_mode_and_backend!(bad_flags_are_refused_and_change_nothing);
