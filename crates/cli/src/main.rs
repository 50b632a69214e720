//! `weft`, the command-line tool (istioctl's counterpart). This file only
//! parses the command line and dispatches; each subcommand lives in its own
//! module.

mod analyze;
mod app;
mod kube_inject;
mod manifest;
mod output;
mod version;

use clap::{Parser, Subcommand};

/// Weft: an Istio-compatible service mesh. `weft` injects sidecars into
/// manifests, renders installation manifests and reports versions.
#[derive(Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a directory of Kubernetes and Istio manifests (istioctl analyze).
    Analyze(analyze::Args),
    /// Built-in demo workloads: HTTP server, TCP echo, load generator.
    App {
        #[command(subcommand)]
        command: app::Command,
    },
    /// Inject the Weft sidecar into Kubernetes manifests (istioctl kube-inject).
    #[command(name = "kube-inject")]
    KubeInject(kube_inject::Args),
    /// Render installation manifests.
    Manifest {
        #[command(subcommand)]
        command: manifest::Command,
    },
    /// Print the version of this client.
    Version(version::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(args) => analyze::run(&args),
        Command::App { command } => app::run(command),
        Command::KubeInject(args) => kube_inject::run(&args),
        Command::Manifest { command } => manifest::run(&command),
        Command::Version(args) => version::run(&args),
    }
}
