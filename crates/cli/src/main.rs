//! `weft`, the command-line tool (istioctl's counterpart). This file only
//! parses the command line and dispatches; each subcommand lives in its own
//! module.

mod analyze;
mod app;
mod demo;
mod kube_inject;
mod local;
mod manifest;
mod output;
mod proxy_config;
mod proxy_status;
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
    /// Run the demo mesh (examples/demo) locally, send a bounded load and summarise it (root).
    Demo(demo::Args),
    /// Remove a local mesh started by `weft up` (also after a crash) (root).
    Down(local::DownArgs),
    /// Run a command inside a pod of a local mesh (root).
    Exec(local::ExecArgs),
    /// Show a local pod's app or proxy logs (`-c proxy` has the access logs).
    Logs(local::LogsArgs),
    /// Run a directory of manifests as a local mesh: weftd, pods with sidecars (root).
    Up(local::UpArgs),
    /// Inject the Weft sidecar into Kubernetes manifests (istioctl kube-inject).
    #[command(name = "kube-inject")]
    KubeInject(kube_inject::Args),
    /// Render installation manifests.
    Manifest {
        #[command(subcommand)]
        command: manifest::Command,
    },
    /// Show the xDS config weftd serves a proxy (istioctl proxy-config).
    #[command(name = "proxy-config", visible_alias = "pc")]
    ProxyConfig(proxy_config::Args),
    /// Sync state of every proxy connected to weftd (istioctl proxy-status).
    #[command(name = "proxy-status", visible_alias = "ps")]
    ProxyStatus(proxy_status::Args),
    /// Print the version of this client.
    Version(version::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(args) => analyze::run(&args),
        Command::App { command } => app::run(command),
        Command::Demo(args) => demo::run(&args),
        Command::Down(args) => local::down(&args),
        Command::Exec(args) => local::exec(&args),
        Command::Logs(args) => local::logs(&args),
        Command::Up(args) => local::up(&args),
        Command::KubeInject(args) => kube_inject::run(&args),
        Command::Manifest { command } => manifest::run(&command),
        Command::ProxyConfig(args) => proxy_config::run(&args),
        Command::ProxyStatus(args) => proxy_status::run(&args),
        Command::Version(args) => version::run(&args),
    }
}
