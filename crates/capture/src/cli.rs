//! The command-line surface: `weft-proxy iptables` and
//! `weft-proxy clean-iptables`, with istio-iptables' flags and meanings.
//! Turning flags into a validated [`CaptureConfig`] happens here; nothing is
//! applied until every flag has been checked.

use std::io::Write as _;

use clap::{Args, Parser};

use crate::config::{self, Backend, CaptureConfig};
use crate::detect::{self, CaptureEnv};
use crate::error::CaptureError;

const ENV_HELP: &str = "Environment (as istio-iptables reads it):
  ISTIO_OUTBOUND_OWNER_GROUPS          groups whose outbound traffic is captured ('*' = all, default)
  ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE  groups never captured (with '*')
  ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR    loopback range treated as the pod itself (127.0.0.1/32)
  ISTIO_META_DNS_CAPTURE=true          same as --redirect-dns

Applying is one atomic iptables-restore per family (or one nft -f), idempotent;
`weft-proxy clean-iptables` with the same flags removes it again.";

/// The capture settings shared by `iptables` and `clean-iptables`.
///
/// As with istio-iptables, the word after a flag is always its value (even
/// if it starts with `-`), and a repeated flag keeps its last value; every
/// value is validated before anything is applied.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(args_override_self = true)]
pub struct CaptureFlags {
    /// Port the proxy listens on for captured outbound TCP.
    #[arg(
        allow_hyphen_values = true,
        short = 'p',
        long = "envoy-port",
        default_value = "15001"
    )]
    pub proxy_port: String,
    /// Port all captured inbound TCP is sent to.
    #[arg(
        allow_hyphen_values = true,
        short = 'z',
        long = "inbound-capture-port",
        default_value = "15006"
    )]
    pub inbound_capture_port: String,
    /// Inbound tunnel (HBONE) port, never captured.
    #[arg(
        allow_hyphen_values = true,
        short = 'e',
        long = "inbound-tunnel-port",
        default_value = "15008"
    )]
    pub inbound_tunnel_port: String,
    /// Comma list of uids (or user names) whose traffic is not captured (the proxy's) [default: 1337].
    #[arg(allow_hyphen_values = true, short = 'u', long = "proxy-uid")]
    pub proxy_uid: Option<String>,
    /// Comma list of gids (or group names) whose traffic is not captured [default: the -u value].
    #[arg(allow_hyphen_values = true, short = 'g', long = "proxy-gid")]
    pub proxy_gid: Option<String>,
    /// How inbound traffic is captured: REDIRECT or TPROXY.
    #[arg(
        allow_hyphen_values = true,
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT"
    )]
    pub mode: String,
    /// Inbound ports to capture: comma list, '*' for all, empty for none.
    #[arg(
        allow_hyphen_values = true,
        short = 'b',
        long = "istio-inbound-ports",
        default_value = ""
    )]
    pub inbound_ports: String,
    /// Inbound ports never captured (only with -b '*').
    #[arg(
        allow_hyphen_values = true,
        short = 'd',
        long = "istio-local-exclude-ports",
        default_value = ""
    )]
    pub inbound_ports_exclude: String,
    /// Outbound CIDRs to capture: comma list, '*' for all, empty for none.
    #[arg(
        allow_hyphen_values = true,
        short = 'i',
        long = "istio-service-cidr",
        default_value = ""
    )]
    pub outbound_ranges: String,
    /// Outbound CIDRs never captured.
    #[arg(
        allow_hyphen_values = true,
        short = 'x',
        long = "istio-service-exclude-cidr",
        default_value = ""
    )]
    pub outbound_ranges_exclude: String,
    /// Outbound ports always captured.
    #[arg(
        allow_hyphen_values = true,
        short = 'q',
        long = "istio-outbound-ports",
        default_value = ""
    )]
    pub outbound_ports: String,
    /// Outbound ports never captured.
    #[arg(
        allow_hyphen_values = true,
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    pub outbound_ports_exclude: String,
    /// Interfaces whose traffic is never captured.
    #[arg(
        allow_hyphen_values = true,
        short = 'c',
        long = "istio-exclude-interfaces",
        default_value = ""
    )]
    pub exclude_interfaces: String,
    /// Virtual interfaces whose inbound traffic is captured as outbound.
    #[arg(
        allow_hyphen_values = true,
        short = 'k',
        long = "kube-virt-interfaces",
        default_value = ""
    )]
    pub virtual_interfaces: String,
    /// Packet mark used by TPROXY.
    #[arg(
        allow_hyphen_values = true,
        short = 't',
        long = "istio-inbound-tproxy-mark",
        default_value = "1337"
    )]
    pub tproxy_mark: String,
    /// Policy routing table used by TPROXY.
    #[arg(
        allow_hyphen_values = true,
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        default_value = "133"
    )]
    pub tproxy_route_table: String,
    /// Send DNS (port 53) to the resolvers through the agent on 15053
    /// (also turned on by ISTIO_META_DNS_CAPTURE=true).
    #[arg(long = "redirect-dns")]
    pub redirect_dns: bool,
    /// With --redirect-dns: capture DNS to any address, not only the resolvers.
    #[arg(long = "capture-all-dns")]
    pub capture_all_dns: bool,
    /// Drop packets conntrack considers invalid.
    #[arg(long = "drop-invalid")]
    pub drop_invalid: bool,
    /// Dual-stack pod: turn IPv6 on if the pod has any IPv6 address.
    #[arg(long = "dual-stack")]
    pub dual_stack: bool,
    /// Also emit the IPv6 rule set (`--ipv6=false` to force it off);
    /// otherwise detected from the pod's addresses, like Istio.
    #[arg(long = "ipv6", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ipv6: Option<bool>,
    /// Resolvers whose DNS is captured (comma list, may be empty);
    /// otherwise read from /etc/resolv.conf when --redirect-dns is on.
    #[arg(long = "dns-servers", value_name = "LIST", allow_hyphen_values = true)]
    pub dns_servers: Option<String>,
    /// Use native nftables (tables `ip weft`/`ip6 weft`) instead of iptables.
    #[arg(long = "native-nftables")]
    pub native_nftables: bool,
    /// Which iptables binaries to use: legacy or nft [default: the variant
    /// that already holds rules here, else the system's iptables].
    #[arg(
        long = "force-iptables-binary",
        default_value = "",
        value_name = "legacy|nft"
    )]
    pub force_iptables_binary: String,
    /// Accepted for compatibility with Istio's injected init containers;
    /// weft-proxy's log level is set with RUST_LOG.
    #[arg(long = "log_output_level", value_name = "SPEC")]
    pub log_output_level: Option<String>,
    /// Accepted for compatibility with Istio's injected init containers.
    #[arg(long = "log_as_json")]
    pub log_as_json: bool,
}

