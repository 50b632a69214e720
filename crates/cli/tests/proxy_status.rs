//! `weft proxy-status` and `weft proxy-config` against a real weftd (the
//! binary, every port on 127.0.0.1:0) with a real ADS client connected
//! (weft_xds's `AdsClient` introducing itself as the productpage sidecar):
//! the status table shows the proxy SYNCED for CDS/LDS/EDS/RDS, and the
//! config tables, JSON and YAML show the clusters, listeners, routes and
//! endpoints weftd serves it (names, ports, subsets, endpoint addresses).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds::{AdsClient, Any, ClientConfig, ProxyKind, ProxyMetadata};

const CONFIG: &str = "
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: productpage-v1-6b746f74dc-9stvs, namespace: default, labels: {app: productpage, version: v1}}
spec: {containers: [{name: productpage}]}
status: {phase: Running, podIP: 10.1.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-545db77b95-2ps7q, namespace: default, labels: {app: reviews, version: v1}}
spec: {containers: [{name: reviews}]}
status: {phase: Running, podIP: 10.1.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-7bf8c9648f-7mzqx, namespace: default, labels: {app: reviews, version: v2}}
spec: {containers: [{name: reviews}]}
status: {phase: Running, podIP: 10.1.0.22}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 10
";

const POD: &str = "productpage-v1-6b746f74dc-9stvs.default";

/// `weftd`: `$WEFT_BIN_DIR/weftd`, else built (or found up to date) by
/// cargo next to this package's `weft`, same target dir and profile.
fn weftd_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        let bin = PathBuf::from(dir).join("weftd");
        assert!(
            bin.is_file(),
            "WEFT_BIN_DIR has no weftd: {}",
            bin.display()
        );
        return bin;
    }
    let weft = Path::new(env!("CARGO_BIN_EXE_weft"));
    let profile_dir = weft.parent().expect("weft's directory");
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", "weft-control", "--bin", "weftd"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run {cargo} to build weftd (or set WEFT_BIN_DIR): {e}"));
    assert!(status.success(), "building weftd failed: {status}");
    let bin = profile_dir.join("weftd");
    assert!(bin.is_file(), "no weftd at {}", bin.display());
    bin
}

