//! `analyze_dir`: decode and validate every YAML file under a directory and
//! report each problem on one line, the engine behind `weft analyze DIR`.
//!
//! The pure core, [`check_files`], is shared with the file config source
//! (`crate::store`), so what `weft analyze` reports is exactly what weftd
//! would reject.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{decode_file, split_documents};
use crate::meta::{ObjectKey, Origin};
use crate::registry::DEFAULT_DOMAIN;
use crate::validate::{FieldError, Severity, validate_cross, validate_object};
use crate::{Kind, Object};

/// One problem: where, which object, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub origin: Origin,
    /// The object, when the document decoded far enough to name it.
    pub object: Option<ObjectKey>,
    pub error: FieldError,
}

impl Problem {
    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.error.severity == Severity::Error
    }

    /// The 1-based line of the field (or of its document), 0 when unknown.
    pub fn line(&self) -> usize {
        if self.error.line != 0 {
            self.error.line
        } else {
            self.origin.line
        }
    }

    /// JSON form for debug endpoints and `--output json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "severity": match self.error.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            "file": self.origin.file,
            "document": self.origin.doc,
            "line": self.line(),
            "kind": self.object.as_ref().map(|k| k.kind.name().to_string()),
            "namespace": self.object.as_ref().map(|k| k.namespace.clone()),
            "name": self.object.as_ref().map(|k| k.name.clone()),
            "path": self.error.path,
            "message": self.error.message,
        })
    }
}

impl fmt::Display for Problem {
    /// `file[doc N] Kind ns/name: path: reason`; the alternate form `{:#}`
    /// puts the field's line first: `file:LINE [doc N] Kind ns/name: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() && self.line() > 0 {
            write!(
                f,
                "{}:{} [doc {}]",
                self.origin.file,
                self.line(),
                self.origin.doc
            )?;
        } else {
            write!(f, "{}", self.origin)?;
        }
        if let Some(k) = &self.object {
            write!(f, " {k}")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Everything `analyze_dir` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalysisReport {
    /// Problems sorted by file, document and path.
    pub problems: Vec<Problem>,
    /// Number of YAML files read.
    pub files: usize,
    /// Number of objects decoded.
    pub objects: usize,
}

impl AnalysisReport {
    /// Whether any problem is an error (the CLI exits non-zero).
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }
    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }
    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| !p.is_error())
    }
}

impl fmt::Display for AnalysisReport {
    /// One line per problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Failure to read the directory itself (a file that cannot be read is a
/// [`Problem`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config directory {path}: {source} (check that it exists and is readable)")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Decoding and per-object validation of one file. It depends only on the
/// file's text, so it is reused across reloads while the text is unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCheck {
    pub path: String,
    pub text: String,
    /// Decoded objects with their own problems (decode + validation).
    pub objects: Vec<(Arc<Object>, Vec<FieldError>)>,
    /// Documents that did not decode to an object.
    pub problems: Vec<Problem>,
}

/// Decodes and validates one file.
pub fn check_file(path: &str, text: &str) -> FileCheck {
    let decoded = decode_file(path, text);
    let problems: Vec<Problem> = decoded
        .problems
        .into_iter()
        .map(|p| Problem {
            origin: p.origin,
            object: p.object,
            error: p.error,
        })
        .collect();
    let docs = split_documents(text);
    let mut problems: Vec<Problem> = problems;
    for p in &mut problems {
        set_line(&mut p.error, &docs, &p.origin);
    }
    let objects = decoded
        .objects
        .into_iter()
        .map(|(obj, mut errs)| {
            // A mistyped field leaves the spec at its defaults; validating
            // that would only add misleading errors.
            let mistyped = errs.iter().any(|e| {
                e.is_error()
                    && e.message != "unknown field"
                    && e.message != "required field is missing"
            });
            if !mistyped {
                errs.extend(validate_kind(&obj));
            }
            for e in &mut errs {
                set_line(e, &docs, &obj.origin);
            }
            (Arc::new(obj), errs)
        })
        .collect();
    FileCheck {
        path: path.to_string(),
        text: text.to_string(),
        objects,
        problems,
    }
}

/// Validates an object according to its kind: full validation for the
/// kinds Weft implements, a warning for Istio kinds it does not, nothing for
/// other passed-through kinds.
pub fn validate_kind(obj: &Object) -> Vec<FieldError> {
    match &obj.kind {
        Kind::Other(api, kind)
            if api
                .split('/')
                .next()
                .is_some_and(|g| g.ends_with("istio.io")) =>
        {
            vec![FieldError::warning(
                "kind",
                format!("{api} {kind} is not implemented by Weft and is ignored"),
            )]
        }
        Kind::Other(..) => Vec::new(),
        _ => validate_object(obj),
    }
}

/// Sets `e.line` to the line of `e.path` in the object's document, or to
/// the document's first line when the path cannot be found.
fn set_line(e: &mut FieldError, docs: &[(usize, &str)], origin: &Origin) {
    if e.line != 0 {
        return;
    }
    e.line = origin.line;
    let Some((first_content_line, doc)) = origin.doc.checked_sub(1).and_then(|i| docs.get(i))
    else {
        return;
    };
    let skipped = crate::decode::leading_skip(doc);
    if let Some(l) = crate::locate::locate(doc, &e.path) {
        e.line = first_content_line - skipped + l - 1;
    }
}

