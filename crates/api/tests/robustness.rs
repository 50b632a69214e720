//! Untrusted input must never panic the decoder or the validators:
//! truncations and byte insertions into the fixtures are checked.

mod common;

use common::fixture;
use weft_api::analyze::check_file;

#[test]
fn truncated_fixtures_never_panic() {
    for f in [
        "routing.yaml",
        "egress.yaml",
        "bookinfo.yaml",
        "security.yaml",
        "mesh.yaml",
    ] {
        let text = fixture(f);
        let mut checked = 0;
        // Every 5th byte keeps the run short while hitting every construct.
        for cut in (0..text.len())
            .step_by(5)
            .filter(|&i| text.is_char_boundary(i))
        {
            let fc = check_file(f, &text[..cut]);
            // Every problem names the file it came from.
            assert!(fc.problems.iter().all(|p| p.origin.file == f));
            checked += 1;
        }
        assert!(checked > 100, "{f}: only {checked} truncations checked");
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let text = fixture("routing.yaml");
    let replacements: [&str; 10] = [
        "-",
        ":",
        "[",
        "{",
        "\"",
        "*",
        "%",
        "-1",
        "99999999999999999999",
        "µs",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..500 {
        // xorshift: deterministic pseudo-random positions.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut pos = usize::try_from(seed % text.len() as u64).unwrap_or(0);
        while !text.is_char_boundary(pos) {
            pos -= 1;
        }
        let rep = replacements[round % replacements.len()];
        let mutated = format!("{}{}{}", &text[..pos], rep, &text[pos..]);
        let _ = check_file("mutated.yaml", &mutated);
    }
}
