#!/usr/bin/env python3
"""Load-test driver for nimgate (called by benches/load/run.sh).

Layout on a 2-core machine: every proxy under test is pinned to core 0 (`taskset -c 0`); the load
generator (oha) and the upstream (nginx returning a fixed chat completion, or the project's
fake-nim when nginx is absent) share core 1. Targets: direct (upstream itself), nimgate (audit
fsync=interval), nimgate with fsync=batch, nimgate with audit off, nimgate-otel and
nimgate-otel-1pct (traces exported to a local OTLP sink at sample_ratio 1.0 and 0.01), hyper-floor (the smallest hyper
proxy: what the stack alone costs), nginx and HAProxy (when on PATH; same job: client-key check,
key injection, one JSON log line per request, keep-alive pool).

Measures, interleaved over several rounds:
  - closed-loop requests/s and p50/p99/p99.9 latency (oha -c 64 -z DUR);
  - at a fixed rate (oha -q RATE): added p50/p99 latency over direct, the CPU time each proxy spends
    per request (utime+stime of its processes over the run / requests served) and its context
    switches per request (every thread's, from /proc/<pid>/task/*/status);
  - malloc calls per request (a separate run under `perf stat` of the libc malloc uprobe);
  - both cores: nimgate with workers = 2 against nginx with 2 workers (closed loop);
  - nimgate RSS under 64 connections (VmRSS mid-run, VmHWM at the end);
  - SSE: time to first event and per-event forwarding delay, gateway vs direct (fake-nim stamps each
    event with its send time);
  - optionally a soak (--soak SECONDS) sampling nimgate's RSS.
Writes benches/load/results/latest.json and results/chart.svg and prints a Markdown table.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
REL = os.path.join(ROOT, "target", "release")
CLIENT_KEY = "ngk_bench_client_key_0123456789abcdef0123456789ab"
NIM_KEY = "nvapi-bench-key-0123456789abcdef"
BODY = json.dumps({"model": "meta/llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16})
PORTS = {"upstream": 18000, "ssenim": 18001, "nimgate": 18080, "nimgate-batch": 18083, "nimgate-noaudit": 18084,
         "nimgate-2core": 18085, "nimgate-sse": 18086, "nimgate-otel": 18087, "nimgate-3up": 18095, "nimgate-otel-1pct": 18089,
         "otlp": 18010, "hyper-floor": 18088, "nginx": 18081, "haproxy": 18082, "nginx-sse": 18091,
         "haproxy-sse": 18092, "nimgate-redis": 18094, "redis": 18093, "nginx-2w": 18096, "nginx-2w-sse": 18097}
TICK = os.sysconf("SC_CLK_TCK")
PROCS = []


def ports_free():
    """Refuse to run next to a leftover server: nginx binds with reuseport, so a stale one on a
    port would silently take half the load and its CPU would not be counted."""
    import socket
    busy = []
    for name, port in PORTS.items():
        with socket.socket() as sock:
            # SO_REUSEADDR: TIME_WAIT leftovers are fine, a live listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name} ({port})")
    if busy:
        sys.exit("ports in use (a previous run still alive?): " + ", ".join(busy))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def start(cmd, cpus, log, **kw):
    p = subprocess.Popen(["taskset", "-c", cpus] + cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, **kw)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_port(port, path="/", timeout=20.0, headers=None):
    t = time.time()
    while time.time() - t < timeout:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path, headers=headers or {})
            c.getresponse().read()
            return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not come up")


def wait_redis(port, timeout=10.0):
    t = time.time()
    while time.time() - t < timeout:
        r = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise SystemExit(f"redis-server did not start on {port}")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12])  # utime, stime (fields 14, 15)
        except OSError:
            pass
    return total


def ctx_switches(pids):
    """Voluntary + involuntary context switches of every thread of `pids` so far."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{pid}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


MALLOC_PROBE = "probe_libc:malloc"


def have_malloc_probe():
    """`perf probe -x <libc> malloc` (run.sh adds it when it runs as root): a uprobe on libc's
    malloc that `perf stat` counts per process. Without it, no mallocs/request figure."""
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True)
    return MALLOC_PROBE in r.stdout


