//! Istio's duration strings (`"1s"`, `"100ms"`, `"1h2m"`, `"0.5s"`).
//!
//! Istio accepts Go's `time.ParseDuration` syntax in its YAML. A [`Duration`]
//! keeps the text as written so a bad value survives decoding and is reported
//! by validation with its field path instead of aborting the whole object.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as written in a manifest, with its parsed value when valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    raw: String,
    value: Result<std::time::Duration, String>,
}

impl Duration {
    /// Parses `raw`; an invalid string is kept and reported by [`Duration::value`].
    pub fn new(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        let value = parse_duration(&raw);
        Duration { raw, value }
    }

    /// Builds a duration from a value; the text is the canonical form.
    pub fn from_std(d: std::time::Duration) -> Self {
        Duration {
            raw: format_duration(d),
            value: Ok(d),
        }
    }

    /// The text as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The parsed value, or why the text is not a duration.
    pub fn value(&self) -> Result<std::time::Duration, &str> {
        self.value.as_ref().copied().map_err(String::as_str)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A bare number (YAML `timeout: 10`) is kept as text and rejected by
        // validation ("missing unit"), as Istio rejects it.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"1s\", \"100ms\" or \"1h2m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                Ok(Duration::new(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                Ok(Duration::new(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::new(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                Ok(Duration::new(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses Go's duration syntax: an optional sign, then one or more
/// `<decimal><unit>` terms with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
/// Negative durations are rejected (no Istio field accepts them).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = |why: &str| Err(format!("invalid duration {s:?}: {why}"));
    let mut rest = s;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return bad("negative durations are not allowed");
    }
    if rest.is_empty() {
        return bad("empty");
    }
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return bad("expected a number like \"1\" or \"0.5\" before each unit");
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return bad("missing unit (use ns, us, ms, s, m or h)"),
            _ => {
                return bad(&format!(
                    "unknown unit {unit:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            match int_part.parse() {
                Ok(v) => v,
                Err(_) => return bad("number too large"),
            }
        };
        let mut nanos = int.checked_mul(unit_nanos);
        if !frac_part.is_empty() {
            // Fractions are computed exactly on the first 18 digits.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().unwrap_or(0);
            let scale = 10u128.pow(u32::try_from(digits.len()).unwrap_or(18));
            nanos = nanos.and_then(|n| n.checked_add(frac * unit_nanos / scale));
        }
        total_nanos = match nanos.and_then(|n| total_nanos.checked_add(n)) {
            Some(t) => t,
            None => return bad("overflow"),
        };
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| "overflow".to_string())?;
    let sub = u32::try_from(total_nanos % 1_000_000_000).unwrap_or(0);
    Ok(std::time::Duration::new(secs, sub))
}

/// Formats a duration the way Go prints it (`1h2m0s`, `100ms`, `1.5s`).
pub fn format_duration(d: std::time::Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let total_secs = d.as_secs();
    let (h, m, s) = (total_secs / 3600, (total_secs / 60) % 60, total_secs % 60);
    let frac = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{frac:09}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse_duration("1s"), Ok(D::from_secs(1)));
        assert_eq!(parse_duration("100ms"), Ok(D::from_millis(100)));
        assert_eq!(parse_duration("1h2m"), Ok(D::from_secs(3720)));
        assert_eq!(parse_duration("0.5s"), Ok(D::from_millis(500)));
        assert_eq!(parse_duration("1m30.25s"), Ok(D::from_millis(90_250)));
        assert_eq!(parse_duration("250us"), Ok(D::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(D::ZERO));
    }

    #[test]
    fn rejects_bad_text() {
        for bad in ["", "10", "1x", "s", "-1s", "1..2s", "abc", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(D::from_secs(3720)), "1h2m0s");
        assert_eq!(format_duration(D::from_millis(100)), "100ms");
        assert_eq!(format_duration(D::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(D::ZERO), "0s");
    }
}
