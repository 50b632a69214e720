//! Running the system tools (`iptables-restore`, `iptables-save`, `nft`,
//! `ip`): finding them, checking privileges first, and turning failures into
//! errors that say what to install or which line was refused.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::CaptureError;

/// The result of a finished command.
#[derive(Debug)]
pub(crate) struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Finds `tool` on PATH, falling back to the sbin directories (non-login
/// root shells often lack them).
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Fails with [`CaptureError::ToolMissing`] unless `tool` is installed.
pub(crate) fn require_tool(tool: &str, package: &'static str) -> Result<PathBuf, CaptureError> {
    find_tool(tool).ok_or_else(|| CaptureError::ToolMissing {
        tool: tool.to_owned(),
        package,
    })
}

/// Fails with [`CaptureError::PermissionDenied`] unless we are root or hold
/// CAP_NET_ADMIN (bit 12 of the effective capability set).
pub(crate) fn require_net_admin(action: &str) -> Result<(), CaptureError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 1 << 12;
    if cap_eff & CAP_NET_ADMIN != 0 {
        return Ok(());
    }
    Err(CaptureError::PermissionDenied {
        action: action.to_owned(),
        detail: format!(
            "running as uid {} without CAP_NET_ADMIN",
            nix::unistd::geteuid()
        ),
    })
}

/// Runs `program args`, feeding `stdin` if given. Spawn failures become
/// errors; a non-zero exit is returned in [`Output`].
pub(crate) fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, CaptureError> {
    let command_text = format!("{program} {}", args.join(" "));
    let path = find_tool(program).ok_or_else(|| CaptureError::ToolMissing {
        tool: program.to_owned(),
        package: package_of(program),
    })?;
    let spawn_err = |source| CaptureError::Spawn {
        command: command_text.clone(),
        source,
    };
    let mut child = Command::new(path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        // A tool that stops reading early (it refused a line) closes the
        // pipe: its exit status and stderr tell what happened.
        match pipe.write_all(input.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(spawn_err(e)),
            _ => {}
        }
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    tracing::debug!(command = %command_text, status = %out.status, "ran");
    Ok(Output {
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Like [`run`], but a non-zero exit is an error (permission problems are
/// reported as such).
pub(crate) fn run_ok(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CaptureError> {
    let out = run(program, args, stdin)?;
    if out.success {
        return Ok(out.stdout);
    }
    Err(failure(program, args, &out))
}

/// The error for a failed command.
pub(crate) fn failure(program: &str, args: &[&str], out: &Output) -> CaptureError {
    let lower = out.stderr.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        return CaptureError::PermissionDenied {
            action: program.to_owned(),
            detail: out.stderr.clone(),
        };
    }
    CaptureError::CommandFailed {
        command: format!("{program} {}", args.join(" ")),
        status: out.status.clone(),
        stderr: out.stderr.clone(),
    }
}

/// The Debian package that ships a tool (for the install hint).
pub(crate) fn package_of(tool: &str) -> &'static str {
    match tool {
        "nft" => "nftables",
        "ip" => "iproute2",
        _ => "iptables",
    }
}

/// Serialises capture changes on this machine: `apply`/`clean` read the
/// current rules, then write; two runs at once (in the same namespace)
/// could otherwise both add. Held until dropped.
pub(crate) struct ChangeLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the machine-wide capture lock (`/run/weft-capture.lock`).
pub(crate) fn change_lock() -> Result<ChangeLock, CaptureError> {
    const PATH: &str = "/run/weft-capture.lock";
    let spawn_err = |source| CaptureError::Spawn {
        command: format!("lock {PATH}"),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PATH)
        .map_err(spawn_err)?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| spawn_err(std::io::Error::from(errno)))?;
    Ok(ChangeLock { _lock: lock })
}
