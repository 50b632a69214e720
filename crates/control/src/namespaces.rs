//! Namespaces for the injection webhook, which needs their labels to apply
//! Istio's namespace selectors (`istio-injection`, `istio.io/rev`).
//!
//! Two sources: [`NamespaceStore::live`] reads the `Namespace` objects of
//! the config store's current snapshot on every lookup, so a label change
//! in the watched directory applies to the next review without a restart
//! (what weftd serves, via [`crate::discovery::Discovery::namespaces`]);
//! [`NamespaceStore::load_dir`] / [`NamespaceStore::add_documents`] read
//! YAML once (tools and tests).

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use weft_api::store::Store;
use weft_api::{Kind, ObjectKey};

/// Errors reading the config source.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The `--config` value is not a supported source.
    #[error("--config {0:?}: expected file://DIR")]
    BadSource(String),
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A YAML document is invalid.
    #[error("{path}: document {index}: {message}")]
    Document {
        /// The file.
        path: PathBuf,
        /// Zero-based document index.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// Parse `file://DIR` into DIR.
pub fn parse_source(source: &str) -> Result<PathBuf, ConfigError> {
    source
        .strip_prefix("file://")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| ConfigError::BadSource(source.to_string()))
}

/// Namespace name -> labels, read once or live from the config store.
#[derive(Debug, Clone, Default)]
pub struct NamespaceStore {
    labels: HashMap<String, Map<String, Value>>,
    /// When set, lookups read this store's current snapshot instead.
    live: Option<Arc<Store>>,
}

impl NamespaceStore {
    /// Namespaces as the config store has them at each lookup.
    pub fn live(store: Arc<Store>) -> Self {
        NamespaceStore {
            labels: HashMap::new(),
            live: Some(store),
        }
    }

    /// Whether lookups follow the config store.
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Read every `*.yaml` / `*.yml` file directly in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ConfigError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut store = NamespaceStore::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            store.add_documents(&path, &text)?;
        }
        Ok(store)
    }

    /// Add the Namespaces of one YAML stream (`path` names it in errors).
    pub fn add_documents(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc = Value::deserialize(de).map_err(|e| ConfigError::Document {
                path: path.to_path_buf(),
                index,
                message: format!("not valid YAML: {e}"),
            })?;
            if doc.get("kind").and_then(Value::as_str) != Some("Namespace") {
                continue;
            }
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ConfigError::Document {
                    path: path.to_path_buf(),
                    index,
                    message: "Namespace without metadata.name".into(),
                })?;
            let labels = match doc.pointer("/metadata/labels") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(m)) if m.values().all(Value::is_string) => m.clone(),
                Some(other) => {
                    return Err(ConfigError::Document {
                        path: path.to_path_buf(),
                        index,
                        message: format!(
                            "Namespace {name}: metadata.labels must map strings to strings, found {other}"
                        ),
                    });
                }
            };
            self.labels.insert(name.to_string(), labels);
        }
        Ok(())
    }

    /// Labels of `namespace` (empty for an unknown namespace).
    pub fn labels(&self, namespace: &str) -> Map<String, Value> {
        let Some(store) = &self.live else {
            return self.labels.get(namespace).cloned().unwrap_or_default();
        };
        let key = ObjectKey {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: namespace.to_string(),
        };
        store
            .snapshot()
            .get(&key)
            .map(|o| {
                o.meta
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of namespaces known.
    pub fn len(&self) -> usize {
        match &self.live {
            Some(store) => store.snapshot().of_kind(&Kind::Namespace).count(),
            None => self.labels.len(),
        }
    }

    /// True when no namespace is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_namespaces_and_skips_other_kinds() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio-injection: enabled\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let store = NamespaceStore::load_dir(dir.path()).expect("loads");
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.labels("shop").get("istio-injection"),
            Some(&Value::from("enabled"))
        );
        assert!(store.labels("plain").is_empty());
        assert!(store.labels("unknown").is_empty());
    }

    #[test]
    fn errors_name_file_and_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("bad.yaml"),
            "kind: Namespace\nmetadata: {}\n",
        )
        .expect("write");
        let err = NamespaceStore::load_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("document 0"),
            "{err}"
        );
        assert!(parse_source("dir").is_err());
        assert_eq!(
            parse_source("file:///etc/weft").expect("ok"),
            PathBuf::from("/etc/weft")
        );
    }
}
