//! One test per validation rule, each asserting the exact field path.

mod common;

use common::{assert_error, assert_valid, dr, errors_of, obj, vs};

const NET: &str = "networking.istio.io";

#[test]
fn weights_must_sum_to_100() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 80\n  - destination: {host: reviews, subset: v2}\n    weight: 10\n",
    );
    assert_error(&y, "spec.http[0].route", "weights sum to 90, must be 100");
    let ok = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 90\n  - destination: {host: reviews, subset: v2}\n    weight: 10\n",
    );
    assert_valid(&ok);
}

#[test]
fn negative_weight_is_reported_on_the_destination() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n    weight: 110\n  - destination: {host: ratings}\n    weight: -10\n",
    );
    assert_error(&y, "spec.http[0].route[1].weight", "must not be negative");
}

#[test]
fn tcp_weights_are_checked_too() {
    let y = vs(
        "hosts: [db]\ntcp:\n- route:\n  - destination: {host: db}\n    weight: 50\n  - destination: {host: db2}\n    weight: 20\n",
    );
    assert_error(&y, "spec.tcp[0].route", "weights sum to 70");
}

#[test]
fn bad_regex_in_uri_header_and_query() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- match:\n  - uri: {regex: \"/api/(v1\"}\n    headers:\n      x-id: {regex: \"[a-\"}\n    queryParams:\n      q: {regex: \"(?<=x)y\"}\n  route:\n  - destination: {host: reviews}\n",
    );
    assert_error(&y, "spec.http[0].match[0].uri.regex", "invalid regex");
    assert_error(
        &y,
        "spec.http[0].match[0].headers.x-id.regex",
        "invalid regex",
    );
    // Look-behind is not RE2 syntax.
    assert_error(
        &y,
        "spec.http[0].match[0].queryParams.q.regex",
        "invalid regex",
    );
}

#[test]
fn string_match_with_two_variants_or_empty_prefix() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- match:\n  - uri: {exact: /a, prefix: /b}\n    method: {prefix: \"\"}\n  route:\n  - destination: {host: reviews}\n",
    );
    assert_error(
        &y,
        "spec.http[0].match[0].uri",
        "only one of exact, prefix or regex",
    );
    assert_error(
        &y,
        "spec.http[0].match[0].method.prefix",
        "should not be empty",
    );
}

#[test]
fn bad_durations() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  timeout: 10\n  retries:\n    attempts: 2\n    perTryTimeout: 1x\n  fault:\n    delay:\n      fixedDelay: 500us\n      percentage: {value: 10}\n",
    );
    assert_error(&y, "spec.http[0].timeout", "missing unit");
    assert_error(&y, "spec.http[0].retries.perTryTimeout", "unknown unit");
    assert_error(&y, "spec.http[0].fault.delay.fixedDelay", "at least 1ms");
}

#[test]
fn retries_with_negative_attempts_and_bad_retry_on() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  retries:\n    attempts: -1\n    retryOn: 5xx,not-a-policy,503\n",
    );
    assert_error(&y, "spec.http[0].retries.attempts", "cannot be negative");
    assert_error(
        &y,
        "spec.http[0].retries.retryOn",
        "\"not-a-policy\" is not a valid retryOn policy",
    );
    let zero = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  retries:\n    attempts: 0\n    perTryTimeout: 1s\n",
    );
    assert_error(
        &zero,
        "spec.http[0].retries.attempts",
        "attempts are set to 0",
    );
}

