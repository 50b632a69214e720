//! Injection is never applied twice: injecting an already injected object
//! again yields the same object (one sidecar, same probes, same status),
//! for every conformance input.

use std::path::Path;
use weft_inject::{Settings, inject_stream, render_stream};

#[test]
fn injecting_twice_equals_injecting_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && !n.ends_with(".iop.yaml"))
        .collect();
    names.sort();
    let settings = Settings::default();
    let mut checked = 0;
    for name in names {
        let text = std::fs::read_to_string(dir.join(&name)).expect("read");
        let Ok((once, _)) = inject_stream(&text, &settings) else {
            continue; // inputs that are rejected (bad annotations, unknown templates)
        };
        let (twice, _) = inject_stream(&render_stream(&once), &settings)
            .unwrap_or_else(|e| panic!("{name}: re-injection failed: {e}"));
        pretty_assertions::assert_eq!(once, twice, "{name}: second injection changed the object");
        checked += 1;
    }
    assert!(checked > 90, "only {checked} inputs checked");
}
