#!/usr/bin/env python3
"""sessionlb beside nginx and HAProxy, measured in one run on loopback.

Starts three identical backends (one nginx worker answering 200 with a 1 KiB
body and `X-Backend: bN`), then each proxy in turn on the same port with the
same number of worker threads, and drives it with wrk (same request stream:
three rotating client sessions). Configurations:

  sessionlb, nginx, HAProxy     round robin
  sessionlb, nginx              ip_hash
  sessionlb, HAProxy            cookie stickiness, steady state (each session
                                replays the route cookie it was given)

Repetitions are interleaved; each row reports requests/s, p50, p99, proxy CPU
time per request, and its ratio to nginx round robin in the same repetition.
On a shared VM the hypervisor sometimes gives the CPU to another guest
(steal time in /proc/stat); a run that lost more than --max-steal percent is
measured again (--retries), and the medians are printed twice: over every
repetition, and over the repetitions without steal.
Then it measures the memory that idle keep-alive client connections cost
sessionlb and nginx. Missing tools (nginx, HAProxy, wrk) are installed from
the Debian packages.

Usage (from the repository root):
  cargo build --release
  python3 benches/load/compare.py [--repeats 3] [--duration 10] [--idle 10000] [--max-steal 2]

Everything listens on 127.0.0.1; every process started is stopped at exit.
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BODY = "a" * 1024
STARTED = []


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_tools():
    missing = [pkg for tool, pkg in [("nginx", "nginx-light"), ("haproxy", "haproxy"), ("wrk", "wrk")]
               if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def start(cmd, log_path, **kw):
    out = open(log_path, "w")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    STARTED.append(p)
    return p


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except Exception:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in STARTED:
        STARTED.remove(p)


def wait_http(port, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1).read()
            return True
        except Exception:
            time.sleep(0.1)
    return False


def tree_pids(pid):
    pids = [pid]
    for p in list(pids):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def cpu_times():
    """The machine's CPU time counters (/proc/stat, first line)."""
    return [int(x) for x in open("/proc/stat").readline().split()[1:]]


def steal_percent(before, after):
    """Share of the machine's time the hypervisor gave to other guests."""
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8]) or 1
    return 100.0 * delta[7] / total if len(delta) > 7 else 0.0


