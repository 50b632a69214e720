//! The native nftables backend's scripts are accepted by the kernel: for a
//! set of flag combinations covering every feature, `nft -c -f` (check
//! mode, nothing applied) succeeds inside a network namespace this test
//! creates. Root is required (the test panics without it).

mod support;

use support::NetNs;
use weft_capture::CaptureEnv;
use weft_capture::cli::IptablesArgs;

/// (name, flags, environment).
type Case = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const CASES: &[Case] = &[
    ("defaults", &[], &[]),
    (
        "inbound-wildcard-excludes",
        &["-b", "*", "-d", "15090,15021,15020", "-i", "*"],
        &[],
    ),
    (
        "inbound-list",
        &["-b", "32000,31000", "-i", "10.0.0.0/8", "-x", "10.1.0.0/16"],
        &[],
    ),
    (
        "tproxy-wildcard",
        &["-m", "TPROXY", "-b", "*", "-d", "15020"],
        &[],
    ),
    (
        "tproxy-list-v6",
        &["-m", "TPROXY", "-b", "8080", "--ipv6", "-i", "*"],
        &[],
    ),
    (
        "virt-interfaces",
        &["-k", "eth1,eth2+", "-i", "10.0.0.0/8,fd00::/8", "--ipv6"],
        &[],
    ),
    (
        "exclude-nic",
        &["-c", "not-istio-nic", "-m", "TPROXY", "-b", "*"],
        &[],
    ),
    ("ports", &["-q", "32000,31000", "-o", "25,465"], &[]),
    ("uid-gid", &["-u", "3,4", "-g", "1,2", "--ipv6"], &[]),
    (
        "dns-servers",
        &[
            "--redirect-dns",
            "--dns-servers",
            "127.0.0.53,::127.0.0.53",
            "--ipv6",
        ],
        &[],
    ),
    (
        "dns-capture-all",
        &["--redirect-dns", "--capture-all-dns", "--ipv6"],
        &[],
    ),
    ("drop-invalid", &["--drop-invalid"], &[]),
    (
        "owner-groups-include",
        &[],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS", "0,202")],
    ),
    (
        "owner-groups-exclude",
        &[],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,root")],
    ),
    (
        "loopback-cidr",
        &["-i", "127.1.2.3/32"],
        &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8")],
    ),
];

#[test]
fn nft_accepts_every_generated_script() {
    let ns = NetNs::new();
    let mut failures = Vec::new();
    for (name, flags, env) in CASES {
        let mut argv = vec!["--native-nftables", "--ipv6=false"];
        argv.extend_from_slice(flags);
        let args = IptablesArgs::parse_from_iter(argv.iter().copied()).expect("flags parse");
        let cfg = args
            .to_config(&CaptureEnv::from_pairs(env.iter().copied()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let script = weft_capture::nft::generate(&cfg);
        let path =
            std::env::temp_dir().join(format!("weft-nft-check-{}-{name}.nft", std::process::id()));
        std::fs::write(&path, &script).unwrap();
        let out = ns.exec(&["nft", "-c", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        if !out.status.success() {
            failures.push(format!(
                "{name}: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "nft -c refused:\n{}",
        failures.join("\n")
    );
    let tables = ns.ok(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("weft"),
        "check mode must not create tables: {tables}"
    );
}
