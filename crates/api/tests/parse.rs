//! Decoding realistic Istio and Kubernetes YAML into typed objects, and
//! round-tripping each object through its manifest form.

mod common;

use common::{decode_all, fixture};
use weft_api::decode::decode_file;
use weft_api::networking::*;
use weft_api::security::{AuthorizationAction, MtlsMode};
use weft_api::validate::validate_object;
use weft_api::{Kind, Object, Resource};

fn all_fixtures() -> Vec<Object> {
    let mut out = Vec::new();
    for f in [
        "bookinfo.yaml",
        "routing.yaml",
        "egress.yaml",
        "security.yaml",
        "mesh.yaml",
    ] {
        for (obj, errs) in decode_all(f, &fixture(f)) {
            assert!(
                errs.is_empty(),
                "{f}: {} has decode problems: {errs:?}",
                obj.key()
            );
            let verrs: Vec<_> = validate_object(&obj)
                .into_iter()
                .filter(|e| e.is_error())
                .collect();
            assert!(
                verrs.is_empty(),
                "{f}: {} is invalid: {verrs:#?}",
                obj.key()
            );
            out.push(obj);
        }
    }
    out
}

fn find<'a>(objs: &'a [Object], kind: Kind, ns: &str, name: &str) -> &'a Object {
    objs.iter()
        .find(|o| o.kind == kind && o.namespace() == ns && o.name() == name)
        .unwrap_or_else(|| panic!("{kind} {ns}/{name} not found"))
}

#[test]
fn every_fixture_object_round_trips_through_its_manifest() {
    let objs = all_fixtures();
    assert_eq!(objs.len(), 25, "fixture object count");
    for obj in &objs {
        let manifest = serde_yaml::to_string(&obj.to_manifest()).expect("serialize");
        let again = decode_file("again.yaml", &manifest);
        assert!(
            again.problems.is_empty(),
            "{}: {:?}\n{manifest}",
            obj.key(),
            again.problems
        );
        let (back, errs) = &again.objects[0];
        assert!(errs.is_empty(), "{}: {errs:?}\n{manifest}", obj.key());
        assert_eq!(
            back.spec,
            obj.spec,
            "{} changed in round trip:\n{manifest}",
            obj.key()
        );
        assert_eq!(back.meta, obj.meta);
        assert_eq!(back.kind, obj.kind);
    }
}

#[test]
fn origins_record_file_document_and_line() {
    let objs = decode_all("routing.yaml", &fixture("routing.yaml"));
    let origins: Vec<(usize, usize)> = objs
        .iter()
        .map(|(o, _)| (o.origin.doc, o.origin.line))
        .collect();
    assert_eq!(
        origins[0],
        (1, 2),
        "first document starts after the comment line"
    );
    assert_eq!(origins[1].0, 2);
    assert!(objs.iter().all(|(o, _)| o.origin.file == "routing.yaml"));
    let text = fixture("routing.yaml");
    let line = text.lines().nth(origins[1].1 - 1).expect("line exists");
    assert_eq!(line, "apiVersion: networking.istio.io/v1beta1");
}

