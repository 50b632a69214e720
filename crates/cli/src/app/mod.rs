//! `weft app`: the built-in demo workloads. An HTTP server that reports who
//! it is and what it received (and can call downstream services, forwarding
//! trace headers), a TCP echo server, and a bounded HTTP load generator whose
//! summary tallies which versions answered. `weft demo` runs these in pods.

mod client;
mod http;
mod load;
mod peer;
mod tcp;

use clap::Subcommand;

/// The `weft app` subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// HTTP/1.1 and h2c server answering with its name, version and the request it saw.
    Http(http::Args),
    /// TCP echo server.
    Tcp(tcp::Args),
    /// Bounded HTTP load generator printing a latency/status/version summary.
    Load(load::Args),
}

/// Runs one `weft app` subcommand to completion on a fresh tokio runtime.
pub fn run(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::Http(args) => http::run(args).await,
            Command::Tcp(args) => tcp::run(args).await,
            Command::Load(args) => load::run(args).await,
        }
    })
}

/// Prints the bound address as the first stdout line so that scripts and
/// tests can use `--listen 127.0.0.1:0` and learn the port.
fn announce(kind: &str, addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the server.
    let _ = writeln!(out, "listening on {addr} ({kind})");
    let _ = out.flush();
}
