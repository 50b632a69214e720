//! An owned, named network namespace (`/run/netns/NAME`): creating it,
//! running code or processes inside it, and deleting it with everything that
//! still runs inside. It must never delete a namespace it did not create.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};
use crate::ip::{self, ip};
use crate::process::RunAs;

/// Where iproute2 keeps named network namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// A named network namespace created by the testbed; deleted on drop after
/// killing every process that still runs inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    /// Kept open so that `setns` never races with a deletion by name.
    file: File,
}

impl Netns {
    /// Creates `/run/netns/NAME` (`ip netns add`) with its loopback up.
    pub(crate) fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let path = Path::new(NETNS_DIR).join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(source) => {
                delete_by_name(name);
                return Err(Error::Io { path, source });
            }
        };
        let netns = Self {
            name: name.to_owned(),
            path,
            file,
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        netns.disable_ipv6_dad()?;
        Ok(netns)
    }

    /// Turns IPv6 duplicate address detection off for interfaces created
    /// from now on, so that addresses (link-local ones included) are usable
    /// at once and never change state (`tentative`) under a running test.
    fn disable_ipv6_dad(&self) -> Result<()> {
        let result = self.enter(|| {
            for conf in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
                std::fs::write(&path, "0").map_err(|source| Error::Io {
                    path: format!("{path} in network namespace {}", self.name).into(),
                    source,
                })?;
            }
            Ok(())
        });
        result?
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n NAME ARGS...` and fails with its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a fresh thread that has joined this namespace and returns
    /// its result; a panic in `f` is resumed on the caller's thread.
    ///
    /// Sockets created inside `f` stay in this namespace and may be returned
    /// and used from any thread afterwards. Do not spawn long-lived processes
    /// from inside `f` (use [`Netns::command`]): the thread ends when `f`
    /// returns.
    pub fn enter<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.enter_as(RunAs::Root, f)
    }

    /// [`Netns::enter`], with the thread's filesystem uid and gid set to
    /// `run_as` (`setfsuid`/`setfsgid`, which only affect this thread).
    ///
    /// Sockets created inside `f` are then owned by that user as far as
    /// netfilter's owner matches (`-m owner --uid-owner`, nft `meta skuid`)
    /// are concerned, so a test can act as the app or as the proxy (1337)
    /// without a separate process. File access inside `f` is checked
    /// against that user too.
    pub fn enter_as<F, T>(&self, run_as: RunAs, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns {
                    path: self.path.clone(),
                    source,
                })?;
                if let RunAs::User { uid, gid } = run_as {
                    // Both return the previous value and cannot fail for root.
                    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
                    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A [`Command`] for `program` that joins this namespace before `exec`,
    /// runs as `run_as` (root keeps the caller's credentials) and is sent
    /// SIGKILL if the thread that spawned it exits (so a crashed test leaves
    /// no process behind). Spawn it from a thread that outlives the child,
    /// or use [`Netns::command_detached`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, run_as: RunAs) -> Result<Command> {
        self.build_command(program.as_ref(), run_as, true)
    }

    /// [`Netns::command`] without the parent-death signal: the child lives
    /// until it exits, is killed, or the namespace is torn down. For
    /// long-running processes spawned from short-lived threads (e.g. a
    /// tokio blocking pool).
    pub fn command_detached(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        run_as: RunAs,
    ) -> Result<Command> {
        self.build_command(program.as_ref(), run_as, false)
    }

    fn build_command(
        &self,
        program: &std::ffi::OsStr,
        run_as: RunAs,
        die_with_thread: bool,
    ) -> Result<Command> {
        let file = self.file.try_clone().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut cmd = Command::new(program);
        join_before_exec(&mut cmd, file, run_as, die_with_thread);
        Ok(cmd)
    }

    /// Pids of processes (other than this one) whose network namespace is
    /// this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids_in(&self.path)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.path);
        delete_by_name(&self.name);
    }
}

/// Makes the child of `cmd` join `netns` and take the credentials of
/// `run_as` between fork and exec; with `die_with_thread`, it is also sent
/// SIGKILL when the spawning thread exits.
#[allow(unsafe_code)]
fn join_before_exec(cmd: &mut Command, netns: File, run_as: RunAs, die_with_thread: bool) {
    use nix::sys::{prctl, signal::Signal};
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    use std::os::unix::process::CommandExt;

    let hook = move || -> io::Result<()> {
        if die_with_thread {
            prctl::set_pdeathsig(Signal::SIGKILL)?;
        }
        setns(&netns, CloneFlags::CLONE_NEWNET)?;
        if let RunAs::User { uid, gid } = run_as {
            setgroups(&[])?;
            setgid(Gid::from_raw(gid))?;
            setuid(Uid::from_raw(uid))?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It only makes
    // async-signal-safe system calls (prctl, setns, setgroups, setgid,
    // setuid) on values moved in before the fork, allocates nothing and
    // touches no lock; errors become `io::Error`s from raw errnos.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Pids (other than ours) whose `/proc/PID/ns/net` is the namespace at `path`.
pub(crate) fn pids_in(path: &Path) -> Result<Vec<i32>> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let own = std::process::id();
    let proc_dir = std::fs::read_dir("/proc").map_err(|source| Error::Io {
        path: "/proc".into(),
        source,
    })?;
    let mut pids = Vec::new();
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // Processes may exit while we look: unreadable entries are skipped.
        let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if ns.dev() == target.dev() && ns.ino() == target.ino() {
            pids.extend(i32::try_from(pid).ok());
        }
    }
    Ok(pids)
}

/// SIGKILLs every process (but this one) in the namespace at `path`.
pub(crate) fn kill_all_in(path: &Path) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    match pids_in(path) {
        Ok(pids) => {
            for pid in pids {
                // ESRCH: it exited meanwhile, which is what we want.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        Err(err) => eprintln!("weft-testbed: teardown: listing processes: {err}"),
    }
}

/// `ip netns delete NAME`, reporting (not panicking) on failure: used from
/// `Drop`, possibly while unwinding.
pub(crate) fn delete_by_name(name: &str) {
    if let Err(err) = ip(&["netns", "delete", name]) {
        eprintln!("weft-testbed: teardown: {err}");
    }
}

/// Runs a prepared command to completion and returns its stdout; a non-zero
/// exit becomes an [`Error::Command`] quoting the command line and stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    ip::run(cmd)
}
