//! `weft proxy-status`: every proxy connected to weftd and whether each
//! xDS type is in sync, from weftd's `/debug/syncz` (istioctl's columns:
//! NAME, CLUSTER, CDS, LDS, EDS, RDS, ECDS, ISTIOD, VERSION, each type
//! `SYNCED`, `NOT SENT`, `STALE` or `STALE (Never Acknowledged)`).
//!
//! Also home of the small HTTP GET both this and `weft proxy-config` use
//! to read weftd's debug endpoints (address from `--weftd`, else env
//! `WEFTD_ADDR`, else `localhost:15014`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// Environment variable naming weftd's monitoring address.
pub const ADDR_ENV: &str = "WEFTD_ADDR";
/// weftd's default monitoring address (Istio's 15014).
pub const DEFAULT_ADDR: &str = "localhost:15014";

/// Arguments of `weft proxy-status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// weftd's monitoring address (HOST:PORT); default: $WEFTD_ADDR, else localhost:15014.
    #[arg(long = "weftd", value_name = "ADDR")]
    pub weftd: Option<String>,
    /// Only this proxy (`pod.namespace`, or a full node id).
    pub proxy: Option<String>,
    /// Output: the table (default) or weftd's syncz JSON.
    #[arg(short = 'o', long = "output", value_parser = ["short", "json"], default_value = "short")]
    pub output: String,
}

/// The address to use: the flag, else `$WEFTD_ADDR`, else the default.
pub fn weftd_addr(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var(ADDR_ENV).ok().filter(|a| !a.is_empty()))
        .unwrap_or_else(|| DEFAULT_ADDR.to_string())
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// GETs `path` from weftd at `addr` and parses the JSON answer; a non-200
/// answer is an error carrying weftd's message.
pub fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let hint =
        || format!("reading http://{addr}{path} (is weftd running? set --weftd or {ADDR_ENV})");
    let sock = addr
        .to_socket_addrs()
        .with_context(hint)?
        .next()
        .with_context(|| format!("{addr}: resolves to no address"))?;
    let mut tcp = TcpStream::connect_timeout(&sock, Duration::from_secs(5)).with_context(hint)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .with_context(hint)?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).with_context(hint)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{}: not an HTTP response", hint()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: bad status line {head:?}", hint()))?;
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        bail!("{}: chunked answers are not supported", hint());
    }
    let value: Value =
        serde_json::from_slice(body).with_context(|| format!("{}: answer is not JSON", hint()))?;
    if status != 200 {
        let msg = value["error"].as_str().unwrap_or("no error message");
        bail!("weftd answered {status} for {path}: {msg}");
    }
    Ok(value)
}

/// istioctl's per-type state from the nonce sent and the nonce ACKed.
pub fn xds_status(sent: Option<&str>, acked: Option<&str>) -> &'static str {
    match (
        sent.filter(|s| !s.is_empty()),
        acked.filter(|s| !s.is_empty()),
    ) {
        (None, _) => "NOT SENT",
        (Some(s), Some(a)) if s == a => "SYNCED",
        (Some(_), None) => "STALE (Never Acknowledged)",
        (Some(_), Some(_)) => "STALE",
    }
}

/// `pod.namespace` from an Istio node id (`sidecar~IP~POD.NS~NS.svc...`),
/// else the id itself.
pub fn short_name(id: &str) -> &str {
    id.split('~').nth(2).filter(|s| !s.is_empty()).unwrap_or(id)
}

/// The table for the syncz rows `rows`, weftd at `addr`.
pub fn table(rows: &[Value], addr: &str) -> String {
    let mut out = vec![
        [
            "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    let mut body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str();
            let status =
                |t: &str| xds_status(s(&format!("{t}_sent")), s(&format!("{t}_acked"))).to_string();
            let or_dash = |v: Option<&str>| v.filter(|v| !v.is_empty()).unwrap_or("-").to_string();
            vec![
                short_name(s("proxy").unwrap_or("")).to_string(),
                or_dash(s("cluster_id").or(s("cluster"))),
                status("cluster"),
                status("listener"),
                status("endpoint"),
                status("route"),
                status("extension_config"),
                format!("weftd@{addr}"),
                or_dash(s("istio_version")),
            ]
        })
        .collect();
    body.sort();
    out.extend(body);
    columns(&out)
}

/// Rows as left-aligned columns separated by at least three spaces (as
/// istioctl's tab writer prints them), trailing spaces trimmed.
pub fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs `weft proxy-status`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let addr = weftd_addr(args.weftd.as_deref());
    let syncz = get_json(&addr, "/debug/syncz")?;
    let mut rows: Vec<Value> = syncz
        .as_array()
        .context("/debug/syncz: expected a JSON array")?
        .clone();
    if let Some(p) = &args.proxy {
        rows.retain(|r| {
            let id = r["proxy"].as_str().unwrap_or("");
            id == p || short_name(id) == p
        });
        if rows.is_empty() {
            bail!("proxy {p:?} is not connected to weftd at {addr}");
        }
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&Value::Array(rows))?);
    } else {
        print!("{}", table(&rows, &addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_names() {
        assert_eq!(xds_status(None, None), "NOT SENT");
        assert_eq!(xds_status(Some(""), Some("a")), "NOT SENT");
        assert_eq!(xds_status(Some("n/1"), Some("n/1")), "SYNCED");
        assert_eq!(xds_status(Some("n/2"), Some("n/1")), "STALE");
        assert_eq!(xds_status(Some("n/2"), None), "STALE (Never Acknowledged)");
        assert_eq!(
            short_name("sidecar~10.1.0.10~productpage-v1.default~default.svc.cluster.local"),
            "productpage-v1.default"
        );
        assert_eq!(short_name("plain"), "plain");
        assert_eq!(weftd_addr(Some("http://127.0.0.1:1/")), "127.0.0.1:1");
    }
}