#[test]
fn virtual_service_fields_decode() {
    let objs = all_fixtures();
    let vs = find(&objs, Kind::VirtualService, "bookinfo", "reviews")
        .as_virtual_service()
        .expect("vs");
    assert_eq!(vs.hosts, ["reviews"]);
    let m = &vs.http[0].matches[0];
    assert_eq!(
        m.headers["end-user"].kind(),
        Some(StringMatchKind::Exact("jason"))
    );
    assert_eq!(
        m.uri.as_ref().and_then(StringMatch::kind),
        Some(StringMatchKind::Prefix("/reviews"))
    );
    assert_eq!(m.query_params["debug"].regex.as_deref(), Some("^(1|true)$"));
    assert_eq!(m.port, Some(9080));
    assert_eq!(m.source_labels["app"], "productpage");
    assert!(m.ignore_uri_case);
    let h = vs.http[0].headers.as_ref().expect("headers");
    assert_eq!(h.request.as_ref().expect("request").set["x-canary"], "true");
    assert_eq!(
        h.response.as_ref().expect("response").remove,
        ["x-internal"]
    );
    let r = &vs.http[1];
    assert_eq!(r.route[0].weight, Some(90));
    assert_eq!(
        r.route[0]
            .destination
            .as_ref()
            .and_then(|d| d.port.as_ref())
            .map(|p| p.number),
        Some(9080)
    );
    assert_eq!(
        r.timeout.as_ref().and_then(|t| t.value().ok()),
        Some(std::time::Duration::from_secs(10))
    );
    let retries = r.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, 3);
    assert_eq!(
        retries.per_try_timeout.as_ref().map(|d| d.raw()),
        Some("2s")
    );
    assert_eq!(r.mirror_percentage.as_ref().map(|p| p.value), Some(5.5));
    let cors = r.cors_policy.as_ref().expect("cors");
    assert_eq!(cors.allow_methods, ["GET", "POST"]);
    assert_eq!(
        cors.max_age.as_ref().and_then(|d| d.value().ok()),
        Some(std::time::Duration::from_secs(86400))
    );

    let ratings = find(&objs, Kind::VirtualService, "bookinfo", "ratings")
        .as_virtual_service()
        .expect("vs");
    assert_eq!(
        ratings.http[0].direct_response.as_ref().map(|d| d.status),
        Some(200)
    );
    assert_eq!(
        ratings.http[1]
            .redirect
            .as_ref()
            .and_then(|r| r.redirect_code),
        Some(301)
    );
    assert_eq!(
        ratings.http[2]
            .rewrite
            .as_ref()
            .and_then(|r| r.authority.as_deref()),
        Some("ratings-internal")
    );
    let fault = ratings.http[3].fault.as_ref().expect("fault");
    assert_eq!(fault.abort.as_ref().and_then(|a| a.http_status), Some(500));
    assert_eq!(
        fault
            .abort
            .as_ref()
            .and_then(|a| a.percentage.as_ref())
            .map(|p| p.value),
        Some(10.5)
    );
    assert_eq!(
        fault
            .delay
            .as_ref()
            .and_then(|d| d.fixed_delay.as_ref())
            .map(|d| d.raw()),
        Some("7s")
    );

    let mysql = find(&objs, Kind::VirtualService, "bookinfo", "mysql");
    assert_eq!(mysql.api_version, "networking.istio.io/v1alpha3");
    let mysql = mysql.as_virtual_service().expect("vs");
    assert_eq!(mysql.tcp[0].matches[0].destination_subnets, ["10.0.0.0/8"]);
    assert_eq!(
        mysql.tls[0].matches[0].sni_hosts,
        ["mysqldb.bookinfo.svc.cluster.local"]
    );
}

#[test]
fn destination_rule_fields_decode() {
    let objs = all_fixtures();
    let dr = find(&objs, Kind::DestinationRule, "bookinfo", "reviews")
        .as_destination_rule()
        .expect("dr");
    let tp = dr.traffic_policy.as_ref().expect("policy");
    let lb = tp.load_balancer.as_ref().expect("lb");
    assert_eq!(lb.simple, Some(SimpleLb::LeastRequest));
    let loc = lb.locality_lb_setting.as_ref().expect("locality");
    assert_eq!(loc.distribute[0].to["us-west/*"], 20);
    let cp = tp.connection_pool.as_ref().expect("pool");
    assert_eq!(cp.tcp.as_ref().and_then(|t| t.max_connections), Some(100));
    assert_eq!(
        cp.http.as_ref().and_then(|h| h.h2_upgrade_policy),
        Some(H2UpgradePolicy::Upgrade)
    );
    let od = tp.outlier_detection.as_ref().expect("outlier");
    assert_eq!(od.consecutive_5xx_errors, Some(7));
    assert_eq!(od.max_ejection_percent, Some(50));
    assert_eq!(
        tp.tls.as_ref().and_then(|t| t.mode),
        Some(ClientTlsMode::IstioMutual)
    );
    assert_eq!(
        tp.port_level_settings[0].port.as_ref().map(|p| p.number),
        Some(9080)
    );
    assert_eq!(
        dr.subsets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["v1", "v2", "v3"]
    );
    let ch = dr.subsets[1]
        .traffic_policy
        .as_ref()
        .and_then(|t| t.load_balancer.as_ref())
        .and_then(|l| l.consistent_hash.as_ref())
        .expect("hash");
    assert!(matches!(ch.hash_keys()[..], [HashKey::Cookie(c)] if c.name == "user"));
    assert_eq!(
        ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size),
        Some(1024)
    );

    let ratings = find(&objs, Kind::DestinationRule, "bookinfo", "ratings")
        .as_destination_rule()
        .expect("dr");
    let ch = |tp: &Option<TrafficPolicy>| {
        tp.as_ref()
            .and_then(|t| t.load_balancer.clone())
            .and_then(|l| l.consistent_hash)
            .expect("hash")
    };
    assert_eq!(
        ch(&ratings.traffic_policy)
            .maglev
            .and_then(|m| m.table_size),
        Some(65537)
    );
    assert_eq!(
        ch(&ratings.traffic_policy).http_header_name.as_deref(),
        Some("x-user")
    );
    assert_eq!(
        ch(&ratings.subsets[0].traffic_policy).use_source_ip,
        Some(true)
    );
    assert_eq!(
        ch(&ratings.subsets[1].traffic_policy)
            .http_query_parameter_name
            .as_deref(),
        Some("user")
    );
}

