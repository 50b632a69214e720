//! Traffic that stays inside the captured pod, for both modes and both
//! backends, as Istio's rules treat it: the app calling itself is never
//! captured; the proxy (uid 1337) calling the pod's own address is sent to
//! the inbound listener (15006) with the original destination kept; the
//! proxy's inbound passthrough from 127.0.0.6 reaches the app. Needs root.

#[macro_use]
mod netns_support;

use std::net::{IpAddr, SocketAddr};

use netns_support::{APP, TwoWay, capture, istio_flags};
use weft_testbed::RunAs;
use weft_testbed::probe::{Answer, probe_as, probe_from};

const PROXY: RunAs = RunAs::User {
    uid: 1337,
    gid: 1337,
};

fn answered(result: Result<Answer, String>) -> Answer {
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn traffic_inside_the_pod(mode: &str, backend: &str) {
    let bed = TwoWay::new(mode);
    let app = &bed.app;
    capture(app, &istio_flags(mode, backend, "-i * -b * --ipv6=false"));
    let own: SocketAddr = (app.addr(), 8080).into();
    let loopback: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let any: IpAddr = [0, 0, 0, 0].into();

    // The app calling itself, by pod address or loopback: not captured.
    assert_eq!(answered(probe_as(app, APP, own).unwrap()).name, "app-8080");
    assert_eq!(
        answered(probe_as(app, APP, loopback).unwrap()).name,
        "app-8080"
    );

    // The proxy calling the pod's own address: handled as inbound.
    let hairpin = answered(probe_from(app, PROXY, any, own).unwrap());
    assert_eq!(hairpin.name, "inbound", "{hairpin:?}");
    assert_eq!(hairpin.original_dst, Some(own), "{hairpin:?}");

    // The proxy's inbound passthrough to the app, from 127.0.0.6.
    let source: IpAddr = [127, 0, 0, 6].into();
    let passthrough = answered(probe_from(app, PROXY, source, loopback).unwrap());
    assert_eq!(passthrough.name, "app-8080", "{passthrough:?}");
    assert_eq!(passthrough.peer.ip(), source);
}

for_each_mode_and_backend!(traffic_inside_the_pod);
