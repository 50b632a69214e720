//! The Prometheus text of the istio_* families: every shard's cells summed
//! by their label strings (built here, at scrape time only), in Istio's
//! label order.

use super::{
    BYTES_BOUNDS, DURATION_BOUNDS, Hist, HttpCell, Reporter, Series, Shard, TcpCell, Workload,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

const UNKNOWN: &str = "unknown";

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { UNKNOWN } else { s }
}

/// Escapes a label value for the text format.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push(out: &mut String, k: &str, v: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(k);
    out.push_str("=\"");
    escape(v, out);
    out.push('"');
}

/// Source and destination labels of a series (without protocol, code,
/// flags and security policy).
fn series_labels(s: &Series) -> (String, &'static str) {
    let scope = &s.scope.0;
    let me = &scope.node.me;
    let unknown = Workload::default();
    let peer = s.peer.as_ref().map(|p| &*p.0).unwrap_or(&unknown);
    let principal = s.principal.as_ref().map(|p| &*p.0);
    let (src, dst, reporter) = match scope.reporter {
        Reporter::Destination => (peer, me, "destination"),
        Reporter::Source => (me, peer, "source"),
    };
    let mut out = String::new();
    push(&mut out, "reporter", reporter);
    // Principals: inbound, the downstream peer's certificate and this
    // proxy's identity; outbound over TLS, this proxy's identity and the
    // peer workload's (from its exchanged or endpoint metadata).
    let (src_principal, dst_principal) = match scope.reporter {
        Reporter::Destination if s.mtls => {
            (principal.unwrap_or(UNKNOWN), or_unknown(&me.principal))
        }
        Reporter::Destination => (principal.unwrap_or(UNKNOWN), UNKNOWN),
        Reporter::Source if s.mtls => (or_unknown(&me.principal), or_unknown(&peer.principal)),
        Reporter::Source => (UNKNOWN, UNKNOWN),
    };
    let src_ns = if src.namespace.is_empty() {
        principal
            .filter(|_| scope.reporter == Reporter::Destination)
            .and_then(super::peer::namespace_of)
            .unwrap_or(UNKNOWN)
    } else {
        &src.namespace
    };
    push(&mut out, "source_workload", or_unknown(&src.workload));
    push(
        &mut out,
        "source_canonical_service",
        or_unknown(&src.canonical_service),
    );
    push(
        &mut out,
        "source_canonical_revision",
        or_unknown(&src.canonical_revision),
    );
    push(&mut out, "source_workload_namespace", src_ns);
    push(&mut out, "source_principal", src_principal);
    push(&mut out, "source_app", or_unknown(&src.app));
    push(&mut out, "source_version", or_unknown(&src.version));
    push(&mut out, "source_cluster", or_unknown(&src.cluster));
    push(&mut out, "destination_workload", or_unknown(&dst.workload));
    push(
        &mut out,
        "destination_workload_namespace",
        or_unknown(&dst.namespace),
    );
    push(&mut out, "destination_principal", dst_principal);
    push(&mut out, "destination_app", or_unknown(&dst.app));
    push(&mut out, "destination_version", or_unknown(&dst.version));
    let (svc_host, svc_name, svc_ns) = match s.service.as_ref() {
        Some(svc) => (
            or_unknown(&svc.0.0),
            or_unknown(&svc.0.1),
            or_unknown(&svc.0.2),
        ),
        None => (UNKNOWN, UNKNOWN, UNKNOWN),
    };
    push(&mut out, "destination_service", svc_host);
    push(
        &mut out,
        "destination_canonical_service",
        or_unknown(&dst.canonical_service),
    );
    push(
        &mut out,
        "destination_canonical_revision",
        or_unknown(&dst.canonical_revision),
    );
    push(&mut out, "destination_service_name", svc_name);
    push(&mut out, "destination_service_namespace", svc_ns);
    push(&mut out, "destination_cluster", or_unknown(&dst.cluster));
    let policy = match scope.reporter {
        Reporter::Destination if s.mtls => "mutual_tls",
        Reporter::Destination => "none",
        Reporter::Source => UNKNOWN,
    };
    (out, policy)
}

#[derive(Default)]
struct HttpSum {
    requests: u64,
    duration: Hist<19>,
    request_bytes: Hist<8>,
    response_bytes: Hist<8>,
}

