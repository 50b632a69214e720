//! Unit tests for the flag and environment parsers.

use super::*;

#[test]
fn ports_accept_valid_and_refuse_invalid() {
    assert_eq!(parse_port("-p", "15001").unwrap(), 15001);
    assert_eq!(parse_port("-p", "65535").unwrap(), 65535);
    for bad in ["0", "65536", "-1", "abc", "", "80:90"] {
        let err = parse_port("-p/--envoy-port", bad).unwrap_err().to_string();
        assert!(err.contains("-p/--envoy-port"), "{err}");
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn port_lists_drop_empty_items_and_name_the_bad_one() {
    assert_eq!(
        parse_port_list("-d", "6000,7000,").unwrap(),
        vec![6000, 7000]
    );
    assert_eq!(parse_port_list("-d", "").unwrap(), Vec::<u16>::new());
    let err = parse_port_list("-d/--istio-local-exclude-ports", "80,99999")
        .unwrap_err()
        .to_string();
    assert!(err.contains("-d/--istio-local-exclude-ports"), "{err}");
    assert!(err.contains("\"99999\""), "{err}");
}

#[test]
fn inbound_ports_wildcard_list_and_none() {
    assert_eq!(parse_inbound_ports("-b", "*").unwrap(), InboundPorts::All);
    assert_eq!(parse_inbound_ports("-b", "").unwrap(), InboundPorts::None);
    assert_eq!(
        parse_inbound_ports("-b", "32000,31000").unwrap(),
        InboundPorts::Only(vec![32000, 31000])
    );
    assert!(parse_inbound_ports("-b", "*,80").is_err());
}

#[test]
fn cidrs_keep_the_written_address_and_refuse_garbage() {
    let nets = parse_cidr_list("-x", "1.1.0.0/16,2001:db8::/32").unwrap();
    assert_eq!(nets[0].to_string(), "1.1.0.0/16");
    assert_eq!(nets[1].to_string(), "2001:db8::/32");
    // Istio prints the prefix as given, host bits included.
    assert_eq!(
        parse_cidr_list("-i", "127.1.2.3/8").unwrap()[0].to_string(),
        "127.1.2.3/8"
    );
    for bad in ["10.0.0.0/33", "10.0.0.0", "300.1.1.1/8", "abc", "::/129"] {
        let err = parse_cidr_list("-i/--istio-service-cidr", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("-i/--istio-service-cidr"), "{err}");
        assert!(err.contains(bad), "{err}");
    }
    assert_eq!(
        parse_outbound_ranges("-i", "*").unwrap(),
        OutboundRanges::All
    );
    assert_eq!(
        parse_outbound_ranges("-i", "").unwrap(),
        OutboundRanges::None
    );
}

#[test]
fn ids_are_numbers_or_names_that_exist() {
    let resolve = |name: &str| (name == "istio-proxy").then_some(1337);
    assert_eq!(parse_id_list("-u", "3,4", resolve).unwrap(), vec![3, 4]);
    assert_eq!(parse_id_list("-u", "0", resolve).unwrap(), vec![0]);
    assert_eq!(
        parse_id_list("-u", "istio-proxy,5", resolve).unwrap(),
        vec![1337, 5]
    );
    for bad in ["", "nobody-here", "-5", "4294967295", "1,x y", "a/b"] {
        let err = parse_id_list("-u/--proxy-uid", bad, resolve)
            .unwrap_err()
            .to_string();
        assert!(err.contains("-u/--proxy-uid"), "{bad}: {err}");
        assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
    }
}

#[test]
fn system_lookups_find_root() {
    assert_eq!(lookup_uid("root"), Some(0));
    assert_eq!(lookup_gid("root"), Some(0));
    assert_eq!(lookup_uid("no-such-user-weft"), None);
}

#[test]
fn modes() {
    assert_eq!(
        parse_mode("-m", "REDIRECT").unwrap(),
        InterceptionMode::Redirect
    );
    assert_eq!(
        parse_mode("-m", "tproxy").unwrap(),
        InterceptionMode::Tproxy
    );
    assert_eq!(parse_mode("-m", "").unwrap(), InterceptionMode::Redirect);
    let err = parse_mode("-m/--istio-inbound-interception-mode", "NAT")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"NAT\"") && err.contains("REDIRECT or TPROXY"),
        "{err}"
    );
}

