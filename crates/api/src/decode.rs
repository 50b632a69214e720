//! Multi-document YAML to typed [`Object`]s.
//!
//! Owns document splitting (with the line each document starts on), the
//! dispatch from `apiVersion`/`kind` to a type, and the reporting of every
//! unknown field (Istio's structural CRD schemas reject them) and mistyped
//! field with its path. It performs no validation of values: that is
//! `crate::validate`'s job.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::meta::{Kind, ObjectMeta, Origin};
use crate::validate::FieldError;
use crate::{Object, Resource, k8s, mesh, networking, security};

/// One document that could not become an object, or an object with
/// decoding problems.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeProblem {
    pub origin: Origin,
    /// `(kind, namespace, name)` when the document got that far.
    pub object: Option<crate::ObjectKey>,
    pub error: FieldError,
}

/// The result of decoding one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedFile {
    /// Objects that decoded, each paired with its decode problems (unknown
    /// or mistyped fields); an object with any problem is invalid.
    pub objects: Vec<(Object, Vec<FieldError>)>,
    /// Documents that did not decode to any object (YAML syntax errors,
    /// missing `kind`, unsupported `apiVersion`, ...).
    pub problems: Vec<DecodeProblem>,
}

/// Splits `text` into YAML documents: `(1-based start line, text)`, skipping
/// documents that hold only blank lines and comments.
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_sep = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if is_sep {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
        })
        .map(|(line, d)| {
            // Report the first line with content, not the separator's successor.
            let skip = d
                .lines()
                .take_while(|l| {
                    let t = l.trim();
                    t.is_empty() || t.starts_with('#')
                })
                .count();
            (line + skip, d)
        })
        .collect()
}

/// Number of blank and comment lines before a document's first content line.
pub(crate) fn leading_skip(doc: &str) -> usize {
    doc.lines()
        .take_while(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        })
        .count()
}

/// Decodes every document of one file.
pub fn decode_file(file: &str, text: &str) -> DecodedFile {
    let mut out = DecodedFile::default();
    for (index, (line, doc)) in split_documents(text).into_iter().enumerate() {
        let origin = Origin {
            file: file.to_string(),
            doc: index + 1,
            line,
        };
        let value: Value = match serde_yaml::from_str(doc) {
            Ok(v) => v,
            Err(e) => {
                let at = e
                    .location()
                    .map(|l| line - leading_skip(doc) + l.line() - 1);
                let mut error = FieldError::error(
                    "",
                    format!(
                        "invalid YAML{}: {}",
                        at.map(|l| format!(" (line {l})")).unwrap_or_default(),
                        strip_location(&e)
                    ),
                );
                error.line = at.unwrap_or(0);
                out.problems.push(DecodeProblem {
                    origin,
                    object: None,
                    error,
                });
                continue;
            }
        };
        // `kind: List` (as `kubectl get -o yaml` writes): each item is an
        // object of this document; item problems are prefixed `items[i]`.
        let items: Vec<(String, Value)> = match list_items(&value) {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("items[{i}]"), v.clone()))
                .collect(),
            None => vec![(String::new(), value)],
        };
        for (prefix, item) in items {
            match decode_value(item, origin.clone()) {
                Ok(Some((obj, errs))) => {
                    let errs = errs
                        .into_iter()
                        .map(|mut e| {
                            e.path = join(&prefix, &e.path);
                            e
                        })
                        .collect();
                    out.objects.push((obj, errs));
                }
                Ok(None) => {}
                Err(mut error) => {
                    error.path = join(&prefix, &error.path);
                    out.problems.push(DecodeProblem {
                        origin: origin.clone(),
                        object: None,
                        error,
                    });
                }
            }
        }
    }
    out
}

fn list_items(v: &Value) -> Option<&Vec<Value>> {
    let is_list = v
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && v.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if !is_list {
        return None;
    }
    v.get("items").and_then(Value::as_sequence)
}

