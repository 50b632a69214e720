//! Access loggers: a compiled format and the file its lines go to. Lines
//! are formatted on the worker and written by one background thread per
//! path (`/dev/stdout`, `/dev/stderr` or a file opened for append), shared
//! by every logger that names it.

use super::{Entry, Format};
use crate::config::ConfigError;
use crate::model::common::Ctx;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

/// A compiled access logger: a format and where its lines go.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub format: Format,
    sink: Sender<String>,
}

impl AccessLog {
    /// A logger whose format shares header slots with `prev` (the previous
    /// logger of the same connection manager), if any.
    pub fn new_after(
        prev: Option<&AccessLog>,
        ctx: &Ctx<'_>,
        path: &str,
        format: &str,
    ) -> Result<AccessLog, ConfigError> {
        let (req, resp) = prev
            .map(|p| (p.format.req_headers.clone(), p.format.resp_headers.clone()))
            .unwrap_or_default();
        Ok(AccessLog {
            format: Format::compile_with(&ctx.field("log_format"), format, req, resp)?,
            sink: sink(ctx, path)?,
        })
    }

    /// A `json_format` logger, sharing header slots with `prev` as
    /// [`AccessLog::new_after`] does.
    pub fn new_json_after(
        prev: Option<&AccessLog>,
        ctx: &Ctx<'_>,
        path: &str,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<AccessLog, ConfigError> {
        let (req, resp) = prev
            .map(|p| (p.format.req_headers.clone(), p.format.resp_headers.clone()))
            .unwrap_or_default();
        Ok(AccessLog {
            format: Format::compile_json(&ctx.field("log_format.json_format"), object, req, resp)?,
            sink: sink(ctx, path)?,
        })
    }

    pub fn new(ctx: &Ctx<'_>, path: &str, format: &str) -> Result<AccessLog, ConfigError> {
        Ok(AccessLog {
            format: Format::compile(&ctx.field("log_format"), format)?,
            sink: sink(ctx, path)?,
        })
    }
    pub fn log(&self, e: &Entry) {
        let mut line = String::with_capacity(256);
        self.format.write(e, &mut line);
        if !line.ends_with('\n') {
            line.push('\n');
        }
        let _ = self.sink.send(line);
    }
}

/// One writer thread per path, shared by every logger that names it.
fn sink(ctx: &Ctx<'_>, path: &str) -> Result<Sender<String>, ConfigError> {
    static SINKS: OnceLock<Mutex<HashMap<String, Sender<String>>>> = OnceLock::new();
    let mut sinks = SINKS
        .get_or_init(Default::default)
        .lock()
        .expect("access log sinks");
    if let Some(s) = sinks.get(path) {
        return Ok(s.clone());
    }
    let mut file: Box<dyn std::io::Write + Send> = match path {
        "/dev/stdout" => Box::new(std::io::stdout()),
        "/dev/stderr" => Box::new(std::io::stderr()),
        p => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| ctx.field("path").invalid(format!("cannot open {p}: {e}")))?,
        ),
    };
    let (tx, rx) = channel::<String>();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            while let Ok(line) = rx.recv() {
                let _ = file.write_all(line.as_bytes());
                while let Ok(more) = rx.try_recv() {
                    let _ = file.write_all(more.as_bytes());
                }
                let _ = file.flush();
            }
        })
        .map_err(|e| ctx.invalid(format!("cannot start the access log writer: {e}")))?;
    sinks.insert(path.to_owned(), tx.clone());
    Ok(tx)
}
