//! Errors of the injection core. Every error names the field (a JSON path
//! inside the object, or an annotation) and the offending value.

use thiserror::Error;

/// Why an object could not be injected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InjectError {
    /// A field of the object (or one of its annotations) holds a bad value.
    #[error("{field}: {message}")]
    Field {
        /// JSON path of the field, or `metadata.annotations[NAME]`.
        field: String,
        /// What is wrong, including the bad value.
        message: String,
    },
    /// The injection template failed to render or produced invalid YAML.
    #[error("injection template {template:?}: {message}")]
    Template {
        /// Name of the template (`sidecar`, `gateway`, ...).
        template: String,
        /// What went wrong.
        message: String,
    },
    /// A configuration file (injection config, values, mesh config) is invalid.
    #[error("{source_name}: {message}")]
    Config {
        /// The file or flag the configuration came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

impl InjectError {
    /// A bad value in a field of the object.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        InjectError::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A bad value in one of the pod's annotations.
    pub fn annotation(name: &str, value: &str, why: impl std::fmt::Display) -> Self {
        InjectError::Field {
            field: format!("metadata.annotations[{name}]"),
            message: format!("invalid value {value:?} for annotation {name}: {why}"),
        }
    }

    /// The field this error is about, if any.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            InjectError::Field { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Prefix the field path (used when descending from a workload into its pod template).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            InjectError::Field { field, message } => InjectError::Field {
                field: format!("{prefix}.{field}"),
                message,
            },
            other => other,
        }
    }
}