fn strip_location(e: &serde_yaml::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Decodes one parsed document. `Ok(None)` for documents that are not
/// objects Weft reads (e.g. a `List` is not supported and is an error, but a
/// ConfigMap other than `istio` is silently passed through as `Other`).
pub fn decode_value(
    value: Value,
    origin: Origin,
) -> Result<Option<(Object, Vec<FieldError>)>, FieldError> {
    if value.is_null() {
        return Ok(None);
    }
    let Value::Mapping(mut map) = value else {
        return Err(FieldError::error(
            "",
            "document is not a mapping (expected a Kubernetes-style object)",
        ));
    };
    let text = |key: &str| -> Result<String, FieldError> {
        match map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None => {
                Err(FieldError::error(key, "required field is missing"))
            }
            Some(other) => Err(FieldError::error(
                key,
                format!("must be a string, got {}", type_name(other)),
            )),
        }
    };
    let api_version = text("apiVersion")?;
    let kind_name = text("kind")?;
    let mut errors = Vec::new();
    let meta: ObjectMeta = match map.get("metadata") {
        None => {
            errors.push(FieldError::error("metadata", "required field is missing"));
            ObjectMeta::default()
        }
        Some(m) => match serde_path_to_error::deserialize::<_, ObjectMeta>(m.clone()) {
            Ok(meta) => meta,
            Err(e) => {
                return Err(FieldError::error(
                    join("metadata", &e.path().to_string()),
                    e.inner().to_string(),
                ));
            }
        },
    };
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version.as_str()),
    };
    let kind = resolve_kind(group, version, &kind_name, &meta)?;
    let is_istio = matches!(group, networking::GROUP | security::GROUP);
    if is_istio {
        for key in map.keys() {
            let name = key.as_str().unwrap_or("");
            if !matches!(name, "apiVersion" | "kind" | "metadata" | "spec" | "status") {
                errors.push(FieldError::error(name, "unknown field"));
            }
        }
    }
    macro_rules! typed {
        ($variant:ident, $value:expr, $prefix:expr, $strict:expr) => {{
            let (t, errs) = decode_typed_with($value, $prefix, $strict);
            errors.extend(errs);
            match t {
                Some(t) => Resource::$variant(t),
                None => {
                    // A mistyped field: the object exists but is invalid.
                    Resource::$variant(Default::default())
                }
            }
        }};
    }
    let spec = match &kind {
        Kind::VirtualService => typed!(
            VirtualService,
            take_spec(&mut map, &mut errors),
            "spec",
            true
        ),
        Kind::DestinationRule => typed!(
            DestinationRule,
            take_spec(&mut map, &mut errors),
            "spec",
            true
        ),
        Kind::Gateway => typed!(Gateway, take_spec(&mut map, &mut errors), "spec", true),
        Kind::ServiceEntry => typed!(ServiceEntry, take_spec(&mut map, &mut errors), "spec", true),
        Kind::Sidecar => typed!(Sidecar, take_spec(&mut map, &mut errors), "spec", true),
        Kind::WorkloadEntry => typed!(
            WorkloadEntry,
            take_spec(&mut map, &mut errors),
            "spec",
            true
        ),
        Kind::PeerAuthentication => typed!(
            PeerAuthentication,
            take_spec(&mut map, &mut errors),
            "spec",
            true
        ),
        Kind::AuthorizationPolicy => {
            typed!(
                AuthorizationPolicy,
                take_spec(&mut map, &mut errors),
                "spec",
                true
            )
        }
        Kind::Namespace => Resource::Namespace(k8s::Namespace {}),
        Kind::Service => typed!(
            Service,
            map.remove("spec")
                .unwrap_or(Value::Mapping(Default::default())),
            "spec",
            false
        ),
        Kind::EndpointSlice => typed!(EndpointSlice, Value::Mapping(map), "", false),
        Kind::Pod => typed!(Pod, Value::Mapping(map), "", false),
        Kind::MeshConfig => {
            let mesh_text = map
                .get("data")
                .and_then(|d| d.get("mesh"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match serde_yaml::from_str::<Value>(mesh_text) {
                Ok(Value::Null) => Resource::MeshConfig(Box::default()),
                Ok(v) => {
                    let (t, errs) = mesh::decode_mesh_config(v, "data.mesh");
                    errors.extend(errs);
                    Resource::MeshConfig(Box::new(t.unwrap_or_default()))
                }
                Err(e) => {
                    errors.push(FieldError::error("data.mesh", format!("invalid YAML: {e}")));
                    Resource::MeshConfig(Box::default())
                }
            }
        }
        Kind::Other(..) => Resource::Other(Value::Mapping(map)),
    };
    let object = Object {
        api_version,
        kind,
        meta,
        spec,
        origin,
    };
    Ok(Some((object, errors)))
}

/// Moves `spec` out of the document, reporting it when missing.
fn take_spec(map: &mut serde_yaml::Mapping, errors: &mut Vec<FieldError>) -> Value {
    map.remove("spec").unwrap_or_else(|| {
        errors.push(FieldError::error("spec", "required field is missing"));
        Value::Mapping(Default::default())
    })
}

/// Maps `(group, version, kind)` to a [`Kind`], rejecting unsupported
/// versions of the groups Weft implements.
fn resolve_kind(
    group: &str,
    version: &str,
    kind: &str,
    meta: &ObjectMeta,
) -> Result<Kind, FieldError> {
    let bad_version = |versions: &[&str]| {
        FieldError::error(
            "apiVersion",
            format!(
                "unsupported version {group}/{version} for {kind}; supported: {}",
                versions
                    .iter()
                    .map(|v| format!("{group}/{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    let k = match (group, kind) {
        (networking::GROUP, _) => {
            let k = match kind {
                "VirtualService" => Kind::VirtualService,
                "DestinationRule" => Kind::DestinationRule,
                "Gateway" => Kind::Gateway,
                "ServiceEntry" => Kind::ServiceEntry,
                "Sidecar" => Kind::Sidecar,
                "WorkloadEntry" => Kind::WorkloadEntry,
                _ => return Ok(Kind::Other(format!("{group}/{version}"), kind.to_string())),
            };
            if !networking::VERSIONS.contains(&version) {
                return Err(bad_version(networking::VERSIONS));
            }
            k
        }
        (security::GROUP, _) => {
            let k = match kind {
                "PeerAuthentication" => Kind::PeerAuthentication,
                "AuthorizationPolicy" => Kind::AuthorizationPolicy,
                _ => return Ok(Kind::Other(format!("{group}/{version}"), kind.to_string())),
            };
            if !security::VERSIONS.contains(&version) {
                return Err(bad_version(security::VERSIONS));
            }
            k
        }
        ("", "Namespace") if version == "v1" => Kind::Namespace,
        ("", "Service") if version == "v1" => Kind::Service,
        ("", "Pod") if version == "v1" => Kind::Pod,
        ("discovery.k8s.io", "EndpointSlice") if version == "v1" => Kind::EndpointSlice,
        ("", "ConfigMap") if version == "v1" && is_mesh_config_map(&meta.name) => Kind::MeshConfig,
        _ => {
            let api = if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            };
            Kind::Other(api, kind.to_string())
        }
    };
    Ok(k)
}

/// Istio's mesh ConfigMap is `istio` (or `istio-<revision>`).
fn is_mesh_config_map(name: &str) -> bool {
    name == "istio"
        || name
            .strip_prefix("istio-")
            .is_some_and(|rev| !rev.is_empty() && !rev.contains('.'))
}

/// Decodes `value` into `T`, reporting unknown fields and type errors with
/// paths under `prefix`. Returns `None` when a field has the wrong type.
pub fn decode_typed<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> (Option<T>, Vec<FieldError>) {
    decode_typed_with(value, prefix, true)
}

/// As [`decode_typed`]; `strict = false` accepts unknown fields silently
/// (Kubernetes objects carry many fields Weft does not read).
pub fn decode_typed_with<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    strict: bool,
) -> (Option<T>, Vec<FieldError>) {
    let mut unknown = Vec::new();
    let result = {
        let mut on_ignored = |path: serde_ignored::Path<'_>| {
            if strict {
                unknown.push(FieldError::error(
                    join(prefix, &ignored_path(&path)),
                    "unknown field",
                ));
            }
        };
        let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    match result {
        Ok(t) => (Some(t), unknown),
        Err(e) => {
            let path = error_path(e.path());
            unknown.push(FieldError::error(
                join(prefix, &path),
                e.into_inner().to_string(),
            ));
            (None, unknown)
        }
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out = join(&out, key),
            Segment::Enum { variant } => out = join(&out, variant),
            Segment::Unknown => {}
        }
    }
    out
}

/// Joins a field path and a child field name with a dot.
pub fn join(base: &str, field: &str) -> String {
    match (base.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}.{field}"),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
