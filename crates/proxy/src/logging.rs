//! Process logging: a `tracing` subscriber whose level the admin
//! `/logging?level=` endpoint can change at run time.

use std::sync::OnceLock;
use tracing_subscriber::{EnvFilter, Registry, reload};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the subscriber (stderr); `RUST_LOG` wins over `default`.
pub fn init(default: &str) {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLE.set(handle);
    }
}

/// Changes the level (`trace`, `debug`, `info`, `warning`/`warn`, `error`, `critical`, `off`).
pub fn set_level(level: &str) -> Result<(), String> {
    let l = match level {
        "trace" | "debug" | "info" | "error" | "off" => level,
        "warning" | "warn" => "warn",
        "critical" => "error",
        other => return Err(format!("unknown log level {other:?}")),
    };
    match HANDLE.get() {
        Some(h) => h.reload(EnvFilter::new(l)).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}
