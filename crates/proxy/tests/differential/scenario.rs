//! The scenario file format (`tests/conformance/NAME.yaml`) and the rendering
//! of its bootstrap template. Owns parsing and placeholder substitution only;
//! it starts no process and opens no socket except to reserve free ports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The fixed access-log format every scenario's bootstrap uses through the
/// `{{access_log_format}}` placeholder. Fields are separated by `|`; the first
/// one is the request's test id so lines can be matched to requests.
pub const ACCESS_LOG_FORMAT: &str = "%REQ(X-WEFT-TEST-ID)%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_CLUSTER%|%ROUTE_NAME%|%UPSTREAM_HOST%|%BYTES_RECEIVED%|%BYTES_SENT%|%PROTOCOL%";

/// One conformance scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario checks, in one or two sentences.
    pub description: String,
    /// Set when weft-proxy is known not to implement what this scenario needs
    /// yet: the harness still runs it and reports the gap loudly.
    #[serde(default)]
    pub known_gap: Option<String>,
    /// Comparisons that are deliberately not made against Envoy, each with
    /// the reason (field name -> why). Expectations on Envoy still apply.
    #[serde(default)]
    pub deviations: BTreeMap<String, String>,
    /// Set when the bootstrap is invalid: both proxies must refuse to start
    /// (exit non-zero) and `requests` must be empty. The value says why.
    #[serde(default)]
    pub rejected: Option<String>,
    /// Run in a fresh network namespace where the client's connections are
    /// captured by iptables REDIRECT to a listener, as a sidecar's are.
    #[serde(default)]
    pub capture: Option<Capture>,
    /// Extra access logs with their own format (`{{access_log_path.NAME}}`,
    /// fields separated by `|`): their lines, normalised, are compared as
    /// sorted lists between the proxies and checked against these
    /// expectations.
    #[serde(default)]
    pub extra_logs: BTreeMap<String, ExtraLog>,
    /// Prefixes of admin `/stats` lines (e.g. `http.main.rbac.`) compared
    /// between the proxies after the requests; Envoy must have some.
    #[serde(default)]
    pub compare_stats: Vec<String>,
    /// Upstream test servers by name (`{{upstream.NAME}}` is its port).
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Envoy v3 bootstrap template.
    pub bootstrap: String,
    /// Requests, sent in order (placeholders in `path`, `host`, header
    /// values, `data` and `raw` are substituted too).
    #[serde(default)]
    pub requests: Vec<RequestSpec>,
}

/// Expectations on an extra access log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraLog {
    /// Number of lines.
    pub lines: usize,
    /// Each string appears in some normalised line.
    #[serde(default)]
    pub contains: Vec<String>,
    /// Indices of `|`-separated fields whose values differ run to run
    /// (times, durations, generated ids).
    #[serde(default)]
    pub volatile: Vec<usize>,
}

/// Traffic capture for a scenario (needs root: a network namespace and
/// iptables inside it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Listener placeholder name every client connection is redirected to
    /// (`{{listener_port.NAME}}`), like Istio's 15001.
    pub redirect_to: String,
}

/// Client connections of a capturing scenario come from this address; the
/// REDIRECT rule matches it, so the proxy's own upstream connections (from
/// 127.0.0.1) are not captured.
pub const CAPTURED_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// An upstream test server.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpstreamSpec {
    /// HTTP/1.1 + h2c echo server that records what it received.
    Http {
        #[serde(default)]
        behavior: Behavior,
    },
    /// TCP server that reads until the client half-closes, then answers
    /// `NAME\n` followed by the bytes it read, and closes.
    Tcp,
    /// A reserved port nothing listens on (connection refused).
    Dead,
    /// A server-first TCP server (like MySQL): greets `NAME hello\n` on
    /// accept, before reading anything, then waits for EOF.
    Greeter,
    /// A listener whose accept queue is kept full, so new connection
    /// attempts hang (exercises connect timeouts).
    Blackhole,
}

/// How an HTTP upstream answers (request headers `x-echo-*` override it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behavior {
    /// Answer the first N requests of each test id with `fail_status`.
    #[serde(default)]
    pub fail_first: u32,
    /// Status for the failing answers (default 503).
    #[serde(default)]
    pub fail_status: Option<u16>,
    /// Status of every answer (default 200).
    #[serde(default)]
    pub status: Option<u16>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Reset the stream/connection instead of answering.
    #[serde(default)]
    pub reset: bool,
    /// Never answer (hold the request for a minute).
    #[serde(default)]
    pub hang: bool,
}

