//! `weft app load`: a bounded HTTP load generator. It sends GETs to one URL
//! at an optional fixed rate from a fixed number of workers, stops at a
//! request count or a duration (both hard-capped), and prints requests,
//! success rate, status counts, p50/p99 latency and how many replies came
//! from each `version`/`name` (the observed traffic split).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::Uri;
use serde_json::{Value, json};

use super::client::{self, HttpClient};

/// Hard cap on requests, whatever the flags say.
pub const MAX_REQUESTS: u64 = 1_000_000;
/// Hard cap on run time in seconds, whatever the flags say.
pub const MAX_DURATION_SECS: u64 = 600;
const MAX_CONCURRENCY: usize = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `weft app load`.
#[derive(clap::Args)]
pub struct Args {
    /// Target URL (http:// only; the sidecar does TLS).
    #[arg(long, value_parser = parse_target)]
    url: Uri,
    /// Number of requests (default 100 when --duration is not given).
    #[arg(long)]
    requests: Option<u64>,
    /// Run for this many seconds (with --requests, whichever ends first).
    #[arg(long)]
    duration: Option<f64>,
    /// Requests per second across all workers (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Extra request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_target(url: &str) -> Result<Uri, String> {
    client::parse_url("--url", url)
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| format!("-H {raw:?}: expected `name: value`"))?;
    let name = name.trim();
    if name.is_empty() || hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("-H {raw:?}: invalid header name {name:?}"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// The plan after validating and capping the flags.
struct Plan {
    requests: u64,
    duration: Duration,
    interval: Option<Duration>,
    concurrency: usize,
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let duration = match args.duration {
        Some(d) if !(d.is_finite() && d > 0.0) => {
            anyhow::bail!("--duration {d}: must be a positive number of seconds")
        }
        Some(d) => Duration::from_secs_f64(d.min(MAX_DURATION_SECS as f64)),
        None => Duration::from_secs(MAX_DURATION_SECS),
    };
    let requests = match (args.requests, args.duration) {
        (Some(0), _) => anyhow::bail!("--requests 0: must be at least 1"),
        (Some(n), _) => n.min(MAX_REQUESTS),
        (None, Some(_)) => MAX_REQUESTS,
        (None, None) => 100,
    };
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        anyhow::bail!("--rate {}: must be a non-negative number", args.rate);
    }
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        anyhow::bail!(
            "--concurrency {}: must be between 1 and {MAX_CONCURRENCY}",
            args.concurrency
        );
    }
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    Ok(Plan {
        requests,
        duration,
        interval,
        concurrency: args.concurrency,
    })
}

/// What one request produced.
struct Sample {
    latency: Duration,
    /// `None` when no HTTP reply arrived (connect error, timeout).
    status: Option<u16>,
    body: Option<Value>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let client = client::new_client();
    let started = Instant::now();
    let deadline = started + plan.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..plan.concurrency {
        let ctx = Worker {
            client: client.clone(),
            url: args.url.clone(),
            headers: args.headers.clone(),
            next: Arc::clone(&next),
            requests: plan.requests,
            interval: plan.interval,
            started,
            deadline,
        };
        workers.push(tokio::spawn(ctx.run()));
    }
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await?);
    }
    let summary = summarize(&args.url, &samples, started.elapsed());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(())
}

struct Worker {
    client: HttpClient,
    url: Uri,
    headers: Vec<(String, String)>,
    next: Arc<AtomicU64>,
    requests: u64,
    interval: Option<Duration>,
    started: Instant,
    deadline: Instant,
}

