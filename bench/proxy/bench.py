#!/usr/bin/env python3
"""Data-plane benchmark: direct vs Envoy 1.40 vs weft-proxy, one worker each.

Called by bench/proxy/run (which installs the tools and builds weft-proxy).
Everything listens on 127.0.0.1. For each repetition and each protocol
(HTTP/1.1 keep-alive, HTTP/2 h2c, plain TCP carrying HTTP/1.1) the three
targets are measured one after the other, in a rotating order, so slow drifts
of the shared machine hit all of them alike. Reports medians over the
repetitions and writes the "Data plane" section of bench/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BODY_BYTES = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
PROTOCOLS = ["http1", "http2", "tcp"]
TARGETS = ["direct", "envoy", "weft"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# === upstream: nginx ===

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    http2_max_requests 1000000;
    server {{
        listen 127.0.0.1:{h1};
        root {dir}/www;
    }}
    server {{
        listen 127.0.0.1:{h2} http2;
        root {dir}/www;
    }}
}}
"""


def start_nginx(work):
    os.makedirs(f"{work}/www", exist_ok=True)
    with open(f"{work}/www/1k", "wb") as f:
        f.write(b"x" * BODY_BYTES)
    ports = {"h1": free_port(), "h2": free_port()}
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(NGINX_CONF.format(dir=work, **ports))
    proc = subprocess.Popen(["nginx", "-c", f"{work}/nginx.conf", "-p", work],
                            stdout=subprocess.DEVNULL, stderr=open(f"{work}/nginx.stderr", "w"))
    wait_port(ports["h1"], proc, "nginx")
    wait_port(ports["h2"], proc, "nginx")
    return proc, ports


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


# === the bootstrap both proxies run ===

def bootstrap(admin, ports, nginx, clusters_extra=0):
    """One listener per protocol; clusters_extra adds N clusters + N routes."""
    def cluster(name, port, h2=False):
        c = {
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        }
        if h2:
            c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
        return c

    def hcm(cluster_name, extra_vhosts=()):
        return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "bench",
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "route_config": {"name": "bench", "virtual_hosts": list(extra_vhosts) + [{
                "name": "all", "domains": ["*"],
                "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster_name}}]}]},
        }}

    def listener(name, port, filt):
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [filt]}]}

    extra_clusters = [cluster(f"outbound|80||svc{i}.bench.svc.cluster.local", nginx["h1"])
                      for i in range(clusters_extra)]
    extra_vhosts = [{"name": f"svc{i}.bench.svc.cluster.local:80",
                     "domains": [f"svc{i}.bench.svc.cluster.local", f"svc{i}.bench.svc.cluster.local:80"],
                     "routes": [{"name": "default", "match": {"prefix": "/"},
                                 "route": {"cluster": f"outbound|80||svc{i}.bench.svc.cluster.local",
                                           "timeout": "0s"}}]}
                    for i in range(clusters_extra)]
    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp", "cluster": "nginx_tcp"}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                listener("http1", ports["http1"], hcm("nginx_h1", extra_vhosts)),
                listener("http2", ports["http2"], hcm("nginx_h2")),
                listener("tcp", ports["tcp"], tcp),
            ],
            "clusters": [cluster("nginx_h1", nginx["h1"]), cluster("nginx_h2", nginx["h2"], h2=True),
                         cluster("nginx_tcp", nginx["h1"])] + extra_clusters,
        },
    }