/// Wire protocol a request uses towards the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
    /// HTTP/1.1 upgrade to WebSocket, then `data` is sent and echoed back.
    Websocket,
    /// Plain TCP: `data` is sent, the write side closed, the answer read.
    Tcp,
    /// A TLS ClientHello with `sni` (and `alpn`) sent over TCP; the answer read.
    TlsHello,
    /// `raw` bytes written as they are; the first status line read.
    Raw,
    /// Connect and send nothing; read one line the server sends first.
    ServerFirst,
}

/// One request (or a group of `repeat` identical requests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Listener placeholder name (`{{listener_port.NAME}}`); default `main`.
    #[serde(default)]
    pub listener: Option<String>,
    /// Connect to this port instead of a listener (a placeholder such as
    /// `"{{upstream.a}}"`); with `capture` the connection is redirected.
    #[serde(default)]
    pub connect_port: Option<String>,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// Host header (HTTP/1) or :authority (h2c).
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    /// Payload for tcp / websocket.
    #[serde(default)]
    pub data: Option<String>,
    /// tcp / tls_hello: wait this long after writing before half-closing
    /// (listener filters that sniff drop a connection closed mid-inspection).
    #[serde(default)]
    pub linger_ms: Option<u64>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Raw bytes for `protocol: raw` (YAML escapes such as `\r\n` apply).
    #[serde(default)]
    pub raw: Option<String>,
    /// Send this many instances (each with its own test id).
    #[serde(default = "one")]
    pub repeat: u32,
    /// Wait this long before sending (lets asynchronous effects such as an
    /// outlier ejection settle; a bound, not a measurement).
    #[serde(default)]
    pub pause_ms: u64,
    /// Send the instances one after the other on a single connection
    /// (http1 / h2c only) instead of one connection each.
    #[serde(default)]
    pub keepalive: bool,
    /// Send the instances of the group concurrently instead of one by one.
    #[serde(default)]
    pub concurrent: bool,
    /// Expectations checked on Envoy's result (and compared with weft-proxy's).
    #[serde(default)]
    pub expect: Expect,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_host() -> String {
    "example.com".into()
}
fn one() -> u32 {
    1
}

/// What a request's outcome must be. Absent fields are not checked (but are
/// still compared between Envoy and weft-proxy).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: Option<u16>,
    /// Name of the upstream that served the last attempt, or `none`.
    pub upstream: Option<String>,
    /// Requests the upstreams received for this request (1 + retries).
    pub attempts: Option<u32>,
    pub upstream_path: Option<String>,
    pub upstream_host: Option<String>,
    pub upstream_method: Option<String>,
    /// Header values the upstream saw (`*`: present with any value).
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub upstream_headers_absent: Vec<String>,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub response_headers_absent: Vec<String>,
    pub body: Option<String>,
    /// `%RESPONSE_FLAGS%` as logged (`-` for none).
    pub flags: Option<String>,
    /// `%UPSTREAM_CLUSTER%` as logged.
    pub cluster: Option<String>,
    /// `%ROUTE_NAME%` as logged.
    pub route: Option<String>,
    #[serde(default)]
    pub trailers: BTreeMap<String, String>,
    /// For tcp / websocket / tls_hello: the bytes read back.
    pub echo: Option<String>,
    /// For tcp: `%BYTES_RECEIVED%` / `%BYTES_SENT%` as logged.
    pub bytes_received: Option<u64>,
    pub bytes_sent: Option<u64>,
    /// Group expectations (repeat > 1): count of each status.
    #[serde(default)]
    pub statuses: BTreeMap<u16, u32>,
    /// Group: at least this many instances got each status.
    #[serde(default)]
    pub min_statuses: BTreeMap<u16, u32>,
    /// Group: exact count of instances served by each upstream.
    #[serde(default)]
    pub upstream_counts: BTreeMap<String, u32>,
    /// Group: share of instances served by each upstream, `[min, max]`.
    #[serde(default)]
    pub upstream_share: BTreeMap<String, [f64; 2]>,
    /// Group: every instance was served by one and the same upstream.
    #[serde(default)]
    pub same_upstream: bool,
    /// Group: at least this many distinct upstreams served the instances.
    pub min_distinct_upstreams: Option<usize>,
    /// Group: the instances reached the upstreams over exactly this many
    /// connections (pooling: keep-alive reuse, h2 multiplexing).
    pub upstream_connections: Option<usize>,
}

