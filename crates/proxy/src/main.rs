//! `weft-proxy`: the sidecar. One binary carries the data plane
//! (`weft-proxy --config FILE`), pilot-agent's helper commands (`wait`,
//! `request`, `version`) and the init step that sets up traffic capture
//! (istio-init's `istio-iptables`).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "weft-proxy",
    version,
    about = "The Weft sidecar proxy: runs an Envoy v3 bootstrap file, and sets up traffic capture",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Flags of the data plane (`weft-proxy [run] ...`).
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// weftd's xDS address (HOST:PORT): the sidecar mode. Without --config it
    /// defaults to $XDS_ADDRESS, $PILOT_ADDRESS or PROXY_CONFIG's discoveryAddress.
    /// Port 15012 (or PROXY_CONFIG controlPlaneAuthPolicy MUTUAL_TLS, or
    /// https://) is mutual TLS: weftd verified against XDS_ROOT_CA or
    /// WEFT_ROOT_CERT_FILE as ISTIOD_SAN or the host, the workload
    /// certificate presented; 15010 and other ports are plaintext.
    #[arg(long, value_name = "HOST:PORT")]
    xds_address: Option<String>,
    /// Envoy v3 bootstrap file (YAML or JSON) with static_resources to serve.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Worker threads, each with its own accept loop (Istio's sidecar default is 2).
    #[arg(long, default_value_t = 2, value_name = "N")]
    concurrency: usize,
    /// Admin API address; overrides the bootstrap's admin.address.
    #[arg(long, value_name = "ADDR")]
    admin_address: Option<SocketAddr>,
    /// Istio health port serving /healthz/ready ("off" disables it).
    #[arg(long, default_value = "0.0.0.0:15021", value_name = "ADDR|off")]
    health_address: String,
    /// Istio Prometheus port serving /stats/prometheus ("off" disables it).
    #[arg(long, default_value = "0.0.0.0:15090", value_name = "ADDR|off")]
    prometheus_address: String,
    /// How long in-flight requests may run after SIGTERM before the proxy exits.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    drain_timeout_seconds: u64,
    /// Parse and check the configuration, then exit (like `envoy --mode validate`).
    #[arg(long)]
    validate: bool,
    /// Log level (trace, debug, info, warn, error); RUST_LOG wins.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the data plane (the default): from --config, or as weftd's xDS client.
    Run(RunArgs),
    /// Set up traffic capture in the current network namespace (istio-iptables).
    Iptables(weft_capture::cli::IptablesArgs),
    /// Remove the traffic-capture rules that `iptables` added.
    CleanIptables(weft_capture::cli::CleanArgs),
    /// Block until the proxy is ready (holdApplicationUntilProxyStarts).
    Wait {
        /// URL that answers 200 once the proxy is ready.
        #[arg(long, default_value = "http://localhost:15021/healthz/ready")]
        url: String,
        /// Give up after this many seconds.
        #[arg(long = "timeoutSeconds", default_value_t = 60)]
        timeout_seconds: u64,
        /// Milliseconds between attempts.
        #[arg(long = "periodMillis", default_value_t = 500)]
        period_millis: u64,
    },
    /// Call the proxy's admin API, e.g. `weft-proxy request GET /stats`.
    Request {
        /// HTTP method (GET or POST).
        method: String,
        /// Path on the admin API.
        path: String,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Print the version.
    Version,
}