/// weftd on loopback ports, killed on drop.
struct Weftd {
    child: Child,
    line: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Weftd {
    fn start() -> Weftd {
        let config = tempfile::tempdir().unwrap();
        std::fs::write(config.path().join("mesh.yaml"), CONFIG).unwrap();
        let ca = tempfile::tempdir().unwrap();
        let mut child = Command::new(weftd_bin())
            .arg("--config")
            .arg(format!("file://{}", config.path().display()))
            .args([
                "--webhook-addr",
                "127.0.0.1:0",
                "--ready-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--xds-addr",
                "127.0.0.1:0",
                "--monitoring-addr",
                "127.0.0.1:0",
            ])
            .args(["--xds-tls-addr", "127.0.0.1:0"])
            .arg("--ca-dir")
            .arg(ca.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weftd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("weftd's address line");
        Weftd {
            child,
            line,
            _dirs: (config, ca),
        }
    }

    fn addr(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("weftd printed no {key}: {:?}", self.line))
            .to_string()
    }
}

impl Drop for Weftd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `weft ARGS --weftd ADDR`; returns (success, stdout, stderr).
fn weft(addr: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .args(["--weftd", addr])
        .output()
        .expect("run weft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(addr: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = weft(addr, args);
    assert!(success, "weft {args:?} failed: {stderr}");
    stdout
}

/// The first table row whose cells (split on runs of 2+ spaces) satisfy `pred`.
fn row(table: &str, pred: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|cells| pred(cells))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_and_config_read_a_real_weftd() {
    let weftd = Weftd::start();
    let monitoring = weftd.addr("monitoring-addr");
    let md = ProxyMetadata {
        kind: ProxyKind::Sidecar,
        ips: vec!["10.1.0.10".into()],
        pod_name: "productpage-v1-6b746f74dc-9stvs".into(),
        namespace: "default".into(),
        labels: [
            ("app".to_string(), "productpage".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]
        .into(),
        istio_version: "1.24.0".into(),
        cluster_id: "Kubernetes".into(),
        ..ProxyMetadata::default()
    };
    let config = ClientConfig::new(format!("http://{}", weftd.addr("xds-addr")), md.to_node());
    let client = AdsClient::spawn(config, |_: &str, _: &[Any]| Ok(())).expect("client");
    let mut state = client.state();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let s = state.borrow_and_update();
            if [LISTENER, ROUTE, CLUSTER, ENDPOINT]
                .iter()
                .all(|t| !s.version(t).is_empty())
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the client never synced all four types"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), state.changed()).await;
    }

    // proxy-status: all four types SYNCED once the ACKs reached weftd.
    let deadline = Instant::now() + Duration::from_secs(30);
    let table = loop {
        let table = ok(&monitoring, &["proxy-status"]);
        let synced = row(&table, |c| c.first() == Some(&POD))
            .is_some_and(|c| c[2..6].iter().all(|s| *s == "SYNCED"));
        if synced {
            break table;
        }
        assert!(Instant::now() < deadline, "never all SYNCED:\n{table}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let header = row(&table, |c| c.first() == Some(&"NAME")).expect("header");
    assert_eq!(
        header,
        [
            "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"
        ]
    );
    let r = row(&table, |c| c.first() == Some(&POD)).unwrap();
    assert_eq!(r[1], "Kubernetes", "{table}");
    assert_eq!(r[6], "NOT SENT", "{table}");
    assert_eq!(r[7], format!("weftd@{monitoring}"), "{table}");
    assert_eq!(r[8], "1.24.0", "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&monitoring, &["proxy-status", POD, "-o", "json"])).unwrap();
    assert_eq!(json[0]["proxy"], md.node_id().as_str());
    let (success, _, stderr) = weft(&monitoring, &["proxy-status", "nobody.nowhere"]);
    assert!(!success && stderr.contains("nobody.nowhere"), "{stderr}");

    // proxy-config clusters: istioctl's columns, subsets from the DestinationRule.
    let clusters = ok(&monitoring, &["proxy-config", "clusters", POD]);
    let v1 = row(&clusters, |c| {
        c.first() == Some(&"reviews.default.svc.cluster.local") && c.get(2) == Some(&"v1")
    })
    .unwrap_or_else(|| panic!("no reviews v1 cluster:\n{clusters}"));
    assert_eq!(v1[1..5], ["9080", "v1", "outbound", "EDS"], "{clusters}");
    assert!(
        row(&clusters, |c| c.first() == Some(&"BlackHoleCluster")).is_some(),
        "{clusters}"
    );
    assert!(
        row(&clusters, |c| c.contains(&"inbound") && c.contains(&"9080")).is_some(),
        "no inbound cluster:\n{clusters}"
    );

    // endpoints: both reviews pods in the unsubsetted cluster, one per subset.
    let eps = ok(
        &monitoring,
        &[
            "proxy-config",
            "endpoints",
            "productpage-v1-6b746f74dc-9stvs",
        ],
    );
    for (ip, cluster) in [
        (
            "10.1.0.21:9080",
            "outbound|9080||reviews.default.svc.cluster.local",
        ),
        (
            "10.1.0.22:9080",
            "outbound|9080||reviews.default.svc.cluster.local",
        ),
        (
            "10.1.0.21:9080",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
        ),
        (
            "10.1.0.22:9080",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
        ),
    ] {
        let r = row(&eps, |c| {
            c.first() == Some(&ip) && c.get(3) == Some(&cluster)
        })
        .unwrap_or_else(|| panic!("no {ip} in {cluster}:\n{eps}"));
        assert_eq!(r[1..3], ["HEALTHY", "OK"]);
    }
    assert!(
        row(&eps, |c| c.first() == Some(&"10.1.0.22:9080")
            && c.get(3)
                == Some(
                    &"outbound|9080|v1|reviews.default.svc.cluster.local"
                ))
        .is_none(),
        "v2 pod in the v1 subset:\n{eps}"
    );

    // listeners: the outbound port listener points at RDS route 9080.
    let listeners = ok(&monitoring, &["proxy-config", "listeners", POD]);
    assert!(
        row(&listeners, |c| c.first() == Some(&"0.0.0.0")
            && c.get(1) == Some(&"9080")
            && c.last() == Some(&"Route: 9080"))
        .is_some(),
        "{listeners}"
    );
    assert!(
        row(&listeners, |c| c.get(1) == Some(&"15001")).is_some(),
        "no virtualOutbound:\n{listeners}"
    );

    // routes: reviews' virtual host with its aliases.
    let routes = ok(&monitoring, &["proxy-config", "routes", POD]);
    let r = row(&routes, |c| {
        c.first() == Some(&"9080") && c.get(1) == Some(&"reviews.default.svc.cluster.local:9080")
    })
    .unwrap_or_else(|| panic!("no reviews vhost:\n{routes}"));
    assert!(r[2].starts_with("reviews"), "{routes}");

    // -o json: the resources themselves, in proto3 JSON.
    let json: serde_json::Value = serde_json::from_str(&ok(
        &monitoring,
        &["proxy-config", "clusters", POD, "-o", "json"],
    ))
    .unwrap();
    let v2 = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|9080|v2|reviews.default.svc.cluster.local")
        .expect("v2 cluster in JSON");
    assert_eq!(v2["type"], "EDS");
    assert_eq!(
        v2["eds_cluster_config"]["service_name"],
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    // -o yaml of routes: the weighted 90/10 split.
    let yaml: serde_yaml::Value = serde_yaml::from_str(&ok(
        &monitoring,
        &["proxy-config", "routes", POD, "-o", "yaml"],
    ))
    .unwrap();
    let text = serde_json::to_string(&yaml).unwrap();
    assert!(text.contains("\"weighted_clusters\""), "{text}");
    assert!(text.contains("outbound|9080|v2|reviews.default.svc.cluster.local"));
    // all: every table.
    let all = ok(&monitoring, &["proxy-config", "all", POD]);
    for header in ["SERVICE FQDN", "ADDRESSES", "VHOST NAME", "OUTLIER CHECK"] {
        assert!(all.contains(header), "no {header} table in:\n{all}");
    }
    let (success, _, stderr) = weft(&monitoring, &["proxy-config", "clusters", "nobody.nowhere"]);
    assert!(!success && stderr.contains("nobody.nowhere"), "{stderr}");

    client.shutdown().await;
}
