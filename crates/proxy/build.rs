//! Extracts the protobuf descriptors weft-proxy needs from the `envoy-types`
//! crate's own descriptor set (`src/generated/types.bin`, produced from the
//! same .proto files as its Rust types) and writes the subset reachable from
//! the Envoy resources weft-proxy reads into `OUT_DIR/envoy_descriptors.bin`.
//!
//! `envoy-types` ships that file but does not export it, so the build script
//! finds the crate's source directory: `WEFT_ENVOY_TYPES_DIR` if set, else the
//! cargo registry under `CARGO_HOME` (version taken from Cargo.lock), else
//! `cargo metadata`.

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

/// The .proto files whose messages weft-proxy parses (plus their imports).
const ROOTS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    println!("cargo:rerun-if-env-changed=WEFT_ENVOY_TYPES_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dir = envoy_types_dir(&manifest);
    let bin = dir.join("src/generated/types.bin");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    let set = FileDescriptorSet::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("decoding {}: {e}", bin.display()));
    let by_name: HashMap<&str, &FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    let mut keep: HashSet<&str> = HashSet::new();
    let mut queue: VecDeque<&str> = ROOTS.iter().copied().collect();
    while let Some(name) = queue.pop_front() {
        if !keep.insert(name) {
            continue;
        }
        let file = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in {}", bin.display()));
        for dep in &file.dependency {
            queue.push_back(dep.as_str());
        }
    }
    let mut subset = FileDescriptorSet::default();
    // Keep the original order, which is already dependency-first.
    for file in &set.file {
        if keep.contains(file.name()) {
            let mut f = file.clone();
            f.source_code_info = None;
            subset.file.push(f);
        }
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptors.bin");
    std::fs::write(&out, subset.encode_to_vec()).expect("writing envoy_descriptors.bin");
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
    // Find `"manifest_path":".../envoy-types-X/Cargo.toml"` without a JSON parser.
    let idx = text.find("/envoy-types-")?;
    let start = text[..idx].rfind('"')? + 1;
    let end = idx + text[idx..].find("/Cargo.toml")?;
    Some(PathBuf::from(&text[start..end]))
}
