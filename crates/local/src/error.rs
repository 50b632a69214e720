//! Errors of the local mesh. A [`PlanError`] names the file, the document,
//! the object and the field of a manifest problem; [`Error`] covers the
//! runtime (namespaces, processes, files) and always says what to check.

use std::fmt;
use std::path::PathBuf;

/// A problem with one object of the manifests: the object is not started,
/// the others are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// The file the object came from.
    pub file: String,
    /// 1-based document index in the file (0 when the whole file is bad).
    pub document: usize,
    /// The object's kind (empty when it could not be read).
    pub kind: String,
    /// `namespace/name` of the object (empty when it could not be read).
    pub name: String,
    /// The field path (`spec.template.spec.containers[0].image`), or empty.
    pub field: String,
    /// What is wrong, with the bad value.
    pub message: String,
}

impl PlanError {
    /// A problem of the document at `document` in `file`.
    pub(crate) fn new(
        doc: &crate::manifest::Document,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PlanError {
            file: doc.file.clone(),
            document: doc.index,
            kind: doc.kind().to_owned(),
            name: doc.qualified_name(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.document > 0 {
            write!(f, "[doc {}]", self.document)?;
        }
        if !self.kind.is_empty() || !self.name.is_empty() {
            write!(f, " {} {}", self.kind, self.name)?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for PlanError {}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `weft up` needs root for namespaces and iptables.
    #[error(
        "{command} needs root: it creates network namespaces, veth pairs and iptables rules \
         (current euid {euid}); run it as root, e.g. `sudo {command} ...` \
         (or `sudo $(command -v weft) {command} ...` when weft is not on root's PATH)"
    )]
    NotRoot {
        /// The command that was run (`weft up`, `weft demo`).
        command: String,
        /// The effective uid.
        euid: u32,
    },
    /// A binary the mesh needs was not found.
    #[error(
        "cannot find the `{binary}` binary (looked in {looked}); from the repository root, \
         build all three with `cargo build --release --bin weftd --bin weft-proxy --bin weft` \
         (or use `cargo run --release --bin weft -- ...`, which builds them), \
         or point WEFT_BIN_DIR at the directory holding them"
    )]
    MissingBinary {
        /// The binary's name.
        binary: String,
        /// Where we looked.
        looked: String,
    },
    /// The manifests directory could not be read.
    #[error("{path}: {message}")]
    Manifests {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A file of the runtime's state could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Creating or using a network namespace failed.
    #[error(transparent)]
    Testbed(#[from] weft_testbed::Error),
    /// A process could not be started.
    #[error("starting {what}: {message}")]
    Spawn {
        /// What was started (`weftd`, `pod demo/reviews-v1-0 container reviews`).
        what: String,
        /// Why it failed.
        message: String,
    },
    /// Something did not become ready in time.
    #[error("{what} did not become ready within {secs}s: {detail}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The bound.
        secs: u64,
        /// The last observation.
        detail: String,
    },
    /// No running mesh, pod or container matches.
    #[error("{0}")]
    NotFound(String),
    /// A mesh of that name is already running.
    #[error("{0}")]
    AlreadyRunning(String),
    /// The bootstrap token store failed.
    #[error(transparent)]
    Token(#[from] weft_identity::auth::TokenStoreError),
}

/// Shorthand for results with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
