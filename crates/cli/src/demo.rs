//! `weft demo`: `weft up examples/demo`, a bounded load from the `client`
//! pod, and a summary a person can read — the observed split of `reviews`
//! against the VirtualService's weights, success rate and latency, header
//! routing, whether each hop arrived over mutual TLS (as the server saw it,
//! from `x-forwarded-client-cert`), whether an unauthorised call was denied,
//! and where metrics and access logs are. Every claim is measured; what was
//! not observed is said so.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_local::Mesh;

use crate::local;

/// Flags of `weft demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Leave the mesh running after the summary (Ctrl-C removes it).
    #[arg(long)]
    keep: bool,
    /// Requests of the main load (bounded: 1 to 5000).
    #[arg(long, default_value_t = 200)]
    requests: u32,
    /// The demo manifests (default: examples/demo of this checkout).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Mesh name.
    #[arg(long, default_value = "demo")]
    name: String,
}

fn demo_dir(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(d) = &args.dir {
        return Ok(d.clone());
    }
    let mut candidates = vec![PathBuf::from("examples/demo")];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/weft → the checkout's examples/demo.
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("examples/demo"));
        }
    }
    candidates
        .into_iter()
        .find(|d| d.join("namespace.yaml").exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find examples/demo: run from the repository root or give --dir DIR"
            )
        })
}

/// `weft demo`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    weft_local::require_root("weft demo")?;
    if !(1..=5000).contains(&args.requests) {
        anyhow::bail!("--requests {}: must be between 1 and 5000", args.requests);
    }
    let dir = demo_dir(args)?;
    local::build_siblings()?;
    let stop = local::stop_signal()?;
    let up = local::UpArgs {
        dir: dir.clone(),
        name: args.name.clone(),
        dns_capture: "auto".into(),
        subnet: std::net::Ipv4Addr::new(10, 88, 0, 0),
        ready_timeout: 180,
    };
    let mut mesh = local::start(up.options()?, &stop, up.ready_timeout)?;
    let result = demo(&mut mesh, args, &stop);
    if let Err(e) = &result {
        println!("demo failed: {e:#}");
    }
    if args.keep && !stop.load(Ordering::SeqCst) {
        local::print_summary(&mesh, &args.name);
        println!("\n--keep: the mesh stays up; Ctrl-C removes it");
        local::run_until_stopped(&mut mesh, &stop)?;
    }
    mesh.shutdown();
    result
}

