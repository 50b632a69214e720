//! A YAML emitter for JSON values whose output every Kubernetes YAML reader
//! reads back the same. kubectl's reader follows YAML 1.1, where `on`,
//! `yes`, `n` and friends are booleans; serde_yaml (YAML 1.2) writes those
//! strings unquoted. Here a string stays plain only when it cannot be read
//! as anything but a string; everything else is written double-quoted (JSON
//! escapes are valid YAML escapes). Key order is kept.

use serde_json::{Map, Value};

/// YAML 1.1 words that are not strings to a YAML 1.1 reader.
const SPECIAL_WORDS: [&str; 12] = [
    "y", "yes", "n", "no", "on", "off", "true", "false", "null", "nan", "inf", "~",
];

fn plain_ok(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !SPECIAL_WORDS.contains(&s.to_ascii_lowercase().as_str())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain_ok(s) => s.clone(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(a) if a.is_empty() => "[]".to_string(),
        Value::Object(m) if m.is_empty() => "{}".to_string(),
        _ => unreachable!("collections are not scalars"),
    }
}

fn is_scalar(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => true,
    }
}

fn key(k: &str) -> String {
    if plain_ok(k) {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn emit_map(m: &Map<String, Value>, indent: usize, first_inline: bool, out: &mut String) {
    for (i, (k, v)) in m.iter().enumerate() {
        if !(i == 0 && first_inline) {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key(k));
        out.push(':');
        emit_value_after_key(v, indent, out);
    }
}

fn emit_value_after_key(v: &Value, indent: usize, out: &mut String) {
    if is_scalar(v) {
        out.push(' ');
        out.push_str(&scalar(v));
        out.push('\n');
        return;
    }
    out.push('\n');
    match v {
        Value::Object(m) => emit_map(m, indent + 2, false, out),
        // Lists under a key sit at the key's indentation (Kubernetes style).
        Value::Array(a) => emit_list(a, indent, out),
        _ => unreachable!("scalars handled above"),
    }
}

fn emit_list(a: &[Value], indent: usize, out: &mut String) {
    for item in a {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => emit_map(m, indent + 2, true, out),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                emit_list(inner, indent + 2, out);
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// One YAML document for `v` (no `---` marker).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => emit_map(m, 0, false, &mut out),
        Value::Array(a) if !a.is_empty() => emit_list(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_1_1_words_and_numbers_are_quoted() {
        let v = json!({"labels": {"a": "on", "b": "Yes", "c": "y", "d": "NO", "e": "1e3",
            "f": "0x10", "g": "~", "h": "null", "i": "", "j": "plain-value_1.2", "k": "a: b",
            "l": "line\nbreak", "on": "key"}});
        let text = to_yaml(&v);
        for quoted in [
            "\"on\"", "\"Yes\"", "\"y\"", "\"NO\"", "\"1e3\"", "\"0x10\"", "\"~\"", "\"null\"",
            "\"\"", "\"a: b\"",
        ] {
            assert!(text.contains(quoted), "{quoted} not quoted in:\n{text}");
        }
        assert!(text.contains("j: plain-value_1.2"), "{text}");
        let back: Value = serde_yaml::from_str(&text).expect("parses");
        assert_eq!(back, v);
    }

    #[test]
    fn nested_structures_round_trip() {
        let v = json!({"spec": {"containers": [{"name": "a", "args": ["-p", "15001", ""],
            "ports": [{"containerPort": 80}], "resources": {}}], "volumes": [{"name": "v", "emptyDir": {}}],
            "list": [[1, 2], [], {"x": null}], "f": 1.5, "b": false}});
        let back: Value = serde_yaml::from_str(&to_yaml(&v)).expect("parses");
        assert_eq!(back, v);
    }
}