fn addr_flag(v: &str, flag: &str) -> anyhow::Result<Option<SocketAddr>> {
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).with_context(|| {
        format!("--{flag}: {v:?} is not an address (e.g. 0.0.0.0:15021) or \"off\"")
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_level = match &cli.command {
        Some(Command::Run(r)) => r.log_level.clone(),
        _ => cli.run.log_level.clone(),
    };
    weft_proxy::logging::init(&log_level);
    let cli_run = cli.run;
    let run = match cli.command {
        Some(Command::Run(r)) => r,
        Some(Command::Iptables(args)) => return Ok(args.run()?),
        Some(Command::CleanIptables(args)) => return Ok(args.run()?),
        Some(Command::Version) => {
            println!("weft-proxy version {}", weft_proxy::admin::VERSION);
            return Ok(());
        }
        Some(Command::Wait {
            url,
            timeout_seconds,
            period_millis,
        }) => {
            weft_proxy::agent::wait(
                &url,
                Duration::from_secs(timeout_seconds),
                Duration::from_millis(period_millis),
            )?;
            println!("proxy is ready");
            return Ok(());
        }
        Some(Command::Request {
            method,
            path,
            admin,
        }) => {
            let (status, body) = weft_proxy::agent::request(admin, &method, &path)?;
            print!("{body}");
            if status >= 400 {
                anyhow::bail!("{method} {path}: HTTP {status}");
            }
            return Ok(());
        }
        None => cli_run,
    };
    run_proxy(run)
}

fn run_proxy(cli: RunArgs) -> anyhow::Result<()> {
    let opts = weft_proxy::Options {
        concurrency: cli.concurrency,
        admin_address: cli.admin_address,
        health_address: addr_flag(&cli.health_address, "health-address")?,
        prometheus_address: addr_flag(&cli.prometheus_address, "prometheus-address")?,
        drain_timeout: Duration::from_secs(cli.drain_timeout_seconds),
        ready_on_start: true,
    };
    let Some(config) = cli.config else {
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        let address = match cli.xds_address {
            Some(a) => a,
            None => weft_proxy::xds::address_from_env(&env)
                .map_err(anyhow::Error::msg)?
                .context("give --config FILE, or --xds-address HOST:PORT (or set XDS_ADDRESS, PILOT_ADDRESS or PROXY_CONFIG's discoveryAddress)")?,
        };
        start_identity(&env, Some(&address))?;
        return run_xds(&address, &env, opts);
    };
    let loaded = weft_proxy::config::load_file(&config)?;
    if !cli.validate {
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        start_identity(&env, None)?;
    }
    if cli.validate {
        let stats = weft_proxy::stats::Stats::new();
        weft_proxy::model::Snapshot::compile(&loaded, &stats)?;
        println!("configuration '{}' OK", config.display());
        return Ok(());
    }
    let drain_timeout = opts.drain_timeout;
    let proxy = weft_proxy::Proxy::start(loaded, opts)?;
    weft_proxy::server::run_until_signal(&proxy, drain_timeout, Some(&config))?;
    proxy.join();
    Ok(())
}

/// Starts the workload certificate source (secrets `default` and
/// `ROOTCA`) when the environment configures one (CA_ADDR,
/// WEFT_TOKEN_FILE, WEFT_ROOT_CERT_FILE; in the sidecar mode CA_ADDR
/// defaults to the xDS host on port 15012).
fn start_identity(
    env: &std::collections::HashMap<String, String>,
    xds_address: Option<&str>,
) -> anyhow::Result<()> {
    match weft_proxy::identity::start_from_env(env, xds_address)? {
        Some(w) => tracing::info!(
            id = ?w.id.as_ref().map(ToString::to_string),
            roots = w.roots().len(),
            "workload certificate source configured"
        ),
        None => tracing::info!(
            "no certificate source (CA_ADDR/WEFT_ROOT_CERT_FILE unset): TLS contexts naming default or ROOTCA will fail their connections"
        ),
    }
    Ok(())
}

/// The sidecar mode: starts the proxy with no listeners (admin, health and
/// metrics ports up, not ready), connects to weftd (plaintext, or mutual TLS
/// through the local relay, see `weft_proxy::xds::tls`), applies what it
/// sends, and serves until a signal.
fn run_xds(
    address: &str,
    env: &std::collections::HashMap<String, String>,
    mut opts: weft_proxy::Options,
) -> anyhow::Result<()> {
    let md = weft_proxy::xds::metadata_from_env(env).map_err(anyhow::Error::msg)?;
    let node = md.to_node();
    weft_proxy::istio_metrics::set_default_node(&node);
    let transport =
        weft_proxy::xds::transport_from_env(address, env).map_err(anyhow::Error::msg)?;
    if opts.admin_address.is_none() {
        opts.admin_address = Some(SocketAddr::from(([127, 0, 0, 1], 15000)));
    }
    opts.ready_on_start = false;
    let drain_timeout = opts.drain_timeout;
    let proxy = weft_proxy::Proxy::start(weft_proxy::xds::empty_bootstrap(&node), opts)?;
    let applier = weft_proxy::xds::XdsApplier::new(node.id.clone(), proxy.shared.clone())
        .map_err(anyhow::Error::msg)?;
    let warmed = applier.warmed();
    let mut configured = applier.configured();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft:xds")
        .enable_all()
        .build()
        .context("starting the xDS client runtime")?;
    let url = match transport {
        weft_proxy::xds::XdsTransport::Plaintext { url } => url,
        weft_proxy::xds::XdsTransport::MutualTls(tls) => {
            let local = rt
                .block_on(weft_proxy::xds::relay::start(tls))
                .map_err(anyhow::Error::msg)?;
            format!("http://{local}")
        }
    };
    weft_proxy::xds::status::set_address(address);
    tracing::info!(%address, node = %node.id, "connecting to weftd over ADS");
    let config = weft_xds::ClientConfig::new(url, node);
    let handle = rt
        .block_on(async { weft_xds::AdsClient::spawn(config, applier) })
        .with_context(|| format!("--xds-address {address:?}"))?;
    // The stream's state, for the readiness reason.
    let mut state = handle.state();
    rt.spawn(async move {
        loop {
            let s = state.borrow_and_update().clone();
            weft_proxy::xds::status::set_stream(s.connected, s.last_error);
            if state.changed().await.is_err() {
                return;
            }
        }
    });
    // Like Envoy's initial_fetch_timeout: ready 15 s after the first
    // listeners and clusters even if some route or endpoint set never
    // arrived (secrets are still waited for, see admin::readiness).
    let shared = proxy.shared.clone();
    rt.spawn(async move {
        if configured.wait_for(|c| *c).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        if !warmed.swap(true, std::sync::atomic::Ordering::SeqCst) && !*shared.drain_rx.borrow() {
            tracing::warn!("routes or endpoints still missing after 15 s; reporting ready anyway");
            shared
                .ready
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    weft_proxy::server::run_until_signal(&proxy, drain_timeout, None)?;
    proxy.join();
    rt.block_on(handle.shutdown());
    Ok(())
}
