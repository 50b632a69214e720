//! `weft-proxy`: the sidecar. One binary carries the data plane and the
//! init step that sets up traffic capture (istio-init's `istio-iptables`).

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about = "The Weft sidecar proxy and its traffic-capture init step")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up traffic capture in the current network namespace (istio-iptables).
    Iptables(weft_capture::cli::IptablesArgs),
    /// Remove the traffic-capture rules that `iptables` added.
    CleanIptables(weft_capture::cli::CleanArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Iptables(args) => args.run()?,
        Command::CleanIptables(args) => args.run()?,
    }
    Ok(())
}
