//! Unit tests for flag handling: defaults, environment, refusals naming
//! the flag and the value.

use super::*;

fn args(argv: &[&str]) -> IptablesArgs {
    IptablesArgs::parse_from_iter(argv.iter().copied()).expect("flags parse")
}

fn config(argv: &[&str]) -> Result<CaptureConfig, CaptureError> {
    let mut full = vec!["--ipv6=false", "--dns-servers="];
    full.extend_from_slice(argv);
    args(&full).to_config(&CaptureEnv::default())
}

#[test]
fn defaults_are_istios() {
    let cfg = config(&[]).unwrap();
    let expected = CaptureConfig::default();
    assert_eq!(cfg, expected);
    assert_eq!(cfg.proxy_port, 15001);
    assert_eq!(cfg.inbound_capture_port, 15006);
    assert_eq!(cfg.inbound_tunnel_port, 15008);
    assert_eq!((cfg.tproxy_mark, cfg.tproxy_route_table), (1337, 133));
}

#[test]
fn gid_defaults_to_uid_like_istio() {
    let cfg = config(&["-u", "3,4"]).unwrap();
    assert_eq!(cfg.proxy_gids, vec![3, 4]);
    let cfg = config(&["-u", "3", "-g", "5"]).unwrap();
    assert_eq!((cfg.proxy_uids, cfg.proxy_gids), (vec![3], vec![5]));
}

#[test]
fn user_and_group_names_resolve() {
    let cfg = config(&["-u", "root"]).unwrap();
    assert_eq!((cfg.proxy_uids, cfg.proxy_gids), (vec![0], vec![0]));
}

#[test]
fn last_value_wins_for_repeated_flags() {
    let cfg = config(&["-b", "", "-b", "80"]).unwrap();
    assert_eq!(cfg.inbound_ports, crate::InboundPorts::Only(vec![80]));
}

#[test]
fn environment_is_read_from_the_given_struct() {
    let env = CaptureEnv::from_pairs([
        ("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202"),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8"),
        ("ISTIO_META_DNS_CAPTURE", "true"),
    ]);
    let cfg = args(&["--ipv6=false", "--dns-servers=10.0.0.10"])
        .to_config(&env)
        .unwrap();
    assert_eq!(
        cfg.owner_groups,
        crate::OwnerGroups::Only(vec!["java".into(), "202".into()])
    );
    assert_eq!(cfg.ipv4_loopback_cidr.to_string(), "127.0.0.1/8");
    assert!(cfg.redirect_dns);
    let bad = CaptureEnv::from_pairs([("ISTIO_META_DNS_CAPTURE", "maybe")]);
    let err = args(&["--ipv6=false"])
        .to_config(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ISTIO_META_DNS_CAPTURE") && err.contains("maybe"),
        "{err}"
    );
}

#[test]
fn ipv6_flag_forms() {
    let on = args(&["--ipv6"]);
    assert_eq!(on.flags.ipv6, Some(true));
    let off = args(&["--ipv6=false"]);
    assert_eq!(off.flags.ipv6, Some(false));
    assert_eq!(args(&[]).flags.ipv6, None);
}

#[test]
fn bad_values_name_flag_and_value() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["-p", "70000"], "-p/--envoy-port", "70000"),
        (&["-z", "0"], "-z/--inbound-capture-port", "0"),
        (&["-e", "x"], "-e/--inbound-tunnel-port", "x"),
        (
            &["-u", "no-such-user-weft"],
            "-u/--proxy-uid",
            "no-such-user-weft",
        ),
        (&["-g", "1,-2"], "-g/--proxy-gid", "1,-2"),
        (
            &["-m", "MASQUERADE"],
            "-m/--istio-inbound-interception-mode",
            "MASQUERADE",
        ),
        (&["-b", "80,http"], "-b/--istio-inbound-ports", "80,http"),
        (
            &["-d", "15090,15021,99999"],
            "-d/--istio-local-exclude-ports",
            "99999",
        ),
        (
            &["-i", "10.0.0.0/40"],
            "-i/--istio-service-cidr",
            "10.0.0.0/40",
        ),
        (&["-x", "*"], "-x/--istio-service-exclude-cidr", "*"),
        (
            &["-x", "1.1.1.1"],
            "-x/--istio-service-exclude-cidr",
            "1.1.1.1",
        ),
        (&["-q", "abc"], "-q/--istio-outbound-ports", "abc"),
        (
            &["-o", "65536"],
            "-o/--istio-local-outbound-ports-exclude",
            "65536",
        ),
        (&["-c", "eth/0"], "-c/--istio-exclude-interfaces", "eth/0"),
        (
            &["-k", "averyveryverylongname"],
            "-k/--kube-virt-interfaces",
            "averyveryverylongname",
        ),
        (&["-t", "-1"], "-t/--istio-inbound-tproxy-mark", "-1"),
        (&["-t", "1338"], "-t/--istio-inbound-tproxy-mark", "1338"),
        (
            &["-r", "254"],
            "-r/--istio-inbound-tproxy-route-table",
            "254",
        ),
        (
            &["--dns-servers", "1.2.3.4.5"],
            "--dns-servers",
            "1.2.3.4.5",
        ),
    ];
    for (argv, flag, value) in cases {
        let parsed =
            IptablesArgs::parse_from_iter(["--ipv6=false"].into_iter().chain(argv.iter().copied()))
                .unwrap_or_else(|e| panic!("{argv:?} should parse (validation comes later): {e}"));
        let err = parsed
            .to_config(&CaptureEnv::default())
            .expect_err(&format!("{argv:?} must be refused"))
            .to_string();
        assert!(err.contains(flag), "{argv:?}: {err}");
        assert!(err.contains(value), "{argv:?}: {err}");
    }
}

#[test]
fn clean_args_share_the_flags() {
    let clean = CleanArgs::parse_from_iter(["-m", "TPROXY", "-b", "*", "--ipv6=false"]).unwrap();
    let cfg = clean.flags.to_config(&CaptureEnv::default()).unwrap();
    assert!(cfg.needs_tproxy_route());
}

#[test]
fn nftables_dry_run_renders_nft() {
    let cfg = config(&["--native-nftables", "-b", "*"]).unwrap();
    let text = IptablesArgs::render(&cfg);
    assert!(
        text.starts_with("table ip weft {}\ndelete table ip weft\n"),
        "{text}"
    );
    assert!(text.contains("type nat hook prerouting"), "{text}");
}

#[test]
fn istio_compat_and_validation_flags_parse() {
    let args = args(&[
        "--log_output_level=default:info",
        "--log_as_json",
        "--run-validation",
        "--skip-rule-apply",
        "--force-apply",
        "--iptables-probe-port",
        "15002",
        "--probe-timeout",
        "5s",
    ]);
    assert!(args.run_validation && args.skip_rule_apply && args.force_apply);
    assert_eq!(args.flags.log_output_level.as_deref(), Some("default:info"));
}
