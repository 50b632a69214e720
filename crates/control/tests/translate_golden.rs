//! Golden tests of translation: each directory under `tests/golden/`
//! (except `_base`) is a scenario: `config/*.yaml` (plus `_base/*.yaml`
//! unless a `NO_BASE` file exists) is the config snapshot, `proxy.yaml`
//! (else `_base/proxy.yaml`) the proxy's node; `listeners.json`,
//! `routes.json`, `clusters.json` and `endpoints.json` are the expected
//! resources in the proto3 JSON mapping, keys sorted.
//!
//! `WEFT_UPDATE_GOLDEN=1 cargo test -p weft-control --test translate_golden`
//! rewrites the expected files.

#[path = "golden/harness.rs"]
mod harness;

use harness::{all_json, check_golden, scenarios, translate_scenario};

#[test]
fn scenarios_match_golden_files() {
    let names = scenarios();
    assert!(
        names.len() >= 8,
        "expected the checked-in scenarios, found {names:?}"
    );
    let mut failures = Vec::new();
    for name in &names {
        let res = translate_scenario(name);
        check_golden(name, "listeners", &all_json(&res.listeners), &mut failures);
        check_golden(name, "routes", &all_json(&res.routes), &mut failures);
        check_golden(name, "clusters", &all_json(&res.clusters), &mut failures);
        check_golden(name, "endpoints", &all_json(&res.endpoints), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn translation_is_deterministic() {
    for name in scenarios() {
        let a = translate_scenario(&name);
        let b = translate_scenario(&name);
        assert_eq!(all_json(&a.listeners), all_json(&b.listeners), "{name}");
        assert_eq!(all_json(&a.clusters), all_json(&b.clusters), "{name}");
        assert_eq!(a.routes, b.routes, "{name}");
        assert_eq!(a.endpoints, b.endpoints, "{name}");
        // Byte-equal encodings, so weft_xds versions do not change either.
        for t in weft_xds::XdsType::ALL {
            let (x, y) = (a.resource_set(t.type_url()), b.resource_set(t.type_url()));
            assert_eq!(x.version(), y.version(), "{name}: {t:?}");
        }
    }
}