impl Worker {
    async fn run(self) -> Vec<Sample> {
        let mut samples = Vec::new();
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.requests {
                break;
            }
            if let Some(interval) = self.interval {
                let due = self.started
                    + interval.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
                if due >= self.deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            let timeout = REQUEST_TIMEOUT.min(self.deadline - now + Duration::from_secs(1));
            let sent = Instant::now();
            let result = client::get(&self.client, &self.url, &self.headers, timeout).await;
            let latency = sent.elapsed();
            samples.push(match result {
                Ok(reply) => Sample {
                    latency,
                    status: Some(reply.status.as_u16()),
                    body: serde_json::from_slice(&reply.body).ok(),
                },
                Err(_) => Sample {
                    latency,
                    status: None,
                    body: None,
                },
            });
        }
        samples
    }
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    (sorted[index].as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

fn summarize(url: &Uri, samples: &[Sample], elapsed: Duration) -> Value {
    let total = samples.len() as u64;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut names: BTreeMap<String, u64> = BTreeMap::new();
    let mut downstream: BTreeMap<String, u64> = BTreeMap::new();
    let mut peers: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    for sample in samples {
        let key = sample
            .status
            .map_or_else(|| "error".to_owned(), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
        if sample.status.is_some_and(|s| (200..400).contains(&s)) {
            ok += 1;
        }
        if let Some(body) = &sample.body {
            if let Some(v) = body.get("version").and_then(Value::as_str) {
                *versions.entry(v.to_owned()).or_default() += 1;
            }
            if let Some(n) = body.get("name").and_then(Value::as_str) {
                *names.entry(n.to_owned()).or_default() += 1;
            }
            tally_peer(body, &mut peers);
            tally_downstream(body, &mut downstream, &mut peers);
        }
    }
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let success_rate = if total == 0 {
        0.0
    } else {
        ok as f64 / total as f64
    };
    json!({
        "url": url.to_string(),
        "requests": total,
        "succeeded": ok,
        "success_rate": success_rate,
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "statuses": statuses,
        "latency_ms": {
            "p50": percentile_ms(&latencies, 50.0),
            "p99": percentile_ms(&latencies, 99.0),
            "max": latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        },
        "versions": versions,
        "names": names,
        "downstream": downstream,
        "peers": peers,
    })
}

/// Counts `name version` of every nested downstream reply (e.g. which
/// `reviews` version answered behind `frontend`).
fn tally_downstream(
    body: &Value,
    tally: &mut BTreeMap<String, u64>,
    peers: &mut BTreeMap<String, u64>,
) {
    for call in body
        .get("downstream")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(inner) = call.get("body").filter(|b| b.is_object()) {
            let name = inner.get("name").and_then(Value::as_str).unwrap_or("?");
            let version = inner.get("version").and_then(Value::as_str).unwrap_or("?");
            *tally.entry(format!("{name} {version}")).or_default() += 1;
            tally_peer(inner, peers);
            tally_downstream(inner, tally, peers);
        }
    }
}

/// Counts, per serving app, which caller identity it saw (`name <- peer`,
/// or `name <- none` when the hop arrived without a verified client cert).
fn tally_peer(reply: &Value, peers: &mut BTreeMap<String, u64>) {
    let name = reply.get("name").and_then(Value::as_str).unwrap_or("?");
    let peer = reply.get("peer").and_then(Value::as_str).unwrap_or("none");
    *peers.entry(format!("{name} <- {peer}")).or_default() += 1;
}

fn render(summary: &Value) -> String {
    let num = |k: &str| summary.get(k).and_then(Value::as_u64).unwrap_or(0);
    let total = num("requests");
    let mut out = format!(
        "target:       {}\nrequests:     {total} in {}s\nsuccess rate: {:.2}% ({} ok)\n",
        summary["url"].as_str().unwrap_or(""),
        summary["elapsed_s"],
        summary["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
        num("succeeded"),
    );
    out.push_str(&format!(
        "latency:      p50 {}ms  p99 {}ms\n",
        summary["latency_ms"]["p50"], summary["latency_ms"]["p99"]
    ));
    for (title, key) in [
        ("statuses", "statuses"),
        ("versions", "versions"),
        ("names", "names"),
        ("downstream", "downstream"),
        ("peer identity seen by each server", "peers"),
    ] {
        let Some(map) = summary.get(key).and_then(Value::as_object) else {
            continue;
        };
        if map.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}:\n"));
        for (k, v) in map {
            let n = v.as_u64().unwrap_or(0);
            let share = if total == 0 {
                0.0
            } else {
                n as f64 * 100.0 / total as f64
            };
            out.push_str(&format!("  {k:<24} {n:>8}  {share:5.1}%\n"));
        }
    }
    out
}
