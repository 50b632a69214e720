//! The file config source: a directory of YAML loaded into immutable
//! [`Snapshot`]s.
//!
//! Reload semantics: every valid object is taken from the files as they are
//! now. An object that is now invalid keeps its last good version (keyed by
//! kind/namespace/name) and is marked stale; its errors are kept in the
//! snapshot for the debug endpoint. A document that cannot even be decoded
//! (YAML syntax error) cannot be keyed, so every object its file held in
//! the previous snapshot and no longer decodes is kept as well.
//!
//! [`build_snapshot`] is the pure core (file contents in, snapshot out);
//! [`Store`] is the thin I/O shell. A Kubernetes source slots in by decoding
//! each API object with `decode::decode_value` and calling
//! [`build_snapshot_from_objects`], which applies the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::analyze::{FileCheck, LoadError, Problem, check_file, merge_checks, read_yaml_files};
use crate::mesh::MeshConfig;
use crate::registry::{DEFAULT_DOMAIN, Registry, RegistryOptions};
use crate::{Kind, Object, ObjectKey};

/// Settings of the config source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Cluster domain used to resolve short hosts in cross-object checks.
    pub domain: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            domain: DEFAULT_DOMAIN.to_string(),
        }
    }
}

/// An immutable view of all valid config at one version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases by one each time the content changes.
    pub version: u64,
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    /// Objects served from their last good version because the current one
    /// is invalid.
    pub stale: BTreeSet<ObjectKey>,
    /// Every current problem (errors and warnings), for the debug endpoint.
    pub problems: Vec<Problem>,
    /// Per-file decode results, reused by the next build for unchanged files.
    files: BTreeMap<String, Arc<FileCheck>>,
}

impl Snapshot {
    /// A snapshot of already-validated objects (for other config sources).
    pub fn from_objects(version: u64, objects: impl IntoIterator<Item = Object>) -> Snapshot {
        Snapshot {
            version,
            objects: objects
                .into_iter()
                .map(|o| (o.key(), Arc::new(o)))
                .collect(),
            ..Snapshot::default()
        }
    }

    /// All objects, sorted by key.
    pub fn objects(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.objects.values()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.objects.get(key)
    }

    /// All objects of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a Kind) -> impl Iterator<Item = &'a Arc<Object>> + 'a {
        self.objects.values().filter(move |o| &o.kind == kind)
    }

    /// The mesh config: the `istio` ConfigMap if present (preferring
    /// namespace `istio-system`), else defaults.
    pub fn mesh_config(&self) -> MeshConfig {
        let mut found: Vec<&Arc<Object>> = self.of_kind(&Kind::MeshConfig).collect();
        found.sort_by_key(|o| (o.namespace() != "istio-system", o.name() != "istio"));
        found
            .first()
            .and_then(|o| o.as_mesh_config().cloned())
            .unwrap_or_default()
    }

    /// The service registry computed from this snapshot.
    pub fn registry(&self, opts: &RegistryOptions) -> Registry {
        Registry::build(self.objects.values().map(Arc::as_ref), opts)
    }

    /// Whether any current problem is an error.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }

    /// What changed from `previous` to this snapshot, by object key.
    pub fn diff(&self, previous: &Snapshot) -> ChangeSet {
        let mut cs = ChangeSet::default();
        for (k, o) in &self.objects {
            match previous.objects.get(k) {
                None => {
                    cs.added.insert(k.clone());
                }
                Some(p) if !Arc::ptr_eq(p, o) && **p != **o => {
                    cs.updated.insert(k.clone());
                }
                Some(_) => {}
            }
        }
        for k in previous.objects.keys() {
            if !self.objects.contains_key(k) {
                cs.removed.insert(k.clone());
            }
        }
        cs
    }

    /// The config source's state for a debug endpoint: version, object
    /// count, stale objects and every current problem.
    pub fn debug_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "objects": self.objects.len(),
            "stale": self.stale.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "problems": self.problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
        })
    }

    fn same_content(&self, other: &Snapshot) -> bool {
        // Pointer equality first: unchanged objects share their Arc.
        self.objects.len() == other.objects.len()
            && self
                .objects
                .iter()
                .zip(&other.objects)
                .all(|((ka, a), (kb, b))| ka == kb && (Arc::ptr_eq(a, b) || **a == **b))
            && self.stale == other.stale
            && self.problems == other.problems
    }
}

/// Keys added, updated and removed between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub added: BTreeSet<ObjectKey>,
    pub updated: BTreeSet<ObjectKey>,
    pub removed: BTreeSet<ObjectKey>,
}

impl ChangeSet {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }

    /// Every changed key.
    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.added.iter().chain(&self.updated).chain(&self.removed)
    }

    /// Whether only workload objects changed (Pod, EndpointSlice,
    /// WorkloadEntry): an endpoints-only (EDS) push may suffice, provided
    /// the affected services' ports and VIPs are unchanged, which a caller
    /// can check by comparing registries.
    pub fn only_workloads(&self) -> bool {
        self.keys().all(|k| {
            matches!(
                k.kind,
                Kind::Pod | Kind::EndpointSlice | Kind::WorkloadEntry
            )
        })
    }
}