#[test]
fn interface_names_follow_linux_rules() {
    for ok in [
        "eth0",
        "not-istio-nic",
        "a",
        "veth1234567890a",
        "eth+",
        "br.10",
    ] {
        validate_interface("-c", ok, ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "",
        "veth1234567890ab",
        "eth/0",
        "eth 0",
        "eth:0",
        ".",
        "..",
        "-eth",
        "e+th",
        "eth\t",
    ] {
        let err = validate_interface("-c/--istio-exclude-interfaces", bad, bad)
            .expect_err(bad)
            .to_string();
        assert!(err.contains("-c/--istio-exclude-interfaces"), "{err}");
    }
    assert_eq!(
        parse_interfaces("-k", "eth0,eth1,").unwrap(),
        vec!["eth0".to_owned(), "eth1".to_owned()]
    );
}

#[test]
fn owner_groups_follow_istio() {
    assert_eq!(
        parse_owner_groups("*", "").unwrap(),
        OwnerGroups::AllExcept(vec![])
    );
    assert_eq!(
        parse_owner_groups("*", "888,ftp").unwrap(),
        OwnerGroups::AllExcept(vec!["888".into(), "ftp".into()])
    );
    assert_eq!(
        parse_owner_groups("java,202", "ignored").unwrap(),
        OwnerGroups::Only(vec!["java".into(), "202".into()])
    );
    let err = parse_owner_groups("*", "a b").unwrap_err().to_string();
    assert!(err.contains("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"), "{err}");
    let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    let err = parse_owner_groups(&many.join(","), "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 64"), "{err}");
}

#[test]
fn loopback_cidr_must_be_ipv4_loopback() {
    assert_eq!(
        parse_loopback_cidr("127.0.0.1/8").unwrap().to_string(),
        "127.0.0.1/8"
    );
    for bad in ["10.0.0.1/32", "127.0.0.1/7", "::1/128", "x"] {
        let err = parse_loopback_cidr(bad).unwrap_err().to_string();
        assert!(err.contains("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"), "{err}");
    }
}

#[test]
fn dns_servers_keep_their_text() {
    let servers = parse_dns_servers("--dns-servers", "127.0.0.53,::127.0.0.53").unwrap();
    assert_eq!(servers[1].text, "::127.0.0.53");
    assert!(servers[1].addr.is_ipv6());
    assert!(parse_dns_servers("--dns-servers", "").unwrap().is_empty());
    let err = parse_dns_servers("--dns-servers", "1.2.3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("--dns-servers"), "{err}");
}

#[test]
fn env_bools_like_go() {
    assert!(parse_env_bool("X", "true").unwrap());
    assert!(parse_env_bool("X", "1").unwrap());
    assert!(!parse_env_bool("X", "false").unwrap());
    assert!(parse_env_bool("ISTIO_META_DNS_CAPTURE", "yes").is_err());
}

#[test]
fn effective_dns_needs_servers_or_capture_all() {
    let mut cfg = CaptureConfig {
        redirect_dns: true,
        ..CaptureConfig::default()
    };
    assert!(!cfg.effective_redirect_dns());
    cfg.capture_all_dns = true;
    assert!(cfg.effective_redirect_dns());
    cfg.capture_all_dns = false;
    cfg.dns_servers = vec![DnsServer::from("10.0.0.10".parse::<IpAddr>().unwrap())];
    assert!(cfg.effective_redirect_dns());
}

#[test]
fn iptables_binary_choices() {
    assert_eq!(
        parse_iptables_binary("--force-iptables-binary", "").unwrap(),
        None
    );
    assert_eq!(
        parse_iptables_binary("--force-iptables-binary", "legacy").unwrap(),
        Some(IptablesBinary::Legacy)
    );
    assert_eq!(
        parse_iptables_binary("--force-iptables-binary", "nft").unwrap(),
        Some(IptablesBinary::Nft)
    );
    let err = parse_iptables_binary("--force-iptables-binary", "nf_tables")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--force-iptables-binary") && err.contains("nf_tables"),
        "{err}"
    );
}
