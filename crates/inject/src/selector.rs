//! Kubernetes label selectors (`matchLabels` / `matchExpressions`), used by
//! the injection policy (`alwaysInjectSelector`, `neverInjectSelector`) and by
//! the webhook's namespace/object selectors.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A `metav1.LabelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact label matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: Operator,
    /// Values for `In` / `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Selector operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Requirement {
    /// Shorthand constructor.
    pub fn new(key: &str, operator: Operator, values: &[&str]) -> Self {
        Requirement {
            key: key.to_string(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let value = labels.get(&self.key).and_then(Value::as_str);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    /// A selector with only expressions.
    pub fn expressions(match_expressions: Vec<Requirement>) -> Self {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions,
        }
    }

    /// True when the selector has no requirement at all (Kubernetes: matches
    /// everything; Istio's inject selectors ignore empty selectors).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfies every requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).and_then(Value::as_str) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn operators() {
        let l = labels(json!({"a": "1", "b": "2"}));
        assert!(Requirement::new("a", Operator::In, &["1", "3"]).matches(&l));
        assert!(!Requirement::new("a", Operator::NotIn, &["1"]).matches(&l));
        assert!(Requirement::new("c", Operator::NotIn, &["1"]).matches(&l));
        assert!(Requirement::new("b", Operator::Exists, &[]).matches(&l));
        assert!(Requirement::new("c", Operator::DoesNotExist, &[]).matches(&l));
        let mut s = LabelSelector::default();
        s.match_labels.insert("a".into(), "1".into());
        assert!(s.matches(&l));
        s.match_labels.insert("b".into(), "x".into());
        assert!(!s.matches(&l));
    }
}
