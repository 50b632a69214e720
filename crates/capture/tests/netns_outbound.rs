//! Outbound capture in real network namespaces, for REDIRECT and TPROXY:
//! an app's TCP connection to another pod is redirected to the pod's 15001
//! listener, which recovers the original destination with SO_ORIGINAL_DST;
//! the proxy's own uid/gid (1337), excluded ports (-o) and CIDRs (-x), and
//! destinations outside -i go straight to the peer. Needs root.

#[macro_use]
mod netns_support;

use std::net::{IpAddr, SocketAddr};

use netns_support::{APP, capture, capture_with_env, istio_flags};
use weft_testbed::probe::{Answer, ListenMode, Responder, probe_as};
use weft_testbed::{Node, Pod, RunAs, require_root};

/// Node with pod `app` (captured; 15001 listeners) and two peers, `svc` and
/// `other`, each answering on 8080 and 9090 over IPv4 and IPv6.
struct Bed {
    _responders: Vec<Responder>,
    app: Pod,
    svc: Pod,
    other: Pod,
    _node: Node,
}

fn bed() -> Bed {
    require_root();
    let node = Node::new().unwrap();
    let app = node.add_pod("app").unwrap();
    let svc = node.add_pod("svc").unwrap();
    let other = node.add_pod("other").unwrap();
    let any4: IpAddr = [0, 0, 0, 0].into();
    let any6: IpAddr = std::net::Ipv6Addr::UNSPECIFIED.into();
    let mut responders = vec![
        Responder::start(&app, "outbound", (any4, 15001).into(), ListenMode::Plain).unwrap(),
        Responder::start(&app, "outbound", (any6, 15001).into(), ListenMode::Plain).unwrap(),
    ];
    for pod in [&svc, &other] {
        for port in [8080, 9090] {
            for any in [any4, any6] {
                let name = format!("{}-{port}", pod.name());
                responders.push(
                    Responder::start(pod, &name, (any, port).into(), ListenMode::Plain).unwrap(),
                );
            }
        }
    }
    Bed {
        _responders: responders,
        app,
        svc,
        other,
        _node: node,
    }
}

fn connect(from: &Pod, run_as: RunAs, to: SocketAddr) -> Answer {
    probe_as(from, run_as, to)
        .unwrap()
        .unwrap_or_else(|e| panic!("from pod {} as {run_as:?}: {e}", from.name()))
}

#[track_caller]
fn assert_captured(answer: &Answer, original: SocketAddr) {
    assert_eq!(
        answer.name, "outbound",
        "connection to {original} was not captured: {answer:?}"
    );
    assert_eq!(answer.original_dst, Some(original), "{answer:?}");
}

#[track_caller]
fn assert_direct(answer: &Answer, server: &str, from: IpAddr) {
    assert_eq!(
        answer.name, server,
        "expected to reach {server} directly: {answer:?}"
    );
    assert_eq!(answer.peer.ip(), from, "{answer:?}");
}

fn v4(pod: &Pod, port: u16) -> SocketAddr {
    (pod.addr(), port).into()
}

fn v6(pod: &Pod, port: u16) -> SocketAddr {
    (pod.addr_v6(), port).into()
}

// === app traffic is captured, the proxy's is not ===

fn app_traffic_is_captured_and_the_proxys_is_not(mode: &str, backend: &str) {
    let bed = bed();
    // Before capture, the app reaches the peer itself.
    assert_direct(
        &connect(&bed.app, APP, v4(&bed.svc, 8080)),
        "svc-8080",
        bed.app.addr().into(),
    );

    capture(
        &bed.app,
        &istio_flags(
            mode,
            backend,
            "-b * --ipv6 -i * --istio-service-exclude-cidr=",
        ),
    );
    for to in [v4(&bed.svc, 8080), v6(&bed.svc, 8080), v4(&bed.other, 9090)] {
        assert_captured(&connect(&bed.app, APP, to), to);
    }
    // The proxy's uid, and its gid under any uid, are never captured.
    for proxy in [RunAs::user(1337, 1337), RunAs::user(1000, 1337)] {
        let a = connect(&bed.app, proxy, v4(&bed.svc, 8080));
        assert_direct(&a, "svc-8080", bed.app.addr().into());
        let a = connect(&bed.app, proxy, v6(&bed.svc, 8080));
        assert_direct(&a, "svc-8080", bed.app.addr_v6().into());
    }
}

for_each_mode_and_backend!(app_traffic_is_captured_and_the_proxys_is_not);

// === excluded ports and CIDRs go direct ===

