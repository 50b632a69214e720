//! Interface flags in real network namespaces, for both modes and both
//! backends: traffic on an interface given to -c is captured in neither
//! direction, and TCP arriving from a virtual machine's interface given to
//! -k is captured as outbound (15001, original destination kept; REDIRECT
//! mode). Needs root.

#[macro_use]
mod netns_support;

use std::net::{Ipv4Addr, SocketAddr};

use netns_support::{TwoWay, capture, captured, direct, istio_flags};
use weft_testbed::probe::probe;

// === -c: excluded interfaces ===

fn excluded_interface_is_captured_in_neither_direction(mode: &str, backend: &str) {
    let bed = TwoWay::new(mode);
    // Excluding an interface the traffic does not use changes nothing...
    capture(&bed.app, &istio_flags(mode, backend, "-i * -b * -c eth9"));
    assert_eq!(bed.who_answers(), captured());
    // ...excluding the pod's interface lets everything on it through.
    capture(&bed.app, &istio_flags(mode, backend, "-i * -b * -c eth0"));
    assert_eq!(bed.who_answers(), direct());
}

for_each_mode_and_backend!(excluded_interface_is_captured_in_neither_direction);

// === -k: virtual machine interfaces ===

/// REDIRECT mode only: Istio reroutes -k interfaces in the nat table, and
/// under TPROXY the mangle table's TPROXY rule (which Istio does not skip
/// for -k interfaces) has already handed such a connection to the 15006
/// listener. Weft writes Istio's rules, so it does the same there.
fn vm_traffic_is_captured_as_outbound(backend: &str) {
    let mode = "REDIRECT";
    let bed = TwoWay::new(mode);
    let vm = &bed.peer;
    let (host_side, vm_side) = (
        Ipv4Addr::new(192, 168, 77, 1),
        Ipv4Addr::new(192, 168, 77, 2),
    );
    bed.app
        .link_to(vm, ("virt0", host_side), ("vm0", vm_side), 24)
        .unwrap();
    // The VM reaches a service range through the pod.
    let route = ["route", "add", "10.99.0.0/16", "via", "192.168.77.1"];
    vm.netns().ip(&route).unwrap();
    let service: SocketAddr = ([10, 99, 0, 5], 80).into();

    capture(&bed.app, &istio_flags(mode, backend, "-i * -b * -k virt0"));
    let answer = probe(vm, service)
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.name, "outbound", "{answer:?}");
    assert_eq!(answer.original_dst, Some(service), "{answer:?}");
    assert_eq!(
        answer.peer.ip(),
        std::net::IpAddr::from(vm_side),
        "{answer:?}"
    );
    // The pod's own traffic is handled as before.
    assert_eq!(bed.who_answers(), captured());
}

#[test]
fn iptables_redirect_vm_traffic_is_captured_as_outbound() {
    vm_traffic_is_captured_as_outbound("");
}

#[test]
fn nftables_redirect_vm_traffic_is_captured_as_outbound() {
    vm_traffic_is_captured_as_outbound(netns_support::NFTABLES);
}
