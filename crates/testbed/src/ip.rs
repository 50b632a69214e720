//! Runs iproute2's `ip` (and other helpers) and turns a failure into an
//! [`Error`] that quotes the whole command line and its stderr.

use std::process::Command;

use crate::error::{Error, Result};

/// Runs `ip ARGS...` and fails with its stderr if it exits non-zero.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// Runs a prepared command to completion; returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let command = describe(cmd);
    tracing::debug!(%command, "testbed: running");
    let output = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