#[test]
fn fault_percentages_and_statuses() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  fault:\n    abort:\n      httpStatus: 700\n      percentage: {value: 150}\n    delay:\n      fixedDelay: 1s\n      percentage: {value: -1}\n",
    );
    assert_error(
        &y,
        "spec.http[0].fault.abort.percentage.value",
        "neither 0.0, nor in range",
    );
    assert_error(
        &y,
        "spec.http[0].fault.abort.httpStatus",
        "700 is not in range 200-599",
    );
    assert_error(
        &y,
        "spec.http[0].fault.delay.percentage.value",
        "neither 0.0",
    );
    let grpc = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  fault:\n    abort:\n      grpcStatus: NOPE\n",
    );
    assert_error(
        &grpc,
        "spec.http[0].fault.abort.grpcStatus",
        "not supported",
    );
    let empty =
        vs("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  fault: {}\n");
    assert_error(
        &empty,
        "spec.http[0].fault",
        "must have an abort and/or a delay",
    );
}

#[test]
fn mirror_percentage_out_of_range() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  mirror: {host: shadow}\n  mirrorPercentage: {value: 101}\n",
    );
    assert_error(&y, "spec.http[0].mirrorPercentage.value", "within 0..100");
}

#[test]
fn route_actions_conflict_or_are_missing() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- redirect: {uri: /x}\n  route:\n  - destination: {host: reviews}\n- match:\n  - uri: {exact: /}\n",
    );
    assert_error(&y, "spec.http[0].route", "both route and redirect");
    assert_error(
        &y,
        "spec.http[1].route",
        "route, redirect or directResponse is required",
    );
    let none = vs("hosts: [reviews]\n");
    assert_error(&none, "spec", "http, tcp or tls must be provided");
}

#[test]
fn redirect_and_direct_response_rules() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- redirect: {uri: /x, redirectCode: 200, scheme: ftp}\n- directResponse: {status: 99}\n",
    );
    assert_error(&y, "spec.http[0].redirect.redirectCode", "must be 3xx");
    assert_error(
        &y,
        "spec.http[0].redirect.scheme",
        "invalid redirect scheme",
    );
    assert_error(
        &y,
        "spec.http[1].directResponse.status",
        "99 is not in range",
    );
}

#[test]
fn bad_ports() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- match:\n  - port: 70000\n  route:\n  - destination:\n      host: reviews\n      port: {number: 0}\n",
    );
    assert_error(
        &y,
        "spec.http[0].match[0].port",
        "must be in the range 1..65535",
    );
    assert_error(
        &y,
        "spec.http[0].route[0].destination.port.number",
        "1..65535",
    );
    let se = obj(
        NET,
        "ServiceEntry",
        "hosts: [api.example.com]\nresolution: DNS\nports:\n- {number: 65536, name: http, protocol: HTTP}\n",
    );
    assert_error(&se, "spec.ports[0].number", "1..65535");
}

#[test]
fn invalid_label_selectors() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- match:\n  - sourceLabels: {\"app\": \"-bad\", \"bad key!\": x}\n  route:\n  - destination: {host: reviews}\n",
    );
    assert_error(
        &y,
        "spec.http[0].match[0].sourceLabels.app",
        "invalid label value",
    );
    assert_error(
        &y,
        "spec.http[0].match[0].sourceLabels.bad key!",
        "invalid label key",
    );
    let d = dr("host: reviews\nsubsets:\n- name: v1\n  labels: {version: \"v1*\"}\n");
    assert_error(
        &d,
        "spec.subsets[0].labels.version",
        "wildcard is not supported",
    );
}

#[test]
fn hosts_and_destinations() {
    let y = vs(
        "hosts: [\"*\", \"bad_host\"]\nhttp:\n- route:\n  - destination: {host: \"*\", subset: \"V1\"}\n",
    );
    assert_error(&y, "spec.hosts[0]", "wildcard host * is not allowed");
    assert_error(&y, "spec.hosts[1]", "label \"bad_host\" invalid");
    assert_error(
        &y,
        "spec.http[0].route[0].destination.host",
        "invalid destination host *",
    );
    assert_error(
        &y,
        "spec.http[0].route[0].destination.subset",
        "invalid subset name",
    );
    let dup =
        vs("hosts: [reviews.com, \"*.com\"]\nhttp:\n- route:\n  - destination: {host: reviews}\n");
    assert_error(&dup, "spec.hosts[1]", "duplicate hosts");
}

