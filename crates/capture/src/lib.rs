//! Traffic capture for the Weft sidecar: the work of Istio's `istio-iptables`
//! (the `istio-init` container).
//!
//! The core is pure: [`CaptureConfig`] (validated settings, built from the
//! istio-iptables flags by [`cli::IptablesArgs`]) goes through [`generate`]
//! to a [`RuleSet`], the `iptables-restore` payloads per IP family, or
//! through [`nft::generate`] to a native nftables script. Applying and
//! removing them ([`apply`], [`clean`]) is a thin layer that runs
//! `iptables-restore`/`nft` and `ip` in the current network namespace.
//!
//! Modules:
//! - `config`: settings types and flag/env parsers (pure);
//! - `rules`: the typed rule model shared by both backends;
//! - `plan`: which rules Istio's capture needs, in order (pure);
//! - `iptables`: rendering to iptables-restore text (pure);
//! - [`nft`]: rendering to an nft script (pure) and applying it;
//! - `apply` / `route` / `exec`: running iptables and `ip` (I/O), the
//!   change lock, the iptables variant (legacy or nf_tables) in use;
//! - `detect`: reading the pod's addresses and resolv.conf;
//! - `validate`: `--run-validation`, a real connection through the rules;
//! - [`cli`]: the `weft-proxy iptables` / `clean-iptables` flags.

pub mod cli;
mod config;
mod detect;
mod error;
mod exec;
mod iptables;
pub mod nft;
mod plan;
mod route;
mod rules;
mod validate;

mod apply;

pub use config::{
    Backend, CaptureConfig, DnsServer, InboundPorts, InterceptionMode, IptablesBinary,
    OutboundRanges, OwnerGroups,
};
pub use detect::CaptureEnv;
pub use error::CaptureError;
pub use iptables::{SavedTable, parse_save};

/// The `iptables-restore` payloads for one configuration.
///
/// Each payload is the text handed to `iptables-restore --noflush`
/// (`ip6tables-restore` for `ipv6`): per table a `* table` line, the `-N`
/// chain declarations, the `-A`/`-I` rules and `COMMIT`, in Istio's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The IPv4 payload (always present).
    pub ipv4: String,
    /// The IPv6 payload, when IPv6 is enabled.
    pub ipv6: Option<String>,
}

impl RuleSet {
    /// What `--dry-run` prints: the IPv4 payload, then the IPv6 one.
    pub fn dry_run_text(&self) -> String {
        let mut out = self.ipv4.clone();
        if let Some(v6) = &self.ipv6 {
            out.push_str(v6);
        }
        out
    }
}

/// Generates the iptables rule set for a configuration. Pure: no I/O.
pub fn generate(cfg: &CaptureConfig) -> RuleSet {
    let plan = plan::plan(cfg);
    RuleSet {
        ipv4: iptables::render_restore(&plan.v4),
        ipv6: cfg.enable_ipv6.then(|| iptables::render_restore(&plan.v6)),
    }
}

/// Applies the capture rules in the current network namespace with the
/// configured backend: one atomic transaction per family, idempotent
/// (what we own is replaced, never duplicated), and on failure nothing of
/// this attempt is left behind. TPROXY mode also adds the policy route.
pub fn apply(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    exec::require_net_admin("applying traffic capture")?;
    let _lock = exec::change_lock()?;
    match cfg.backend {
        Backend::Iptables => apply::apply_iptables(cfg),
        Backend::Nftables => nft::apply(cfg),
    }
}

/// Removes what [`apply`] added for this configuration: our `ISTIO_*`
/// chains, the rules we put into built-in chains, the TPROXY policy route
/// (or, with nftables, our `weft` tables). Other rules are left alone.
pub fn clean(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    exec::require_net_admin("removing traffic capture")?;
    let _lock = exec::change_lock()?;
    match cfg.backend {
        Backend::Iptables => apply::clean_iptables(cfg),
        Backend::Nftables => nft::clean(cfg),
    }
}
