//! `weft up`, `weft down`, `weft exec` and `weft logs`: the local mesh's
//! commands. The work is in the `weft_local` crate; this module parses
//! flags, prints progress and waits for Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weft_local::runtime::{MONITORING_PORT, XDS_PORT, XDS_TLS_PORT};
use weft_local::{Mesh, UpOptions};

/// The default mesh name.
pub const DEFAULT_MESH: &str = "mesh";

/// Flags of `weft up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Directory of Kubernetes and Istio manifests (watched: edits apply live).
    pub dir: PathBuf,
    /// Mesh name: namespaces are named weft-NAME-*, state lives in /run/weft/NAME.
    #[arg(long, default_value = DEFAULT_MESH)]
    pub name: String,
    /// DNS capture by the sidecars (Istio's ISTIO_META_DNS_CAPTURE): auto turns it
    /// on when weft-proxy has the DNS proxy.
    #[arg(long = "dns-capture", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub dns_capture: String,
    /// The node's /24 (base address) for pod IPs.
    #[arg(long, default_value = "10.88.0.0")]
    pub subnet: std::net::Ipv4Addr,
    /// Seconds to wait for every pod to become ready before reporting.
    #[arg(long = "ready-timeout", default_value_t = 180)]
    pub ready_timeout: u64,
}

impl UpArgs {
    pub fn options(&self) -> anyhow::Result<UpOptions> {
        validate_name(&self.name)?;
        let mut o = UpOptions::new(&self.name, &self.dir);
        o.subnet = self.subnet;
        o.dns_capture = match self.dns_capture.as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        };
        Ok(o)
    }
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-');
    if !ok {
        anyhow::bail!(
            "--name {name:?}: use 1 to 20 lowercase letters, digits and '-' (not ending in '-')"
        );
    }
    Ok(())
}

/// Prints progress lines with a timestamp since start.
pub fn reporter() -> weft_local::Report {
    let start = std::time::Instant::now();
    Arc::new(move |line: &str| {
        use std::io::Write;
        // A closed stdout must not stop the mesh.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
        let _ = out.flush();
    })
}

/// Blocks SIGINT and SIGTERM in every thread (call before starting any) and
/// returns a flag a waiting thread sets when one arrives.
pub fn stop_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            f.store(true, Ordering::SeqCst);
        }
    });
    Ok(flag)
}

/// When launched by `cargo run` (cargo sets `$CARGO`), builds weftd and
/// weft-proxy next to this `weft` with the same profile, so
/// `cargo run --release --bin weft -- demo` works from a fresh clone and
/// never runs stale siblings. Otherwise the runtime reports missing
/// binaries itself, with the command that builds them.
pub fn build_siblings() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe()?;
    let Some(dir) = exe.parent() else {
        return Ok(());
    };
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !matches!(profile, "debug" | "release") {
        return Ok(());
    }
    println!(
        "building weftd and weft-proxy ({profile}) next to {}",
        exe.display()
    );
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "weft-control",
        "--bin",
        "weftd",
        "-p",
        "weft-proxy",
        "--bin",
        "weft-proxy",
    ]);
    if profile == "release" {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("cargo build of weftd and weft-proxy failed ({status})");
    }
    Ok(())
}

/// Starts the mesh and waits until it is ready, printing what runs.
pub fn start(opts: UpOptions, stop: &AtomicBool, ready_timeout: u64) -> anyhow::Result<Mesh> {
    let report = reporter();
    let mut mesh = Mesh::up(opts, report)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(ready_timeout);
    while !mesh.settled() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if std::time::Instant::now() > deadline {
            println!("warning: not every pod is ready after {ready_timeout}s; see `weft logs POD`");
            break;
        }
        mesh.step()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(mesh)
}

