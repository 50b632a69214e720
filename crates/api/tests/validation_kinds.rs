//! One test per validation rule, each asserting the exact field path:
//! DestinationRule, ServiceEntry, WorkloadEntry, Gateway, Sidecar,
//! security kinds, metadata and MeshConfig.

mod common;

use common::{assert_error, assert_valid, dr, obj, vs};

const NET: &str = "networking.istio.io";

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
