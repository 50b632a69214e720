//! `weft kube-inject`: inject the sidecar into every workload of a YAML
//! stream, with istioctl's flags. Documents that are not workloads, or that
//! opt out, pass through unchanged (a note on stderr says why).

use crate::output;
use anyhow::Context;
use std::path::{Path, PathBuf};
use weft_inject::{InjectionConfig, Settings, SkipReason, inject_stream, render_stream};

/// Flags of `weft kube-inject` (the same as istioctl's).
#[derive(clap::Args)]
pub struct Args {
    /// Input manifest (YAML, one or more documents); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: PathBuf,
    /// Write the injected manifest here instead of stdout (written atomically).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Injection config (policy, selectors, templates) replacing the built-in one.
    #[arg(long = "injectConfigFile", value_name = "FILE")]
    pub inject_config_file: Option<PathBuf>,
    /// Istio MeshConfig YAML (defaultConfig, proxyMetadata, ...), merged over the defaults.
    #[arg(long = "meshConfigFile", value_name = "FILE")]
    pub mesh_config_file: Option<PathBuf>,
    /// Values (Helm values or an IstioOperator), merged over the defaults.
    #[arg(long = "valuesFile", value_name = "FILE")]
    pub values_file: Option<PathBuf>,
    /// Control-plane revision doing the injection.
    #[arg(long = "revision", short = 'r', default_value = "default")]
    pub revision: String,
}

fn read(path: &Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((path.display().to_string(), text))
}

/// Build injection settings from the flags (files parsed, defaults merged).
pub fn settings(args: &Args) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    if let Some(p) = &args.inject_config_file {
        let (name, text) = read(p)?;
        s.config = InjectionConfig::parse(&name, &text)?;
    }
    if let Some(p) = &args.values_file {
        let (name, text) = read(p)?;
        s.merge_values(&name, &text)?;
    }
    if let Some(p) = &args.mesh_config_file {
        let (name, text) = read(p)?;
        s.merge_mesh(&name, &text)?;
    }
    s.revision = args.revision.clone();
    Ok(s)
}

/// Run the subcommand.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let settings = settings(args)?;
    let input = output::read_input(&args.filename)?;
    let source = args.filename.display().to_string();
    let (docs, reports) =
        inject_stream(&input, &settings).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    for r in &reports {
        match &r.skipped {
            Some(SkipReason::NotAWorkload(_)) | None => {}
            Some(reason) => eprintln!(
                "{source}: document {} ({}/{}): skipping injection: {reason}",
                r.index, r.kind, r.name
            ),
        }
    }
    output::write(args.output.as_deref(), &render_stream(&docs))
}
