//! Running a process "in a pod": inside a network namespace (by its
//! /run/netns path), in a private mount namespace where the pod's own
//! `/etc/resolv.conf` and `/etc/hosts` are bind-mounted (what a container
//! runtime does), as a chosen uid/gid. Used for pod containers, weftd on the
//! node, and `weft exec`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Where and as whom a process runs.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// The network namespace file (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// Files bind-mounted over `/etc/resolv.conf` and `/etc/hosts`.
    pub resolv_conf: Option<PathBuf>,
    /// See `resolv_conf`.
    pub hosts: Option<PathBuf>,
    /// uid/gid to run as (root when `None`).
    pub run_as: Option<(u32, u32)>,
    /// The hostname inside (its own UTS namespace), as a pod's is its name.
    pub hostname: Option<String>,
    /// Start a new session (pods' processes: a Ctrl-C meant for `weft up`
    /// must not reach them); `weft exec` keeps the terminal instead.
    pub new_session: bool,
}

impl Sandbox {
    /// A [`Command`] for `program` that starts inside this sandbox.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let netns = File::open(&self.netns).map_err(|source| Error::Io {
            path: self.netns.clone(),
            source,
        })?;
        let mounts: Vec<(std::ffi::CString, &'static str)> = [
            (self.resolv_conf.as_deref(), "/etc/resolv.conf"),
            (self.hosts.as_deref(), "/etc/hosts"),
        ]
        .into_iter()
        .filter_map(|(src, dst)| Some((cstring(src?)?, dst)))
        .collect();
        let mut cmd = Command::new(program);
        let hostname = self
            .hostname
            .as_ref()
            .map(|h| std::ffi::OsString::from(h.chars().take(63).collect::<String>()));
        enter_before_exec(
            &mut cmd,
            netns,
            mounts,
            hostname,
            self.run_as,
            self.new_session,
        );
        Ok(cmd)
    }
}

fn cstring(p: &Path) -> Option<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).ok()
}

#[allow(unsafe_code)]
fn enter_before_exec(
    cmd: &mut Command,
    netns: File,
    mounts: Vec<(std::ffi::CString, &'static str)>,
    hostname: Option<std::ffi::OsString>,
    run_as: Option<(u32, u32)>,
    new_session: bool,
) {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, setns, unshare};
    use nix::sys::signal::SigSet;
    use nix::unistd::{Gid, Uid, setgid, setgroups, sethostname, setsid, setuid};
    use std::os::unix::process::CommandExt;

    let hook = move || -> std::io::Result<()> {
        // `weft up` blocks SIGINT/SIGTERM to wait for them on one thread;
        // the child must not inherit that mask.
        SigSet::empty().thread_set_mask()?;
        if new_session {
            setsid()?;
        }
        setns(&netns, CloneFlags::CLONE_NEWNET)?;
        if !mounts.is_empty() {
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            for (src, dst) in &mounts {
                mount(
                    Some(src.as_c_str()),
                    *dst,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
        }
        if let Some(name) = &hostname {
            unshare(CloneFlags::CLONE_NEWUTS)?;
            sethostname(name)?;
        }
        if let Some((uid, gid)) = run_as {
            setgroups(&[])?;
            setgid(Gid::from_raw(gid))?;
            setuid(Uid::from_raw(uid))?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It only makes
    // system calls (pthread_sigmask, setsid, setns, unshare, mount,
    // sethostname, setgroups, setgid, setuid) on values moved in before the fork: the mount sources are
    // prepared C strings and the targets short static paths (nix copies
    // those onto the stack, no allocation), and no lock is taken.
    unsafe {
        cmd.pre_exec(hook);
    }
}
