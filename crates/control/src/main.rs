//! `weftd`, the control plane (istiod's counterpart): loads and watches
//! `--config file://DIR`, serves ADS (state of the world and delta) on
//! `--xds-addr`, metrics and debug endpoints on `--monitoring-addr`, and the
//! sidecar-injection webhook on `--webhook-addr`. It runs the mesh CA
//! (`--ca-dir` or `--cacerts`): `IstioCertificateService/CreateCertificate`
//! is served next to ADS on `--xds-addr` (plaintext) and on
//! `--xds-tls-addr` (TLS with weftd's certificate from the same CA, valid
//! for istiod's SPIFFE ID, weftd's and istiod's Service names and every
//! `--tls-san`).

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use weft_control::ca::{self, CaOptions, ControlPlaneCa};
use weft_control::debug;
use weft_control::discovery::{Discovery, DiscoveryOptions};
use weft_control::namespaces::parse_source;
use weft_control::webhook::{self, WebhookState, tls};
use weft_inject::{InjectionConfig, Settings};

/// weftd: Weft's control plane. Serves the `/inject` admission webhook over
/// HTTPS (AdmissionReview v1 in, JSON Patch out) and `/ready`.
#[derive(Parser)]
#[command(name = "weftd", version, about)]
struct Args {
    /// Config source: file://DIR (Namespace objects in DIR's YAML files).
    #[arg(long, value_name = "file://DIR")]
    config: String,
    /// Address of the ADS gRPC server (plaintext, SotW and delta).
    #[arg(long = "xds-addr", default_value = "0.0.0.0:15010")]
    xds_addr: SocketAddr,
    /// Address of `/metrics` and `/debug/...` (plain HTTP).
    #[arg(long = "monitoring-addr", default_value = "0.0.0.0:15014")]
    monitoring_addr: SocketAddr,
    /// Push debounce quiet period in milliseconds (PILOT_DEBOUNCE_AFTER).
    #[arg(long = "debounce-ms", default_value_t = 100)]
    debounce_ms: u64,
    /// Address of the HTTPS webhook server.
    #[arg(long = "webhook-addr", default_value = "0.0.0.0:15017")]
    webhook_addr: SocketAddr,
    /// Address of the plain-HTTP readiness endpoint (`/ready`).
    #[arg(long = "ready-addr", default_value = "0.0.0.0:8080")]
    ready_addr: SocketAddr,
    /// Serving certificate chain (PEM). Without it a CA and certificate are generated.
    #[arg(long = "tls-cert", requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long = "tls-key", requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Write the CA bundle (PEM) that signs the serving certificate here, for
    /// the MutatingWebhookConfiguration's caBundle (`weft manifest generate --ca-bundle-file`).
    #[arg(long = "ca-bundle-out", value_name = "FILE")]
    ca_bundle_out: Option<PathBuf>,
    /// Extra DNS name or IP address (repeatable) for weftd's certificates:
    /// the 15012 xDS/CA certificate (which always has weftd.weft-system.svc,
    /// istiod.istio-system.svc and their .cluster.local forms, kept on
    /// rotation) and a generated webhook certificate. Proxies that dial weftd
    /// by IP need that IP here.
    #[arg(long = "tls-san", value_name = "NAME_OR_IP")]
    tls_san: Vec<String>,
    /// Injection config (policy, selectors, templates).
    #[arg(long = "injectConfigFile", value_name = "FILE")]
    inject_config_file: Option<PathBuf>,
    /// Istio MeshConfig YAML merged over the defaults.
    #[arg(long = "meshConfigFile", value_name = "FILE")]
    mesh_config_file: Option<PathBuf>,
    /// Values (Helm values or IstioOperator) merged over the defaults.
    #[arg(long = "valuesFile", value_name = "FILE")]
    values_file: Option<PathBuf>,
    /// Revision this control plane serves.
    #[arg(long, default_value = "default")]
    revision: String,
    /// Address of ADS and the CA over TLS (istiod's 15012).
    #[arg(long = "xds-tls-addr", default_value = "0.0.0.0:15012")]
    xds_tls_addr: SocketAddr,
    /// Directory of the self-signed mesh root, generated on first start and
    /// reused afterwards (Istio's `cacerts` file names). A state directory
    /// outside any checkout, so a CA key never lands in a source tree.
    #[arg(
        long = "ca-dir",
        env = "WEFT_CA_DIR",
        default_value = "/var/lib/weft/ca",
        value_name = "DIR"
    )]
    ca_dir: PathBuf,
    /// A plugged-in root or intermediate CA (Istio's `cacerts`:
    /// ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem); wins over --ca-dir.
    #[arg(long, value_name = "DIR")]
    cacerts: Option<PathBuf>,
    /// Mesh trust domain (default: MeshConfig `trustDomain`, else cluster.local).
    #[arg(long = "trust-domain")]
    trust_domain: Option<String>,
    /// The runtime's bootstrap token store; CSRs presenting one of its
    /// tokens get the identity the token was issued for.
    #[arg(long = "bootstrap-tokens", value_name = "FILE")]
    bootstrap_tokens: Option<PathBuf>,
    /// Write the mesh root certificate (PEM) here.
    #[arg(long = "root-cert-out", value_name = "FILE")]
    root_cert_out: Option<PathBuf>,
}

