//! The traffic-capture settings of the init container: Istio's
//! `istio-iptables` flags, derived from values, the proxy config and the
//! pod's `traffic.sidecar.istio.io/*` annotations, validated the way Istio
//! validates them (a bad annotation is an error naming it and its value).

use crate::error::InjectError;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Annotation: inbound ports to capture (`*` = all).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Annotation: inbound ports never captured.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Annotation: outbound ports to capture.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// Annotation: outbound ports never captured.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Annotation: outbound CIDRs to capture (`*` = all).
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Annotation: outbound CIDRs never captured.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Annotation: interfaces whose traffic is not captured.
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// Annotation (deprecated name): virtual interfaces to reroute inbound.
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
/// Annotation: virtual interfaces to reroute inbound (wins over kubevirtInterfaces).
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
/// Annotation: REDIRECT, TPROXY or NONE.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// Annotation: the agent's status port (0 disables it).
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";

/// The init container's capture settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureArgs {
    /// REDIRECT, TPROXY or NONE (NONE: no init container).
    pub mode: String,
    /// The uid whose traffic is never captured (the proxy's).
    pub proxy_uid: String,
    /// The proxy's gid, when the pod overrides it.
    pub proxy_gid: Option<String>,
    /// Flags after `weft-proxy iptables`, in Istio's order.
    pub args: Vec<String>,
}

fn ann<'a>(annotations: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    annotations.get(name).and_then(Value::as_str)
}

fn value_str(values: &Value, pointer: &str) -> String {
    match values.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// A comma-separated port list; every entry a port number 0..=65535.
pub fn validate_ports(list: &str) -> Result<(), String> {
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number (0-65535)"))?;
    }
    Ok(())
}

/// A comma-separated CIDR list, optionally allowing `*`.
pub fn validate_cidrs(list: &str, wildcard: bool) -> Result<(), String> {
    if wildcard && list.trim() == "*" {
        return Ok(());
    }
    for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (addr, len) = c
            .split_once('/')
            .ok_or_else(|| format!("{c:?} is not a CIDR (address/prefix-length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{c:?} is not a CIDR: bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => return Err(format!("{c:?} is not a CIDR: bad prefix length")),
        }
    }
    Ok(())
}

fn validate_interfaces(list: &str) -> Result<(), String> {
    for i in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if i.len() > 15 || i.contains(['/', ' ']) || i == "." || i == ".." {
            return Err(format!("{i:?} is not a network interface name"));
        }
    }
    Ok(())
}

/// Validate every capture-related annotation Istio validates, naming the
/// annotation and the bad value on failure.
pub fn validate_annotations(annotations: &Map<String, Value>) -> Result<(), InjectError> {
    type Check = fn(&str) -> Result<(), String>;
    let checks: [(&str, Check); 10] = [
        (INCLUDE_INBOUND_PORTS, |v| {
            if v.trim() == "*" {
                Ok(())
            } else {
                validate_ports(v)
            }
        }),
        (EXCLUDE_INBOUND_PORTS, validate_ports),
        (INCLUDE_OUTBOUND_PORTS, validate_ports),
        (EXCLUDE_OUTBOUND_PORTS, validate_ports),
        (INCLUDE_OUTBOUND_IP_RANGES, |v| validate_cidrs(v, true)),
        (EXCLUDE_OUTBOUND_IP_RANGES, |v| validate_cidrs(v, false)),
        (EXCLUDE_INTERFACES, validate_interfaces),
        (KUBEVIRT_INTERFACES, validate_interfaces),
        (REROUTE_VIRTUAL_INTERFACES, validate_interfaces),
        (INTERCEPTION_MODE, |v| match v {
            "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
            _ => Err("must be REDIRECT, TPROXY or NONE".to_string()),
        }),
    ];
    for (name, check) in checks {
        if let Some(v) = ann(annotations, name) {
            check(v).map_err(|why| InjectError::annotation(name, v, why))?;
        }
    }
    if let Some(v) = ann(annotations, STATUS_PORT) {
        v.trim()
            .parse::<u16>()
            .map_err(|_| InjectError::annotation(STATUS_PORT, v, "not a port number (0-65535)"))?;
    }
    Ok(())
}

/// Istio's `excludeInboundPort`: append the status port to the exclusion
/// list unless it is 0 or already listed.
fn exclude_inbound_port(status_port: &str, excluded: &str) -> String {
    let port = status_port.trim();
    if port.is_empty() || port == "0" {
        return excluded.to_string();
    }
    if excluded.split(',').map(str::trim).any(|p| p == port) {
        return excluded.to_string();
    }
    if excluded.trim().is_empty() {
        port.to_string()
    } else {
        format!("{excluded},{port}")
    }
}