#[test]
fn service_entry_sidecar_gateway_workload_entry_decode() {
    let objs = all_fixtures();
    let se = find(&objs, Kind::ServiceEntry, "bookinfo", "legacy-db")
        .as_service_entry()
        .expect("se");
    assert_eq!(se.resolution, Some(Resolution::Static));
    assert_eq!(se.location, Some(Location::MeshInternal));
    assert_eq!(se.ports[0].target_port, Some(15432));
    assert_eq!(se.endpoints[1].ports["tcp-postgres"], 25432);
    assert_eq!(se.endpoints[1].weight, Some(3));
    let sc = find(&objs, Kind::Sidecar, "bookinfo", "default")
        .as_sidecar()
        .expect("sidecar");
    assert_eq!(sc.egress[0].hosts.len(), 3);
    assert_eq!(
        sc.outbound_traffic_policy.as_ref().and_then(|p| p.mode),
        Some(OutboundTrafficMode::RegistryOnly)
    );
    let gw = find(&objs, Kind::Gateway, "bookinfo", "bookinfo-gateway");
    let Resource::Gateway(gw) = &gw.spec else {
        panic!("gateway")
    };
    assert_eq!(
        gw.servers[1].tls.as_ref().and_then(|t| t.mode),
        Some(ServerTlsMode::Simple)
    );
    let we = find(&objs, Kind::WorkloadEntry, "bookinfo", "vm-1")
        .as_workload_entry()
        .expect("we");
    assert_eq!(we.service_account.as_deref(), Some("vm-api"));
}

#[test]
fn security_and_mesh_config_decode() {
    let objs = all_fixtures();
    let Resource::PeerAuthentication(pa) =
        &find(&objs, Kind::PeerAuthentication, "bookinfo", "ratings").spec
    else {
        panic!("pa")
    };
    assert_eq!(
        pa.port_level_mtls.as_ref().expect("ports")[&weft_api::security::PortKey(9080)].mode,
        Some(MtlsMode::Disable)
    );
    let Resource::AuthorizationPolicy(ap) = &find(
        &objs,
        Kind::AuthorizationPolicy,
        "bookinfo",
        "ratings-viewer",
    )
    .spec
    else {
        panic!("ap")
    };
    assert_eq!(ap.action, Some(AuthorizationAction::Allow));
    let rules = ap.rules.as_ref().expect("rules");
    assert_eq!(
        rules[0].to[0].operation.as_ref().map(|o| o.ports.clone()),
        Some(vec!["9080".to_string()])
    );

    let mesh = find(&objs, Kind::MeshConfig, "istio-system", "istio")
        .as_mesh_config()
        .expect("mesh");
    assert_eq!(mesh.access_log_file.as_deref(), Some("/dev/stdout"));
    assert_eq!(
        mesh.access_log_encoding,
        Some(weft_api::mesh::AccessLogEncoding::Json)
    );
    assert_eq!(mesh.outbound_mode(), OutboundTrafficMode::RegistryOnly);
    assert_eq!(mesh.trust_domain_or_default(), "example.org");
    let dc = mesh.default_config.as_ref().expect("defaultConfig");
    assert_eq!(dc.concurrency, Some(2));
    assert_eq!(dc.hold_application_until_proxy_starts, Some(true));
    assert_eq!(dc.proxy_metadata["ISTIO_META_DNS_AUTO_ALLOCATE"], "true");

    let other = find(
        &objs,
        Kind::Other("apps/v1".into(), "Deployment".into()),
        "bookinfo",
        "productpage-v1",
    );
    assert!(matches!(other.spec, Resource::Other(_)));
}