/// Objects with the problems of each, plus problems tied to no object.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Each decoded object (first definition of each key) with its own
    /// problems (decode + validation; errors make it invalid).
    pub objects: Vec<(Arc<Object>, Vec<FieldError>)>,
    /// Cross-object problems `(index into objects, problem)`; reported, but
    /// they do not make the object invalid (Istio accepts such objects too).
    pub cross: Vec<(usize, FieldError)>,
    /// Problems not tied to a decoded object (syntax errors, duplicates,
    /// unreadable files).
    pub orphans: Vec<Problem>,
    /// Files with at least one document that did not decode to an object.
    pub broken_files: BTreeSet<String>,
}

impl Checked {
    /// All problems as a flat, sorted list.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = self.orphans.clone();
        for (o, errs) in &self.objects {
            out.extend(errs.iter().map(|e| Problem {
                origin: o.origin.clone(),
                object: Some(o.key()),
                error: e.clone(),
            }));
        }
        for (i, e) in &self.cross {
            let o = &self.objects[*i].0;
            out.push(Problem {
                origin: o.origin.clone(),
                object: Some(o.key()),
                error: e.clone(),
            });
        }
        out.sort();
        out
    }
}

/// Merges per-file checks (in path order): drops duplicate definitions of
/// an object (reported on the later one) and runs the cross-object rules.
pub fn merge_checks<'a>(checks: impl IntoIterator<Item = &'a FileCheck>, domain: &str) -> Checked {
    let files: Vec<&FileCheck> = checks.into_iter().collect();
    let mut checked = Checked::default();
    let mut seen: BTreeMap<ObjectKey, Origin> = BTreeMap::new();
    for fc in &files {
        if !fc.problems.is_empty() {
            checked.broken_files.insert(fc.path.clone());
        }
        checked.orphans.extend(fc.problems.iter().cloned());
        for (obj, errs) in &fc.objects {
            let key = obj.key();
            if let Some(first) = seen.get(&key) {
                checked.orphans.push(Problem {
                    origin: obj.origin.clone(),
                    object: Some(key),
                    error: FieldError::error(
                        "metadata.name",
                        format!("duplicate object: already defined at {first}"),
                    ),
                });
                continue;
            }
            seen.insert(key, obj.origin.clone());
            checked.objects.push((Arc::clone(obj), errs.clone()));
        }
    }
    let refs: Vec<&Object> = checked.objects.iter().map(|(o, _)| o.as_ref()).collect();
    checked.cross = validate_cross(&refs, domain);
    if !checked.cross.is_empty() {
        let texts: BTreeMap<&str, &str> = files
            .iter()
            .map(|fc| (fc.path.as_str(), fc.text.as_str()))
            .collect();
        for (i, e) in &mut checked.cross {
            let origin = &checked.objects[*i].0.origin;
            if let Some(text) = texts.get(origin.file.as_str()) {
                set_line(e, &split_documents(text), origin);
            }
        }
    }
    checked
}

/// The pure core: decodes and validates a set of files (`path → contents`).
/// `domain` is the cluster domain for host resolution.
pub fn check_files(files: &BTreeMap<String, String>, domain: &str) -> Checked {
    let checks: Vec<FileCheck> = files.iter().map(|(p, t)| check_file(p, t)).collect();
    merge_checks(&checks, domain)
}

/// Analyzes in-memory files (`path → contents`).
pub fn analyze_files(files: &BTreeMap<String, String>) -> AnalysisReport {
    let checked = check_files(files, DEFAULT_DOMAIN);
    AnalysisReport {
        problems: checked.problems(),
        files: files.len(),
        objects: checked.objects.len(),
    }
}

/// Reads every `*.yaml` / `*.yml` file under `dir` (recursively, skipping
/// hidden files and directories) and analyzes them. Unreadable files are
/// reported as problems.
pub fn analyze_dir(dir: impl AsRef<Path>) -> Result<AnalysisReport, LoadError> {
    let (files, unreadable) = read_yaml_files(dir.as_ref())?;
    let mut report = analyze_files(&files);
    report.files += unreadable.len();
    report.problems.extend(unreadable);
    report.problems.sort();
    Ok(report)
}

/// Reads the YAML files under `dir`: `(path → contents, problems for files
/// that could not be read)`. Paths are `dir` joined with the relative path.
pub fn read_yaml_files(dir: &Path) -> Result<(BTreeMap<String, String>, Vec<Problem>), LoadError> {
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(source) if first => return Err(LoadError::Dir { path: d, source }),
            Err(e) => {
                problems.push(unreadable(&d, &e));
                continue;
            }
        };
        first = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            // Follow symlinks, as Kubernetes ConfigMap volumes use them.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        files.insert(path.display().to_string(), text);
                    }
                    Err(e) => problems.push(unreadable(&path, &e)),
                }
            }
        }
    }
    Ok((files, problems))
}

fn unreadable(path: &Path, e: &std::io::Error) -> Problem {
    Problem {
        origin: Origin {
            file: path.display().to_string(),
            doc: 0,
            line: 0,
        },
        object: None,
        error: FieldError::error("", format!("cannot read file: {e}")),
    }
}
