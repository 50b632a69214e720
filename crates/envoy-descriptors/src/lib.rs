//! Build-script helper shared by weft-xds and weft-proxy: loads the
//! protobuf descriptor set of every message `envoy-types` was generated from
//! (`src/generated/types.bin` of that crate), optionally narrowed to the
//! files reachable from a list of roots, with source info stripped.
//!
//! `envoy-types` ships that file without exporting it, so the source
//! directory is found here: `WEFT_ENVOY_TYPES_DIR` if set, else the cargo
//! registry under `CARGO_HOME` (version from the workspace's Cargo.lock),
//! else `cargo metadata`. Called from build scripts only; a failure panics
//! with the path involved, which cargo shows as the build error.

use prost::Message;
use prost_types::FileDescriptorSet;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

/// Prints the `cargo:rerun-if-*` lines every caller needs.
pub fn rerun_if_changed() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    println!("cargo:rerun-if-env-changed=WEFT_ENVOY_TYPES_DIR");
}

/// The whole descriptor set, source info stripped. `manifest` is the
/// calling crate's `CARGO_MANIFEST_DIR` (a member of this workspace).
pub fn load(manifest: &Path) -> FileDescriptorSet {
    let bin = envoy_types_dir(manifest).join("src/generated/types.bin");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    let mut set = FileDescriptorSet::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("decoding {}: {e}", bin.display()));
    for f in &mut set.file {
        f.source_code_info = None;
    }
    set
}

/// The files of `set` reachable from `roots` through their imports, in the
/// set's original (dependency-first) order.
pub fn subset(set: &FileDescriptorSet, roots: &[&str]) -> FileDescriptorSet {
    let by_name: HashMap<&str, _> = set.file.iter().map(|f| (f.name(), f)).collect();
    let mut keep: HashSet<&str> = HashSet::new();
    let mut queue: VecDeque<&str> = roots.iter().copied().collect();
    while let Some(name) = queue.pop_front() {
        if !keep.insert(name) {
            continue;
        }
        let file = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in envoy-types' descriptor set"));
        queue.extend(file.dependency.iter().map(String::as_str));
    }
    FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| keep.contains(f.name()))
            .cloned()
            .collect(),
    }
}

/// Writes `set` to `OUT_DIR/name`.
pub fn write_out(set: &FileDescriptorSet, name: &str) {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(name);
    std::fs::write(&out, set.encode_to_vec())
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

fn envoy_types_dir(manifest: &Path) -> PathBuf {
    if let Ok(dir) = std::env::var("WEFT_ENVOY_TYPES_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = from_registry(manifest) {
        return dir;
    }
    from_cargo_metadata(manifest)
        .expect("cannot find the envoy-types source directory; set WEFT_ENVOY_TYPES_DIR to it")
}

fn locked_version(manifest: &Path) -> Option<String> {
    let lock = std::fs::read_to_string(manifest.join("../../Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"envoy-types\"" {
            let v = lines.next()?.trim();
            return v
                .strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_owned);
        }
    }
    None
}

fn from_registry(manifest: &Path) -> Option<PathBuf> {
    let version = locked_version(manifest)?;
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok()?;
    for entry in std::fs::read_dir(home.join("registry/src")).ok()?.flatten() {
        let dir = entry.path().join(format!("envoy-types-{version}"));
        if dir.join("src/generated/types.bin").exists() {
            return Some(dir);
        }
    }
    None
}

fn from_cargo_metadata(manifest: &Path) -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(manifest.join("Cargo.toml"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let idx = text.find("/envoy-types-")?;
    let start = text[..idx].rfind('"')? + 1;
    let end = idx + text[idx..].find("/Cargo.toml")?;
    Some(PathBuf::from(&text[start..end]))
}