impl Expect {
    /// True when the group is judged as a whole (its instances legitimately
    /// differ one by one, e.g. weighted picks).
    pub fn is_group(&self) -> bool {
        !self.statuses.is_empty()
            || !self.min_statuses.is_empty()
            || !self.upstream_counts.is_empty()
            || !self.upstream_share.is_empty()
            || self.same_upstream
            || self.min_distinct_upstreams.is_some()
            || self.upstream_connections.is_some()
    }
}

/// Where the conformance scenarios live.
pub fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

/// Reads and parses `tests/conformance/NAME.yaml`.
pub fn load(name: &str) -> Scenario {
    let path = conformance_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading scenario {}: {e}", path.display()));
    let scenario: Scenario = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("parsing scenario {}: {e}", path.display()));
    assert!(
        scenario.requests.is_empty() == scenario.rejected.is_some(),
        "scenario {}: a scenario needs `requests`, or `rejected` (and no requests)",
        path.display()
    );
    scenario
}

/// Ports and paths one proxy run substitutes into the bootstrap.
#[derive(Debug, Clone)]
pub struct Bindings {
    pub admin_port: u16,
    pub listener_ports: BTreeMap<String, u16>,
    pub upstream_ports: BTreeMap<String, u16>,
    pub access_log: PathBuf,
}

/// Names of `{{listener_port}}` / `{{listener_port.NAME}}` placeholders.
pub fn listener_names(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    for ph in placeholders(template) {
        let name = if ph == "listener_port" {
            "main".to_string()
        } else if let Some(n) = ph.strip_prefix("listener_port.") {
            n.to_string()
        } else {
            continue;
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("unterminated placeholder near `{}`", &rest[start..]));
        out.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    out
}

/// Where the extra access log `name` of a run goes.
pub fn extra_log_path(b: &Bindings, name: &str) -> PathBuf {
    b.access_log.with_file_name(format!("access-{name}.log"))
}

/// Substitutes every placeholder; an unknown one is an error naming it.
pub fn render(template: &str, b: &Bindings) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("checked by placeholders()");
        let ph = after[..end].trim();
        let value = match ph {
            "admin_port" => b.admin_port.to_string(),
            "listener_port" => b.listener_ports["main"].to_string(),
            "access_log_path" => b.access_log.display().to_string(),
            "access_log_format" => format!("{ACCESS_LOG_FORMAT}\\n"),
            _ => {
                if let Some(n) = ph.strip_prefix("access_log_path.") {
                    extra_log_path(b, n).display().to_string()
                } else if let Some(n) = ph.strip_prefix("listener_port.") {
                    b.listener_ports[n].to_string()
                } else if let Some(n) = ph.strip_prefix("upstream.") {
                    b.upstream_ports
                        .get(n)
                        .unwrap_or_else(|| {
                            panic!("placeholder {{{{{ph}}}}}: no upstream named `{n}`")
                        })
                        .to_string()
                } else {
                    panic!("unknown placeholder {{{{{ph}}}}}")
                }
            }
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

impl RequestSpec {
    /// The request with placeholders substituted.
    pub fn rendered(&self, b: &Bindings) -> RequestSpec {
        let mut r = self.clone();
        r.path = render(&r.path, b);
        r.host = render(&r.host, b);
        for v in r.headers.values_mut() {
            *v = render(v, b);
        }
        r.data = r.data.map(|d| render(&d, b));
        r.raw = r.raw.map(|d| render(&d, b));
        r.connect_port = r.connect_port.map(|d| render(&d, b));
        r
    }
}

/// Ports handed out by `free_port` come from this range, below the
/// kernel's ephemeral range (so no outgoing connection takes one between the
/// check and the proxy's bind) and away from Istio's fixed 15xxx ports.
const PORT_RANGE: std::ops::Range<u32> = 20_000..30_000;

/// Reserves a loopback port nobody else reserved recently: a counter shared
/// by every test process on the machine (a file under a lock) walks the
/// range, skipping ports that are in use. Parallel scenarios therefore never
/// get the same port.
pub fn free_port() -> u16 {
    use std::io::{Read, Seek, Write};
    let path = std::env::temp_dir().join("weft-diff-ports");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut counter: u32 = text.trim().parse().unwrap_or(std::process::id());
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let port = loop {
        counter = counter.wrapping_add(1);
        let port = (PORT_RANGE.start + counter % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let _ = file.rewind();
    let _ = file.set_len(0);
    let _ = write!(file, "{counter}");
    port
}