fn add_hist<const N: usize>(into: &mut Hist<N>, from: &Hist<N>) {
    if from.counts.is_empty() {
        return;
    }
    if into.counts.is_empty() {
        into.counts = vec![0; N + 1];
    }
    for (a, b) in into.counts.iter_mut().zip(&from.counts) {
        *a += b;
    }
    into.sum += from.sum;
}

// Series hash and compare their Arcs by address, never by the (mutable)
// contents, so the interior mutability of Scope does not affect the key.
#[allow(clippy::mutable_key_type)]
pub(super) fn render(shards: &[Mutex<Shard>], out: &mut String) {
    let mut http: BTreeMap<String, HttpSum> = BTreeMap::new();
    let mut tcp: BTreeMap<String, TcpCell> = BTreeMap::new();
    let mut labels: HashMap<Series, (String, &'static str)> = HashMap::new();
    for shard in shards {
        let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        for (k, cell) in &shard.http {
            let (base, policy) = labels
                .entry(k.series.clone())
                .or_insert_with(|| series_labels(&k.series))
                .clone();
            let mut l = base;
            push(
                &mut l,
                "request_protocol",
                if k.grpc { "grpc" } else { "http" },
            );
            push(&mut l, "response_code", &k.code.to_string());
            let grpc = k.grpc_status.map(|g| g.to_string()).unwrap_or_default();
            push(&mut l, "grpc_response_status", &grpc);
            let mut flags = String::new();
            k.flags.write(&mut flags);
            push(&mut l, "response_flags", &flags);
            push(&mut l, "connection_security_policy", policy);
            let sum = http.entry(l).or_default();
            add_http(sum, cell);
        }
        for (k, cell) in &shard.tcp {
            let (base, policy) = labels
                .entry(k.series.clone())
                .or_insert_with(|| series_labels(&k.series))
                .clone();
            let mut l = base;
            push(&mut l, "request_protocol", "tcp");
            let mut flags = String::new();
            k.flags.write(&mut flags);
            push(&mut l, "response_flags", &flags);
            push(&mut l, "connection_security_policy", policy);
            let sum = tcp.entry(l).or_default();
            sum.opened += cell.opened;
            sum.closed += cell.closed;
            sum.sent += cell.sent;
            sum.received += cell.received;
        }
    }
    if !http.is_empty() {
        counter(
            out,
            "istio_requests_total",
            http.iter().map(|(l, s)| (l, s.requests)),
        );
        histogram(
            out,
            "istio_request_duration_milliseconds",
            &DURATION_BOUNDS,
            http.iter().map(|(l, s)| (l, &s.duration)),
        );
        histogram(
            out,
            "istio_request_bytes",
            &BYTES_BOUNDS,
            http.iter().map(|(l, s)| (l, &s.request_bytes)),
        );
        histogram(
            out,
            "istio_response_bytes",
            &BYTES_BOUNDS,
            http.iter().map(|(l, s)| (l, &s.response_bytes)),
        );
    }
    if !tcp.is_empty() {
        counter(
            out,
            "istio_tcp_connections_opened_total",
            tcp.iter().map(|(l, c)| (l, c.opened)),
        );
        counter(
            out,
            "istio_tcp_connections_closed_total",
            tcp.iter().map(|(l, c)| (l, c.closed)),
        );
        counter(
            out,
            "istio_tcp_received_bytes_total",
            tcp.iter().map(|(l, c)| (l, c.received)),
        );
        counter(
            out,
            "istio_tcp_sent_bytes_total",
            tcp.iter().map(|(l, c)| (l, c.sent)),
        );
    }
}

fn add_http(sum: &mut HttpSum, cell: &HttpCell) {
    sum.requests += cell.requests;
    add_hist(&mut sum.duration, &cell.duration);
    add_hist(&mut sum.request_bytes, &cell.request_bytes);
    add_hist(&mut sum.response_bytes, &cell.response_bytes);
}

fn counter<'a>(out: &mut String, name: &str, rows: impl Iterator<Item = (&'a String, u64)>) {
    let _ = writeln!(out, "# TYPE {name} counter");
    for (l, v) in rows {
        let _ = writeln!(out, "{name}{{{l}}} {v}");
    }
}

fn histogram<'a, const N: usize>(
    out: &mut String,
    name: &str,
    bounds: &[f64; N],
    rows: impl Iterator<Item = (&'a String, &'a Hist<N>)>,
) {
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (l, h) in rows {
        let mut cum = 0u64;
        for (i, b) in bounds.iter().enumerate() {
            cum += h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{b}\"}} {cum}");
        }
        cum += h.counts.get(N).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{l}}} {cum}");
    }
}
