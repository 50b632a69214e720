//! Rendering of injection templates with minijinja. A template renders a
//! partial pod (YAML) from the context the injector builds; this module
//! owns the template environment (functions and filters), compiles the
//! configured templates once ([`TemplateCache`]) and turns the rendered
//! text into a JSON value. It does no merging.

use crate::error::InjectError;
use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State, UndefinedBehavior};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

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

/// `annotation(name, default)`: the pod's annotation, else the default
/// (stringified), else "".
fn annotation_fn(state: &State<'_, '_>, key: String, default: Option<JinjaValue>) -> JinjaValue {
    let found = state
        .lookup("pod")
        .and_then(|p| p.get_attr("metadata").ok())
        .and_then(|m| m.get_attr("annotations").ok())
        .and_then(|a| a.get_item(&JinjaValue::from(key.as_str())).ok())
        .filter(|v| !v.is_undefined() && !v.is_none());
    if let Some(v) = found {
        return v;
    }
    match default {
        Some(d) if !d.is_undefined() && !d.is_none() => {
            if d.as_str().is_some() {
                d
            } else {
                JinjaValue::from(d.to_string())
            }
        }
        _ => JinjaValue::from(""),
    }
}

/// Compiled templates, plus the most recent renderings: the pods of one
/// ReplicaSet reach the webhook with identical contexts, so a scale-up
/// renders and parses each template once.
pub struct TemplateSet {
    env: Environment<'static>,
    rendered: Mutex<HashMap<(String, u64), (String, Value)>>,
}

/// Renderings kept (the cache is cleared when full).
const RENDER_CACHE_ENTRIES: usize = 256;

impl std::fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSet").finish_non_exhaustive()
    }
}

impl TemplateSet {
    /// Compile every template; a syntax error names the template.
    pub fn compile(templates: &BTreeMap<String, String>) -> Result<Self, InjectError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_filter("merge", merge_filter);
        env.add_filter("toyaml", toyaml_filter);
        env.add_function("annotation", annotation_fn);
        for (name, source) in templates {
            env.add_template_owned(name.clone(), source.clone())
                .map_err(|e| template_error(name, &e))?;
        }
        Ok(TemplateSet {
            env,
            rendered: Mutex::new(HashMap::new()),
        })
    }

    /// Render template `name` with `context` and parse the YAML it produces.
    /// An empty rendering yields an empty object.
    pub fn render(&self, name: &str, context: &Value) -> Result<Value, InjectError> {
        // Same template and same context give the same output (rendering is pure).
        let key_text = context.to_string();
        let mut h = DefaultHasher::new();
        key_text.hash(&mut h);
        let key = (name.to_string(), h.finish());
        {
            let cache = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((ctx, value)) = cache.get(&key)
                && *ctx == key_text
            {
                return Ok(value.clone());
            }
        }
        let value = self.render_uncached(name, context)?;
        let mut cache = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= RENDER_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (key_text, value.clone()));
        Ok(value)
    }

    fn render_uncached(&self, name: &str, context: &Value) -> Result<Value, InjectError> {
        let text = self
            .env
            .get_template(name)
            .map_err(|e| template_error(name, &e))?
            .render(JinjaValue::from_serialize(context))
            .map_err(|e| template_error(name, &e))?;
        let parsed: Value = serde_yaml::from_str(&text).map_err(|e| InjectError::Template {
            template: name.to_string(),
            message: format!("rendered text is not valid YAML: {e}\n--- rendered ---\n{text}"),
        })?;
        Ok(match parsed {
            Value::Null => Value::Object(Default::default()),
            other => other,
        })
    }
}

fn template_error(name: &str, e: &JinjaError) -> InjectError {
    InjectError::Template {
        template: name.to_string(),
        message: format!("{e:#}"),
    }
}

/// Compiled templates, rebuilt when the template sources change (settings
/// are plain data that callers may edit between injections).
#[derive(Debug, Clone, Default)]
pub struct TemplateCache {
    inner: Arc<Mutex<Option<Compiled>>>,
}

/// The sources and their compiled form.
type Compiled = (BTreeMap<String, String>, Arc<TemplateSet>);

impl TemplateCache {
    /// The compiled form of `templates` (compiled on first use and whenever
    /// the sources differ from the cached ones).
    pub fn get(
        &self,
        templates: &BTreeMap<String, String>,
    ) -> Result<Arc<TemplateSet>, InjectError> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sources, set)) = guard.as_ref()
            && sources == templates
        {
            return Ok(set.clone());
        }
        let set = Arc::new(TemplateSet::compile(templates)?);
        *guard = Some((templates.clone(), set.clone()));
        Ok(set)
    }
}

/// Compile and render one template (convenience for one-off renders).
pub fn render(name: &str, source: &str, context: &Value) -> Result<Value, InjectError> {
    let mut t = BTreeMap::new();
    t.insert(name.to_string(), source.to_string());
    TemplateSet::compile(&t)?.render(name, context)
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

    #[test]
    fn renderings_are_reused_only_for_identical_contexts() {
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), "x: {{ v }}".to_string());
        let set = TemplateSet::compile(&t).expect("compiles");
        assert_eq!(
            set.render("a", &json!({"v": 1})).expect("r"),
            json!({"x": 1})
        );
        assert_eq!(
            set.render("a", &json!({"v": 1})).expect("r"),
            json!({"x": 1})
        );
        assert_eq!(
            set.render("a", &json!({"v": 2})).expect("r"),
            json!({"x": 2})
        );
        for i in 0..(RENDER_CACHE_ENTRIES + 5) {
            assert_eq!(
                set.render("a", &json!({"v": i})).expect("r"),
                json!({"x": i})
            );
        }
    }

    #[test]
    fn cache_recompiles_when_sources_change() {
        let cache = TemplateCache::default();
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), "x: 1".to_string());
        let first = cache.get(&t).expect("compiles");
        assert!(Arc::ptr_eq(&first, &cache.get(&t).expect("cached")));
        t.insert("a".to_string(), "x: 2".to_string());
        let second = cache.get(&t).expect("recompiles");
        assert_eq!(
            second.render("a", &json!({})).expect("renders"),
            json!({"x": 2})
        );
    }
}