#[test]
fn service_entry_hosts_must_be_fully_qualified() {
    let se = obj(
        NET,
        "ServiceEntry",
        "hosts: [httpbin, \"*\"]\nresolution: DNS\nports:\n- {number: 80, name: http, protocol: HTTP}\n",
    );
    assert_error(&se, "spec.hosts[0]", "not fully qualified");
    assert_error(&se, "spec.hosts[1]", "invalid host *");
    let empty = obj(
        NET,
        "ServiceEntry",
        "ports:\n- {number: 80, name: http, protocol: HTTP}\n",
    );
    assert_error(&empty, "spec.hosts", "at least one host");
}

#[test]
fn service_entry_resolution_rules() {
    let none = obj(
        NET,
        "ServiceEntry",
        "hosts: [a.example.com]\nresolution: NONE\nports:\n- {number: 80, name: http, protocol: HTTP}\nendpoints:\n- address: 1.2.3.4\n",
    );
    assert_error(&none, "spec.endpoints", "no endpoints should be provided");
    let st = obj(
        NET,
        "ServiceEntry",
        "hosts: [a.example.com]\nresolution: STATIC\nports:\n- {number: 80, name: http, protocol: HTTPX}\nendpoints:\n- address: not-an-ip.example.com\n  ports: {grpc: 9000}\n",
    );
    assert_error(&st, "spec.endpoints[0].address", "not a valid IP address");
    assert_error(
        &st,
        "spec.endpoints[0].ports.grpc",
        "not defined by the service entry",
    );
    assert_error(&st, "spec.ports[0].protocol", "unsupported protocol");
    let multi = obj(
        NET,
        "ServiceEntry",
        "hosts: [a.example.com, b.example.com]\nresolution: DNS\nports:\n- {number: 3306, name: tcp, protocol: TCP}\n",
    );
    assert_error(
        &multi,
        "spec.hosts",
        "multiple hosts provided with non-HTTP, non-TLS ports",
    );
}

#[test]
fn gateway_rules() {
    let gw = obj(
        NET,
        "Gateway",
        "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [bookinfo]\n- port: {number: 80, name: https, protocol: FOO}\n  hosts: [\"ns/*.example.com\"]\n",
    );
    assert_error(
        &gw,
        "spec.servers[0].hosts[0]",
        "short name \"bookinfo\" is not allowed",
    );
    assert_error(&gw, "spec.servers[0].tls", "must have TLS settings");
    assert_error(&gw, "spec.servers[1].port.protocol", "invalid protocol");
    assert_error(&gw, "spec.servers[1].port.name", "duplicate name https");
    let none = obj(NET, "Gateway", "servers: []\n");
    assert_error(&none, "spec.servers", "at least one server");
}

#[test]
fn sidecar_rules() {
    let sc = obj(
        NET,
        "Sidecar",
        "egress:\n- hosts: [reviews]\n- port: {number: 9080, protocol: HTTP, name: http}\n  hosts: [\"bad ns/*\"]\noutboundTrafficPolicy: {mode: ALLOW_ANY_DYNAMIC_DNS}\n",
    );
    assert_error(&sc, "spec.egress[0]", "empty port should be the last");
    assert_error(
        &sc,
        "spec.egress[0].hosts[0]",
        "must be of form namespace/dnsName",
    );
    assert_error(&sc, "spec.egress[1].hosts[0]", "invalid namespace value");
    assert_error(
        &sc,
        "spec.outboundTrafficPolicy.mode",
        "only supported in MeshConfig",
    );
    let empty = obj(NET, "Sidecar", "{}\n");
    assert_error(&empty, "spec", "empty configuration");
}