class Proxy:
    """A running proxy process on a bootstrap written to WORK/NAME.json."""

    def __init__(self, kind, binary, work, nginx, clusters_extra=0, tag=""):
        self.kind = kind
        self.ports = {p: free_port() for p in PROTOCOLS}
        self.admin = free_port()
        cfg = f"{work}/{kind}{tag}.json"
        with open(cfg, "w") as f:
            json.dump(bootstrap(self.admin, self.ports, nginx, clusters_extra), f, indent=1)
        self.stderr_path = f"{work}/{kind}{tag}.stderr"
        self.last_hwm = None
        if kind == "envoy":
            cmd = [binary, "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "--log-level", "error",
                   "--base-id", str(os.getpid() % 10000 * 10 + (1 if tag else 0))]
        else:
            # Istio's extra health/Prometheus listeners (0.0.0.0:15021/15090)
            # are off: Envoy runs none either, and the bench stays on loopback.
            cmd = [binary, "--config", cfg, "--concurrency", "1", "--health-address", "off",
                   "--prometheus-address", "off", "--log-level", "error"]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "w"),
                                     env=dict(os.environ, RUST_LOG="error"))
        try:
            for p in self.ports.values():
                wait_port(p, self.proc, kind, timeout=60)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; stderr: {self.stderr_tail()}") from None

    def stderr_tail(self):
        try:
            with open(self.stderr_path) as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return ""

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kib(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


# === load generators ===

def url(port, path="/1k"):
    return f"http://127.0.0.1:{port}{path}"


def saturation(proto, port, seconds, conns):
    """Requests/s at saturation and the total request count."""
    if proto == "http2":
        out = run(["h2load", "-t1", "-c", str(min(conns, 16)), "-m", "10", "-D", str(seconds), url(port)])
        m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
        if not m or not done or int(done.group(2)) == 0:
            raise RuntimeError(f"h2load output not understood or no success: {out[-400:]}")
        return float(m.group(1)), int(done.group(2))
    out = run(["wrk", "-t1", "-c", str(conns), "-d", f"{seconds}s", url(port)])
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not m or not total or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed or saw non-2xx answers: {out[-400:]}")
    return float(m.group(1)), int(total.group(1))


def fixed_rate(proto, port, seconds, rate):
    """p50/p99 latency in ms at a fixed request rate (oha, latency-corrected)."""
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate), "-c", "16",
           "--latency-correction", "--http-version", "2" if proto == "http2" else "1.1", url(port)]
    out = run(cmd)
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    bad = {k: v for k, v in codes.items() if k != "200"}
    if bad or not codes:
        raise RuntimeError(f"oha saw non-200 answers: {codes}")
    return pct["p50"] * 1000.0, pct["p99"] * 1000.0


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-400:]} {r.stdout[-400:]}")
    return r.stdout


def check_200(port, path="/1k", host=None):
    req = urllib.request.Request(url(port, path))
    if host:
        req.add_header("Host", host)
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
        if resp.status != 200 or len(body) != BODY_BYTES:
            raise RuntimeError(f"GET {path} via {port}: {resp.status}, {len(body)} bytes")


