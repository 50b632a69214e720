//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use weft_api::decode::decode_file;
use weft_api::validate::validate_object;
use weft_api::{FieldError, Object};

/// Reads a fixture from `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Decodes a file that must decode without document-level problems.
pub fn decode_all(file: &str, text: &str) -> Vec<(Object, Vec<FieldError>)> {
    let d = decode_file(file, text);
    assert!(
        d.problems.is_empty(),
        "unexpected decode problems in {file}: {:?}",
        d.problems
    );
    d.objects
}

/// Decodes exactly one object and returns it with all its problems
/// (decode + validation), errors only, as `(path, message)`.
pub fn errors_of(yaml: &str) -> Vec<(String, String)> {
    let objs = decode_all("test.yaml", yaml);
    assert_eq!(objs.len(), 1, "expected one object");
    let (obj, mut errs) = objs.into_iter().next().expect("one object");
    errs.extend(validate_object(&obj));
    errs.into_iter()
        .filter(FieldError::is_error)
        .map(|e| (e.path, e.message))
        .collect()
}

/// Asserts that `yaml` has an error at exactly `path` whose message contains `needle`.
#[track_caller]
pub fn assert_error(yaml: &str, path: &str, needle: &str) {
    let errs = errors_of(yaml);
    assert!(
        errs.iter().any(|(p, m)| p == path && m.contains(needle)),
        "expected an error at {path:?} containing {needle:?}; got {errs:#?}"
    );
}

/// Asserts that `yaml` has no errors.
#[track_caller]
pub fn assert_valid(yaml: &str) {
    let errs = errors_of(yaml);
    assert!(errs.is_empty(), "expected no errors; got {errs:#?}");
}

/// A VirtualService in namespace `default` with the given spec body.
pub fn vs(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n{}",
        indent(spec)
    )
}

/// A DestinationRule in namespace `default` with the given spec body.
pub fn dr(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n{}",
        indent(spec)
    )
}

/// An object of `kind` in `group` with the given spec body.
pub fn obj(group: &str, kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: {group}/v1\nkind: {kind}\nmetadata:\n  name: test\n  namespace: default\nspec:\n{}",
        indent(spec)
    )
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// Files map for `analyze_files` / `build_snapshot`.
pub fn files(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