/// Inputs of [`capture_args`] that come from elsewhere in the injection.
pub struct CaptureInputs<'a> {
    /// Pod annotations.
    pub annotations: &'a Map<String, Value>,
    /// Values (`global.proxy.*`).
    pub values: &'a Value,
    /// The effective proxy config.
    pub proxy_config: &'a Value,
    /// The agent's status port as a string.
    pub status_port: &'a str,
    /// The proxy's uid if the pod overrides it (runAsUser of its istio-proxy container).
    pub proxy_uid: Option<String>,
    /// The proxy's gid if the pod overrides it.
    pub proxy_gid: Option<String>,
}

/// Derive the `weft-proxy iptables` flags exactly as Istio derives the
/// `istio-iptables` flags. Annotations must have been validated.
pub fn capture_args(input: &CaptureInputs<'_>) -> CaptureArgs {
    let a = input.annotations;
    let v = input.values;
    let mode = ann(a, INTERCEPTION_MODE)
        .map(str::to_string)
        .or_else(|| {
            input
                .proxy_config
                .get("interceptionMode")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "REDIRECT".to_string());
    let uid = input
        .proxy_uid
        .clone()
        .unwrap_or_else(|| "1337".to_string());
    let include_ips = ann(a, INCLUDE_OUTBOUND_IP_RANGES)
        .map(str::to_string)
        .unwrap_or_else(|| value_str(v, "/global/proxy/includeIPRanges"));
    let exclude_ips = ann(a, EXCLUDE_OUTBOUND_IP_RANGES)
        .map(str::to_string)
        .unwrap_or_else(|| value_str(v, "/global/proxy/excludeIPRanges"));
    let include_in = ann(a, INCLUDE_INBOUND_PORTS)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let d = value_str(v, "/global/proxy/includeInboundPorts");
            if d.is_empty() { "*".to_string() } else { d }
        });
    let exclude_in = ann(a, EXCLUDE_INBOUND_PORTS)
        .map(str::to_string)
        .unwrap_or_else(|| value_str(v, "/global/proxy/excludeInboundPorts"));
    let mut args: Vec<String> = [
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        &uid,
        "-m",
        &mode,
        "-i",
        &include_ips,
        "-x",
        &exclude_ips,
        "-b",
        &include_in,
        "-d",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let excluded = exclude_inbound_port(input.status_port, &exclude_in);
    args.push(if excluded.is_empty() {
        "15090,15021".to_string()
    } else {
        format!("15090,15021,{excluded}")
    });
    if let Some(g) = &input.proxy_gid {
        args.extend(["-g".to_string(), g.clone()]);
    }
    let include_out = ann(a, INCLUDE_OUTBOUND_PORTS)
        .map(str::to_string)
        .unwrap_or_else(|| value_str(v, "/global/proxy/includeOutboundPorts"));
    if a.contains_key(INCLUDE_OUTBOUND_PORTS) || !include_out.is_empty() {
        args.extend(["-q".to_string(), include_out]);
    }
    let exclude_out = ann(a, EXCLUDE_OUTBOUND_PORTS)
        .map(str::to_string)
        .unwrap_or_else(|| value_str(v, "/global/proxy/excludeOutboundPorts"));
    if a.contains_key(EXCLUDE_OUTBOUND_PORTS) || !exclude_out.is_empty() {
        args.extend(["-o".to_string(), exclude_out]);
    }
    if let Some(ifaces) = ann(a, EXCLUDE_INTERFACES) {
        args.extend(["-c".to_string(), ifaces.to_string()]);
    }
    if let Some(k) = ann(a, REROUTE_VIRTUAL_INTERFACES).or_else(|| ann(a, KUBEVIRT_INTERFACES)) {
        args.extend(["-k".to_string(), k.to_string()]);
    }
    CaptureArgs {
        mode,
        proxy_uid: uid,
        proxy_gid: input.proxy_gid.clone(),
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_port_is_appended_once() {
        assert_eq!(exclude_inbound_port("15020", ""), "15020");
        assert_eq!(exclude_inbound_port("15020", "4,5"), "4,5,15020");
        assert_eq!(exclude_inbound_port("15020", "15020,4"), "15020,4");
        assert_eq!(exclude_inbound_port("0", "4"), "4");
    }

    #[test]
    fn bad_annotations_name_themselves() {
        let a = json!({EXCLUDE_OUTBOUND_IP_RANGES: "*"});
        let err = validate_annotations(a.as_object().expect("map")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(EXCLUDE_OUTBOUND_IP_RANGES) && msg.contains("\"*\""),
            "{msg}"
        );
        let a = json!({INCLUDE_INBOUND_PORTS: "1,bad"});
        assert!(validate_annotations(a.as_object().expect("map")).is_err());
        let a =
            json!({INCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8, fd00::/8", INCLUDE_INBOUND_PORTS: "*"});
        assert!(validate_annotations(a.as_object().expect("map")).is_ok());
    }
}