def cpu_seconds(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Bench:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = Path(tmp)
        self.port = args.port
        self.backends = [args.port + i for i in (1, 2, 3)]
        self.slb = args.sessionlb

    # ------------------------------------------------------------ backends
    def start_backends(self):
        d = self.tmp / "backends"
        d.mkdir()
        servers = "".join(
            f'  server {{ listen {HOST}:{p} backlog=4096; location / {{ add_header X-Backend b{i}; return 200 "{BODY}"; }} }}\n'
            for i, p in enumerate(self.backends, 1))
        conf = d / "nginx.conf"
        conf.write_text(self.nginx_head(d) + f"""http {{
  access_log off; default_type text/plain;
  keepalive_requests 100000000; keepalive_timeout 300s;
{self.nginx_temp(d)}
{servers}}}
""")
        self.backend_proc = start([tool("nginx"), "-p", f"{d}/", "-c", str(conf)], d / "out.log")
        for p in self.backends:
            if not wait_http(p):
                sys.exit(f"backend on {p} did not start: {(d / 'error.log').read_text()}")

    def nginx_head(self, d, workers=1):
        return (f"worker_processes {workers};\nworker_rlimit_nofile 65536;\ndaemon off;\n"
                f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
                f"events {{ worker_connections 32768; }}\n")

    def nginx_temp(self, d):
        return "".join(f"  {k}_temp_path {d}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))

    # ------------------------------------------------------------ proxies
    def start_proxy(self, name):
        d = self.tmp / f"{name}-{time.time_ns()}"
        d.mkdir()
        kind, policy = name.split("_", 1)
        w = self.args.workers
        be = self.backends
        if kind == "nginx":
            balance = {"rr": "", "iphash": "ip_hash;"}[policy]
            conf = d / "nginx.conf"
            conf.write_text(self.nginx_head(d, w) + f"""http {{
  access_log off;
  keepalive_requests 100000000; keepalive_timeout 300s;
{self.nginx_temp(d)}
  upstream be {{
    {balance}
    server {HOST}:{be[0]}; server {HOST}:{be[1]}; server {HOST}:{be[2]};
    keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s;
  }}
  server {{
    listen {HOST}:{self.port} backlog=4096;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
            p = start([tool("nginx"), "-p", f"{d}/", "-c", str(conf)], d / "out.log")
        elif kind == "haproxy":
            cookie = {"rr": ("", "", "", ""), "cookie": ("cookie SRV insert indirect nocache",
                                                      "cookie s1", "cookie s2", "cookie s3")}[policy]
            conf = d / "haproxy.cfg"
            maxconn = max(1000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2 - 100)
            conf.write_text(f"""global
  nbthread {w}
  maxconn {maxconn}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend fe
  bind {HOST}:{self.port}
  default_backend be
backend be
  balance roundrobin
  {cookie[0]}
  server s1 {HOST}:{be[0]} {cookie[1]}
  server s2 {HOST}:{be[1]} {cookie[2]}
  server s3 {HOST}:{be[2]} {cookie[3]}
""")
            p = start([tool("haproxy"), "-db", "-f", str(conf)], d / "out.log")
        else:
            pol = {"rr": "round_robin", "iphash": "ip_hash", "cookie": "cookie"}[policy]
            sticky = '[pools.web.sticky]\ncookie = "slb_route"\nsecret = "bench"\n' if pol == "cookie" else ""
            conf = d / "sessionlb.toml"
            conf.write_text(f"""[server]
listen = ["{HOST}:{self.port}"]
workers = {w}
[pools.web]
policy = "{pol}"
backends = [{{ addr = "{HOST}:{be[0]}" }}, {{ addr = "{HOST}:{be[1]}" }}, {{ addr = "{HOST}:{be[2]}" }}]
{sticky}[log]
access_log = {str(self.args.access_log).lower()}
""")
            p = start([self.slb, "run", "-c", str(conf)], d / "out.log", env=dict(os.environ, RUST_LOG="warn"))
        if not wait_http(self.port):
            stop(p)
            sys.exit(f"{name} did not start; see {d}")
        return p

    def cookies(self, name):
        """The three sessions' extra cookie: one per backend for sticky configs."""
        if name == "haproxy_cookie":
            return ["SRV=s1", "SRV=s2", "SRV=s3"]
        if name == "slb_cookie":
            found = {}
            for _ in range(30):
                r = urllib.request.urlopen(f"http://{HOST}:{self.port}/", timeout=2)
                for v in r.headers.get_all("Set-Cookie") or []:
                    if v.startswith("slb_route="):
                        found[r.headers["X-Backend"]] = v.split(";")[0]
                if len(found) == 3:
                    return [found[k] for k in sorted(found)]
            sys.exit("slb_cookie: could not learn a route cookie per backend")
        return ["", "", ""]

    def wrk(self, seconds, cookies):
        script = self.tmp / "bench.lua"
        script.write_text("""
local reqs = {}
local i = 0
init = function(args)
  for k = 1, 3 do
    local c = "theme=dark; sid=s" .. k
    if args[k] and args[k] ~= "" then c = c .. "; " .. args[k] end
    wrk.headers["Cookie"] = c
    reqs[k] = wrk.format("GET", "/")
  end
end
request = function() i = i % 3 + 1; return reqs[i] end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %d %d %d %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.requests,
    e.connect + e.read + e.write + e.timeout + e.status))
end
""")
        cmd = [tool("wrk"), f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{seconds}s",
               "--timeout", "5s", "-s", str(script), f"http://{HOST}:{self.port}/", "--", *cookies]
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("RESULT"):
                rps, p50, p99, n, errors = line.split()[1:]
                return float(rps), int(p50), int(p99), int(n), int(errors)
        raise RuntimeError(f"wrk printed no result:\n{out}")

    def run_one(self, name):
        p = self.start_proxy(name)
        try:
            cookies = self.cookies(name)
            self.wrk(self.args.warmup, cookies)
            # A run during which the hypervisor took CPU time from this
            # machine (steal) measures the neighbours, not the proxy: it is
            # measured again, up to --retries times.
            for attempt in range(self.args.retries + 1):
                cpu0, stat0 = cpu_seconds(p.pid), cpu_times()
                rps, p50, p99, n, errors = self.wrk(self.args.duration, cookies)
                cpu, steal = cpu_seconds(p.pid) - cpu0, steal_percent(stat0, cpu_times())
                if steal <= self.args.max_steal:
                    break
                if attempt < self.args.retries:
                    log(f"{name}: {steal:.1f}% steal during the run; measuring again")
        finally:
            stop(p)
        return {"config": name, "rps": rps, "p50_us": p50, "p99_us": p99, "requests": n,
                "errors": errors, "cpu_us_per_req": cpu * 1e6 / max(n, 1), "steal_pct": steal}

    # ------------------------------------------------------------ idle memory
    def idle(self, name, n):
        p = self.start_proxy(name)
        try:
            time.sleep(0.5)
            before = rss_kib(p.pid)
            ok = asyncio.run(hold_connections(self.port, n, lambda: rss_kib(p.pid)))
            after = ok[1]
        finally:
            stop(p)
        return {"config": name, "conns": ok[0], "rss_before_kib": before, "rss_after_kib": after,
                "kib_per_conn": (after - before) / max(ok[0], 1)}


async def hold_connections(port, n, measure):
    """Opens n keep-alive connections, one GET each, and measures while
    they are all open and idle."""
    conns = []
    sem = asyncio.Semaphore(256)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nCookie: theme=dark; sid=s1\r\n\r\n"

    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
                w.write(request)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n")
                               if l.lower().startswith(b"content-length:")), 0)
                await asyncio.wait_for(r.readexactly(length), 10)
                conns.append(w)
            except Exception:
                pass

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(2.0)
    rss = measure()
    for w in conns:
        w.close()
    return len(conns), rss


def ratio(a, b):
    return a / b if b else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessionlb", default=str(ROOT / "target/release/sessionlb"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds measured per run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="worker threads/processes of every proxy")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections")
    ap.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections (0: skip)")
    ap.add_argument("--port", type=int, default=28080)
    ap.add_argument("--max-steal", type=float, default=2.0,
                    help="a run with more CPU steal (%%) than this is measured again")
    ap.add_argument("--retries", type=int, default=3, help="measurements again per run at most")
    ap.add_argument("--access-log", action="store_true", help="sessionlb with its access log on")
    ap.add_argument("--configs", default="nginx_rr haproxy_rr slb_rr nginx_iphash slb_iphash haproxy_cookie slb_cookie")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    if not Path(args.sessionlb).exists():
        sys.exit(f"{args.sessionlb} not found: run `cargo build --release` first")
    ensure_tools()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    configs = args.configs.split()
    results, idle = [], []
    with tempfile.TemporaryDirectory(prefix="sessionlb-compare-") as tmp:
        bench = Bench(args, tmp)
        try:
            bench.start_backends()
            for rep in range(1, args.repeats + 1):
                for name in configs:
                    r = bench.run_one(name)
                    r["rep"] = rep
                    results.append(r)
                    log(f"rep {rep} {name}: {r['rps']:.0f} req/s p50 {r['p50_us']}us p99 {r['p99_us']}us "
                        f"cpu {r['cpu_us_per_req']:.1f}us/req steal {r['steal_pct']:.1f}% errors {r['errors']}")
            if args.idle:
                for name in ("nginx_rr", "slb_rr"):
                    i = bench.idle(name, args.idle)
                    idle.append(i)
                    log(f"idle {name}: {i['conns']} conns, {i['kib_per_conn']:.2f} KiB/conn")
        finally:
            for p in list(STARTED):
                stop(p)
    report(results, idle, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "idle": idle}, indent=1))