#[test]
fn destination_rule_rules() {
    let d = dr("host: \"\"\nsubsets:\n- name: v1\n- name: v1\n- name: \"\"\ntrafficPolicy: {}\n");
    assert_error(&d, "spec.host", "required field is missing");
    assert_error(&d, "spec.subsets[1].name", "duplicate subset name");
    assert_error(&d, "spec.subsets[2].name", "cannot be empty");
    assert_error(&d, "spec.trafficPolicy", "at least one field");
    let lb = dr(
        "host: reviews\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpHeaderName: x-user\n      useSourceIp: true\n      maglev: {tableSize: 1000}\n  outlierDetection:\n    maxEjectionPercent: 120\n    interval: 1ns\n  connectionPool:\n    http: {http1MaxPendingRequests: -1}\n  tls: {mode: MUTUAL}\n  portLevelSettings:\n  - port: {number: 8080}\n",
    );
    assert_error(
        &lb,
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "only one of httpHeaderName",
    );
    assert_error(
        &lb,
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        "prime",
    );
    assert_error(
        &lb,
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "120 is not in range",
    );
    assert_error(
        &lb,
        "spec.trafficPolicy.outlierDetection.interval",
        "at least 1ms",
    );
    assert_error(
        &lb,
        "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
        "non-negative",
    );
    assert_error(
        &lb,
        "spec.trafficPolicy.tls.clientCertificate",
        "required for mutual tls",
    );
    assert_error(
        &lb,
        "spec.trafficPolicy.portLevelSettings[0]",
        "at least one field",
    );
    let loc = dr(
        "host: reviews\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      distribute:\n      - from: us-east/*\n        to: {\"us-east/*\": 70, \"us-west/*\": 20}\n",
    );
    assert_error(
        &loc,
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "sum to 90",
    );
}

#[test]
fn unknown_fields_are_errors_with_paths() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subsets: v1}\n    wieght: 100\n  retrys: {attempts: 3}\n",
    );
    assert_error(
        &y,
        "spec.http[0].route[0].destination.subsets",
        "unknown field",
    );
    assert_error(&y, "spec.http[0].route[0].wieght", "unknown field");
    assert_error(&y, "spec.http[0].retrys", "unknown field");
    let top = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspecs: {}\nspec: {host: reviews}\n";
    assert_error(top, "specs", "unknown field");
}

#[test]
fn mistyped_fields_and_enums_report_paths() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n    weight: heavy\n",
    );
    assert_error(&y, "spec.http[0].route[0].weight", "invalid type");
    let d = dr("host: reviews\ntrafficPolicy:\n  loadBalancer: {simple: FASTEST}\n");
    assert_error(
        &d,
        "spec.trafficPolicy.loadBalancer.simple",
        "unknown variant `FASTEST`",
    );
}

#[test]
fn metadata_rules() {
    let y = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: Reviews_1, namespace: Prod}\nspec: {host: reviews}\n";
    assert_error(y, "metadata.name", "invalid name");
    assert_error(y, "metadata.namespace", "invalid namespace");
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: my.gateway}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
    assert_error(gw, "metadata.name", "no dots");
}

#[test]
fn workload_entry_rules() {
    let we = obj(NET, "WorkloadEntry", "address: \"\"\nports: {Http: 0}\n");
    assert_error(&we, "spec.address", "address is required");
    assert_error(&we, "spec.ports.Http", "invalid port name");
    assert_error(&we, "spec.ports.Http", "1..65535");
}

