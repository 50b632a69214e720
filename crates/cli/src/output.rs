//! Writing command output: to stdout, or to a file atomically (a temporary
//! file in the same directory renamed over the target), so a failed run
//! never leaves a half-written file behind.

use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Write `text` to `path` (`None` or `-`: stdout).
pub fn write(path: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match path {
        None => {
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        Some(p) if p.as_os_str() == "-" => {
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        Some(p) => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
            tmp.write_all(text.as_bytes())
                .with_context(|| format!("cannot write {}", p.display()))?;
            tmp.persist(p)
                .with_context(|| format!("cannot write {}", p.display()))?;
            Ok(())
        }
    }
}

/// Read a file, or stdin for `-`.
pub fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