/// Builds the next snapshot from file contents (`path → text`), keeping the
/// last good version of invalid objects from `previous`. `unreadable` lists
/// problems for files that exist but could not be read: their previous
/// objects are all kept. The version is `previous.version + 1` when anything
/// changed, else the previous version.
pub fn build_snapshot(
    files: &BTreeMap<String, String>,
    unreadable: Vec<Problem>,
    previous: Option<&Snapshot>,
    opts: &StoreOptions,
) -> Snapshot {
    // Re-decode only files whose text changed since the previous snapshot,
    // spread over the available cores.
    let mut checks: BTreeMap<String, Arc<FileCheck>> = BTreeMap::new();
    let mut todo: Vec<(&String, &String)> = Vec::new();
    for (path, text) in files {
        match previous
            .and_then(|p| p.files.get(path))
            .filter(|fc| fc.text == *text)
        {
            Some(fc) => {
                checks.insert(path.clone(), Arc::clone(fc));
            }
            None => todo.push((path, text)),
        }
    }
    for fc in check_parallel(&todo) {
        checks.insert(fc.path.clone(), Arc::new(fc));
    }
    let checked = merge_checks(checks.values().map(Arc::as_ref), &opts.domain);
    assemble(checked, checks, unreadable, previous)
}

/// Builds the next snapshot from objects that did not come from files (a
/// Kubernetes API source decodes each object with
/// [`crate::decode::decode_value`] and passes them here). Validation, the
/// cross-object rules and last-good retention are the same as for files.
pub fn build_snapshot_from_objects(
    objects: Vec<(Object, Vec<crate::FieldError>)>,
    previous: Option<&Snapshot>,
    opts: &StoreOptions,
) -> Snapshot {
    let check = FileCheck {
        path: String::new(),
        text: String::new(),
        objects: objects
            .into_iter()
            .map(|(o, mut errs)| {
                errs.extend(crate::analyze::validate_kind(&o));
                (Arc::new(o), errs)
            })
            .collect(),
        problems: Vec::new(),
    };
    let checked = merge_checks([&check], &opts.domain);
    assemble(checked, BTreeMap::new(), Vec::new(), previous)
}

/// Runs [`check_file`] over `files` on up to `available_parallelism` threads.
fn check_parallel(files: &[(&String, &String)]) -> Vec<FileCheck> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(files.len() / 64 + 1);
    if threads <= 1 {
        return files.iter().map(|(p, t)| check_file(p, t)).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(p, t)| check_file(p, t))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Applies last-good retention to checked objects and versions the result.
fn assemble(
    checked: crate::analyze::Checked,
    checks: BTreeMap<String, Arc<FileCheck>>,
    unreadable: Vec<Problem>,
    previous: Option<&Snapshot>,
) -> Snapshot {
    let mut problems = checked.problems();
    let mut broken_files = checked.broken_files.clone();
    for p in &unreadable {
        broken_files.insert(p.origin.file.clone());
    }
    problems.extend(unreadable);
    problems.sort();

    let empty = BTreeMap::new();
    let prev = previous.map_or(&empty, |p| &p.objects);
    let mut objects = BTreeMap::new();
    let mut stale = BTreeSet::new();
    for (obj, errs) in checked.objects {
        let key = obj.key();
        if errs.iter().any(|e| e.is_error()) {
            if let Some(last_good) = prev.get(&key) {
                tracing::warn!(object = %key, file = %obj.origin.file, "invalid object; keeping its last good version");
                objects.insert(key.clone(), Arc::clone(last_good));
                stale.insert(key);
            }
            continue;
        }
        // Reuse the previous Arc when nothing changed, so consumers can
        // compare by pointer.
        let arc = match prev.get(&key) {
            Some(p) if Arc::ptr_eq(p, &obj) || **p == *obj => Arc::clone(p),
            _ => obj,
        };
        objects.insert(key, arc);
    }
    // Objects of files that failed to decode (in part) or to read: keep what
    // the file held before unless it decoded now.
    for (key, obj) in prev {
        if broken_files.contains(&obj.origin.file) && !objects.contains_key(key) {
            objects.insert(key.clone(), Arc::clone(obj));
            stale.insert(key.clone());
        }
    }
    let mut next = Snapshot {
        version: previous.map_or(1, |p| p.version),
        objects,
        stale,
        problems,
        files: checks,
    };
    if let Some(p) = previous
        && !p.same_content(&next)
    {
        next.version = p.version + 1;
    }
    next
}

/// Failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// The result of a reload.
#[derive(Debug, Clone)]
pub struct Reload {
    pub snapshot: Arc<Snapshot>,
    /// Whether the content differs from the previous snapshot.
    pub changed: bool,
}

/// The file config source for one directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    opts: StoreOptions,
    current: Mutex<Arc<Snapshot>>,
}

impl Store {
    /// Loads `dir` (every YAML file under it).
    pub fn load(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let (files, unreadable) = read_yaml_files(&dir)?;
        let snap = build_snapshot(&files, unreadable, None, &opts);
        log_problems(&snap);
        Ok(Store {
            dir,
            opts,
            current: Mutex::new(Arc::new(snap)),
        })
    }

    /// The directory this store reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the directory and installs the next snapshot.
    pub fn reload(&self) -> Result<Reload, StoreError> {
        let (files, unreadable) = read_yaml_files(&self.dir)?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let next = build_snapshot(&files, unreadable, Some(&current), &self.opts);
        let changed = next.version != current.version;
        if changed {
            log_problems(&next);
        }
        // Installed even when unchanged, so its per-file cache stays current
        // (e.g. after an edit to a comment).
        *current = Arc::new(next);
        Ok(Reload {
            snapshot: Arc::clone(&current),
            changed,
        })
    }
}

fn log_problems(s: &Snapshot) {
    for p in &s.problems {
        if p.is_error() {
            tracing::error!(version = s.version, "{p}");
        } else {
            tracing::warn!(version = s.version, "{p}");
        }
    }
}
