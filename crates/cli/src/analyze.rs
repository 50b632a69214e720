//! `weft analyze DIR [DIR...]`: istioctl analyze's counterpart. Reads every
//! YAML file under the given directories as one configuration, validates it
//! the way weftd's config source does (`weft_api::analyze`), and prints each
//! problem on its own line with a summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use weft_api::analyze::{AnalysisReport, Problem, analyze_files, read_yaml_files};

/// Exit code when a directory cannot be read.
const EXIT_BAD_INPUT: i32 = 2;
/// Exit code when any object is invalid.
const EXIT_INVALID: i32 = 1;

/// Output format of `weft analyze`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per problem and a summary line.
    Text,
    /// One JSON object: `problems`, `files`, `objects`, `errors`, `warnings`.
    Json,
}

/// Flags of `weft analyze`.
#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 when no errors were found (warnings alone do not fail), \
1 when any object is invalid, 2 when a directory cannot be read."
)]
pub struct Args {
    /// Directories of Kubernetes and Istio manifests (`*.yaml`, `*.yml`,
    /// read recursively, hidden entries skipped). All of them are analyzed
    /// together, so cross-object checks (e.g. unknown subsets) see everything.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// Analyze the directories, print the report and exit with the documented
/// status (this function only returns when the configuration is clean).
pub fn run(args: &Args) -> anyhow::Result<()> {
    let report = match load(&args.dirs) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("weft analyze: {msg}");
            std::process::exit(EXIT_BAD_INPUT);
        }
    };
    let mut out = std::io::stdout().lock();
    match args.output {
        Format::Text => write_text(&mut out, &report)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &to_json(&report))?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    if report.has_errors() {
        std::process::exit(EXIT_INVALID);
    }
    Ok(())
}

/// Reads every directory and analyzes the union of their files.
fn load(dirs: &[PathBuf]) -> Result<AnalysisReport, String> {
    let mut files = BTreeMap::new();
    let mut unreadable = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            let why = if dir.exists() {
                "it is not a directory"
            } else {
                "no such directory"
            };
            return Err(format!("cannot analyze {}: {why}", dir.display()));
        }
        let (f, u) = read_yaml_files(dir).map_err(|e| e.to_string())?;
        files.extend(f);
        unreadable.extend(u);
    }
    let mut report = analyze_files(&files);
    report.files += unreadable.len();
    report.problems.extend(unreadable);
    report.problems.sort();
    Ok(report)
}

/// `error: FILE:LINE [doc N] Kind ns/name: field.path: reason`.
fn problem_line(p: &Problem) -> String {
    let severity = if p.is_error() { "error" } else { "warning" };
    let mut s = format!("{severity}: {}", p.origin.file);
    if p.line() > 0 {
        s.push_str(&format!(":{}", p.line()));
    }
    if p.origin.doc > 0 {
        s.push_str(&format!(" [doc {}]", p.origin.doc));
    }
    if let Some(k) = &p.object {
        s.push_str(&format!(" {k}"));
    }
    if p.error.path.is_empty() {
        s.push_str(&format!(": {}", p.error.message));
    } else {
        s.push_str(&format!(": {}: {}", p.error.path, p.error.message));
    }
    s
}

fn write_text(out: &mut impl Write, report: &AnalysisReport) -> std::io::Result<()> {
    for p in &report.problems {
        writeln!(out, "{}", problem_line(p))?;
    }
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    let scope = format!(
        "{} file{}, {} object{}",
        report.files,
        plural(report.files),
        report.objects,
        plural(report.objects)
    );
    if errors == 0 && warnings == 0 {
        writeln!(out, "No validation issues found ({scope}).")
    } else {
        writeln!(
            out,
            "{errors} error{}, {warnings} warning{} ({scope}).",
            plural(errors),
            plural(warnings)
        )
    }
}

fn to_json(report: &AnalysisReport) -> serde_json::Value {
    serde_json::json!({
        "files": report.files,
        "objects": report.objects,
        "errors": report.errors().count(),
        "warnings": report.warnings().count(),
        "problems": report.problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
