//! One test per validation rule, each asserting the exact field path:
//! VirtualService rules, decoding problems and severities.

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