impl CaptureFlags {
    /// Validates every flag and environment value and fills in what Istio
    /// detects (IPv6, resolvers) unless given explicitly. Reads only.
    pub fn to_config(&self, env: &CaptureEnv) -> Result<CaptureConfig, CaptureError> {
        let uid_text = self.proxy_uid.as_deref().unwrap_or("1337");
        let uids = config::parse_id_list("-u/--proxy-uid", uid_text, config::lookup_uid)?;
        // Like Istio, -g defaults to the -u value (read as groups).
        let gids = match &self.proxy_gid {
            Some(g) => config::parse_id_list("-g/--proxy-gid", g, config::lookup_gid)?,
            None => config::parse_id_list("-u/--proxy-uid", uid_text, config::lookup_gid)?,
        };
        if self.outbound_ranges_exclude.trim() == "*" {
            return Err(CaptureError::flag(
                "-x/--istio-service-exclude-cidr",
                &self.outbound_ranges_exclude,
                "'*' is not allowed: excluding every destination would capture nothing; use -i \"\" instead",
            ));
        }
        let exclude = config::parse_cidr_list(
            "-x/--istio-service-exclude-cidr",
            &self.outbound_ranges_exclude,
        )?;
        let owner_groups = config::parse_owner_groups(
            env.outbound_owner_groups.as_deref().unwrap_or("*"),
            env.outbound_owner_groups_exclude.as_deref().unwrap_or(""),
        )?;
        let loopback = config::parse_loopback_cidr(
            env.outbound_ipv4_loopback_cidr
                .as_deref()
                .unwrap_or("127.0.0.1/32"),
        )?;
        let env_dns = match &env.meta_dns_capture {
            Some(v) => config::parse_env_bool(CaptureEnv::META_DNS_CAPTURE, v)?,
            None => false,
        };
        let mut cfg = CaptureConfig {
            proxy_port: config::parse_port("-p/--envoy-port", &self.proxy_port)?,
            inbound_capture_port: config::parse_port(
                "-z/--inbound-capture-port",
                &self.inbound_capture_port,
            )?,
            inbound_tunnel_port: config::parse_port(
                "-e/--inbound-tunnel-port",
                &self.inbound_tunnel_port,
            )?,
            proxy_uids: uids,
            proxy_gids: gids,
            mode: config::parse_mode("-m/--istio-inbound-interception-mode", &self.mode)?,
            inbound_ports: config::parse_inbound_ports(
                "-b/--istio-inbound-ports",
                &self.inbound_ports,
            )?,
            inbound_ports_exclude: config::parse_port_list(
                "-d/--istio-local-exclude-ports",
                &self.inbound_ports_exclude,
            )?,
            outbound_ranges: config::parse_outbound_ranges(
                "-i/--istio-service-cidr",
                &self.outbound_ranges,
            )?,
            outbound_ranges_exclude: exclude,
            outbound_ports_include: config::parse_port_list(
                "-q/--istio-outbound-ports",
                &self.outbound_ports,
            )?,
            outbound_ports_exclude: config::parse_port_list(
                "-o/--istio-local-outbound-ports-exclude",
                &self.outbound_ports_exclude,
            )?,
            exclude_interfaces: config::parse_interfaces(
                "-c/--istio-exclude-interfaces",
                &self.exclude_interfaces,
            )?,
            reroute_virtual_interfaces: config::parse_interfaces(
                "-k/--kube-virt-interfaces",
                &self.virtual_interfaces,
            )?,
            tproxy_mark: config::parse_u32(
                "-t/--istio-inbound-tproxy-mark",
                &self.tproxy_mark,
                "packet mark",
            )?,
            tproxy_route_table: config::parse_u32(
                "-r/--istio-inbound-tproxy-route-table",
                &self.tproxy_route_table,
                "routing table number",
            )?,
            redirect_dns: self.redirect_dns || env_dns,
            capture_all_dns: self.capture_all_dns,
            drop_invalid: self.drop_invalid,
            dual_stack: self.dual_stack,
            enable_ipv6: false,
            dns_servers: Vec::new(),
            owner_groups,
            ipv4_loopback_cidr: loopback,
            iptables_binary: config::parse_iptables_binary(
                "--force-iptables-binary",
                &self.force_iptables_binary,
            )?,
            backend: if self.native_nftables {
                Backend::Nftables
            } else {
                Backend::Iptables
            },
        };
        if cfg.tproxy_route_table == 0
            || cfg.tproxy_route_table >= 253 && cfg.tproxy_route_table <= 255
        {
            return Err(CaptureError::flag(
                "-r/--istio-inbound-tproxy-route-table",
                &self.tproxy_route_table,
                "tables 0 and 253-255 are reserved by the kernel (unspec, default, main, local)",
            ));
        }
        if cfg.tproxy_mark == 0 || cfg.tproxy_mark == crate::plan::OUTBOUND_MARK {
            return Err(CaptureError::flag(
                "-t/--istio-inbound-tproxy-mark",
                &self.tproxy_mark,
                "the mark must be non-zero and differ from 1338 (used for proxy-to-app traffic)",
            ));
        }
        cfg.dns_servers = match &self.dns_servers {
            Some(list) => config::parse_dns_servers("--dns-servers", list)?,
            None if cfg.redirect_dns && !cfg.capture_all_dns => {
                detect::resolv_conf_servers("/etc/resolv.conf")?
            }
            None => Vec::new(),
        };
        cfg.enable_ipv6 = match self.ipv6 {
            Some(v) => v,
            None => detect::pod_has_ipv6(cfg.dual_stack)?,
        };
        Ok(cfg)
    }
}

