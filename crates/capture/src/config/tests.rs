//! Unit tests for the flag and environment parsers.

use super::*;

#[test]
fn ports_accept_valid_and_refuse_invalid() {
    assert_eq!(parse_port("-p", "15001").unwrap(), 15001);
    for bad in ["0", "65536", "-1", "abc", ""] {
        let err = parse_port("-p/--envoy-port", bad).unwrap_err().to_string();
        assert!(err.contains("-p/--envoy-port"), "{err}");
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
}