fn excluded_ports_and_cidrs_are_not_captured(mode: &str, backend: &str) {
    let bed = bed();
    let other_cidr = format!("{}/32", bed.other.addr());
    capture(
        &bed.app,
        &istio_flags(
            mode,
            backend,
            &format!("-b * --ipv6 -i * -x {other_cidr} -o 9090"),
        ),
    );
    let from: IpAddr = bed.app.addr().into();
    assert_direct(
        &connect(&bed.app, APP, v4(&bed.svc, 9090)),
        "svc-9090",
        from,
    );
    assert_direct(
        &connect(&bed.app, APP, v4(&bed.other, 8080)),
        "other-8080",
        from,
    );
    // -o applies to IPv6 too; -x is an IPv4 CIDR, so `other` stays captured there.
    let from6: IpAddr = bed.app.addr_v6().into();
    assert_direct(
        &connect(&bed.app, APP, v6(&bed.svc, 9090)),
        "svc-9090",
        from6,
    );
    assert_captured(
        &connect(&bed.app, APP, v6(&bed.other, 8080)),
        v6(&bed.other, 8080),
    );
    // What is not excluded is still captured.
    assert_captured(
        &connect(&bed.app, APP, v4(&bed.svc, 8080)),
        v4(&bed.svc, 8080),
    );
}

for_each_mode_and_backend!(excluded_ports_and_cidrs_are_not_captured);

fn excluded_ipv6_cidrs_are_not_captured(mode: &str, backend: &str) {
    let bed = bed();
    let cidrs = format!("{}/32,{}/128", bed.other.addr(), bed.other.addr_v6());
    capture(
        &bed.app,
        &istio_flags(mode, backend, &format!("-b * --ipv6 -i * -x {cidrs}")),
    );
    let from6: IpAddr = bed.app.addr_v6().into();
    let direct = connect(&bed.app, APP, v6(&bed.other, 8080));
    assert_direct(&direct, "other-8080", from6);
    assert_captured(
        &connect(&bed.app, APP, v6(&bed.svc, 8080)),
        v6(&bed.svc, 8080),
    );
}

for_each_mode_and_backend!(excluded_ipv6_cidrs_are_not_captured);

// === -i captures only the listed CIDRs ===

fn only_included_cidrs_are_captured(mode: &str, backend: &str) {
    let bed = bed();
    let svc_cidr = format!("{}/32", bed.svc.addr());
    capture(
        &bed.app,
        &istio_flags(mode, backend, &format!("-b * --ipv6 -i {svc_cidr}")),
    );
    assert_captured(
        &connect(&bed.app, APP, v4(&bed.svc, 8080)),
        v4(&bed.svc, 8080),
    );
    assert_captured(
        &connect(&bed.app, APP, v4(&bed.svc, 9090)),
        v4(&bed.svc, 9090),
    );
    let from: IpAddr = bed.app.addr().into();
    assert_direct(
        &connect(&bed.app, APP, v4(&bed.other, 8080)),
        "other-8080",
        from,
    );
}

for_each_mode_and_backend!(only_included_cidrs_are_captured);

// === -q captures listed ports even with no CIDR captured ===

fn included_ports_are_captured_without_any_cidr(mode: &str, backend: &str) {
    let bed = bed();
    capture(
        &bed.app,
        &istio_flags(mode, backend, "-b * --ipv6 --istio-service-cidr= -q 9090"),
    );
    assert_captured(
        &connect(&bed.app, APP, v4(&bed.svc, 9090)),
        v4(&bed.svc, 9090),
    );
    assert_captured(
        &connect(&bed.app, APP, v6(&bed.other, 9090)),
        v6(&bed.other, 9090),
    );
    let from: IpAddr = bed.app.addr().into();
    assert_direct(
        &connect(&bed.app, APP, v4(&bed.svc, 8080)),
        "svc-8080",
        from,
    );
}

for_each_mode_and_backend!(included_ports_are_captured_without_any_cidr);

// === ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE) ===

/// Applies the usual flags with one owner-groups variable; returns the bed
/// and the address the app dials.
fn bed_with_owner_groups(mode: &str, backend: &str, var: &str, value: &str) -> (Bed, SocketAddr) {
    let bed = bed();
    let flags = istio_flags(mode, backend, "-b * --ipv6=false -i *");
    capture_with_env(&bed.app, &flags, &[(var, value)]);
    let to = v4(&bed.svc, 8080);
    (bed, to)
}

fn only_listed_owner_groups_are_captured(mode: &str, backend: &str) {
    let (bed, to) = bed_with_owner_groups(mode, backend, "ISTIO_OUTBOUND_OWNER_GROUPS", "2000");
    assert_captured(&connect(&bed.app, RunAs::user(1000, 2000), to), to);
    let direct = connect(&bed.app, RunAs::user(1000, 1000), to);
    assert_direct(&direct, "svc-8080", bed.app.addr().into());
}

for_each_mode_and_backend!(only_listed_owner_groups_are_captured);

fn excluded_owner_groups_are_not_captured(mode: &str, backend: &str) {
    let (bed, to) =
        bed_with_owner_groups(mode, backend, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "3000");
    assert_captured(&connect(&bed.app, RunAs::user(1000, 1000), to), to);
    let direct = connect(&bed.app, RunAs::user(1000, 3000), to);
    assert_direct(&direct, "svc-8080", bed.app.addr().into());
}

for_each_mode_and_backend!(excluded_owner_groups_are_not_captured);