/// Prints the pods, services and endpoints of a running mesh.
pub fn print_summary(mesh: &Mesh, name: &str) {
    let gw = mesh.node_ip();
    let statuses = mesh.pod_statuses();
    let ips = mesh.pod_ips();
    println!("\nmesh {name:?} is up:");
    println!("  {:<40} {:<12} {:<6} SIDECAR", "POD", "IP", "READY");
    for p in &mesh.plan().pods {
        let key = p.key();
        println!(
            "  {:<40} {:<12} {:<6} {}",
            key,
            ips.get(&key).map(ToString::to_string).unwrap_or_default(),
            statuses.get(&key).is_some_and(|s| s.ready),
            if p.injected { "weft-proxy" } else { "-" }
        );
    }
    println!("  {:<40} VIP", "SERVICE");
    for s in &mesh.plan().services {
        println!(
            "  {:<40} {}",
            format!("{}/{}", s.namespace, s.name),
            s.vip.map_or("None".to_owned(), |v| v.to_string())
        );
    }
    let node_ns = mesh
        .node_netns()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!(
        "  weftd: xDS and CA over mTLS {gw}:{XDS_TLS_PORT} (plaintext xDS {gw}:{XDS_PORT}), log {}",
        mesh.weftd_log().display()
    );
    println!(
        "  control-plane metrics: sudo ip netns exec {node_ns} curl -s http://{gw}:{MONITORING_PORT}/metrics  (also /debug/syncz, /debug/config_dump)"
    );
    println!(
        "  proxy metrics:  sudo weft exec --name {name} POD -- curl -s http://127.0.0.1:15090/stats/prometheus"
    );
    println!(
        "  proxy admin:    sudo weft exec --name {name} POD -- curl -s http://127.0.0.1:15000/config_dump"
    );
    println!("  access logs:    sudo weft logs --name {name} POD -c istio-proxy");
    println!("  run a command:  sudo weft exec --name {name} POD -- CMD...");
    println!(
        "  stop:           Ctrl-C here, or `sudo weft down --name {name}` from another terminal"
    );
}

/// `weft up DIR`.
pub fn up(args: &UpArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    weft_local::require_root("weft up")?;
    build_siblings()?;
    let stop = stop_signal()?;
    let mut mesh = start(opts, &stop, args.ready_timeout)?;
    if stop.load(Ordering::SeqCst) {
        mesh.shutdown();
        return Ok(());
    }
    print_summary(&mesh, &args.name);
    println!(
        "\nwatching {} for changes; Ctrl-C stops and removes everything",
        args.dir.display()
    );
    let result = run_until_stopped(&mut mesh, &stop);
    mesh.shutdown();
    result
}

/// Steps the mesh until the stop flag is set.
pub fn run_until_stopped(mesh: &mut Mesh, stop: &AtomicBool) -> anyhow::Result<()> {
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = mesh.step() {
            println!("error: {e}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Flags of `weft down`.
#[derive(clap::Args)]
pub struct DownArgs {
    /// The mesh to remove.
    #[arg(long, default_value = DEFAULT_MESH)]
    pub name: String,
}

/// `weft down`.
pub fn down(args: &DownArgs) -> anyhow::Result<()> {
    validate_name(&args.name)?;
    let removed = weft_local::down(&args.name)?;
    if removed.is_empty() {
        println!("mesh {:?}: nothing left to remove", args.name);
    } else {
        println!(
            "mesh {:?}: removed {} network namespaces ({})",
            args.name,
            removed.len(),
            removed.join(", ")
        );
    }
    Ok(())
}

/// Flags of `weft exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// The mesh.
    #[arg(long, default_value = DEFAULT_MESH)]
    pub name: String,
    /// The pod: its name, `namespace/name`, or a unique prefix (the Deployment's name).
    pub pod: String,
    /// The command to run inside the pod, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `weft exec POD -- CMD`.
pub fn exec(args: &ExecArgs) -> anyhow::Result<()> {
    let status = weft_local::access::exec(&args.name, &args.pod, &args.command)?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Flags of `weft logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// The mesh.
    #[arg(long, default_value = DEFAULT_MESH)]
    pub name: String,
    /// The pod: its name, `namespace/name`, or a unique prefix.
    pub pod: String,
    /// The container (`proxy` is the sidecar, `istio-proxy`, with the access logs).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep printing new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// `weft logs POD [-c proxy]`.
pub fn logs(args: &LogsArgs) -> anyhow::Result<()> {
    use std::io::{Read, Seek, Write};
    let path = weft_local::access::log_file(&args.name, &args.pod, args.container.as_deref())?;
    let mut file = std::fs::File::open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e} (has the container started?)", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
        let pos = file.stream_position()?;
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < pos {
            file.seek(std::io::SeekFrom::Start(0))?;
        }
    }
}