/// `weft-proxy iptables`: set up traffic capture in the current network
/// namespace (Istio's `istio-iptables`).
///
/// A flag given twice takes its last value, as with istio-iptables.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(args_override_self = true, after_help = ENV_HELP)]
pub struct IptablesArgs {
    #[command(flatten)]
    pub flags: CaptureFlags,
    /// Print the rules that would be applied and change nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Check with a real connection that capture works here (Istio's
    /// istio-validation; run it as the proxy's uid).
    #[arg(long = "run-validation")]
    pub run_validation: bool,
    /// Do not apply rules (with --run-validation: only check rules someone
    /// else, e.g. the CNI plugin, applied).
    #[arg(long = "skip-rule-apply")]
    pub skip_rule_apply: bool,
    /// Original destination port of the validation probe.
    #[arg(
        long = "iptables-probe-port",
        default_value = "15002",
        allow_hyphen_values = true
    )]
    pub probe_port: String,
    /// How long validation waits for the probe to be captured.
    #[arg(
        long = "probe-timeout",
        default_value = "5s",
        allow_hyphen_values = true
    )]
    pub probe_timeout: String,
    /// Accepted for compatibility: applying always replaces our rules.
    #[arg(long = "force-apply")]
    pub force_apply: bool,
}

#[derive(Debug, Parser)]
#[command(name = "iptables", no_binary_name = true)]
struct StandaloneIptables {
    #[command(flatten)]
    args: IptablesArgs,
}