def count_mallocs(pid, port, duration, rate):
    """malloc calls per 200 response of `pid` at `rate` req/s (a separate run: the uprobe slows
    every malloc, so CPU figures never come from it)."""
    out = tempfile.NamedTemporaryFile(suffix=".perf", delete=False).name
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", MALLOC_PROBE, "-p", str(pid), "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(perf)
    time.sleep(0.3)
    res = oha(port, duration, rate=rate)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=10)
    n = None
    with open(out) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[2] == MALLOC_PROBE and parts[0].isdigit():
                n = int(parts[0])
    os.unlink(out)
    return n / max(res["ok"], 1) if n is not None else None


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def oha(port, duration, conns=64, rate=None, path="/v1/chat/completions"):
    cmd = ["taskset", "-c", "1", "oha", "-z", duration, "-c", str(conns), "--no-tui", "--output-format", "json",
           "-m", "POST", "-d", BODY, "-T", "application/json", "-H", f"Authorization: Bearer {CLIENT_KEY}",
           f"http://127.0.0.1:{port}{path}"]
    if rate:
        cmd[-1:-1] = ["-q", str(rate), "--latency-correction"]
    out = sh(cmd).stdout
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k == "200")
    # Requests cut off by the end of the run (-z) are not failures.
    errs = {k: v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k}
    bad = sum(v for k, v in codes.items() if k != "200") + sum(errs.values())
    lp = j.get("latencyPercentiles", {})
    return {"rps": j["summary"]["requestsPerSec"], "ok": ok, "errors": bad,
            "p50_ms": lp.get("p50", 0) * 1e3, "p99_ms": lp.get("p99", 0) * 1e3, "p999_ms": lp.get("p99.9", 0) * 1e3}


def start_nginx_proxy(d, name, cpus, workers):
    """The nginx peer: one worker without a master (its pid is the worker: CPU is counted), or a
    master with `workers` workers (for the scaling comparison; only req/s is read)."""
    write_templ("nginx-proxy.conf", f"{d}/{name}.conf", DIR=d, NAME=name, PORT=PORTS[name],
                UPSTREAM_PORT=PORTS["upstream"], CLIENT_KEY=CLIENT_KEY, NIM_KEY=NIM_KEY,
                SSE_PORT=PORTS[f"{name}-sse"], SSE_UPSTREAM_PORT=PORTS["ssenim"],
                MASTER="off" if workers == 1 else "on", WORKERS=workers)
    return start(["nginx", "-c", f"{d}/{name}.conf", "-e", f"{d}/{name}-err.log"], cpus, f"{d}/{name}.log").pid


def write_templ(src, dst, **vals):
    with open(os.path.join(HERE, src)) as f:
        s = f.read()
    for k, v in vals.items():
        s = s.replace("{{" + k + "}}", str(v))
    with open(dst, "w") as f:
        f.write(s)


# A local OTLP/HTTP collector for the nimgate-otel targets: reads each export and answers 200
# with an empty ExportTraceServiceResponse (its CPU is not counted: it shares core 1 with oha).
OTLP_SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def upstreams_toml(upstream_port, key_file, multi):
    """The single [upstream] form, or (multi) three [[upstreams]] routed by model: the bench body's
    model is claimed by the second one's pattern, so a request pays an exact-name miss, a pattern
    match and the replica pick."""
    if not multi:
        return f"""[upstream]
url = "http://127.0.0.1:{upstream_port}"
[secret]
source = "file"
path = "{key_file}"
"""
    out = ""
    for name, models, default in (("embed", '["nvidia/nv-embedqa-e5-v5"]', "true"),
                                  ("llama", '["meta/llama-3.3-70b-instruct", "meta/llama-3.1-*"]', "false"),
                                  ("hosted", '["mistralai/*"]', "false")):
        out += f"""[[upstreams]]
name = "{name}"
url = "http://127.0.0.1:{upstream_port}"
models = {models}
default = {default}
[upstreams.secret]
source = "file"
path = "{key_file}"
"""
    return out


