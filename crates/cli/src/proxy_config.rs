//! `weft proxy-config listeners|routes|clusters|endpoints|all <pod[.namespace]>`:
//! the xDS configuration weftd serves one proxy, read from weftd's
//! `/debug/config_dump?proxyID=` (Envoy's admin `config_dump` format), as
//! istioctl's short tables or as JSON/YAML (`-o`).
//!
//! Tables (istioctl's columns):
//! - clusters: SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE;
//! - listeners: ADDRESSES, PORT, MATCH, DESTINATION (one row per filter chain);
//! - routes: NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE (one row per route);
//! - endpoints: ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER (EDS assignments
//!   and the endpoints inline in static/DNS clusters).

use anyhow::{Context, bail};
use serde_json::Value;

use crate::proxy_status::{columns, get_json, weftd_addr};

/// Arguments of `weft proxy-config`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to show.
    #[arg(value_parser = [
        "listeners", "listener", "routes", "route", "clusters", "cluster",
        "endpoints", "endpoint", "all",
    ])]
    pub kind: String,
    /// The proxy: POD[.NAMESPACE] (namespace from -n, else `default`) or a full node id.
    pub pod: String,
    /// Namespace of POD when it has none.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// weftd's monitoring address (HOST:PORT); default: $WEFTD_ADDR, else localhost:15014.
    #[arg(long = "weftd", value_name = "ADDR")]
    pub weftd: Option<String>,
    /// Output: istioctl's short table (default), JSON or YAML.
    #[arg(short = 'o', long = "output", value_parser = ["short", "json", "yaml"], default_value = "short")]
    pub output: String,
}

/// The proxyID weftd is asked for.
pub fn proxy_id(pod: &str, namespace: Option<&str>) -> String {
    if pod.contains('~') || pod.contains('.') {
        pod.to_string()
    } else {
        format!("{pod}.{}", namespace.unwrap_or("default"))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The resources of one section of a config dump, by the section's type
/// name (`ClustersConfigDump`) and the entry field holding the resource.
fn section(dump: &Value, type_name: &str, list: &str, inner: &[&str]) -> Vec<Value> {
    let Some(configs) = dump["configs"].as_array() else {
        return Vec::new();
    };
    configs
        .iter()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with(&format!(".{type_name}")))
        })
        .flat_map(|c| c[list].as_array().cloned().unwrap_or_default())
        .filter_map(|entry| {
            let mut v = &entry;
            for k in inner {
                v = &v[*k];
            }
            (!v.is_null()).then(|| v.clone())
        })
        .collect()
}

pub fn listeners(dump: &Value) -> Vec<Value> {
    section(
        dump,
        "ListenersConfigDump",
        "dynamic_listeners",
        &["active_state", "listener"],
    )
}

pub fn clusters(dump: &Value) -> Vec<Value> {
    section(
        dump,
        "ClustersConfigDump",
        "dynamic_active_clusters",
        &["cluster"],
    )
}

pub fn routes(dump: &Value) -> Vec<Value> {
    section(
        dump,
        "RoutesConfigDump",
        "dynamic_route_configs",
        &["route_config"],
    )
}

pub fn endpoints(dump: &Value) -> Vec<Value> {
    section(
        dump,
        "EndpointsConfigDump",
        "dynamic_endpoint_configs",
        &["endpoint_config"],
    )
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn dash(v: &str) -> String {
    if v.is_empty() { "-".into() } else { v.into() }
}

/// `name.namespace` from Istio's `filter_metadata.istio.config` path
/// (`/apis/networking.istio.io/v1/namespaces/NS/destination-rule/NAME`).
fn istio_config(metadata: &Value) -> String {
    let path = s(&metadata["filter_metadata"]["istio"]["config"]);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() >= i + 4 => format!("{}.{}", parts[i + 3], parts[i + 1]),
        _ => "-".into(),
    }
}

// === clusters ===

