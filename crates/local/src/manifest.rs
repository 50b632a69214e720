//! Manifests: YAML files split into documents, each remembering its file and
//! position so every problem can name them. Pure apart from
//! [`read_dir`], which reads a directory the way weftd's file source does
//! (every `*.yaml`/`*.yml` under it, hidden entries skipped).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, PlanError};

/// One document of a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file it came from.
    pub file: String,
    /// 1-based position in the file.
    pub index: usize,
    /// The parsed object.
    pub value: Value,
}

impl Document {
    /// `kind`, or empty.
    pub fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `apiVersion`, or empty.
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `metadata.name`, or empty.
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `metadata.namespace`, `default` when unset (cluster-scoped kinds
    /// have no namespace).
    pub fn namespace(&self) -> &str {
        if self.kind() == "Namespace" {
            return "";
        }
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }

    /// `namespace/name` (just `name` for cluster-scoped kinds).
    pub fn qualified_name(&self) -> String {
        match self.namespace() {
            "" => self.name().to_owned(),
            ns => format!("{ns}/{}", self.name()),
        }
    }
}

/// Splits every file into documents. A file that is not valid YAML gives
/// one [`PlanError`] naming the failing document; its other documents are
/// still used.
pub fn parse_files(files: &BTreeMap<String, String>) -> (Vec<Document>, Vec<PlanError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let index = i + 1;
            match Value::deserialize(de) {
                Ok(Value::Null) => {}
                Ok(value @ Value::Object(_)) => docs.push(Document {
                    file: file.clone(),
                    index,
                    value,
                }),
                Ok(_) => errors.push(PlanError {
                    file: file.clone(),
                    document: index,
                    kind: String::new(),
                    name: String::new(),
                    field: String::new(),
                    message: "a Kubernetes object must be a mapping".into(),
                }),
                Err(e) => {
                    errors.push(PlanError {
                        file: file.clone(),
                        document: index,
                        kind: String::new(),
                        name: String::new(),
                        field: String::new(),
                        message: format!("not valid YAML: {e}"),
                    });
                    // The YAML parser cannot resume after a syntax error.
                    break;
                }
            }
        }
    }
    (docs, errors)
}

/// Reads every YAML file under `dir` (file name → text), as weftd does.
pub fn read_dir(dir: &Path) -> Result<(BTreeMap<String, String>, Vec<PlanError>), Error> {
    let (files, unreadable) =
        weft_api::analyze::read_yaml_files(dir).map_err(|e| Error::Manifests {
            path: dir.to_owned(),
            message: e.to_string(),
        })?;
    let errors = unreadable
        .into_iter()
        .map(|p| PlanError {
            file: p.origin.file.clone(),
            document: 0,
            kind: String::new(),
            name: String::new(),
            field: String::new(),
            message: p.error.message.clone(),
        })
        .collect();
    Ok((files, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_file_and_position() {
        let files = BTreeMap::from([(
            "a.yaml".to_owned(),
            "kind: Namespace\nmetadata: {name: demo}\n---\n---\nkind: Service\nmetadata: {name: s}\n"
                .to_owned(),
        )]);
        let (docs, errors) = parse_files(&files);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].index, docs[0].qualified_name()),
            (1, "demo".into())
        );
        assert_eq!(
            (docs[1].index, docs[1].qualified_name()),
            (3, "default/s".into())
        );
    }

    #[test]
    fn bad_yaml_names_file_and_document() {
        let files = BTreeMap::from([(
            "bad.yaml".to_owned(),
            "kind: Service\nmetadata: {name: ok}\n---\nkind: [unclosed\n".to_owned(),
        )]);
        let (docs, errors) = parse_files(&files);
        assert_eq!(docs.len(), 1);
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(
            text.starts_with("bad.yaml[doc 2]: not valid YAML"),
            "{text}"
        );
    }
}