#[test]
fn security_rules() {
    let sec = "security.istio.io";
    let pa = obj(
        sec,
        "PeerAuthentication",
        "mtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: DISABLE}\n",
    );
    assert_error(&pa, "spec.portLevelMtls", "cannot have port level mTLS");
    let pa2 = obj(
        sec,
        "PeerAuthentication",
        "selector: {matchLabels: {app: x}}\nportLevelMtls:\n  0: {mode: DISABLE}\n",
    );
    assert_error(&pa2, "spec.portLevelMtls.0", "1..65535");
    let ap = obj(
        sec,
        "AuthorizationPolicy",
        "action: CUSTOM\nrules:\n- from:\n  - source: {}\n  to:\n  - operation: {ports: [\"http\"]}\n  when:\n  - key: source.principal\n",
    );
    assert_error(&ap, "spec.provider.name", "must not be empty");
    assert_error(&ap, "spec.rules[0].from[0].source", "at least one field");
    assert_error(
        &ap,
        "spec.rules[0].to[0].operation.ports[0]",
        "invalid port",
    );
    assert_error(&ap, "spec.rules[0].when[0]", "values or notValues");
    assert_error(
        &ap,
        "spec.rules[0].when[0].key",
        "not supported with CUSTOM",
    );
}

#[test]
fn mesh_config_rules() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    accessLogEncoding: JSON\n    accessLogFormat: \"%START_TIME%\"\n    defaultConfig:\n      concurrency: -2\n      drainDuration: 5\n      discoveryAddress: nowhere\n    enableAutoMTLS: true\n";
    assert_error(cm, "data.mesh.accessLogFormat", "JSON object");
    assert_error(cm, "data.mesh.defaultConfig.concurrency", "non-negative");
    assert_error(cm, "data.mesh.defaultConfig.drainDuration", "missing unit");
    assert_error(cm, "data.mesh.defaultConfig.discoveryAddress", "host:port");
    let objs = common::decode_all("cm.yaml", cm);
    let w = objs[0]
        .1
        .iter()
        .find(|e| e.path == "data.mesh.enableAutoMTLS")
        .expect("reported");
    assert!(
        !w.is_error(),
        "unknown MeshConfig fields are warnings, as in Istio"
    );
}

#[test]
fn unsupported_api_version_is_reported() {
    let d = weft_api::decode::decode_file(
        "x.yaml",
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: a}\nspec: {}\n",
    );
    assert_eq!(d.problems.len(), 1);
    assert_eq!(d.problems[0].error.path, "apiVersion");
    assert!(
        d.problems[0]
            .error
            .message
            .contains("supported: networking.istio.io/v1")
    );
}

#[test]
fn warnings_do_not_make_objects_invalid() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  mirror: {host: shadow}\n  mirrorPercent: 10\n",
    );
    assert_valid(&y);
    let all = {
        let objs = common::decode_all("t.yaml", &y);
        weft_api::validate::validate_object(&objs[0].0)
    };
    assert!(
        all.iter()
            .any(|e| !e.is_error() && e.path == "spec.http[0].mirrorPercent")
    );
    assert!(errors_of(&y).is_empty());
}

#[test]
fn header_manipulation_names_and_values() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n    headers:\n      response:\n        set: {host: x}\n  headers:\n    request:\n      set: {\":path\": /x, x-ok: \"%HOSTNAME% 100%%\"}\n      add: {x-bad: \"abc%123\"}\n      remove: [\"\"]\n",
    );
    assert_error(
        &y,
        "spec.http[0].headers.request.set.:path",
        "pseudo-headers",
    );
    assert_error(&y, "spec.http[0].headers.request.add.x-bad", "un-escaped %");
    assert_error(
        &y,
        "spec.http[0].headers.request.remove[0]",
        "must not be empty",
    );
    assert_error(
        &y,
        "spec.http[0].route[0].headers.response.set.host",
        "cannot be modified",
    );
    let errs = errors_of(&y);
    assert!(!errs.iter().any(|(p, _)| p.ends_with("x-ok")), "{errs:?}");
}

#[test]
fn rules_after_a_catch_all_are_warned_about() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- match:\n  - uri: {prefix: /}\n  route:\n  - destination: {host: reviews}\n- match:\n  - headers: {end-user: {exact: jason}}\n  route:\n  - destination: {host: reviews}\n",
    );
    assert_valid(&y);
    let objs = common::decode_all("t.yaml", &y);
    let all = weft_api::validate::validate_object(&objs[0].0);
    let warnings: Vec<String> = all
        .iter()
        .filter(|e| !e.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        ["warning: spec.http[1]: rule is never used: spec.http[0] matches every request before it"]
    );
}

