//! DNS capture in real network namespaces (--redirect-dns,
//! --capture-all-dns), for both modes and both backends: the app's DNS
//! queries to the pod's resolvers, over UDP and TCP, reach the DNS proxy on
//! 127.0.0.1:15053 and its answers come back as if from the resolver (the
//! conntrack zones are right); the proxy's own queries (uid 1337) and
//! queries to other servers go out directly, unless --capture-all-dns.
//! Needs root.

#[macro_use]
mod netns_support;

use std::net::SocketAddr;
use std::time::Duration;

use netns_support::{APP, capture, istio_flags};
use weft_testbed::probe::{ListenMode, Responder, UdpResponder, probe_as, udp_probe};
use weft_testbed::{Node, Pod, RunAs, require_root};

const PROXY: RunAs = RunAs::User {
    uid: 1337,
    gid: 1337,
};

struct Bed {
    _tcp: Vec<Responder>,
    _udp: Vec<UdpResponder>,
    app: Pod,
    resolver: Pod,
    other: Pod,
    _node: Node,
}

/// Pod `app` with the DNS proxy stand-in on 127.0.0.1:15053 (UDP owned by
/// uid 1337, as the agent's is; and TCP), pod `resolver` (the pod's
/// nameserver) and pod `other` (some other DNS server), both on port 53.
fn bed() -> Bed {
    require_root();
    let node = Node::new().unwrap();
    let app = node.add_pod("app").unwrap();
    let resolver = node.add_pod("resolver").unwrap();
    let other = node.add_pod("other").unwrap();
    let proxy_addr: SocketAddr = ([127, 0, 0, 1], 15053).into();
    let any53: SocketAddr = ([0, 0, 0, 0], 53).into();
    let udp = vec![
        UdpResponder::start(&app, PROXY, "dns-proxy", proxy_addr).unwrap(),
        UdpResponder::start(&resolver, RunAs::Root, "resolver", any53).unwrap(),
        UdpResponder::start(&other, RunAs::Root, "other", any53).unwrap(),
    ];
    let tcp = vec![
        Responder::start(&app, "dns-proxy", proxy_addr, ListenMode::Plain).unwrap(),
        Responder::start(
            &app,
            "outbound",
            ([0, 0, 0, 0], 15001).into(),
            ListenMode::Plain,
        )
        .unwrap(),
        Responder::start(&resolver, "resolver", any53, ListenMode::Plain).unwrap(),
    ];
    Bed {
        _tcp: tcp,
        _udp: udp,
        app,
        resolver,
        other,
        _node: node,
    }
}

/// Who answers a UDP query from the app pod as `run_as` to `server`:53.
fn udp_answer(bed: &Bed, run_as: RunAs, server: &Pod) -> String {
    let target: SocketAddr = (server.addr(), 53).into();
    udp_probe(&bed.app, run_as, target, Duration::from_secs(3))
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
        .name
}

fn dns_flags(mode: &str, backend: &str, bed: &Bed, extra: &str) -> String {
    let dns = bed.resolver.addr();
    istio_flags(
        mode,
        backend,
        &format!("-i * -b * --ipv6=false --redirect-dns --dns-servers {dns} {extra}"),
    )
}

// === --redirect-dns ===

fn queries_to_the_resolver_reach_the_dns_proxy(mode: &str, backend: &str) {
    let bed = bed();
    assert_eq!(udp_answer(&bed, APP, &bed.resolver), "resolver");
    capture(&bed.app, &dns_flags(mode, backend, &bed, ""));

    assert_eq!(udp_answer(&bed, APP, &bed.resolver), "dns-proxy");
    let tcp = probe_as(&bed.app, APP, (bed.resolver.addr(), 53).into())
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tcp.name, "dns-proxy", "{tcp:?}");
    assert_eq!(tcp.original_dst, Some((bed.resolver.addr(), 53).into()));
    // The proxy's own queries go upstream.
    assert_eq!(udp_answer(&bed, PROXY, &bed.resolver), "resolver");
    // Other servers are not the pod's resolvers: not captured.
    assert_eq!(udp_answer(&bed, APP, &bed.other), "other");
}

for_each_mode_and_backend!(queries_to_the_resolver_reach_the_dns_proxy);

// === --capture-all-dns ===

fn capture_all_dns_takes_queries_to_any_server(mode: &str, backend: &str) {
    let bed = bed();
    capture(
        &bed.app,
        &dns_flags(mode, backend, &bed, "--capture-all-dns"),
    );
    assert_eq!(udp_answer(&bed, APP, &bed.other), "dns-proxy");
    assert_eq!(udp_answer(&bed, APP, &bed.resolver), "dns-proxy");
    assert_eq!(udp_answer(&bed, PROXY, &bed.other), "other");
}

for_each_mode_and_backend!(capture_all_dns_takes_queries_to_any_server);