pub fn cluster_table(items: &[Value]) -> String {
    let mut rows = vec![
        [
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    for c in items {
        let name = s(&c["name"]);
        let kind = c["type"].as_str().unwrap_or("STATIC").to_string();
        let parts: Vec<&str> = name.splitn(4, '|').collect();
        let row = match parts.as_slice() {
            [dir @ ("outbound" | "inbound"), port, subset, fqdn] => vec![
                fqdn.to_string(),
                port.to_string(),
                dash(subset),
                dir.to_string(),
                kind,
                istio_config(&c["metadata"]),
            ],
            _ => vec![
                name.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                kind,
                "-".into(),
            ],
        };
        rows.push(row);
    }
    columns(&rows)
}

// === listeners ===

fn socket(addr: &Value) -> (String, String) {
    let sa = &addr["socket_address"];
    (
        s(&sa["address"]).to_string(),
        sa["port_value"]
            .as_u64()
            .map_or("-".into(), |p| p.to_string()),
    )
}

fn chain_match(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(p) = m["destination_port"].as_u64() {
        parts.push(format!("Port: {p}"));
    }
    if let Some(ranges) = m["prefix_ranges"].as_array() {
        let r: Vec<String> = ranges
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    s(&r["address_prefix"]),
                    r["prefix_len"].as_u64().unwrap_or(32)
                )
            })
            .collect();
        parts.push(format!("Addr: {}", r.join(",")));
    }
    if let Some(t) = m["transport_protocol"].as_str() {
        parts.push(format!("Trans: {t}"));
    }
    if let Some(a) = m["application_protocols"].as_array() {
        let a: Vec<&str> = a.iter().map(s).collect();
        parts.push(format!("App: {}", a.join(",")));
    }
    if let Some(sn) = m["server_names"].as_array() {
        let sn: Vec<&str> = sn.iter().map(s).collect();
        parts.push(format!("SNI: {}", sn.join(",")));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

fn chain_destination(chain: &Value) -> String {
    let mut out = Vec::new();
    for f in chain["filters"].as_array().into_iter().flatten() {
        let tc = &f["typed_config"];
        let t = s(&tc["@type"]);
        if t.ends_with("HttpConnectionManager") {
            if let Some(name) = tc["rds"]["route_config_name"].as_str() {
                out.push(format!("Route: {name}"));
            } else if !tc["route_config"].is_null() {
                let clusters: Vec<String> = tc["route_config"]["virtual_hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|vh| vh["routes"].as_array().cloned().unwrap_or_default())
                    .filter_map(|r| r["route"]["cluster"].as_str().map(str::to_string))
                    .collect();
                out.push(if clusters.is_empty() {
                    "Inline Route".to_string()
                } else {
                    format!("Inline Route: {}", clusters.join(","))
                });
            }
        } else if t.ends_with("TcpProxy") {
            match tc["cluster"].as_str() {
                Some(c) => out.push(format!("Cluster: {c}")),
                None => out.push("Cluster: weighted".into()),
            }
        }
    }
    if out.is_empty() {
        let names: Vec<&str> = chain["filters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| s(&f["name"]))
            .collect();
        dash(&names.join(","))
    } else {
        out.join("; ")
    }
}

pub fn listener_table(items: &[Value]) -> String {
    let mut rows = vec![
        ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
            .map(str::to_string)
            .to_vec(),
    ];
    for l in items {
        let (addr, port) = socket(&l["address"]);
        let chains: Vec<&Value> = l["filter_chains"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(l.get("default_filter_chain"))
            .collect();
        if chains.is_empty() {
            rows.push(vec![addr.clone(), port.clone(), "ALL".into(), "-".into()]);
        }
        for chain in chains {
            rows.push(vec![
                addr.clone(),
                port.clone(),
                chain_match(&chain["filter_chain_match"]),
                chain_destination(chain),
            ]);
        }
    }
    columns(&rows)
}

// === routes ===

fn route_match(m: &Value) -> String {
    if let Some(p) = m["prefix"].as_str() {
        if p == "/" {
            "/*".into()
        } else {
            format!("{p}*")
        }
    } else if let Some(p) = m["path"].as_str() {
        p.into()
    } else if let Some(r) = m["safe_regex"]["regex"].as_str() {
        r.into()
    } else if let Some(p) = m["path_separated_prefix"].as_str() {
        format!("{p}/*")
    } else {
        "/*".into()
    }
}

pub fn route_table(items: &[Value]) -> String {
    let mut rows = vec![
        ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
            .map(str::to_string)
            .to_vec(),
    ];
    for rc in items {
        let name = s(&rc["name"]);
        for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
            let domains: Vec<&str> = vh["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            let shown = match domains.as_slice() {
                [] => "-".to_string(),
                [one] => one.to_string(),
                [first, rest @ ..] => format!("{first} + {} more...", rest.len()),
            };
            for r in vh["routes"].as_array().into_iter().flatten() {
                rows.push(vec![
                    dash(name),
                    dash(s(&vh["name"])),
                    shown.clone(),
                    route_match(&r["match"]),
                    istio_config(&r["metadata"]),
                ]);
            }
        }
    }
    columns(&rows)
}

// === endpoints ===

pub fn endpoint_table(assignments: &[Value], clusters: &[Value]) -> String {
    let mut rows = vec![
        ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]
            .map(str::to_string)
            .to_vec(),
    ];
    let inline = clusters
        .iter()
        .filter_map(|c| c.get("load_assignment").map(|la| (s(&c["name"]), la)));
    let eds = assignments.iter().map(|a| (s(&a["cluster_name"]), a));
    let mut body = Vec::new();
    for (cluster, la) in eds.chain(inline) {
        for group in la["endpoints"].as_array().into_iter().flatten() {
            for lb in group["lb_endpoints"].as_array().into_iter().flatten() {
                let (addr, port) = socket(&lb["endpoint"]["address"]);
                let status = match s(&lb["health_status"]) {
                    "" | "UNKNOWN" | "HEALTHY" => "HEALTHY",
                    other => other,
                };
                body.push(vec![
                    format!("{addr}:{port}"),
                    status.to_string(),
                    "OK".to_string(),
                    cluster.to_string(),
                ]);
            }
        }
    }
    body.sort();
    rows.extend(body);
    columns(&rows)
}

/// The text `weft proxy-config` prints for `kind` and `output` from a
/// config dump.
pub fn render(dump: &Value, kind: &str, output: &str) -> anyhow::Result<String> {
    let items = match kind {
        "listeners" | "listener" => listeners(dump),
        "routes" | "route" => routes(dump),
        "clusters" | "cluster" => clusters(dump),
        "endpoints" | "endpoint" => endpoints(dump),
        "all" => Vec::new(),
        other => {
            bail!("unknown kind {other:?}: expected listeners, routes, clusters, endpoints or all")
        }
    };
    let structured = if kind == "all" {
        dump.clone()
    } else {
        Value::Array(items.clone())
    };
    Ok(match output {
        "json" => format!("{}\n", serde_json::to_string_pretty(&structured)?),
        "yaml" => serde_yaml::to_string(&structured)?,
        _ => match kind {
            "listeners" | "listener" => listener_table(&items),
            "routes" | "route" => route_table(&items),
            "clusters" | "cluster" => cluster_table(&items),
            "endpoints" | "endpoint" => endpoint_table(&items, &clusters(dump)),
            _ => [
                cluster_table(&clusters(dump)),
                listener_table(&listeners(dump)),
                route_table(&routes(dump)),
                endpoint_table(&endpoints(dump), &clusters(dump)),
            ]
            .join("\n"),
        },
    })
}

/// Runs `weft proxy-config`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let addr = weftd_addr(args.weftd.as_deref());
    let id = proxy_id(&args.pod, args.namespace.as_deref());
    let dump = get_json(
        &addr,
        &format!("/debug/config_dump?proxyID={}", percent_encode(&id)),
    )
    .with_context(|| format!("config of proxy {id}"))?;
    print!("{}", render(&dump, &args.kind, &args.output)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_encoding() {
        assert_eq!(proxy_id("reviews-v1", None), "reviews-v1.default");
        assert_eq!(proxy_id("reviews-v1", Some("shop")), "reviews-v1.shop");
        assert_eq!(proxy_id("reviews-v1.shop", Some("x")), "reviews-v1.shop");
        assert_eq!(percent_encode("sidecar~1.2~p.ns"), "sidecar%7E1.2%7Ep.ns");
        assert_eq!(
            istio_config(&serde_json::json!({"filter_metadata": {"istio": {
                "config": "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews"}}})),
            "reviews.default"
        );
        assert_eq!(route_match(&serde_json::json!({"prefix": "/"})), "/*");
        assert_eq!(route_match(&serde_json::json!({"path": "/x"})), "/x");
    }
}