fn demo(mesh: &mut Mesh, args: &Args, stop: &AtomicBool) -> anyhow::Result<()> {
    if !mesh.all_ready() {
        anyhow::bail!("the demo mesh is not ready; see the messages above and `weft logs`");
    }
    // Endpoints reach the sidecars a moment after the pods are ready: wait
    // until a plain request and one for `end-user: jason` (reviews v2) both
    // get through every hop, so the load measures routing, not startup.
    let start = Instant::now();
    loop {
        let plain = load(
            mesh,
            stop,
            &["--url", "http://frontend:8080/", "--requests", "1"],
        )?;
        let jason = load(
            mesh,
            stop,
            &[
                "--url",
                "http://frontend:8080/",
                "--requests",
                "1",
                "-H",
                "end-user: jason",
            ],
        )?;
        if num(&plain, "succeeded") == 1 && num(&jason, "succeeded") == 1 {
            println!(
                "mesh converged: requests get through every hop ({:.1}s after the pods were ready)",
                start.elapsed().as_secs_f64()
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "no request got through frontend -> reviews -> ratings within 60s (statuses: {} / {})",
                plain["statuses"],
                jason["statuses"]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "\n=== load: {} requests client -> frontend -> reviews -> ratings ===",
        args.requests
    );
    let main = load(
        mesh,
        stop,
        &[
            "--url",
            "http://frontend:8080/",
            "--requests",
            &args.requests.to_string(),
            "--concurrency",
            "4",
        ],
    )?;
    println!("=== header routing: 20 requests with `end-user: jason` ===");
    let jason = load(
        mesh,
        stop,
        &[
            "--url",
            "http://frontend:8080/",
            "--requests",
            "20",
            "-H",
            "end-user: jason",
        ],
    )?;
    println!(
        "=== authorization: 10 requests client -> reviews directly (only frontend may call reviews) ==="
    );
    let denied = load(
        mesh,
        stop,
        &[
            "--url",
            "http://reviews:9080/",
            "--requests",
            "10",
            "--concurrency",
            "1",
        ],
    )?;
    print!("{}", render(mesh, &main, &jason, &denied, &args.name));
    Ok(())
}

/// Runs `weft app load ... --json` in the client pod while the mesh keeps
/// being supervised; returns the parsed summary.
fn load(mesh: &mut Mesh, stop: &AtomicBool, extra: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = mesh.pod_command("demo/client", "weft")?;
    cmd.args(["app", "load", "--json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("load stopped before it finished");
        }
        mesh.step()?;
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        anyhow::bail!(
            "weft app load in pod client failed ({status}): {}",
            err.trim()
        );
    }
    serde_json::from_str(&out)
        .map_err(|e| anyhow::anyhow!("weft app load printed no JSON summary ({e}): {out}"))
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `version → count` of replies from pods whose name starts with `app-`.
fn versions_of(summary: &Value, app: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, v) in summary["downstream"].as_object().into_iter().flatten() {
        // Keys are "POD-NAME VERSION".
        let Some((name, version)) = k.rsplit_once(' ') else {
            continue;
        };
        if name.starts_with(&format!("{app}-")) {
            *out.entry(version.to_owned()).or_default() += v.as_u64().unwrap_or(0);
        }
    }
    out
}

/// The configured weights of the VirtualService for `host`'s last rule.
fn configured_split(mesh: &Mesh, host: &str) -> Option<String> {
    let vs = mesh
        .plan()
        .config
        .iter()
        .find(|d| d.kind() == "VirtualService" && d.name() == host)?;
    let rules = vs.value.pointer("/spec/http")?.as_array()?;
    let route = rules.last()?.get("route")?.as_array()?;
    Some(
        route
            .iter()
            .map(|r| {
                format!(
                    "{} {}%",
                    r.pointer("/destination/subset")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    r.get("weight").and_then(Value::as_u64).unwrap_or(100)
                )
            })
            .collect::<Vec<_>>()
            .join(" / "),
    )
}

fn render(mesh: &Mesh, main: &Value, jason: &Value, denied: &Value, name: &str) -> String {
    let mut out =
        String::from("\n================ weft demo: what was measured ================\n");
    let total = num(main, "requests");
    out.push_str(&format!(
        "requests:      {} sent by pod client to http://frontend:8080/, {} succeeded ({:.1}%)\n",
        total,
        num(main, "succeeded"),
        main["success_rate"].as_f64().unwrap_or(0.0) * 100.0
    ));
    let statuses = main["statuses"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    out.push_str(&format!("statuses:      {statuses}\n"));
    out.push_str(&format!(
        "latency:       p50 {} ms, p99 {} ms (end to end, three hops through sidecars)\n",
        main["latency_ms"]["p50"], main["latency_ms"]["p99"]
    ));
    let reviews = versions_of(main, "reviews");
    let seen: u64 = reviews.values().sum();
    let split = reviews
        .iter()
        .map(|(v, n)| format!("{v} {n} ({:.1}%)", *n as f64 * 100.0 / seen.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ");
    out.push_str(&format!(
        "reviews split: observed {split} of {seen} calls; configured {}\n",
        configured_split(mesh, "reviews").unwrap_or_else(|| "(no VirtualService)".into())
    ));
    let jason_versions = versions_of(jason, "reviews");
    out.push_str(&format!(
        "header route:  `end-user: jason` -> reviews {} of {} requests ({})\n",
        jason_versions
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        num(jason, "requests"),
        if jason_versions.keys().all(|v| v == "v2") && !jason_versions.is_empty() {
            "all to v2, as the VirtualService says"
        } else {
            "NOT all to v2"
        }
    ));
    out.push_str("mTLS per hop (the server's view of its caller, from x-forwarded-client-cert):\n");
    let mut hops: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (k, v) in main["peers"].as_object().into_iter().flatten() {
        let Some((server, peer)) = k.split_once(" <- ") else {
            continue;
        };
        let app = server.split('-').next().unwrap_or(server).to_owned();
        *hops
            .entry(app)
            .or_default()
            .entry(peer.to_owned())
            .or_default() += v.as_u64().unwrap_or(0);
    }
    for (server, peers) in &hops {
        for (peer, n) in peers {
            let verdict = if peer.starts_with("spiffe://") {
                format!("mTLS, caller {peer}")
            } else {
                "plaintext (no verified client certificate reached the app)".to_owned()
            };
            out.push_str(&format!("  -> {server:<9} {n:>5} requests: {verdict}\n"));
        }
    }
    let statuses = denied["statuses"].as_object().cloned().unwrap_or_default();
    let denied_n = statuses.get("403").and_then(Value::as_u64).unwrap_or(0);
    let n = num(denied, "requests");
    let status_text = statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    out.push_str(&format!(
        "authorization: client -> reviews directly: {status_text} of {n}; {}\n",
        if denied_n == n && n > 0 {
            "denied (403) by reviews' AuthorizationPolicy, as configured".to_owned()
        } else {
            format!(
                "{} of {n} denied: the AuthorizationPolicy is not (fully) enforced by this build's data plane",
                denied_n
            )
        }
    ));
    let gw = mesh.node_ip();
    let node_ns = mesh
        .node_netns()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.push_str(&format!(
        "metrics:       weftd http://{gw}:15014/metrics in namespace {node_ns}; each sidecar :15090/stats/prometheus\n\
         \x20              (e.g. `sudo weft exec --name {name} frontend -- curl -s localhost:15090/stats/prometheus`, with --keep)\n\
         access logs:   `sudo weft logs --name {name} frontend -c proxy` (with --keep); files under /run/weft/{name}/pods/\n"
    ));
    out
}
