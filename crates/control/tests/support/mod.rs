//! Starting the real `weftd` binary in tests: every port on 127.0.0.1:0, a
//! fresh CA directory per process (removed with it), the address line weftd
//! prints parsed, and the process killed on drop.
#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Weftd {
    child: Child,
    line: String,
    _ca: tempfile::TempDir,
}

impl Weftd {
    /// Starts weftd on `config_dir` with `extra` flags after the defaults
    /// (an explicit `--ca-dir` in `extra` wins over the temporary one).
    pub fn start<I, S>(config_dir: &Path, extra: I) -> Weftd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let ca = tempfile::tempdir().expect("CA dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weftd"))
            .arg("--config")
            .arg(format!("file://{}", config_dir.display()))
            .args([
                "--webhook-addr",
                "127.0.0.1:0",
                "--ready-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--xds-addr",
                "127.0.0.1:0",
                "--monitoring-addr",
                "127.0.0.1:0",
            ])
            .args(["--xds-tls-addr", "127.0.0.1:0"])
            .env("WEFT_CA_DIR", ca.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start weftd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read weftd's address line");
        Weftd {
            child,
            line,
            _ca: ca,
        }
    }

    /// The address weftd printed for `key` (e.g. `xds-addr`).
    pub fn addr(&self, key: &str) -> SocketAddr {
        let prefix = format!("{key}=");
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("weftd printed no {key}: {:?}", self.line))
            .parse()
            .expect("address")
    }
}

impl Drop for Weftd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