def report(results, idle, args):
    print(f"\n{args.repeats} repetitions, {args.duration}s each, {args.workers} worker(s) per proxy, "
          f"wrk -t{args.threads} -c{args.connections}, 3 loopback nginx backends, 1 KiB responses\n")
    print("| rep | config | req/s | ratio | p50 ms | p99 ms | p99 ratio | CPU µs/req | CPU ratio | steal % | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    by_rep = {}
    for r in results:
        by_rep.setdefault(r["rep"], {})[r["config"]] = r
    ratios = {}
    clean = {}  # only repetitions where neither run lost time to steal
    for rep, rows in sorted(by_rep.items()):
        base = rows.get("nginx_rr")
        for name, r in rows.items():
            rr = [ratio(r["rps"], base["rps"]), ratio(r["p99_us"], base["p99_us"]),
                  ratio(r["cpu_us_per_req"], base["cpu_us_per_req"])] if base else [float("nan")] * 3
            ratios.setdefault(name, []).append(rr)
            if base and max(r.get("steal_pct", 0), base.get("steal_pct", 0)) <= args.max_steal:
                clean.setdefault(name, []).append(rr)
            print(f"| {rep} | {name} | {r['rps']:,.0f} | {rr[0]:.2f} | {r['p50_us'] / 1000:.3f} | "
                  f"{r['p99_us'] / 1000:.3f} | {rr[1]:.2f} | {r['cpu_us_per_req']:.1f} | {rr[2]:.2f} | "
                  f"{r.get('steal_pct', 0):.1f} | {r['errors']} |")
    print("\nMedian over repetitions of the per-repetition ratios to nginx round robin:\n")
    print("| config | req/s ratio | p99 ratio | CPU/req ratio |")
    print("|---|---|---|---|")
    for name, rs in ratios.items():
        med = [statistics.median(x[i] for x in rs) for i in range(3)]
        print(f"| {name} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} |")
    print(f"\nThe same over the repetitions where neither the run nor nginx's lost more than "
          f"{args.max_steal:g}% of the machine to steal (another guest of the host):\n")
    print("| config | repetitions | req/s ratio | p99 ratio | CPU/req ratio |")
    print("|---|---|---|---|---|")
    for name in ratios:
        rs = clean.get(name, [])
        med = [statistics.median(x[i] for x in rs) if rs else float("nan") for i in range(3)]
        print(f"| {name} | {len(rs)} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} |")
    for label, table in (("all", ratios), ("without steal", clean)):
        slb = {n: [x[0] for x in rs] for n, rs in table.items() if n.startswith("slb_")}
        if "slb_rr" not in slb:
            continue
        for n in ("slb_iphash", "slb_cookie"):
            pairs = [(r[n], r["slb_rr"]) for r in by_rep.values() if n in r and "slb_rr" in r
                     and (label == "all" or max(r[n].get("steal_pct", 0),
                                                r["slb_rr"].get("steal_pct", 0)) <= args.max_steal)]
            if pairs:
                rel = statistics.median(a["rps"] / b["rps"] for a, b in pairs)
                print(f"\n{n} vs slb_rr, same repetition ({label}, {len(pairs)}): {rel:.3f}")
    if idle:
        print("\n| proxy | idle conns | RSS before KiB | RSS with conns KiB | KiB per conn |")
        print("|---|---|---|---|---|")
        for i in idle:
            print(f"| {i['config']} | {i['conns']} | {i['rss_before_kib']} | {i['rss_after_kib']} | {i['kib_per_conn']:.2f} |")


if __name__ == "__main__":
    main()