def nimgate_config(d, name, port, upstream_port, audit, workers, sample_ratio=None, client_extra="", extra="", multi=False):
    key_file = os.path.join(d, "nim-key")
    with open(key_file, "w") as f:
        f.write(NIM_KEY + "\n")
    digest = sh(["python3", "-c", f"import hashlib;print(hashlib.sha256(b'{CLIENT_KEY}').hexdigest())"]).stdout.strip()
    audit_toml = {"interval": f'path = "{d}/{name}-audit.jsonl"\nfsync = "interval"',
                  "batch": f'path = "{d}/{name}-audit.jsonl"\nfsync = "batch"',
                  "off": "enabled = false"}[audit]
    cfg = os.path.join(d, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
workers = {workers}
[admin]
listen = "127.0.0.1:{port + 100}"
{upstreams_toml(upstream_port, key_file, multi)}[[clients]]
id = "team-a"
key_sha256 = "{digest}"
{client_extra}
[audit]
{audit_toml}
{extra}
""")
        if sample_ratio is not None:
            f.write(f"""[telemetry]
otlp_endpoint = "http://127.0.0.1:{PORTS['otlp']}"
sample_ratio = {sample_ratio}
""")
    return cfg


def sse_probe(port, n_streams=10):
    """Time to first event and per-event delay (receive time - fake-nim's send stamp), in ms."""
    ttft, delays = [], []
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    for _ in range(n_streams):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t0 = time.time()
        c.request("POST", "/v1/chat/completions", body=body,
                  headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
        r = c.getresponse()
        first = None
        while True:
            line = r.readline()
            if not line:
                break
            now = time.time()
            if line.startswith(b"data: {"):
                ev = json.loads(line[6:])
                if first is None:
                    first = now
                    ttft.append((now - t0) * 1e3)
                if "x_sent_unix_us" in ev:
                    delays.append((now * 1e6 - ev["x_sent_unix_us"]) / 1e3)
            elif line.startswith(b"data: [DONE]"):
                break
        c.close()
    delays.sort()
    q = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))]
    return {"ttft_ms_median": statistics.median(ttft), "event_delay_ms_p50": q(0.5), "event_delay_ms_p99": q(0.99),
            "event_delay_ms_max": delays[-1], "events": len(delays)}


