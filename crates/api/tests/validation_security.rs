//! AuthorizationPolicy validation beyond structure: values the translation
//! relies on (IPs, ports, `*` forms, service accounts, `when` keys) and
//! what weft rejects instead of silently not enforcing (CUSTOM, JWT
//! attributes, path templates), each with its exact field path.

mod common;

use common::{assert_error, assert_valid, obj};

const SEC: &str = "security.istio.io";

fn ap(spec: &str) -> String {
    obj(SEC, "AuthorizationPolicy", spec)
}

#[test]
fn istio_shaped_policies_are_valid() {
    assert_valid(&ap(concat!(
        "action: ALLOW\n",
        "rules:\n",
        "- from:\n",
        "  - source:\n",
        "      principals: [cluster.local/ns/a/sa/b, \"*/sa/frontend\", \"*\"]\n",
        "      namespaces: [\"team-*\"]\n",
        "      ipBlocks: [10.0.0.0/8, 192.168.1.7]\n",
        "      notRemoteIpBlocks: [\"fd00::/8\"]\n",
        "  to:\n",
        "  - operation:\n",
        "      hosts: [\"*.example.com\"]\n",
        "      methods: [GET]\n",
        "      paths: [/api/*, \"*.css\", /]\n",
        "      ports: [\"8080\"]\n",
        "  when:\n",
        "  - {key: \"request.headers[x-user]\", values: [alice]}\n",
        "  - {key: source.ip, notValues: [10.9.0.0/16]}\n",
        "  - {key: destination.port, values: [\"8080\"]}\n",
    )));
    // An empty rule matches everything (allow-all / deny-all idioms).
    assert_valid(&ap("action: DENY\nrules:\n- {}\n"));
    // An ALLOW without rules allows nothing.
    assert_valid(&ap("{}\n"));
}

#[test]
fn custom_is_rejected_with_a_reason() {
    let p = ap("action: CUSTOM\nprovider: {name: opa}\nrules:\n- {}\n");
    assert_error(&p, "spec.action", "CUSTOM");
    assert_error(&p, "spec.action", "not supported by weft");
}

#[test]
fn deny_without_rules_never_triggers() {
    assert_error(&ap("action: DENY\n"), "spec.rules", "never triggered");
}

#[test]
fn jwt_attributes_are_rejected() {
    let p = ap(concat!(
        "rules:\n",
        "- from:\n",
        "  - source: {requestPrincipals: [\"https://issuer/sub\"]}\n",
        "  when:\n",
        "  - {key: \"request.auth.claims[groups]\", values: [admin]}\n",
    ));
    assert_error(
        &p,
        "spec.rules[0].from[0].source.requestPrincipals[0]",
        "RequestAuthentication",
    );
    assert_error(&p, "spec.rules[0].when[0].key", "JWT");
}

#[test]
fn bad_values_name_their_field() {
    let p = ap(concat!(
        "rules:\n",
        "- from:\n",
        "  - source:\n",
        "      ipBlocks: [10.0.0.0/33]\n",
        "      remoteIpBlocks: [not-an-ip]\n",
        "      principals: [\"cluster.local/*/sa/x\"]\n",
        "  - source:\n",
        "      serviceAccounts: [\"ns/*\"]\n",
        "  to:\n",
        "  - operation:\n",
        "      paths: [\"/api/{*}/items\"]\n",
        "      hosts: [\"a*b.example.com\"]\n",
        "  when:\n",
        "  - {key: source.ip, values: [300.1.1.1]}\n",
        "  - {key: destination.port, values: [\"70000\"]}\n",
        "  - {key: \"request.headers[]\", values: [x]}\n",
        "  - {key: destination.labels, values: [x]}\n",
        "  - {key: no.such.attribute, values: [x]}\n",
    ));
    assert_error(&p, "spec.rules[0].from[0].source.ipBlocks[0]", "CIDR");
    assert_error(
        &p,
        "spec.rules[0].from[0].source.remoteIpBlocks[0]",
        "not-an-ip",
    );
    assert_error(&p, "spec.rules[0].from[0].source.principals[0]", "'*'");
    assert_error(
        &p,
        "spec.rules[0].from[1].source.serviceAccounts[0]",
        "without wildcards",
    );
    assert_error(
        &p,
        "spec.rules[0].to[0].operation.paths[0]",
        "path templates",
    );
    assert_error(&p, "spec.rules[0].to[0].operation.hosts[0]", "'*'");
    assert_error(&p, "spec.rules[0].when[0].values[0]", "300.1.1.1");
    assert_error(&p, "spec.rules[0].when[1].values[0]", "bad port");
    assert_error(&p, "spec.rules[0].when[2].key", "bad key");
    assert_error(&p, "spec.rules[0].when[3].key", "workload selector");
    assert_error(&p, "spec.rules[0].when[4].key", "unknown attribute");
}