# === the run ===

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weft", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--cmdline", default="bench/run proxy")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)))
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 8)))
    ap.add_argument("--rate", type=int, default=int(os.environ.get("BENCH_RATE", 1000)))
    ap.add_argument("--conns", type=int, default=int(os.environ.get("BENCH_CONNS", 50)))
    ap.add_argument("--json", default=None, help="also write raw numbers here")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="weft-bench-")
    os.chmod(work, 0o755)  # nginx workers run unprivileged and must read www/
    log(f"work dir {work}")
    nginx, nginx_ports = start_nginx(work)
    procs = {}
    notes = {}
    try:
        envoy_bin = shutil.which("envoy")
        procs["envoy"] = Proxy("envoy", envoy_bin, work, nginx_ports)
        try:
            procs["weft"] = Proxy("weft", args.weft, work, nginx_ports)
        except RuntimeError as e:
            notes["weft"] = f"weft-proxy did not start on the bootstrap: {e}"
            log(notes["weft"])
        time.sleep(2)
        idle = {k: p.status_kib("VmRSS") for k, p in procs.items()}

        ports = {"direct": {"http1": nginx_ports["h1"], "http2": nginx_ports["h2"], "tcp": nginx_ports["h1"]}}
        for k, p in procs.items():
            ports[k] = p.ports
        # Which (target, protocol) pairs work at all.
        usable = {}
        for t in TARGETS:
            for proto in PROTOCOLS:
                if t not in ports:
                    usable[(t, proto)] = notes.get(t, "not started")
                    continue
                try:
                    if proto == "http2":
                        out = run(["h2load", "-n", "10", "-c", "1", url(ports[t][proto])])
                        if "10 succeeded" not in out:
                            summary = next((l for l in out.splitlines() if l.startswith("requests:")), out[-200:])
                            raise RuntimeError(f"h2load smoke test: {summary}")
                    else:
                        check_200(ports[t][proto])
                    usable[(t, proto)] = None
                except Exception as e:  # noqa: BLE001 - recorded as "not measured"
                    usable[(t, proto)] = f"smoke request failed: {e}"
                    log(f"{t} {proto}: not measured: {e}")

        raw = {t: {p: {"rps": [], "p50": [], "p99": [], "cpu10k": []} for p in PROTOCOLS} for t in TARGETS}
        peak_seen = {}
        restarts = []
        for rep in range(args.reps):
            order = TARGETS[rep % 3:] + TARGETS[:rep % 3]
            for proto in PROTOCOLS:
                for t in order:
                    if usable[(t, proto)]:
                        continue
                    if t in procs and procs[t].proc.poll() is not None:
                        # Something else on this shared machine may end our
                        # process; note it, keep its peak RSS, start a new one.
                        dead = procs[t]
                        peak_seen[t] = max(peak_seen.get(t) or 0, dead.last_hwm or 0)
                        restarts.append(f"{t} exited unexpectedly (returncode {dead.proc.returncode}) "
                                        f"before rep {rep + 1} {proto}; restarted")
                        log(restarts[-1])
                        procs[t] = Proxy(t, envoy_bin if t == "envoy" else args.weft, work, nginx_ports,
                                         tag=f"-r{len(restarts)}")
                        ports[t] = procs[t].ports
                        time.sleep(1)
                    port = ports[t][proto]
                    try:
                        cpu0 = procs[t].cpu_seconds() if t in procs else None
                        rps, total = saturation(proto, port, args.seconds, args.conns)
                        if cpu0 is not None:
                            raw[t][proto]["cpu10k"].append((procs[t].cpu_seconds() - cpu0) / total * 10000)
                        raw[t][proto]["rps"].append(rps)
                        p50, p99 = fixed_rate(proto, port, args.seconds, args.rate)
                        if t in procs:
                            procs[t].last_hwm = procs[t].status_kib("VmHWM")
                        raw[t][proto]["p50"].append(p50)
                        raw[t][proto]["p99"].append(p99)
                        log(f"rep {rep + 1}/{args.reps} {proto:5} {t:6} {rps:9.0f} req/s  "
                            f"p50 {p50:.3f} ms  p99 {p99:.3f} ms")
                    except Exception as e:  # noqa: BLE001
                        if t in procs and procs[t].proc.poll() is not None:
                            log(f"{t} {proto}: {t} died during the measurement: {e}")
                            continue  # restarted before the next measurement
                        usable[(t, proto)] = f"failed during the run: {e}"
                        log(f"{t} {proto}: {e}")
        peak = {k: max(p.status_kib("VmHWM") or 0, peak_seen.get(k) or 0) for k, p in procs.items()}
        if restarts:
            notes["restarts"] = "; ".join(restarts)
        for p in procs.values():
            p.stop()

        # RSS with 1,000 clusters and 1,000 routes (one per virtual host).
        big = {}
        for kind, binary in (("envoy", envoy_bin), ("weft", args.weft)):
            try:
                p = Proxy(kind, binary, work, nginx_ports, clusters_extra=1000, tag="-1000")
                time.sleep(3)
                check_200(p.ports["http1"], host="svc999.bench.svc.cluster.local")
                big[kind] = p.status_kib("VmRSS")
                p.stop()
            except Exception as e:  # noqa: BLE001
                big[kind] = None
                notes[f"{kind}-1000"] = str(e)
                log(f"{kind} with 1,000 clusters: {e}")
    finally:
        for p in procs.values():
            p.stop()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait()

    med = {t: {p: {k: (statistics.median(v) if v else None) for k, v in raw[t][p].items()}
               for p in PROTOCOLS} for t in TARGETS}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "cmdline": args.cmdline, "reps": args.reps, "seconds": args.seconds, "rate": args.rate,
              "conns": args.conns, "raw": raw, "median": med, "idle_rss_kib": idle, "peak_rss_kib": peak,
              "rss_1000_kib": big, "not_measured": {f"{t}/{p}": why for (t, p), why in usable.items() if why},
              "notes": notes, "machine": machine(),
              "load": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    write_results(args.results, result)
    log(f"wrote {args.results}")


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def fmt(v, unit="", digits=0):
    if v is None:
        return "n/m"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b, digits=2):
    if a is None or b is None:
        return "n/m"
    if a <= 0 or b <= 0:
        return "n/a (≤ 0: within noise)"
    return f"{a / b:.{digits}f}"


def added(x, d, key):
    """Latency a proxy adds over the direct connection, or None."""
    if x[key] is None or d[key] is None:
        return None
    return x[key] - d[key]


def verdict(what, met, detail):
    return f"{what}: {'met' if met else 'MISSED'} ({detail})"


