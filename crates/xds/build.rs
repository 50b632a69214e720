//! Embeds the protobuf descriptors of every message `envoy-types` was
//! generated from (`src/generated/types.bin` of that crate, source info
//! stripped) as `OUT_DIR/envoy_all_descriptors.bin`, so [`crate::json`]
//! can render any Envoy resource, including every `Any` nested inside it,
//! in proto3 JSON (weftd's `/debug/config_dump`).
//!
//! `envoy-types` ships that file without exporting it, so the script finds
//! the crate's source directory: `WEFT_ENVOY_TYPES_DIR` if set, else the
//! cargo registry under `CARGO_HOME` (version from Cargo.lock), else
//! `cargo metadata` (the same search as weft-proxy's build script).

use prost::Message;
use prost_types::FileDescriptorSet;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    println!("cargo:rerun-if-env-changed=WEFT_ENVOY_TYPES_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dir = envoy_types_dir(&manifest);
    let bin = dir.join("src/generated/types.bin");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    let mut set = FileDescriptorSet::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("decoding {}: {e}", bin.display()));
    for f in &mut set.file {
        f.source_code_info = None;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_all_descriptors.bin");
    std::fs::write(&out, set.encode_to_vec()).expect("writing envoy_all_descriptors.bin");
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
