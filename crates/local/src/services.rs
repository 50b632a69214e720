//! kube-proxy's part: the node namespace's NAT rules that send Service VIP
//! traffic to ready endpoints, so pods without a sidecar (and a sidecar's
//! passthrough traffic) reach Services too. Pure: [`rules`] renders an
//! `iptables-restore` input for the node's `nat` table, which the runtime
//! owns entirely (the node namespace is ours).

use std::net::Ipv4Addr;

/// The chain holding one jump per Service port.
pub const SERVICES_CHAIN: &str = "WEFT-SERVICES";

/// One Service port and the endpoints behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipPort {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Ready endpoints: pod IP and target port.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The `nat` table for these Service ports: random choice among endpoints
/// (kube-proxy's iptables mode), masquerade for the DNATed hairpin.
pub fn rules(ports: &[VipPort]) -> String {
    let mut out = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    out.push_str(&format!(":{SERVICES_CHAIN} - [0:0]\n"));
    let with_endpoints: Vec<&VipPort> = ports.iter().filter(|p| !p.endpoints.is_empty()).collect();
    for i in 0..with_endpoints.len() {
        out.push_str(&format!(":WEFT-SVC-{i} - [0:0]\n"));
    }
    out.push_str(&format!(
        "-A PREROUTING -j {SERVICES_CHAIN}\n-A OUTPUT -j {SERVICES_CHAIN}\n"
    ));
    out.push_str("-A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE\n");
    for (i, p) in with_endpoints.iter().enumerate() {
        out.push_str(&format!(
            "-A {SERVICES_CHAIN} -d {}/32 -p {} -m {} --dport {} -j WEFT-SVC-{i}\n",
            p.vip, p.protocol, p.protocol, p.port
        ));
        let n = p.endpoints.len();
        for (j, (ip, port)) in p.endpoints.iter().enumerate() {
            let remaining = n - j;
            let pick = if remaining > 1 {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / remaining as f64
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "-A WEFT-SVC-{i} -p {} {pick}-j DNAT --to-destination {ip}:{port}\n",
                p.protocol
            ));
        }
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_endpoints_and_skips_empty_services() {
        let text = rules(&[
            VipPort {
                vip: Ipv4Addr::new(10, 96, 0, 5),
                port: 9080,
                protocol: "tcp".into(),
                endpoints: vec![
                    (Ipv4Addr::new(10, 88, 0, 2), 9080),
                    (Ipv4Addr::new(10, 88, 0, 3), 9080),
                ],
            },
            VipPort {
                vip: Ipv4Addr::new(10, 96, 0, 6),
                port: 80,
                protocol: "tcp".into(),
                endpoints: vec![],
            },
        ]);
        assert!(text.contains(
            "-A WEFT-SERVICES -d 10.96.0.5/32 -p tcp -m tcp --dport 9080 -j WEFT-SVC-0\n"
        ));
        assert!(text.contains("-A WEFT-SVC-0 -p tcp -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.88.0.2:9080\n"));
        assert!(text.contains("-A WEFT-SVC-0 -p tcp -j DNAT --to-destination 10.88.0.3:9080\n"));
        assert!(!text.contains("10.96.0.6"));
        assert!(text.ends_with("COMMIT\n"));
    }
}