#[test]
fn newer_istio_fields_are_typed_and_checked() {
    let d = dr(
        "host: reviews\ntrafficPolicy:\n  retryBudget: {percent: 120, minRetryConcurrency: 3}\n  loadBalancer:\n    simple: ROUND_ROBIN\n    warmup: {minimumPercent: 150, aggression: 0}\n    localityLbSetting: {enabled: true}\n    zoneAwareLbSetting: {minClusterSize: 3}\n  connectionPool:\n    http:\n      http2KeepAlive: {interval: 10s}\n  outlierDetection:\n    outlierDetectionHttpErrorCodes: [503, 700]\n",
    );
    assert_error(
        &d,
        "spec.trafficPolicy.retryBudget.percent",
        "within 0..100",
    );
    assert_error(
        &d,
        "spec.trafficPolicy.loadBalancer.warmup.duration",
        "required",
    );
    assert_error(
        &d,
        "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
        "within 0..100",
    );
    assert_error(
        &d,
        "spec.trafficPolicy.loadBalancer.warmup.aggression",
        "greater than 0",
    );
    assert_error(
        &d,
        "spec.trafficPolicy.loadBalancer",
        "only one of localityLbSetting and zoneAwareLbSetting",
    );
    assert_error(
        &d,
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
        "required",
    );
    assert_error(
        &d,
        "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]",
        "700",
    );
    let r = vs(
        "hosts: [reviews]\nhttp:\n- match:\n  - uri: {exact: /a}\n  redirect: {prefixRewrite: /b}\n",
    );
    assert_error(
        &r,
        "spec.http[0].redirect.prefixRewrite",
        "requires all URI matches to use prefix",
    );
    let t = vs(
        "hosts: [db]\ntcp:\n- match:\n  - sourceSubnet: 10.0.0.0/33\n  route:\n  - destination: {host: db}\n",
    );
    assert_error(&t, "spec.tcp[0].match[0].sourceSubnet", "not a valid CIDR");
}

#[test]
fn unix_addresses_and_port_level_and_service_account_rules() {
    let we = obj(NET, "WorkloadEntry", "address: unix://relative\n");
    assert_error(&we, "spec.address", "absolute path or an abstract socket");
    let dir = obj(NET, "WorkloadEntry", "address: unix:///dir/\n");
    assert_error(&dir, "spec.address", "may not be a directory");
    assert_valid(&obj(
        NET,
        "WorkloadEntry",
        "address: unix:///var/run/app.sock\n",
    ));
    let sec = "security.istio.io";
    let pa = obj(
        sec,
        "PeerAuthentication",
        "selector: {matchLabels: {app: x}}\nportLevelMtls: {}\n",
    );
    assert_error(&pa, "spec.portLevelMtls", "at least one element");
    let ap = obj(
        sec,
        "AuthorizationPolicy",
        "rules:\n- from:\n  - source: {serviceAccounts: [bar/sa], namespaces: [bar]}\n",
    );
    assert_error(
        &ap,
        "spec.rules[0].from[0].source",
        "cannot set serviceAccounts with namespaces or principals",
    );
}

#[test]
fn a_mistyped_field_is_the_only_error_reported() {
    let y = vs(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  timeout: {seconds: 1}\n",
    );
    let errs = errors_of_checked(&y);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "spec.http[0].timeout");
    assert!(
        errs[0].1.contains("a duration such as \"1s\""),
        "{}",
        errs[0].1
    );
}

fn errors_of_checked(yaml: &str) -> Vec<(String, String)> {
    weft_api::analyze::check_file("t.yaml", yaml)
        .objects
        .into_iter()
        .flat_map(|(_, errs)| errs)
        .filter(weft_api::FieldError::is_error)
        .map(|e| (e.path, e.message))
        .collect()
}