fn trust_domain(args: &Args, settings: &Settings) -> String {
    args.trust_domain
        .clone()
        .or_else(|| {
            settings
                .mesh
                .get("trustDomain")
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "cluster.local".to_string())
}

fn read(p: &PathBuf) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok((p.display().to_string(), text))
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    if let Some(p) = &args.inject_config_file {
        let (n, t) = read(p)?;
        s.config = InjectionConfig::parse(&n, &t)?;
    }
    if let Some(p) = &args.values_file {
        let (n, t) = read(p)?;
        s.merge_values(&n, &t)?;
    }
    if let Some(p) = &args.mesh_config_file {
        let (n, t) = read(p)?;
        s.merge_mesh(&n, &t)?;
    }
    s.revision = args.revision.clone();
    Ok(s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let dir = parse_source(&args.config)?;
    let settings = settings(&args)?;
    let cert = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => tls::load(c, k)?,
        _ => {
            let mut names = tls::default_names("weftd", "istio-system");
            names.extend(args.tls_san.iter().cloned());
            tls::generate(&names)?
        }
    };
    if let Some(out) = &args.ca_bundle_out {
        std::fs::write(out, &cert.ca_bundle_pem)
            .with_context(|| format!("--ca-bundle-out {}", out.display()))?;
    }
    let tls_config = tls::server_config(cert)?;
    let mut ca_options = CaOptions::new(&args.ca_dir, trust_domain(&args, &settings));
    ca_options.cacerts = args.cacerts.clone();
    ca_options.bootstrap_tokens = args.bootstrap_tokens.clone();
    ca_options
        .serving_names
        .extend(args.tls_san.iter().cloned());
    let ca = ControlPlaneCa::start(ca_options).await?;
    if let Some(out) = &args.root_cert_out {
        std::fs::write(out, ca.root_cert_pem())
            .with_context(|| format!("--root-cert-out {}", out.display()))?;
    }
    let mut opts = DiscoveryOptions {
        root_ca_pem: Some(ca.root_cert_pem().to_string()),
        xds_auth: Some(ca.xds_authenticator().clone()),
        ..DiscoveryOptions::default()
    };
    opts.push_debounce.after = std::time::Duration::from_millis(args.debounce_ms);
    let discovery = Arc::new(Discovery::start(&dir, opts)?);
    let xds = weft_xds::server::bind(args.xds_addr)
        .with_context(|| format!("--xds-addr {}", args.xds_addr))?;
    let xds_tls = ca::bind(args.xds_tls_addr)
        .with_context(|| format!("--xds-tls-addr {}", args.xds_tls_addr))?;
    let monitoring = tokio::net::TcpListener::bind(args.monitoring_addr)
        .await
        .with_context(|| format!("--monitoring-addr {}", args.monitoring_addr))?;
    let https = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("--webhook-addr {}", args.webhook_addr))?;
    let http = tokio::net::TcpListener::bind(args.ready_addr)
        .await
        .with_context(|| format!("--ready-addr {}", args.ready_addr))?;
    // Namespace labels are read from the live config snapshot on every
    // review, so relabelling a namespace applies without a restart.
    let state = Arc::new(WebhookState {
        settings,
        namespaces: discovery.namespaces(),
    });
    tracing::info!(
        xds = %xds.local_addr()?,
        xds_tls = %xds_tls.local_addr()?,
        identity = %ca.identity(),
        monitoring = %monitoring.local_addr()?,
        config_version = discovery.store().snapshot().version,
        webhook = %https.local_addr()?,
        ready = %http.local_addr()?,
        namespaces = state.namespaces.len(),
        revision = %state.settings.revision,
        "weftd serving"
    );
    // Machine-readable line for scripts that start weftd on port 0.
    println!(
        "webhook-addr={} ready-addr={} xds-addr={} xds-tls-addr={} monitoring-addr={}",
        https.local_addr()?,
        http.local_addr()?,
        xds.local_addr()?,
        xds_tls.local_addr()?,
        monitoring.local_addr()?
    );
    let server = discovery.server().clone();
    tokio::select! {
        _ = webhook::serve_https(https, tls_config, state.clone()) => {}
        _ = webhook::serve_http(http, state) => {}
        r = ca::serve_plaintext(xds, &server, &ca) => { r.context("--xds-addr gRPC server")?; }
        r = ca::serve_tls(xds_tls, &server, &ca) => { r.context("--xds-tls-addr gRPC server")?; }
        _ = debug::serve(monitoring, discovery.clone()) => {}
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; tracing::info!("shutting down"); }
    }
    Ok(())
}