#[derive(Debug, Parser)]
#[command(name = "clean-iptables", no_binary_name = true)]
struct StandaloneClean {
    #[command(flatten)]
    args: CleanArgs,
}

impl IptablesArgs {
    /// Parses flags as `weft-proxy iptables` would (without the program or
    /// subcommand name), e.g. `["-p", "15001", "-b", "*"]`.
    pub fn parse_from_iter<'a, I: IntoIterator<Item = &'a str>>(
        argv: I,
    ) -> Result<Self, clap::Error> {
        StandaloneIptables::try_parse_from(argv).map(|s| s.args)
    }

    /// The validated configuration, reading Istio's variables from `env`.
    pub fn to_config(&self, env: &CaptureEnv) -> Result<CaptureConfig, CaptureError> {
        self.flags.to_config(env)
    }

    /// The text `--dry-run` prints for this configuration.
    pub fn render(cfg: &CaptureConfig) -> String {
        match cfg.backend {
            Backend::Iptables => crate::generate(cfg).dry_run_text(),
            Backend::Nftables => crate::nft::generate(cfg),
        }
    }

    /// Validates, then prints (`--dry-run`) or applies the rules, then
    /// (`--run-validation`) checks them with a real connection.
    pub fn run(&self) -> Result<(), CaptureError> {
        let cfg = self.to_config(&CaptureEnv::from_process())?;
        let probe_port = config::parse_port("--iptables-probe-port", &self.probe_port)?;
        let probe_timeout =
            crate::validate::parse_duration("--probe-timeout", &self.probe_timeout)?;
        if self.dry_run {
            tracing::info!("dry run: printing the rules, changing nothing");
            for cmd in crate::route::add_commands(&cfg) {
                tracing::info!(command = %format!("ip {}", cmd.join(" ")), "would also run");
            }
            let mut out = std::io::stdout().lock();
            out.write_all(Self::render(&cfg).as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| CaptureError::Spawn {
                    command: "write to stdout".into(),
                    source,
                })?;
            return Ok(());
        }
        if self.skip_rule_apply {
            tracing::info!("--skip-rule-apply: not changing any rules");
        } else {
            crate::apply(&cfg)?;
            tracing::info!(backend = ?cfg.backend, ipv6 = cfg.enable_ipv6, "traffic capture applied");
        }
        if self.run_validation {
            crate::validate::run(&cfg, probe_port, probe_timeout)?;
        }
        Ok(())
    }
}

/// `weft-proxy clean-iptables`: remove what `iptables` added (pass the same
/// flags; at least the same -u/-g, -m, -t/-r, -c, --redirect-dns and
/// --native-nftables).
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(args_override_self = true)]
pub struct CleanArgs {
    #[command(flatten)]
    pub flags: CaptureFlags,
    /// Print what would be removed and change nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
}

impl CleanArgs {
    /// Parses flags as `weft-proxy clean-iptables` would.
    pub fn parse_from_iter<'a, I: IntoIterator<Item = &'a str>>(
        argv: I,
    ) -> Result<Self, clap::Error> {
        StandaloneClean::try_parse_from(argv).map(|s| s.args)
    }

    /// Validates, then removes the rules (or prints them with `--dry-run`).
    pub fn run(&self) -> Result<(), CaptureError> {
        let cfg = self.flags.to_config(&CaptureEnv::from_process())?;
        if self.dry_run {
            let mut out = std::io::stdout().lock();
            let text = format!(
                "# would remove these rules (and our chains/tables):\n{}",
                IptablesArgs::render(&cfg)
            );
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| CaptureError::Spawn {
                    command: "write to stdout".into(),
                    source,
                })?;
            return Ok(());
        }
        crate::clean(&cfg)?;
        tracing::info!(backend = ?cfg.backend, "traffic capture removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