def svg_chart(results, path):
    rows = [(name, r["closed"]["rps"]) for name, r in results["targets"].items() if "closed" in r]
    cpu = [(name, r["fixed"]["cpu_us_per_req"]) for name, r in results["targets"].items()
           if r.get("fixed", {}).get("cpu_us_per_req") is not None]
    w, bar, gap = 760, 22, 8
    h = 60 + (len(rows) + len(cpu)) * (bar + gap) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">',
           '<rect width="100%" height="100%" fill="white"/>']
    y = 30
    def section(title, data, unit, color):
        nonlocal y
        out.append(f'<text x="10" y="{y}" font-weight="bold">{title}</text>')
        y += 12
        m = max(v for _, v in data) or 1
        for name, v in data:
            bw = int((w - 330) * v / m)
            out.append(f'<text x="10" y="{y + 16}">{name}</text>')
            out.append(f'<rect x="170" y="{y}" width="{bw}" height="{bar}" fill="{color}"/>')
            out.append(f'<text x="{175 + bw}" y="{y + 16}">{v:,.0f} {unit}</text>')
            y += bar + gap
        y += 24
    section("Closed-loop throughput (64 connections; proxies on 1 core)", rows, "req/s", "#4a7fb5")
    if cpu:
        section(f"CPU per request at {results['fixed_rate']} req/s (lower is better)", cpu, "µs", "#c0504d")
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--soak", type=int, default=0, help="seconds of soak at --rate, sampling RSS")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 round (smoke)")
    ap.add_argument("--only", default="", help="comma-separated targets to run (direct always runs); "
                    "for profiling one change: e.g. --only nimgate,hyper-floor,nginx")
    a = ap.parse_args()
    if a.quick:
        a.duration, a.rounds = "3s", 1
    ports_free()
    d = tempfile.mkdtemp(prefix="nimgate-bench-")
    # The driver (and so the SSE probe) shares core 1 with oha and the upstream.
    try:
        os.sched_setaffinity(0, {1})
    except OSError:
        pass
    only = set(filter(None, a.only.split(",")))
    want = lambda name: not only or name in only
    have_nginx = shutil.which("nginx") is not None
    have_haproxy = shutil.which("haproxy") is not None
    pids = {}
    try:
        # Upstream on core 1.
        if have_nginx:
            for sub in ("ub", "pb", "pt"):
                os.makedirs(os.path.join(d, sub), exist_ok=True)
            write_templ("nginx-upstream.conf", f"{d}/up.conf", DIR=d, UPSTREAM_PORT=PORTS["upstream"])
            start(["nginx", "-c", f"{d}/up.conf", "-e", f"{d}/up-err.log"], "1", f"{d}/up.log")
            upstream_kind = "nginx (fixed chat completion)"
        else:
            start([f"{REL}/fake-nim", "--listen", f"127.0.0.1:{PORTS['upstream']}"], "1", f"{d}/up.log")
            upstream_kind = "fake-nim"
        start([f"{REL}/fake-nim", "--listen", f"127.0.0.1:{PORTS['ssenim']}", "--sse-delay-ms", "20", "--sse-events", "50"], "1", f"{d}/sse.log")
        wait_port(PORTS["upstream"])
        wait_port(PORTS["ssenim"], "/v1/health/ready")
        # Proxies on core 0.
        start(["python3", "-c", OTLP_SINK, str(PORTS["otlp"])], "1", f"{d}/otlp.log")
        wait_port(PORTS["otlp"])
        for name, audit, ratio in (("nimgate", "interval", None), ("nimgate-batch", "batch", None),
                                   ("nimgate-noaudit", "off", None), ("nimgate-otel", "interval", 1.0),
                                   ("nimgate-otel-1pct", "interval", 0.01)):
            if not want(name):
                continue
            cfg = nimgate_config(d, name, PORTS[name], PORTS["upstream"], audit, 1, ratio)
            pids[name] = [start([f"{REL}/nimgate", "serve", "--config", cfg], "0", f"{d}/{name}.log").pid]
        # Shared limits: the client has an (unreachable) rate limit, checked in a Redis on core 1
        # each request (issue 19's budget: what the round trip adds).
        if shutil.which("redis-server") and want("nimgate-redis"):
            start(["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", d], "1", f"{d}/redis.log")
            wait_redis(PORTS["redis"])
            cfg = nimgate_config(d, "nimgate-redis", PORTS["nimgate-redis"], PORTS["upstream"], "interval", 1,
                                 client_extra="rpm = 100000000\nburst = 100000000",
                                 extra=f'[ratelimit]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{PORTS["redis"]}/0"\ntimeout = "50ms"')
            pids["nimgate-redis"] = [start([f"{REL}/nimgate", "serve", "--config", cfg], "0", f"{d}/nimgate-redis.log").pid]
        # Three upstreams, routing by model (issue 16): its cost against `nimgate`.
        if want("nimgate-3up"):
            cfg = nimgate_config(d, "nimgate-3up", PORTS["nimgate-3up"], PORTS["upstream"], "interval", 1, multi=True)
            pids["nimgate-3up"] = [start([f"{REL}/nimgate", "serve", "--config", cfg], "0", f"{d}/nimgate-3up.log").pid]
        # The stack's floor: hyper + tokio alone (no auth, audit or limits), same pinning.
        if want("hyper-floor"):
            pids["hyper-floor"] = [start([f"{REL}/examples/hyper-floor", f"127.0.0.1:{PORTS['hyper-floor']}",
                                          f"http://127.0.0.1:{PORTS['upstream']}"], "0", f"{d}/hyper-floor.log").pid]
        if have_nginx and want("nginx"):
            pids["nginx"] = [start_nginx_proxy(d, "nginx", "0", 1)]
        if have_haproxy and want("haproxy"):
            write_templ("haproxy.cfg", f"{d}/haproxy.cfg", DIR=d, PORT=PORTS["haproxy"], UPSTREAM_PORT=PORTS["upstream"],
                        CLIENT_KEY=CLIENT_KEY, NIM_KEY=NIM_KEY, SSE_PORT=PORTS["haproxy-sse"],
                        SSE_UPSTREAM_PORT=PORTS["ssenim"])
            pids["haproxy"] = [start(["haproxy", "-db", "-f", f"{d}/haproxy.cfg"], "0", f"{d}/haproxy-access.jsonl").pid]
        for name in pids:
            wait_port(PORTS[name], "/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        targets = ["direct"] + list(pids)
        port_of = lambda t: PORTS["upstream"] if t == "direct" else PORTS[t]
        # Warm-up.
        for t in targets:
            oha(port_of(t), "2s")
        closed = {t: [] for t in targets}
        rss_mid = []
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                res = oha(port_of(t), a.duration)
                if t == "nimgate":
                    rss_mid.append(rss_kb(pids["nimgate"][0]))
                closed[t].append(res)
                print(f"  round {r + 1} {t:16s} {res['rps']:>9.0f} req/s  p99 {res['p99_ms']:.2f} ms  errors {res['errors']}", flush=True)
        # Fixed rate, interleaved rounds like the closed loop: p99 and CPU per request per round.
        fixed_runs = {t: [] for t in targets}
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                ps = pids.get(t, [])
                c0, x0 = cpu_ticks(ps), ctx_switches(ps)
                res = oha(port_of(t), a.duration, rate=a.rate)
                c1, x1 = cpu_ticks(ps), ctx_switches(ps)
                res["cpu_us_per_req"] = ((c1 - c0) / TICK * 1e6 / max(res["ok"], 1)) if ps else None
                res["ctx_per_req"] = ((x1 - x0) / max(res["ok"], 1)) if ps else None
                fixed_runs[t].append(res)
                cpu_s = f"{res['cpu_us_per_req']:.1f} µs/req" if ps else ""
                print(f"  fixed {a.rate}/s round {r + 1} {t:16s} p99 {res['p99_ms']:.3f} ms  {cpu_s}", flush=True)
        fixed = {}
        for t, runs in fixed_runs.items():
            med = lambda k: statistics.median(x[k] for x in runs)
            fixed[t] = {"rps": med("rps"), "ok": sum(x["ok"] for x in runs), "errors": sum(x["errors"] for x in runs),
                        "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"), "p999_ms": med("p999_ms"),
                        "rounds_p99_ms": [round(x["p99_ms"], 3) for x in runs],
                        "cpu_us_per_req": med("cpu_us_per_req") if runs[0]["cpu_us_per_req"] is not None else None,
                        "ctx_per_req": med("ctx_per_req") if runs[0]["ctx_per_req"] is not None else None,
                        "rounds_cpu_us_per_req": [round(x["cpu_us_per_req"], 1) for x in runs if x["cpu_us_per_req"] is not None]}
        # malloc calls per request (a separate run per target: the uprobe slows every malloc).
        mallocs = {}
        if have_malloc_probe():
            for t in ("nimgate", "nimgate-noaudit", "hyper-floor", "nginx"):
                if t in pids:
                    mallocs[t] = count_mallocs(pids[t][0], PORTS[t], "3s", min(a.rate, 2000))
                    if mallocs[t] is not None:
                        print(f"  mallocs/request {t:16s} {mallocs[t]:.1f}", flush=True)
        else:
            print("  (no perf probe on libc malloc: mallocs/request not measured)", flush=True)
        # Both cores (oha and the upstream share them): nimgate with `workers = 2` against nginx
        # with two workers, interleaved rounds.
        two = {}
        if want("nimgate"):
            cfg2 = nimgate_config(d, "nimgate-2core", PORTS["nimgate-2core"], PORTS["upstream"], "interval", 2)
            two["nimgate-2core"] = start([f"{REL}/nimgate", "serve", "--config", cfg2], "0,1", f"{d}/nimgate-2core.log").pid
        if have_nginx and want("nginx"):
            two["nginx-2w"] = start_nginx_proxy(d, "nginx-2w", "0,1", 2)
        for t in two:
            wait_port(PORTS[t], "/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            oha(PORTS[t], "2s")
        two_runs = {t: [] for t in two}
        for r in range(a.rounds):
            for t in (list(two) if r % 2 == 0 else list(two)[::-1]):
                two_runs[t].append(oha(PORTS[t], a.duration)["rps"])
        for pid in two.values():
            os.kill(pid, signal.SIGTERM)  # ours (in PROCS): idle through SSE and the soak otherwise
        two_core = {t: statistics.median(v) for t, v in two_runs.items()}
        for t, v in two_core.items():
            print(f"  {t} on 2 cores (shared with oha + upstream): {v:.0f} req/s", flush=True)
        # SSE through each proxy (the probe runs on core 1, like oha).
        sse = {"direct": sse_probe(PORTS["ssenim"])}
        if want("nimgate"):
            cfg_sse = nimgate_config(d, "nimgate-sse", PORTS["nimgate-sse"], PORTS["ssenim"], "interval", 1)
            start([f"{REL}/nimgate", "serve", "--config", cfg_sse], "0", f"{d}/nimgate-sse.log")
            wait_port(PORTS["nimgate-sse"], "/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            sse["nimgate"] = sse_probe(PORTS["nimgate-sse"])
        for peer in ("nginx", "haproxy"):
            if peer in pids:
                sse[peer] = sse_probe(PORTS[f"{peer}-sse"])
        for t, v in sse.items():
            print(f"  SSE {t:10s} event delay p50/p99/max {v['event_delay_ms_p50']:.3f}/{v['event_delay_ms_p99']:.3f}/"
                  f"{v['event_delay_ms_max']:.3f} ms  TTFT {v['ttft_ms_median']:.2f} ms", flush=True)
        soak = []
        if a.soak and "nimgate" in pids:
            t_end = time.time() + a.soak
            while time.time() < t_end:
                res = oha(PORTS["nimgate"], "30s", rate=a.rate)
                soak.append({"t": round(a.soak - (t_end - time.time())), "rss_kb": rss_kb(pids["nimgate"][0]), "rps": res["rps"], "errors": res["errors"]})
                print(f"  soak t={soak[-1]['t']}s rss {soak[-1]['rss_kb']} kB", flush=True)
        results = {
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release, "cpu": cpu_model()},
            "upstream": upstream_kind, "duration": a.duration, "rounds": a.rounds, "fixed_rate": a.rate,
            "targets": {}, "nimgate_rss_kb": {"mid_run": max(rss_mid) if rss_mid else None,
                                              "peak": rss_kb(pids["nimgate"][0], "VmHWM") if "nimgate" in pids else None},
            "two_cores_rps": two_core, "mallocs_per_req": mallocs, "sse": sse, "soak": soak,
        }
        for t in targets:
            runs = closed[t]
            med = lambda k: statistics.median(x[k] for x in runs)
            results["targets"][t] = {"closed": {"rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                                                "p999_ms": med("p999_ms"), "errors": sum(x["errors"] for x in runs),
                                                "rounds_rps": [round(x["rps"]) for x in runs]},
                                     "fixed": fixed[t]}
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
            json.dump(results, f, indent=1)
        svg_chart(results, os.path.join(HERE, "results", "chart.svg"))
        print_table(results)
    finally:
        stop_all()
        if os.environ.get("NIMGATE_BENCH_KEEP"):
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def print_table(r):
    direct = r["targets"]["direct"]
    rate = r["fixed_rate"]
    print()
    print(f"| target | req/s (closed loop) | p50 ms | p99 ms | p99.9 ms | added p50 / p99 at {rate}/s, ms "
          f"| CPU µs/req at {rate}/s | context switches/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t, v in r["targets"].items():
        c, f = v["closed"], v["fixed"]
        a50 = f["p50_ms"] - direct["fixed"]["p50_ms"] if t != "direct" else 0
        a99 = f["p99_ms"] - direct["fixed"]["p99_ms"] if t != "direct" else 0
        cpu = f"{f['cpu_us_per_req']:.1f}" if f.get("cpu_us_per_req") is not None else "–"
        ctx = f"{f['ctx_per_req']:.3f}" if f.get("ctx_per_req") is not None else "–"
        print(f"| {t} | {c['rps']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['p999_ms']:.2f} "
              f"| {a50:+.3f} / {a99:+.3f} | {cpu} | {ctx} |")
    print()
    rss = r["nimgate_rss_kb"]
    if rss["mid_run"]:
        print(f"nimgate RSS under 64 connections: {rss['mid_run'] / 1024:.1f} MB (peak {rss['peak'] / 1024:.1f} MB)")
    if r["mallocs_per_req"]:
        print("malloc calls per request (perf probe on libc malloc): " +
              ", ".join(f"{t} {v:.1f}" for t, v in r["mallocs_per_req"].items() if v is not None))
    if r["two_cores_rps"]:
        print("both cores (shared with oha and the upstream): " +
              ", ".join(f"{t} {v:,.0f} req/s" for t, v in r["two_cores_rps"].items()))
    s = r["sse"]
    print("SSE (fake NIM, 10 streams × 50 events 20 ms apart): per-event delay from the NIM's send stamp to the client, ms")
    print()
    print("| path | p50 | p99 | max | time to first event (median) |")
    print("|---|---:|---:|---:|---:|")
    for t, v in s.items():
        print(f"| {t} | {v['event_delay_ms_p50']:.3f} | {v['event_delay_ms_p99']:.3f} | {v['event_delay_ms_max']:.3f} | "
              f"{v['ttft_ms_median']:.2f} |")
    print_targets(r)


def print_targets(r):
    """The figures issue 20 sets targets for, from this run."""
    t = r["targets"]
    if not all(k in t for k in ("nimgate", "nginx")):
        return
    ng, nx = t["nimgate"], t["nginx"]
    d = t["direct"]["fixed"]
    rows = [("CPU µs/request at the fixed rate, nimgate / nginx",
             ng["fixed"]["cpu_us_per_req"] / nx["fixed"]["cpu_us_per_req"], "≤ 1.15×"),
            ("closed-loop req/s, nimgate / nginx", ng["closed"]["rps"] / nx["closed"]["rps"], "≥ 0.85×")]
    if "nimgate-noaudit" in t and "hyper-floor" in t:
        rows.append(("closed-loop req/s, nimgate audit off / hyper-floor",
                     t["nimgate-noaudit"]["closed"]["rps"] / t["hyper-floor"]["closed"]["rps"], "≥ 0.9×"))
    print()
    print("| figure | this run | target |")
    print("|---|---:|---:|")
    for name, v, want in rows:
        print(f"| {name} | {v:.2f}× | {want} |")
    m = r["mallocs_per_req"].get("nimgate")
    if m is not None:
        print(f"| malloc calls/request, nimgate (nginx {r['mallocs_per_req'].get('nginx') or 0:.1f}) | {m:.1f} | ≤ 15 |")
    print(f"| context switches/request, nimgate (nginx {nx['fixed']['ctx_per_req']:.3f}) | {ng['fixed']['ctx_per_req']:.3f} | ≤ 0.05 |")
    a_ng = ng["fixed"]["p50_ms"] - d["p50_ms"]
    a_nx = nx["fixed"]["p50_ms"] - d["p50_ms"]
    print(f"| added p50 over direct, nimgate − nginx | {a_ng - a_nx:+.3f} ms | ≤ +0.05 ms |")
    s = r["sse"]
    if "nimgate" in s and "nginx" in s:
        print(f"| SSE per-event delay p99, nimgate vs nginx | {s['nimgate']['event_delay_ms_p99']:.3f} vs "
              f"{s['nginx']['event_delay_ms_p99']:.3f} ms | ≤ nginx |")
    if r["nimgate_rss_kb"]["mid_run"]:
        print(f"| nimgate RSS under 64 connections | {r['nimgate_rss_kb']['mid_run'] / 1024:.1f} MB | ≤ 20 MB |")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        print(e.stderr or e.stdout, file=sys.stderr)
        raise
