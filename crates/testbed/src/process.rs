//! Who a pod process runs as ([`RunAs`]) and a supervised child process
//! ([`PodProcess`]) that is killed and reaped when dropped.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The credentials a pod process runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// Keep the caller's credentials (root, for the testbed).
    Root,
    /// Drop to this uid and gid, with no supplementary groups.
    User {
        /// The user id.
        uid: u32,
        /// The primary group id.
        gid: u32,
    },
}

impl RunAs {
    /// Runs as `uid`/`gid` with no supplementary groups.
    pub fn user(uid: u32, gid: u32) -> Self {
        Self::User { uid, gid }
    }
}

/// A child process started in a pod; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct PodProcess {
    child: Child,
    command: String,
}

impl PodProcess {
    /// Spawns `cmd` (usually from [`crate::Pod::command`]) under supervision.
    pub fn spawn(cmd: &mut std::process::Command) -> Result<Self> {
        let command = crate::ip::describe(cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        tracing::debug!(%command, pid = child.id(), "testbed: spawned");
        Ok(Self { child, command })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// The underlying child, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(|source| self.io_error(source))
    }

    /// Waits for it to exit on its own.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.child.wait().map_err(|source| self.io_error(source))
    }

    /// Waits up to `timeout` for it to exit on its own; `None` if it still
    /// runs then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs it (if still running) and reaps it.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.stop()
    }

    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // An error here means it exited meanwhile; `wait` reaps it anyway.
        let _ = self.child.kill();
        self.wait()
    }

    fn io_error(&self, source: std::io::Error) -> Error {
        Error::Spawn {
            command: self.command.clone(),
            source,
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("weft-testbed: teardown: {err}");
        }
    }
}