def write_results(path, r):
    m = r["median"]
    lines = [
        "## Data plane",
        "",
        f"Run: `{r['cmdline']}` on {r['date']} ({r['machine']}); {r['reps']} interleaved repetitions, "
        f"{r['seconds']} s per measurement, medians shown. Upstream: nginx (1 worker) serving a 1 KiB body on "
        "127.0.0.1. Saturation: `wrk -t1 -c%d` (HTTP/1.1 keep-alive; TCP = HTTP/1.1 through `tcp_proxy`), "
        "`h2load -t1 -c16 -m10` (h2c, proxy to nginx over h2c). Latency: `oha -q %d -c16 --latency-correction`. "
        "Both proxies run one worker (`--concurrency 1`) on the same bootstrap, without access logs. "
        "n/m = not measured (see below). 1-minute load average at start/end: %s/%s (the 2 cores are shared "
        "with other builds and tests, so p99 values in particular are noisy; medians damp it, they do not "
        "remove it)." % (r["conns"], r["rate"], r["load"][0], r["load"][1]),
        "",
        "| protocol | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU s / 10k req |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in PROTOCOLS:
        d = m["direct"][p]
        for t in TARGETS:
            x = m[t][p]
            add50 = None if x["p50"] is None or d["p50"] is None or t == "direct" else x["p50"] - d["p50"]
            add99 = None if x["p99"] is None or d["p99"] is None or t == "direct" else x["p99"] - d["p99"]
            lines.append(f"| {p} | {t} | {fmt(x['rps'])} | {fmt(x['p50'], digits=3)} | {fmt(x['p99'], digits=3)} | "
                         f"{'—' if t == 'direct' else fmt(add50, digits=3)} | "
                         f"{'—' if t == 'direct' else fmt(add99, digits=3)} | "
                         f"{'—' if t == 'direct' else fmt(x['cpu10k'], digits=3)} |")
    lines += ["", "Ratios (weft-proxy / Envoy; proxy / direct):", "",
              "| protocol | req/s weft/envoy | req/s envoy/direct | req/s weft/direct | added p50 weft/envoy "
              "| added p99 weft/envoy | CPU/10k weft/envoy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    targets = []
    for p in PROTOCOLS:
        d, e, w = m["direct"][p], m["envoy"][p], m["weft"][p]
        add50_e, add50_w = added(e, d, "p50"), added(w, d, "p50")
        add_e, add_w = added(e, d, "p99"), added(w, d, "p99")
        lines.append(f"| {p} | {ratio(w['rps'], e['rps'])} | {ratio(e['rps'], d['rps'])} | "
                     f"{ratio(w['rps'], d['rps'])} | {ratio(add50_w, add50_e)} | {ratio(add_w, add_e)} | "
                     f"{ratio(w['cpu10k'], e['cpu10k'])} |")
        if w["rps"] is not None and e["rps"] is not None:
            targets.append(verdict(f"{p}: throughput at least Envoy's", w["rps"] >= e["rps"],
                                   f"weft {w['rps']:,.0f} vs Envoy {e['rps']:,.0f} req/s"))
        if add_w is not None and add_e is not None:
            targets.append(verdict(f"{p}: p99 added latency no higher than Envoy's", add_w <= add_e,
                                   f"weft +{add_w:.3f} ms vs Envoy +{add_e:.3f} ms"))
    idle, peak, big = r["idle_rss_kib"], r["peak_rss_kib"], r["rss_1000_kib"]
    if idle.get("weft") and idle.get("envoy"):
        targets.append(verdict("idle RSS at most a third of Envoy's", idle["weft"] * 3 <= idle["envoy"],
                               f"weft {idle['weft'] / 1024:.1f} MiB vs Envoy {idle['envoy'] / 1024:.1f} MiB"))
    mib = lambda k: None if k is None else k / 1024  # noqa: E731
    lines += ["", "| memory | Envoy | weft-proxy | weft / Envoy |", "|---|---:|---:|---:|",
              f"| RSS idle (MiB) | {fmt(mib(idle.get('envoy')), digits=1)} | {fmt(mib(idle.get('weft')), digits=1)} | "
              f"{ratio(idle.get('weft'), idle.get('envoy'))} |",
              f"| peak RSS under load (MiB) | {fmt(mib(peak.get('envoy')), digits=1)} | "
              f"{fmt(mib(peak.get('weft')), digits=1)} | {ratio(peak.get('weft'), peak.get('envoy'))} |",
              f"| RSS with 1,000 clusters + 1,000 routes (MiB) | {fmt(mib(big.get('envoy')), digits=1)} | "
              f"{fmt(mib(big.get('weft')), digits=1)} | {ratio(big.get('weft'), big.get('envoy'))} |"]
    lines += ["", "Targets of issue 4 in this run:", ""] + [f"- {t}" for t in targets]
    nm = dict(r["not_measured"])
    nm.update(r["notes"])
    if nm:
        lines += ["", "Not measured, or measured with a caveat:", ""] + [
            f"- {k}: {' '.join(str(v).split())[:300]}" for k, v in sorted(nm.items())]
    section = "\n".join(lines) + "\n"

    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if not text.strip():
        text = "# Benchmark results\n\nEach section is written by its suite (`bench/run SUITE`).\n\n"
    pattern = re.compile(r"^## Data plane\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
