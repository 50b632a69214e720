#!/usr/bin/env python3
"""mTLS data-plane benchmark: client -> sidecar -> mTLS -> sidecar -> server.

Called by `bench/run proxy mtls` (bench/proxy/run installs the tools and
builds weft-proxy). For each proxy (Envoy 1.40, weft-proxy; one worker
each) two sidecars run on 127.0.0.1 from the same Istio-shaped bootstraps:
the client sidecar takes plaintext HTTP/1.1 and originates mutual TLS
(UpstreamTlsContext: SPIFFE certificate, SNI outbound_..., ALPN istio +
http/1.1, SAN exact match) to the server sidecar, which terminates it on a
tls-only chain with require_client_certificate and XFCC, and forwards to
nginx. Certificates: a test CA made with openssl (EC P-256, URI SANs).

Measured, interleaved over repetitions, medians reported:
- requests/s at saturation (`wrk -t1 -c50`, keep-alive; the sidecars pool
  their mTLS connections);
- p50/p99 at a fixed 1,000 req/s (`oha --latency-correction`), and the
  latency added over a direct connection to nginx;
- TLS handshakes/s: a second client listener whose cluster allows one
  request per upstream connection (max_requests_per_connection: 1) and no
  session resumption (max_session_keys: 0), so every request is a full
  mutual handshake between the sidecars;
- CPU seconds per 10k requests of both sidecars together.

Writes the "mTLS" section of bench/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the data-plane benchmark's helpers)

TARGETS = ["direct", "envoy", "weft"]
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"


def log(msg):
    print(f"[mtls {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# === certificates ===

def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(work):
    d = f"{work}/pki"
    os.makedirs(d, exist_ok=True)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/root-key.pem")
    openssl("req", "-x509", "-new", "-key", f"{d}/root-key.pem", "-subj", "/O=cluster.local", "-days", "30",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", f"{d}/root.pem")
    for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/{name}-ec.pem")
        openssl("pkcs8", "-topk8", "-nocrypt", "-in", f"{d}/{name}-ec.pem", "-out", f"{d}/{name}-key.pem")
        openssl("req", "-new", "-key", f"{d}/{name}-key.pem", "-subj", "/", "-out", f"{d}/{name}.csr")
        ext = f"{d}/{name}.ext"
        with open(ext, "w") as f:
            f.write(f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,URI:{spiffe}\n")
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/root.pem", "-CAkey", f"{d}/root-key.pem",
                "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", f"{d}/{name}.pem")
    return d


# === bootstraps (the same text runs Envoy and weft-proxy) ===

def tls_common(pki, who, san_exact=None, san_prefix=None, alpn=()):
    vc = {}
    if san_exact or san_prefix:
        vc["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher":
                                                {"exact": san_exact} if san_exact else {"prefix": san_prefix}}]
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": list(alpn),
        "tls_certificate_sds_secret_configs": [{"name": "default"}],
        "combined_validation_context": {"default_validation_context": vc,
                                        "validation_context_sds_secret_config": {"name": "ROOTCA"}},
    }


def secrets(pki, who):
    return [{"name": "default", "tls_certificate": {"certificate_chain": {"filename": f"{pki}/{who}.pem"},
                                                    "private_key": {"filename": f"{pki}/{who}-key.pem"}}},
            {"name": "ROOTCA", "validation_context": {"trusted_ca": {"filename": f"{pki}/root.pem"}}}]


def hcm(stat, cluster, extra=None):
    tc = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
          "stat_prefix": stat,
          "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
              "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
          "route_config": {"name": stat, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
              {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}}
    tc.update(extra or {})
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": tc}


def static_cluster(name, port, extra=None):
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    c.update(extra or {})
    return c


def server_bootstrap(pki, admin, inbound, nginx_h1):
    ds = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": tls_common(pki, "server", san_prefix="spiffe://cluster.local/", alpn=("h2", "http/1.1")),
        "require_client_certificate": True}}
    chain = {"filter_chain_match": {"transport_protocol": "tls"}, "transport_socket": ds,
             "filters": [hcm("inbound_80", "inbound|80||", {
                 "forward_client_cert_details": "APPEND_FORWARD",
                 "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True}})]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "virtualInbound",
                               "address": {"socket_address": {"address": "127.0.0.1", "port_value": inbound}},
                               "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                                   "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                               "filter_chains": [chain]}],
                "clusters": [static_cluster("inbound|80||", nginx_h1)],
                "secrets": secrets(pki, "server")}}


def client_bootstrap(pki, admin, pooled, handshake, inbound):
    def upstream(no_resumption):
        ts = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": tls_common(pki, "client", san_exact=SERVER_ID,
                                             alpn=("istio-peer-exchange", "istio", "http/1.1")),
            "sni": "outbound_.80_._.server.bench.svc.cluster.local"}}
        if no_resumption:
            ts["typed_config"]["max_session_keys"] = 0
        return ts
    one_per_conn = {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_requests_per_connection": 1},
        "explicit_http_config": {"http_protocol_options": {}}}}}

    def listener(name, port, cluster):
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [hcm(name, cluster)]}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [listener("outbound", pooled, "outbound|80||server"),
                              listener("handshake", handshake, "outbound|80|hs|server")],
                "clusters": [static_cluster("outbound|80||server", inbound, {"transport_socket": upstream(False)}),
                             static_cluster("outbound|80|hs|server", inbound,
                                            dict(one_per_conn, transport_socket=upstream(True)))],
                "secrets": secrets(pki, "client")}}


class Sidecar:
    def __init__(self, kind, binary, work, name, config, ports, base_id):
        cfg = f"{work}/{kind}-{name}.json"
        with open(cfg, "w") as f:
            json.dump(config, f, indent=1)
        self.stderr_path = f"{work}/{kind}-{name}.stderr"
        if kind == "envoy":
            cmd = [binary, "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "--log-level", "error",
                   "--base-id", str(base_id)]
        else:
            cmd = [binary, "--config", cfg, "--concurrency", "1", "--health-address", "off",
                   "--prometheus-address", "off", "--log-level", "error"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "w"),
                                     env=dict(os.environ, RUST_LOG="error"))
        for p in ports:
            try:
                bench.wait_port(p, self.proc, f"{kind} {name}", timeout=60)
            except RuntimeError as e:
                self.stop()
                with open(self.stderr_path) as f:
                    raise RuntimeError(f"{e}: {f.read()[-600:]}") from None

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / bench.CLK_TCK

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Pair:
    """A client and a server sidecar of one kind."""

    def __init__(self, kind, binary, work, pki, nginx_h1, base):
        self.kind = kind
        self.pooled, self.handshake = bench.free_port(), bench.free_port()
        inbound = bench.free_port()
        self.server = Sidecar(kind, binary, work, "server",
                              server_bootstrap(pki, bench.free_port(), inbound, nginx_h1), [inbound], base)
        self.client = Sidecar(kind, binary, work, "client",
                              client_bootstrap(pki, bench.free_port(), self.pooled, self.handshake, inbound),
                              [self.pooled, self.handshake], base + 1)

    def cpu_seconds(self):
        return self.server.cpu_seconds() + self.client.cpu_seconds()

    def stop(self):
        self.client.stop()
        self.server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weft", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--cmdline", default="bench/run proxy mtls")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)))
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 8)))
    ap.add_argument("--rate", type=int, default=int(os.environ.get("BENCH_RATE", 1000)))
    ap.add_argument("--conns", type=int, default=int(os.environ.get("BENCH_CONNS", 50)))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="weft-bench-mtls-")
    os.chmod(work, 0o755)
    log(f"work dir {work}")
    pki = make_pki(work)
    nginx, nginx_ports = bench.start_nginx(work)
    pairs = {}
    try:
        envoy_bin = shutil.which("envoy")
        base = os.getpid() % 10000 * 10 + 5
        pairs["envoy"] = Pair("envoy", envoy_bin, work, pki, nginx_ports["h1"], base)
        pairs["weft"] = Pair("weft", args.weft, work, pki, nginx_ports["h1"], base)
        time.sleep(1)
        ports = {"direct": nginx_ports["h1"]}
        for k, p in pairs.items():
            ports[k] = p.pooled
            bench.check_200(p.pooled)
            bench.check_200(p.handshake)
        raw = {t: {"rps": [], "p50": [], "p99": [], "cpu10k": [], "hs": [], "hs_cpu10k": []} for t in TARGETS}
        for rep in range(args.reps):
            order = TARGETS[rep % 3:] + TARGETS[:rep % 3]
            for t in order:
                pair = pairs.get(t)
                cpu0 = pair.cpu_seconds() if pair else None
                rps, total = bench.saturation("http1", ports[t], args.seconds, args.conns)
                if pair:
                    raw[t]["cpu10k"].append((pair.cpu_seconds() - cpu0) / total * 10000)
                p50, p99 = bench.fixed_rate("http1", ports[t], args.seconds, args.rate)
                raw[t]["rps"].append(rps)
                raw[t]["p50"].append(p50)
                raw[t]["p99"].append(p99)
                msg = f"rep {rep + 1}/{args.reps} {t:6} {rps:9.0f} req/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms"
                if pair:
                    cpu0 = pair.cpu_seconds()
                    hs, hs_total = bench.saturation("http1", pair.handshake, args.seconds, args.conns)
                    raw[t]["hs"].append(hs)
                    raw[t]["hs_cpu10k"].append((pair.cpu_seconds() - cpu0) / hs_total * 10000)
                    msg += f"  handshakes {hs:7.0f}/s"
                log(msg)
    finally:
        for p in pairs.values():
            p.stop()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait()
    med = {t: {k: (statistics.median(v) if v else None) for k, v in raw[t].items()} for t in TARGETS}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "cmdline": args.cmdline, "reps": args.reps, "seconds": args.seconds, "rate": args.rate,
              "conns": args.conns, "raw": raw, "median": med, "machine": bench.machine(),
              "load": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    write_results(args.results, result)
    log(f"wrote {args.results}")


def write_results(path, r):
    m = r["median"]
    d, e, w = m["direct"], m["envoy"], m["weft"]
    f, ratio = bench.fmt, bench.ratio
    lines = [
        "## mTLS",
        "",
        f"Run: `{r['cmdline']}` on {r['date']} ({r['machine']}); {r['reps']} interleaved repetitions, "
        f"{r['seconds']} s per measurement, medians shown. Path: load generator -> client sidecar "
        "(plaintext HTTP/1.1) -> mutual TLS 1.3 (SPIFFE certificates from a test CA, EC P-256; SNI "
        "`outbound_.80_._.server...`, ALPN istio + http/1.1, SAN exact match) -> server sidecar (tls-only chain, "
        "require_client_certificate, XFCC APPEND_FORWARD) -> nginx (1 KiB body), all on 127.0.0.1. Two Envoy "
        "1.40 sidecars vs two weft-proxy sidecars, one worker each, the same bootstraps (static secrets "
        "`default`/`ROOTCA`), no access logs. Saturation: `wrk -t1 -c%d` (keep-alive; the sidecars pool their "
        "mTLS connections). Latency: `oha -q %d -c16 --latency-correction`; added = over a direct connection "
        "to nginx. Handshakes/s: a client listener whose cluster takes one request per upstream connection "
        "without session resumption, so each request is a full mutual handshake between the sidecars "
        "(`wrk -t1 -c%d`). CPU: both sidecars together. 1-minute load average at start/end: %s/%s (2 shared "
        "cores: p99 is noisy)." % (r["conns"], r["rate"], r["conns"], r["load"][0], r["load"][1]),
        "",
        "| target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU s / 10k req | mTLS handshakes/s | CPU s / 10k handshakes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in TARGETS:
        x = m[t]
        direct = t == "direct"
        add50 = None if direct else bench.added(x, d, "p50")
        add99 = None if direct else bench.added(x, d, "p99")
        lines.append(f"| {t if direct else t + ' (2 sidecars, mTLS)'} | {f(x['rps'])} | {f(x['p50'], digits=3)} | "
                     f"{f(x['p99'], digits=3)} | {'—' if direct else f(add50, digits=3)} | "
                     f"{'—' if direct else f(add99, digits=3)} | {'—' if direct else f(x['cpu10k'], digits=3)} | "
                     f"{'—' if direct else f(x['hs'])} | {'—' if direct else f(x['hs_cpu10k'], digits=3)} |")
    lines += ["", "Ratios (weft-proxy / Envoy):", "",
              "| req/s | added p50 | added p99 | CPU / 10k req | handshakes/s | CPU / 10k handshakes |",
              "|---:|---:|---:|---:|---:|---:|",
              f"| {ratio(w['rps'], e['rps'])} | {ratio(bench.added(w, d, 'p50'), bench.added(e, d, 'p50'))} | "
              f"{ratio(bench.added(w, d, 'p99'), bench.added(e, d, 'p99'))} | {ratio(w['cpu10k'], e['cpu10k'])} | "
              f"{ratio(w['hs'], e['hs'])} | {ratio(w['hs_cpu10k'], e['hs_cpu10k'])} |"]
    section = "\n".join(lines) + "\n"
    text = ""
    if os.path.exists(path):
        with open(path) as fh:
            text = fh.read()
    pattern = re.compile(r"^## mTLS\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
