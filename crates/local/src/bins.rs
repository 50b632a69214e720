//! Finding Weft's binaries: `$WEFT_BIN_DIR`, else the directory of the
//! running executable (and its parent, for test binaries under `deps/`).

use std::path::{Path, PathBuf};

use crate::error::Error;

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(parent) = exe.parent()
    {
        dirs.push(parent.to_owned());
        if parent.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = parent.parent()
        {
            dirs.push(up.to_owned());
        }
    }
    dirs
}

/// The path of Weft binary `name` (`weftd`, `weft-proxy`, `weft`).
pub fn find(name: &str) -> Result<PathBuf, Error> {
    let dirs = search_dirs();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| Error::MissingBinary {
            binary: name.to_owned(),
            looked: if dirs.is_empty() {
                "nowhere: set WEFT_BIN_DIR".to_owned()
            } else {
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `weft-proxy` at `path` has Istio's DNS proxy (it subscribes to
/// the NDS name table): the runtime turns DNS capture on only then.
pub fn proxy_has_dns(path: &Path) -> bool {
    const MARKER: &[u8] = b"istio.networking.nds.v1.NameTable";
    std::fs::read(path).is_ok_and(|bytes| bytes.windows(MARKER.len()).any(|w| w == MARKER))
}
