//! Rendering of injection templates with minijinja. A template renders a
//! partial pod (YAML) from the context the injector builds; this module
//! owns the template environment (functions and filters) and turns the
//! rendered text into a JSON value. It does no merging.

use crate::error::InjectError;
use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, Error as JinjaError, ErrorKind, UndefinedBehavior};
use serde_json::Value;

fn merge_filter(base: JinjaValue, other: JinjaValue) -> Result<JinjaValue, JinjaError> {
    let mut b: Value = serde_json::to_value(&base)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let o: Value = serde_json::to_value(&other)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    crate::config::merge_into(&mut b, &o);
    Ok(JinjaValue::from_serialize(&b))
}

fn toyaml_filter(v: JinjaValue, kwargs: Kwargs) -> Result<String, JinjaError> {
    let indent: usize = kwargs.get::<Option<usize>>("indent")?.unwrap_or(0);
    kwargs.assert_all_used()?;
    let json: Value = serde_json::to_value(&v)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = serde_yaml::to_string(&json)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let pad = " ".repeat(indent);
    Ok(text
        .trim_end()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Render `source` (template `name`) with `context` and parse the YAML it
/// produces. An empty rendering yields an empty object.
pub fn render(name: &str, source: &str, context: &Value) -> Result<Value, InjectError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.add_filter("merge", merge_filter);
    env.add_filter("toyaml", toyaml_filter);
    let annotations = context
        .pointer("/pod/metadata/annotations")
        .cloned()
        .unwrap_or(Value::Null);
    env.add_function(
        "annotation",
        move |key: String, default: Option<JinjaValue>| -> JinjaValue {
            match annotations.get(&key).and_then(Value::as_str) {
                Some(v) => JinjaValue::from(v),
                None => match default {
                    Some(d) if !d.is_undefined() && !d.is_none() => {
                        if d.as_str().is_some() {
                            d
                        } else {
                            JinjaValue::from(d.to_string())
                        }
                    }
                    _ => JinjaValue::from(""),
                },
            }
        },
    );
    let err = |e: JinjaError| InjectError::Template {
        template: name.to_string(),
        message: format!("{e:#}"),
    };
    env.add_template(name, source).map_err(err)?;
    let text = env
        .get_template(name)
        .map_err(err)?
        .render(JinjaValue::from_serialize(context))
        .map_err(err)?;
    let parsed: Value = serde_yaml::from_str(&text).map_err(|e| InjectError::Template {
        template: name.to_string(),
        message: format!("rendered text is not valid YAML: {e}\n--- rendered ---\n{text}"),
    })?;
    Ok(match parsed {
        Value::Null => Value::Object(Default::default()),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotation_function_and_filters() {
        let ctx = json!({"pod": {"metadata": {"annotations": {"a": "x"}}}, "v": {"k": 1}});
        let out = render(
            "t",
            "a: {{ annotation('a', 'd') }}\nb: {{ annotation('b', 'd') }}\nc: {{ v | merge({'j': 2}) | tojson }}\n",
            &ctx,
        )
        .expect("renders");
        assert_eq!(out, json!({"a": "x", "b": "d", "c": {"k": 1, "j": 2}}));
    }

    #[test]
    fn errors_name_the_template() {
        let err = render("broken", "{% if %}", &json!({})).unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");
    }
}