#[test]
fn kubernetes_objects_keep_metadata_and_ignore_unread_fields() {
    let objs = all_fixtures();
    let pod = find(&objs, Kind::Pod, "bookinfo", "reviews-v1-abc");
    assert_eq!(pod.meta.labels["version"], "v1");
    assert_eq!(pod.as_pod().map(|p| p.ips()), Some(vec!["10.244.0.11"]));
    let ns = find(&objs, Kind::Namespace, "", "bookinfo");
    assert_eq!(ns.meta.labels["istio-injection"], "enabled");
    let slice = find(&objs, Kind::EndpointSlice, "bookinfo", "ratings-abcde")
        .as_endpoint_slice()
        .expect("slice");
    assert_eq!(slice.endpoints[1].conditions.ready, Some(false));
}

#[test]
fn mesh_config_from_standalone_yaml() {
    let (mesh, warnings) = weft_api::mesh::MeshConfig::from_yaml(
        "accessLogFile: /dev/stdout\nenableAutoMtls: false\nmeshMTLS: {minProtocolVersion: TLSV1_3}\n",
    )
    .expect("valid");
    assert_eq!(mesh.enable_auto_mtls, Some(false));
    assert!(mesh.mesh_mtls.is_some());
    assert!(warnings.is_empty(), "{warnings:?}");
    // Istio ignores unknown MeshConfig fields: a typo is a warning.
    let (_, warnings) = weft_api::mesh::MeshConfig::from_yaml(
        "accessLogFile: /dev/stdout\nacessLogEncoding: JSON\n",
    )
    .expect("unknown fields are not fatal");
    assert_eq!(warnings[0].path, "acessLogEncoding");
    assert!(!warnings[0].is_error());
    let errs =
        weft_api::mesh::MeshConfig::from_yaml("enableAutoMtls: maybe\n").expect_err("mistyped");
    assert_eq!(errs[0].path, "enableAutoMtls");
}

#[test]
fn kind_list_items_become_objects() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: x}\n  spec: {ports: [{name: http, port: 80}]}\n- apiVersion: networking.istio.io/v1\n  kind: DestinationRule\n  metadata: {name: b, namespace: x}\n  spec: {host: a, subsetz: []}\n";
    let d = decode_file("list.yaml", list);
    assert!(d.problems.is_empty());
    let names: Vec<&str> = d.objects.iter().map(|(o, _)| o.name()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(d.objects[1].1[0].path, "items[1].spec.subsetz");
}

#[test]
fn envoy_regexes_match_the_whole_input() {
    let re = weft_api::validate::full_match_regex("/api/v[0-9]+").expect("valid");
    assert!(re.is_match("/api/v2"));
    assert!(!re.is_match("/api/v2/extra"));
    assert!(weft_api::validate::full_match_regex("(").is_err());
}

#[test]
fn syntax_error_lines_count_comments_before_the_document() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# comment\n\napiVersion: v1\nkind: Service\nmetadata:\n  name: x\n   bad: indent\n";
    let d = decode_file("f.yaml", text);
    assert_eq!(d.problems.len(), 1);
    assert_eq!(d.problems[0].origin.line, 7);
    assert_eq!(d.problems[0].error.line, 11);
    assert!(
        d.problems[0]
            .error
            .message
            .starts_with("invalid YAML (line 11)"),
        "{}",
        d.problems[0].error.message
    );
}
