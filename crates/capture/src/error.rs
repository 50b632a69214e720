//! The one error type of the capture crate. Every variant names what to
//! check: the flag or variable and its value, the tool, or the rule the
//! kernel refused.

use std::io;

/// Everything that can go wrong while building, applying or cleaning the
/// capture rules.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A command-line flag has a value we refuse. Nothing was applied.
    #[error("invalid value {value:?} for flag {flag}: {reason}")]
    InvalidFlag {
        /// The flag as the user spells it, e.g. `-p/--envoy-port`.
        flag: &'static str,
        value: String,
        reason: String,
    },

    /// An environment variable (Istio's) has a value we refuse.
    #[error("invalid value {value:?} for environment variable {var}: {reason}")]
    InvalidEnv {
        var: &'static str,
        value: String,
        reason: String,
    },

    /// A file we read to detect pod settings could not be read or parsed.
    #[error(
        "cannot read {path}: {reason} (hint: pass the setting explicitly, e.g. --dns-servers or --ipv6)"
    )]
    Detect { path: String, reason: String },

    /// A required program is not installed.
    #[error("`{tool}` was not found on PATH (hint: apt-get install -y {package})")]
    ToolMissing { tool: String, package: &'static str },

    /// We lack the privileges to change the network configuration.
    #[error(
        "{action} needs root or CAP_NET_ADMIN in the target network namespace: {detail} \
         (hint: run as root, or use --dry-run to only print the rules)"
    )]
    PermissionDenied { action: String, detail: String },

    /// `iptables-restore` / `nft -f` refused one line of the payload.
    /// Nothing of the payload is left behind.
    #[error("{tool} refused line {line} `{rule}`: {detail}")]
    RuleRejected {
        tool: String,
        line: usize,
        rule: String,
        detail: String,
    },

    /// `--run-validation` saw no captured connection.
    #[error("iptables validation failed: {detail}")]
    Validation { detail: String },

    /// A command failed for a reason we could not map to a line.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },

    /// Spawning or talking to a command failed.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
}

impl CaptureError {
    /// The process exit code for this error: 126 for a failed
    /// `--run-validation` (the code Istio's CNI repair looks for), 1 else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CaptureError::Validation { .. } => 126,
            _ => 1,
        }
    }

    pub(crate) fn flag(flag: &'static str, value: &str, reason: impl Into<String>) -> Self {
        CaptureError::InvalidFlag {
            flag,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn env(var: &'static str, value: &str, reason: impl Into<String>) -> Self {
        CaptureError::InvalidEnv {
            var,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}
