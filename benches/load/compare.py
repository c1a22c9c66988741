#!/usr/bin/env python3
"""sessionlb beside nginx and HAProxy, measured in one run on loopback.

Starts three identical backends (one nginx worker answering 200 with a 1 KiB
body and `X-Backend: bN`; `POST /login` answers the same with
`Set-Cookie: session=<200 base64-like bytes>; Path=/; HttpOnly`, like an app
with a cookie session that then does not change), then each proxy in turn on
the same port with the same number of worker threads, and drives it with wrk
(same request stream: three rotating client sessions). Configurations:

  sessionlb, nginx, HAProxy     round robin
  sessionlb, nginx              ip_hash
  sessionlb, HAProxy            cookie stickiness, steady state (each session
                                replays the route cookie it was given)
  sessionlb_store_memory        shared-store mode (round robin plus
                                [pools.web.session] app_cookie = "session"),
                                embedded memory store, steady state: a session
                                logged in once (POST /login through the proxy
                                under test) replays its `slb_sid` ticket on
                                every connection, as a browser's connection
                                carries its own client's session; the session
                                does not change
  sessionlb_store_redis         the same with [store] kind = "redis", a
                                redis-server started by this script
                                (no persistence) on --redis-port
  sessionlb_store_memory_mixed  the same with three sessions rotating on
  sessionlb_store_redis_mixed   every connection, as a CDN's pooled
                                connections mix clients: no request finds the
                                session its connection opened last, and each
                                opens (decrypts) its session anew
  slb_rr_reloading              slb_rr while its configuration is reloaded
                                every 100 ms (SIGHUP): the file is rewritten
                                in turn with a weight changed, back, a
                                backend draining, back, so that the three
                                backends stay in use; the row tells the
                                reloads applied during the run (from the
                                admin listener's sessionlb_config_generation)
                                and is reported beside slb_rr of the same
                                repetition (its only other difference: that
                                admin listener, idle)
  nginx_tls, slb_tls            TLS termination, round robin, HTTP/1.1 over
                                TLS 1.3 keep-alive (wrk, https://)
  nginx_tls_handshake,          the same proxies, a new connection per
  slb_tls_handshake             request, each a full TLS 1.3 handshake
                                (tls_connect full)
  nginx_tls_resumed,            the same, each connection resuming with a
  slb_tls_resumed               TLS 1.3 ticket an earlier one received
                                (tls_connect resumed)

The TLS rows: both proxies serve one certificate made by this script for
the run (`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256`,
CN and SAN localhost, basicConstraints CA:FALSE, serverAuth) on the port
the other rows use, and proxy to the same backends over plain HTTP; nginx
with `listen ... ssl http2`, `ssl_protocols TLSv1.3`, `ssl_session_tickets
on` (its default) and `ssl_session_cache shared:SSL:10m`; sessionlb with a
[[server.tls]] listener only (it serves 1.2 and 1.3, the clients ask for
1.3) and an admin listener, whose `sessionlb_tls_handshakes_total{kind}`
tells the handshakes it served, full and resumed. The handshake rows'
client is benches/load/tls_connect.rs (rustls with ring, built by this
script under target/bench-tls-connect; --connections threads, each
connecting, sending one `Connection: close` request and reading the
response to the close, over and over; it verifies the certificate and
counts each handshake full or resumed as it saw it). wrk and h2load do
not do full handshakes: on a reconnect they offer the previous
connection's session (nginx logs $ssl_session_reused "r"), and OpenSSL
3.0 as the client spends more CPU per full handshake than nginx does.
Their requests/s are connections/s, their CPU per request CPU per
handshake. The client itself spends about 0.55 ms of CPU per full
handshake (0.3 ms resumed) on the same 2 CPUs, so connections/s tells
the whole machine's cost; the proxy's CPU µs/req compares the handshakes'
costs more cleanly. Each
row is compared with nginx's row of the same measure in the same
repetition; targets: slb_tls >= 1.0x nginx_tls, slb_tls_handshake >= 1.0x
nginx_tls_handshake (slb_tls_resumed: none). Before each TLS row,
`openssl s_client` (OpenSSL's defaults, wrk's) checks the certificate
and records what was negotiated.

Repetitions are interleaved; each row reports requests/s, p50, p99, proxy CPU
time per request, and its ratio to nginx round robin in the same repetition
(a TLS row's: to nginx's row of the same TLS measure).
The shared-store rows are also reported against sessionlb's own round robin
row of the same repetition, with their targets (memory >= 0.95x, Redis >=
0.75x, goal 0.8x; the _mixed rows have none) and, for Redis,
redis-server's CPU time per request.
On a shared VM the hypervisor sometimes gives the CPU to another guest
(steal time in /proc/stat), and on a shared machine other work (builds, test
runs) takes CPU time too: the machine's busy time minus what the proxy, the
backends, Redis and wrk used ("other %"). A run that lost more than
--max-steal percent to steal or --max-other percent to other work is measured
again (--retries), and the medians are printed twice: over every repetition,
and over the clean repetitions (neither limit passed).
--paired N measures each shared-store row once more against slb_rr, in
N slices of --slice seconds, both proxies running side by side. On this
kind of shared VM one run's cost per request drifts by a third from one
minute to the next, more than a row's difference from slb_rr. In turn
(the default): slb_rr, the row, slb_rr, ...; each slice of the row against
the mean of the slb_rr slices around it. --together --pin: both driven at
once, both proxies on CPU 0 (each gets half of it) and the backends, Redis
and the two wrk on CPU 1, so that each slice's ratio of requests/s is the
ratio of the two proxies' costs through the same moments of the machine.
The row slb_rr_control (slb_rr measured against itself) shows the method's
own error: 0.99 (0.97-1.05 per slice) here. This is the measurement the
shared-store targets are judged by. --paired measures sessionlb's TLS rows
the same way against nginx's row of the same measure (in turn suits the
handshake rows: their client's CPU is a large share of CPU 1).
Then it measures the memory that idle keep-alive client connections cost
sessionlb and nginx (and, when sessionlb_store_memory is measured, sessionlb
with each idle connection's request carrying a session's ticket; and, when
slb_tls is measured, both over TLS: HTTP/1.1 keep-alive connections that
each did one request over TLS 1.3). Missing
tools (nginx, HAProxy, wrk, openssl, redis-server) are installed from the
Debian packages.

Usage (from the repository root):
  cargo build --release
  python3 benches/load/compare.py [--repeats 3] [--duration 10] [--idle 10000] [--max-steal 2] [--max-other 5]
      [--configs "slb_rr sessionlb_store_memory sessionlb_store_redis"]
  python3 benches/load/compare.py --repeats 0 --idle 0 --paired 10 --together --pin \
      --configs "sessionlb_store_memory sessionlb_store_redis"
  python3 benches/load/compare.py --idle 0 --configs "nginx_tls slb_tls nginx_tls_handshake \
      slb_tls_handshake nginx_tls_resumed slb_tls_resumed"

Everything listens on 127.0.0.1; every process started is stopped at exit.
"""

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BODY = "a" * 1024
# The app's session cookie value: 200 bytes of base64 (URL alphabet), about
# what a small Flask session is.
SESSION = base64.urlsafe_b64encode(bytes(range(7, 157))).decode()
STORE_ROWS = {"sessionlb_store_memory": 0.95, "sessionlb_store_redis": 0.75,
              "sessionlb_store_memory_mixed": None, "sessionlb_store_redis_mixed": None,
              "slb_rr_control": None}
# slb_rr_control is slb_rr under another name: --paired against slb_rr, the
# method's own error (it should read 1.0)
ALIASES = {"slb_rr_control": "slb_rr"}
STORE_GOALS = {"sessionlb_store_redis": 0.8}
# The TLS rows (each proxy's policy part of the name): what drives them and
# sessionlb's target against nginx's row of the same measure (None: none)
TLS_ROWS = {"tls": ("wrk, HTTPS keep-alive", 1.0),
            "tls_handshake": ("tls_connect full: a full handshake per request", 1.0),
            "tls_resumed": ("tls_connect resumed: a resumed handshake per request", None)}
STARTED = []
# wrk's requests: three rotating client sessions (`sid=s1..3`), each with the
# extra cookie given for it (a route cookie, a ticket)
WRK_SCRIPT = """
local reqs = {}
local i = 0
local n = 3
init = function(args)
  if #args > 0 then n = #args end
  for k = 1, n do
    local c = "theme=dark; sid=s" .. k
    if args[k] and args[k] ~= "" then c = c .. "; " .. args[k] end
    wrk.headers["Cookie"] = c
    reqs[k] = wrk.format("GET", "/")
  end
end
request = function() i = i % n + 1; return reqs[i] end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %d %d %d %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.requests,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tls_policy(name):
    """The TLS measure of a row (`tls`, `tls_handshake`, `tls_resumed`), or None."""
    policy = name.split("_", 1)[1] if "_" in name else ""
    return policy if policy in TLS_ROWS else None


def baseline(name):
    """The nginx row a row is compared with: nginx's row of the same TLS
    measure for a TLS row, else nginx round robin."""
    policy = tls_policy(name)
    return f"nginx_{policy}" if policy else "nginx_rr"


def ensure_tools(redis=False):
    tools = [("nginx", "nginx-light"), ("haproxy", "haproxy"), ("wrk", "wrk"), ("openssl", "openssl")]
    if redis:
        tools.append(("redis-server", "redis-server"))
    missing = [pkg for tool, pkg in tools
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


# --pin: the proxy under test alone on one CPU, everything else (backends,
# Redis, wrk) on the other, so that the scheduler's placement does not change
# a proxy's cost from one run to the next
PIN = {}


def pinned(cmd, role):
    cpu = PIN.get(role)
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def start(cmd, log_path, role="rest", **kw):
    cmd = pinned(cmd, role)
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


def wait_http(port, timeout=15.0, tls=None):
    """Until `port` answers HTTP (HTTPS, verified with the ssl context `tls`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http{'s' if tls else ''}://{HOST}:{port}/", timeout=1, context=tls).read()
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


def other_percent(before, after, own_seconds):
    """Share of the machine's time that went to processes other than the
    benchmark's: busy time (all but idle, iowait and steal; a task's times
    include the interrupts it was charged) less `own_seconds`."""
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8]) or 1
    busy = total - delta[3] - delta[4] - (delta[7] if len(delta) > 7 else 0)
    tck = os.sysconf("SC_CLK_TCK")
    return max(0.0, 100.0 * (busy / tck - own_seconds) / (total / tck))


def noisy(r, args):
    return r.get("steal_pct", 0) > args.max_steal or r.get("other_pct", 0) > args.max_other


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
        self.tls_ctx = None  # the TLS rows' client context (make_cert)

    # ------------------------------------------------------------ TLS
    def make_cert(self):
        """The one certificate of every TLS row, both proxies: ECDSA P-256,
        self-signed, CN and SAN localhost (and 127.0.0.1), made for this run.
        basicConstraints CA:FALSE and serverAuth, as a server's certificate
        is: webpki (tls_connect's verifier) refuses a CA certificate there."""
        d = self.tmp / "tls"
        d.mkdir()
        self.cert, self.key = d / "cert.pem", d / "key.pem"
        subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tls_ctx = ssl.create_default_context(cafile=str(self.cert))

    def tls_check(self, port):
        """What a TLS 1.3 client of OpenSSL's defaults (wrk's library) is
        served: `openssl s_client`, the certificate verified, before a run."""
        out = subprocess.run([tool("openssl"), "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
                              "-CAfile", str(self.cert), "-verify_return_error", "-brief"],
                             input="", capture_output=True, text=True, timeout=10).stderr
        got = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        if got.get("Verification") != "OK":
            sys.exit(f"TLS check of {port} failed:\n{out}")
        return (f"{got.get('Protocol version', '?')} {got.get('Ciphersuite', '?')} "
                f"{got.get('Server Temp Key', '?').split(',')[0]}")

    # ------------------------------------------------------------ backends
    def start_backends(self):
        d = self.tmp / "backends"
        d.mkdir()
        # /login: the app sets its session cookie; /whoami: the session
        # cookie it received (to check the shared-store rows); everything
        # else: 200, 1 KiB, no Set-Cookie.
        servers = "".join(
            f'  server {{ listen {HOST}:{p} backlog=4096;\n'
            f'    location = /login {{ add_header X-Backend b{i}; '
            f'add_header Set-Cookie "session={SESSION}; Path=/; HttpOnly"; return 200 "{BODY}"; }}\n'
            f'    location = /whoami {{ add_header X-Backend b{i}; return 200 "$cookie_session"; }}\n'
            f'    location / {{ add_header X-Backend b{i}; return 200 "{BODY}"; }} }}\n'
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

    def start_redis(self):
        """A redis-server without persistence for the Redis store row."""
        d = self.tmp / "redis"
        d.mkdir()
        port = self.args.redis_port
        self.redis_proc = start([tool("redis-server"), "--port", str(port), "--bind", HOST,
                                 "--save", "", "--appendonly", "no", "--dir", str(d)], d / "out.log")
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                with socket.create_connection((HOST, port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        sys.exit(f"redis-server on {port} did not start: {(d / 'out.log').read_text()}")

    def nginx_head(self, d, workers=1):
        return (f"worker_processes {workers};\nworker_rlimit_nofile 65536;\ndaemon off;\n"
                f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
                f"events {{ worker_connections 32768; }}\n")

    def nginx_temp(self, d):
        return "".join(f"  {k}_temp_path {d}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))

    # ------------------------------------------------------------ proxies
    def start_proxy(self, name):
        name = ALIASES.get(name, name)
        d = self.tmp / f"{name}-{time.time_ns()}"
        d.mkdir()
        kind, policy = name.split("_", 1)
        w = self.args.workers
        be = self.backends
        tls = tls_policy(name)
        if kind == "nginx":
            # a TLS row: round robin, TLS 1.3 only, the run's certificate,
            # tickets (the default) and a session cache
            balance = "" if tls else {"rr": "", "iphash": "ip_hash;"}[policy]
            listen = (f"listen {HOST}:{self.port} ssl http2 backlog=4096;\n"
                      f"    ssl_certificate {self.cert}; ssl_certificate_key {self.key};\n"
                      f"    ssl_protocols TLSv1.3; ssl_session_tickets on; ssl_session_cache shared:SSL:10m;"
                      if tls else f"listen {HOST}:{self.port} backlog=4096;")
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
    {listen}
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
            p = start([tool("nginx"), "-p", f"{d}/", "-c", str(conf)], d / "out.log", role="proxy")
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
            p = start([tool("haproxy"), "-db", "-f", str(conf)], d / "out.log", role="proxy")
        else:
            policy = policy.removesuffix("_mixed")
            pol = {"rr": "round_robin", "rr_reloading": "round_robin", "iphash": "ip_hash", "cookie": "cookie",
                   "store_memory": "round_robin", "store_redis": "round_robin",
                   "tls": "round_robin", "tls_handshake": "round_robin", "tls_resumed": "round_robin"}[policy]
            sticky = '[pools.web.sticky]\ncookie = "slb_route"\nsecret = "bench"\n' if pol == "cookie" else ""
            if policy.startswith("store_"):
                sticky = '[pools.web.session]\napp_cookie = "session"\n'
            if policy == "store_redis":
                sticky += f'[store]\nkind = "redis"\nurl = "redis://{HOST}:{self.args.redis_port}/0"\n'
            # a TLS row: its one listener is the TLS one, and the admin
            # listener tells the handshakes it served (full, resumed)
            listen = (f'admin_listen = "{HOST}:{self.port + 30}"\n[[server.tls]]\nlisten = "{HOST}:{self.port}"\n'
                      f'certificates = [ {{ cert = "{self.cert}", key = "{self.key}" }} ]\n'
                      if tls else "")
            # the reloading row: an admin listener tells the reloads applied
            reloading = policy == "rr_reloading"
            if reloading:
                listen = f'admin_listen = "{HOST}:{self.port + 30}"\n'
            conf = d / "sessionlb.toml"
            conf.write_text(f"""[server]
{"" if tls else f'listen = ["{HOST}:{self.port}"]{chr(10)}'}workers = {w}
{listen}[pools.web]
policy = "{pol}"
{slb_backends(be)}
{sticky}[log]
access_log = {str(self.args.access_log).lower()}
""")
            p = start([self.slb, "run", "-c", str(conf)], d / "out.log", role="proxy",
                      env=dict(os.environ, RUST_LOG="warn"))
            if tls:
                p.admin = self.port + 30
            if reloading:
                p.reload_admin = self.port + 30
            p.conf = conf
        if not wait_http(self.port, tls=self.tls_ctx if tls else None):
            stop(p)
            sys.exit(f"{name} did not start; see {d}")
        return p

    def cookies(self, name):
        """The three sessions' extra cookie: one per backend for sticky configs."""
        name = ALIASES.get(name, name)
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
        if name.endswith("_mixed"):
            return [self.login(name) for _ in range(3)]
        if name in STORE_ROWS:
            # every connection replays the one ticket, as a browser's
            # connection carries its own client's session
            return [self.login(name)]
        return ["", "", ""]

    def login(self, name):
        """One client session's login through the proxy: its ticket cookie
        (`slb_sid=...`), checked to stand for the app's session."""
        req = urllib.request.Request(f"http://{HOST}:{self.port}/login", data=b"", method="POST")
        r = urllib.request.urlopen(req, timeout=5)
        set_cookies = r.headers.get_all("Set-Cookie") or []
        ticket = next((v.split(";")[0] for v in set_cookies if v.startswith("slb_sid=")), None)
        if r.status != 200 or not ticket or any(v.startswith("session=") for v in set_cookies):
            sys.exit(f"{name}: login through the proxy gave {r.status} {set_cookies}")
        # the steady state: the ticket brings the app's session to the
        # backend, and the response changes nothing
        req = urllib.request.Request(f"http://{HOST}:{self.port}/whoami",
                                     headers={"Cookie": f"theme=dark; {ticket}"})
        r = urllib.request.urlopen(req, timeout=5)
        body = r.read().decode()
        if r.status != 200 or body != SESSION or r.headers.get_all("Set-Cookie"):
            sys.exit(f"{name}: the ticket did not bring the session: {r.status} {body[:80]!r} "
                     f"{r.headers.get_all('Set-Cookie')}")
        return ticket

    def wrk_start(self, seconds, cookies, port=None, name=""):
        """The row's client: wrk (https:// for the keep-alive TLS row), or
        tls_connect, a new connection per request, for the handshake rows
        (--connections threads)."""
        port = port or self.port
        tls = tls_policy(name)
        if tls in ("tls_handshake", "tls_resumed"):
            cmd = [self.tls_connect, "full" if tls == "tls_handshake" else "resumed", f"{HOST}:{port}",
                   str(seconds), str(self.args.connections), str(self.cert)]
        else:
            script = self.tmp / "bench.lua"
            if not script.exists():
                script.write_text(WRK_SCRIPT)
            cmd = [tool("wrk"), f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{seconds}s",
                   "--timeout", "5s", "-s", str(script), f"http{'s' if tls else ''}://{HOST}:{port}/", "--", *cookies]
        return subprocess.Popen(pinned(cmd, "rest"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def wrk(self, seconds, cookies, name=""):
        return wrk_result(self.wrk_start(seconds, cookies, name=name))

    def handshakes(self, p):
        """sessionlb's TLS handshakes so far, from its admin /metrics
        (`sessionlb_tls_handshakes_total{kind=...}`): {"full": n, "resumed": n},
        or None (no admin listener, or no such metric)."""
        if not hasattr(p, "admin"):
            return None
        try:
            text = urllib.request.urlopen(f"http://{HOST}:{p.admin}/metrics", timeout=5).read().decode()
        except Exception:
            return None
        got = {}
        for kind, v in re.findall(r'^sessionlb_tls_handshakes_total\{[^}]*kind="(\w+)"[^}]*\}\s+(\S+)', text, re.M):
            got[kind] = got.get(kind, 0) + float(v)
        return got or None

    def run_one(self, name):
        p = self.start_proxy(name)
        try:
            cookies = self.cookies(name)
            # what a TLS row's proxy serves an OpenSSL client (wrk's)
            negotiated = self.tls_check(self.port) if tls_policy(name) else None
            self.wrk(self.args.warmup, cookies, name)
            # A run during which the hypervisor took CPU time from this
            # machine (steal), or other work on it did, measures the
            # neighbours, not the proxy: it is measured again, up to
            # --retries times.
            for attempt in range(self.args.retries + 1):
                r = self.measure(name, p, cookies, self.args.duration)
                if not noisy(r, self.args):
                    break
                if attempt < self.args.retries:
                    log(f"{name}: {r['steal_pct']:.1f}% steal, {r['other_pct']:.1f}% other work during the run; "
                        f"measuring again")
        finally:
            stop(p)
        if negotiated:
            r.setdefault("negotiated", negotiated)
        return r

    def measure(self, name, p, cookies, seconds):
        """One wrk run against the proxy `p` (reloaded every 100 ms while
        wrk runs, for slb_rr_reloading)."""
        if name != "slb_rr_reloading":
            return self.measure_all([(name, p, cookies, self.port)], seconds)[0]
        before = self.reload_counts(p)
        with Reloader(p, self.backends) as reloader:
            r = self.measure_all([(name, p, cookies, self.port)], seconds)[0]
        after = self.reload_counts(p)
        r["reloads_sent"] = reloader.sent
        r["reloads"] = int(after[0] - before[0])
        r["reloads_failed"] = int(after[1] - before[1])
        return r

    def reload_counts(self, p):
        """sessionlb's configuration generation and refused reloads, from
        its admin /metrics."""
        text = urllib.request.urlopen(f"http://{HOST}:{p.reload_admin}/metrics", timeout=5).read().decode()

        def sample(name):
            m = re.search(rf"^{re.escape(name)}\s+(\S+)", text, re.M)
            if not m:
                sys.exit(f"no {name} in sessionlb's metrics")
            return float(m.group(1))

        return (sample("sessionlb_config_generation"),
                sample('sessionlb_config_reloads_total{result="failure"}'))

    def paired(self, name, rounds):
        """`name` and its reference (slb_rr; for a TLS row nginx's row of
        the same measure) running side by side on two ports, in `rounds`
        slices of --slice seconds: driven at once (--together), or in turn
        (rr, name, rr, ..., name, rr), each slice of `name` then compared
        with the mean of the rr slices on either side of it. On a shared VM
        a proxy's cost per request drifts by a third from one minute to the
        next, more than the difference measured; slices seconds apart drift
        together."""
        home = self.port
        ref = paired_ref(name)
        ports = {ref: home, name: home + 20}
        procs, cookies = {}, {}
        try:
            for row, port in ports.items():
                self.port = port
                procs[row] = self.start_proxy(row)
                cookies[row] = self.cookies(row)
                self.wrk(self.args.warmup, cookies[row], row)
            # each slice of the row, and the reference's slices it is compared with
            compared = []
            if self.args.together:
                for _ in range(rounds):
                    rr, r = self.measure_all([(row, procs[row], cookies[row], ports[row])
                                              for row in (ref, name)], self.args.slice)
                    compared.append((r, [rr]))
            else:
                rr = self.measure_on(ref, ports, procs, cookies)
                for _ in range(rounds):
                    r = self.measure_on(name, ports, procs, cookies)
                    after = self.measure_on(ref, ports, procs, cookies)
                    compared.append((r, [rr, after]))
                    rr = after
        finally:
            self.port = home
            for p in procs.values():
                stop(p)
        pairs = []
        for r, rrs in compared:
            rr = {k: statistics.mean(x[k] for x in rrs) for k in ("rps", "cpu_us_per_req", "p99_us")}
            pairs.append({"config": name, "against": ref, "rps": r["rps"], "rr_rps": rr["rps"],
                          "vs_rr": r["rps"] / rr["rps"],
                          "cpu_vs_rr": r["cpu_us_per_req"] / rr["cpu_us_per_req"],
                          "p99_us": r["p99_us"], "rr_p99_us": rr["p99_us"],
                          "cpu_us_per_req": r["cpu_us_per_req"],
                          "redis_cpu_us_per_req": r.get("redis_cpu_us_per_req"),
                          "errors": r["errors"] + sum(x["errors"] for x in rrs),
                          "noisy": any(noisy(x, self.args) for x in [r, *rrs])})
            log(f"paired {name} {len(pairs)}: {r['rps']:.0f} req/s vs {ref} {rr['rps']:.0f}: "
                f"{pairs[-1]['vs_rr']:.3f}, CPU/req {pairs[-1]['cpu_vs_rr']:.3f}"
                f"{' (noisy)' if pairs[-1]['noisy'] else ''}")
        return pairs

    def measure_on(self, row, ports, procs, cookies):
        """One --slice of `row`, alone, on its port of a --paired run."""
        self.port = ports[row]
        return self.measure(row, procs[row], cookies[row], self.args.slice)

    def measure_all(self, rows, seconds):
        """wrk against every proxy of `rows` (name, process, cookies, port)
        at once, with what it cost each proxy (and Redis) and what the
        machine lost to other guests and work. With --pin, proxies measured
        together share CPU 0 and each gets half of it, so the ratio of
        their requests/s is the inverse ratio of their costs per request,
        measured through the same moments of the machine."""
        redis = getattr(self, "redis_proc", None)
        others = [q for q in (self.backend_proc, redis) if q]
        hs0 = [self.handshakes(p) for _, p, _, _ in rows]  # before the CPU accounting: it costs the proxy
        cpu0 = [cpu_seconds(p.pid) for _, p, _, _ in rows]
        rcpu0 = cpu_seconds(redis.pid) if redis else 0.0
        stat0, own0, wrk0 = cpu_times(), sum(cpu_seconds(q.pid) for q in others), os.times()
        running = [self.wrk_start(seconds, cookies, port, name) for name, _, cookies, port in rows]
        got = [wrk_result(w) for w in running]
        wrk1, stat1 = os.times(), cpu_times()
        cpus = [cpu_seconds(p.pid) - c for (_, p, _, _), c in zip(rows, cpu0)]
        hs1 = [self.handshakes(p) for _, p, _, _ in rows]
        own = (sum(cpus) + sum(cpu_seconds(q.pid) for q in others) - own0
               + wrk1.children_user + wrk1.children_system - wrk0.children_user - wrk0.children_system)
        steal, other = steal_percent(stat0, stat1), other_percent(stat0, stat1, own)
        out = []
        for (name, _, _, _), (rps, p50, p99, n, errors, extra), cpu, h0, h1 in zip(rows, got, cpus, hs0, hs1):
            r = {"config": name, "rps": rps, "p50_us": p50, "p99_us": p99, "requests": n, "errors": errors,
                 "cpu_us_per_req": cpu * 1e6 / max(n, 1), "steal_pct": steal, "other_pct": other, **extra}
            if h0 is not None and h1 is not None:
                # the handshakes sessionlb counted during the run
                r["server_full"] = int(h1.get("full", 0) - h0.get("full", 0))
                r["server_resumed"] = int(h1.get("resumed", 0) - h0.get("resumed", 0))
            if redis and name.startswith("sessionlb_store_redis"):
                r["redis_cpu_us_per_req"] = (cpu_seconds(redis.pid) - rcpu0) * 1e6 / max(n, 1)
            out.append(r)
        return out

    # ------------------------------------------------------------ idle memory
    def idle(self, name, n):
        p = self.start_proxy(name)
        try:
            # shared store: each connection's request carries a session's
            # ticket, so each holds what it remembers of the session
            cookie = self.cookies(name)[0] if name in STORE_ROWS else "sid=s1"
            time.sleep(0.5)
            before = rss_kib(p.pid)
            tls = self.tls_ctx if tls_policy(name) else None
            ok = asyncio.run(hold_connections(self.port, n, cookie, lambda: rss_kib(p.pid), tls))
            after = ok[1]
        finally:
            stop(p)
        return {"config": name, "conns": ok[0], "rss_before_kib": before, "rss_after_kib": after,
                "kib_per_conn": (after - before) / max(ok[0], 1)}


async def hold_connections(port, n, cookie, measure, tls=None):
    """Opens n keep-alive connections (over TLS with the ssl context
    `tls`), one GET each (with `cookie`), and measures while they are all
    open and idle."""
    conns = []
    sem = asyncio.Semaphore(256)
    secure = {"ssl": tls, "server_hostname": "localhost"} if tls else {}
    request = f"GET / HTTP/1.1\r\nHost: bench\r\nCookie: theme=dark; {cookie}\r\n\r\n".encode()

    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port, **secure), 10)
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


def wrk_result(proc):
    """A client's RESULT line: wrk's (requests/s, p50, p99, requests,
    errors), and for tls_connect what else it says: the handshakes it saw
    (full, resumed) and what was negotiated."""
    out = proc.communicate()[0]
    for line in out.splitlines():
        if line.startswith("RESULT"):
            f = line.split()[1:]
            extra = ({"client_full": int(f[5]), "client_resumed": int(f[6]), "negotiated": " ".join(f[7:])}
                     if len(f) > 5 else {})
            return float(f[0]), int(f[1]), int(f[2]), int(f[3]), int(f[4]), extra
    raise RuntimeError(f"client printed no result:\n{out}")


TLS_CONNECT_MANIFEST = """[package]
name = "tls_connect"
version = "0.0.0"
edition = "2021"
publish = false

[[bin]]
name = "tls_connect"
path = "{src}"

[dependencies]
rustls = {{ version = "0.23", default-features = false, features = ["ring", "std"] }}

[workspace]
"""


def build_tls_connect():
    """benches/load/tls_connect.rs, the handshake rows' client, built as a
    package of its own under target/bench-tls-connect (the versions of the
    repository's Cargo.lock, offline if the crates are there)."""
    d = ROOT / "target" / "bench-tls-connect"
    d.mkdir(parents=True, exist_ok=True)
    (d / "Cargo.toml").write_text(TLS_CONNECT_MANIFEST.format(src=ROOT / "benches/load/tls_connect.rs"))
    shutil.copy(ROOT / "Cargo.lock", d / "Cargo.lock")
    log("building benches/load/tls_connect.rs (target/bench-tls-connect)")
    cmd = ["cargo", "build", "--release", "--quiet", "--manifest-path", str(d / "Cargo.toml"),
           "--target-dir", str(d / "target")]
    if subprocess.run(cmd + ["--offline"], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(cmd, check=True)
    return str(d / "target/release/tls_connect")


def ratio(a, b):
    return a / b if b else float("nan")


def slb_backends(be, weight=1, drain=False):
    """sessionlb's `backends = [...]` line over the three backends: the
    first with `weight`, the last draining with `drain`."""
    first = f', weight = {weight}' if weight != 1 else ""
    last = ", drain = true" if drain else ""
    return (f'backends = [{{ addr = "{HOST}:{be[0]}"{first} }}, {{ addr = "{HOST}:{be[1]}" }}, '
            f'{{ addr = "{HOST}:{be[2]}"{last} }}]')


class Reloader:
    """While in its `with`, a thread rewrites sessionlb's configuration file
    and sends it SIGHUP every 100 ms, in turn: the first backend's weight
    to 2, back to 1, the last backend draining, back. Every real backend
    stays in the file and gets requests. The file is replaced whole
    (rename), so a reload never reads half of one."""

    EVERY = 0.1

    def __init__(self, p, backends):
        self.p, self.backends = p, backends
        self.text = Path(p.conf).read_text()
        self.line = slb_backends(backends)
        if self.line not in self.text:
            sys.exit(f"slb_rr_reloading: no backends line in\n{self.text}")
        self.sent = 0
        self.done = threading.Event()

    def run(self):
        variants = [slb_backends(self.backends, weight=2), self.line,
                    slb_backends(self.backends, drain=True), self.line]
        conf = Path(self.p.conf)
        tmp = conf.with_suffix(".tmp")
        next_at = time.monotonic()
        while True:
            next_at += self.EVERY
            if self.done.wait(max(0.0, next_at - time.monotonic())):
                return
            tmp.write_text(self.text.replace(self.line, variants[self.sent % len(variants)]))
            os.replace(tmp, conf)
            os.kill(self.p.pid, signal.SIGHUP)
            self.sent += 1

    def __enter__(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        # the file as it was, for the next run of the row
        Path(self.p.conf).write_text(self.text)


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
    ap.add_argument("--redis-port", type=int, default=28090, help="the Redis store row's redis-server")
    ap.add_argument("--max-steal", type=float, default=2.0,
                    help="a run with more CPU steal (%%) than this is measured again")
    ap.add_argument("--max-other", type=float, default=5.0,
                    help="a run during which other processes used more of the machine (%%) than this "
                         "is measured again")
    ap.add_argument("--retries", type=int, default=3, help="measurements again per run at most")
    ap.add_argument("--access-log", action="store_true", help="sessionlb with its access log on")
    ap.add_argument("--configs", default="nginx_rr haproxy_rr slb_rr nginx_iphash slb_iphash haproxy_cookie slb_cookie "
                    "sessionlb_store_memory sessionlb_store_redis nginx_tls slb_tls nginx_tls_handshake "
                    "slb_tls_handshake nginx_tls_resumed slb_tls_resumed")
    ap.add_argument("--paired", type=int, default=0, metavar="N",
                    help="also measure each shared-store row in N slices alternating with slb_rr slices "
                         "(sessionlb's TLS rows: with nginx's row of the same measure)")
    ap.add_argument("--slice", type=int, default=3, help="seconds per --paired slice")
    ap.add_argument("--together", action="store_true",
                    help="--paired: drive slb_rr and the row at once instead of in turn (use with --pin)")
    ap.add_argument("--pin", action="store_true",
                    help="the proxy under test on CPU 0, backends, Redis and wrk on CPU 1")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    if args.pin:
        PIN.update(proxy=0, rest=1)
    if not Path(args.sessionlb).exists():
        sys.exit(f"{args.sessionlb} not found: run `cargo build --release` first")
    configs = args.configs.split()
    uses_redis = any(c.startswith("sessionlb_store_redis") for c in configs)
    ensure_tools(redis=uses_redis)
    uses_tls = any(tls_policy(c) for c in configs)
    tls_connect = (build_tls_connect()
                   if any(tls_policy(c) in ("tls_handshake", "tls_resumed") for c in configs) else None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results, idle, paired = [], [], []
    with tempfile.TemporaryDirectory(prefix="sessionlb-compare-") as tmp:
        bench = Bench(args, tmp)
        bench.tls_connect = tls_connect
        try:
            if uses_tls:
                bench.make_cert()
            bench.start_backends()
            if uses_redis:
                bench.start_redis()
            for rep in range(1, args.repeats + 1):
                for name in configs:
                    r = bench.run_one(name)
                    r["rep"] = rep
                    results.append(r)
                    redis = (f" redis cpu {r['redis_cpu_us_per_req']:.1f}us/req"
                             if "redis_cpu_us_per_req" in r else "")
                    if "client_full" in r:
                        redis += f" handshakes full {r['client_full']} resumed {r['client_resumed']}"
                    if "server_full" in r:
                        redis += f" (sessionlb counted full {r['server_full']} resumed {r['server_resumed']})"
                    if "negotiated" in r:
                        redis += f" [{r['negotiated']}]"
                    if "reloads" in r:
                        redis += (f" reloads {r['reloads']} applied ({r['reloads_sent']} SIGHUP sent, "
                                  f"{r['reloads_failed']} refused)")
                    log(f"rep {rep} {name}: {r['rps']:.0f} req/s p50 {r['p50_us']}us p99 {r['p99_us']}us "
                        f"cpu {r['cpu_us_per_req']:.1f}us/req{redis} steal {r['steal_pct']:.1f}% "
                        f"other {r['other_pct']:.1f}% errors {r['errors']}")
            for name in (c for c in configs if args.paired and (c in STORE_ROWS or
                                                                (tls_policy(c) and c.startswith("slb_")))):
                paired += bench.paired(name, args.paired)
            if args.idle:
                tls_idle = ["nginx_tls", "slb_tls"] if "slb_tls" in configs else []
                for name in ["nginx_rr", "slb_rr"] + [c for c in configs if c == "sessionlb_store_memory"] + tls_idle:
                    i = bench.idle(name, args.idle)
                    idle.append(i)
                    log(f"idle {name}: {i['conns']} conns, {i['kib_per_conn']:.2f} KiB/conn")
        finally:
            for p in list(STARTED):
                stop(p)
    report(results, idle, args)
    paired_report(paired, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "idle": idle, "paired": paired}, indent=1))


def store_report(by_rep, args):
    """The shared-store rows against sessionlb's own round robin row (and
    nginx's) of the same repetition, with their targets."""
    names = [n for n in STORE_ROWS if any(n in rows for rows in by_rep.values())]
    if not names:
        return
    print("\nShared-store mode, steady state (sessions replaying their ticket: one on every "
          "connection, or three mixed on each connection for _mixed), against sessionlb "
          "round robin (slb_rr) and nginx round robin of the same repetition:\n")
    print("| rep | config | req/s | vs slb_rr | vs nginx_rr | p50 ms | p99 ms | CPU µs/req | "
          "CPU vs slb_rr | redis CPU µs/req | steal % | other % | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rep, rows in sorted(by_rep.items()):
        slb, ngx = rows.get("slb_rr"), rows.get("nginx_rr")
        for name in names:
            r = rows.get(name)
            if not r:
                continue
            rcpu = r.get("redis_cpu_us_per_req")
            print(f"| {rep} | {name} | {r['rps']:,.0f} | "
                  f"{ratio(r['rps'], slb['rps']) if slb else float('nan'):.3f} | "
                  f"{ratio(r['rps'], ngx['rps']) if ngx else float('nan'):.3f} | "
                  f"{r['p50_us'] / 1000:.3f} | {r['p99_us'] / 1000:.3f} | {r['cpu_us_per_req']:.1f} | "
                  f"{ratio(r['cpu_us_per_req'], slb['cpu_us_per_req']) if slb else float('nan'):.2f} | "
                  f"{'' if rcpu is None else f'{rcpu:.1f}'} | {r.get('steal_pct', 0):.1f} | "
                  f"{r.get('other_pct', 0):.1f} | {r['errors']} |")
    print("\n| config | target vs slb_rr | repetitions | req/s vs slb_rr (median) | verdict | "
          "clean repetitions | median of clean | verdict | CPU µs/req (median) | "
          "redis CPU µs/req (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        target = STORE_ROWS[name]
        goal = STORE_GOALS.get(name)
        pairs = [(rows[name], rows["slb_rr"]) for rows in by_rep.values() if name in rows and "slb_rr" in rows]
        clean = [(a, b) for a, b in pairs if not noisy(a, args) and not noisy(b, args)]

        def med(ps):
            return statistics.median(a["rps"] / b["rps"] for a, b in ps) if ps else float("nan")

        def verdict(x):
            if x != x or target is None:
                return "n/a"
            v = "meets" if x >= target else "MISSES"
            if goal is not None:
                v += f", goal {goal:g}x {'met' if x >= goal else 'not met'}"
            return v

        all_med, clean_med = med(pairs), med(clean)
        cpu = statistics.median(a["cpu_us_per_req"] for a, _ in pairs) if pairs else float("nan")
        rcpus = [a["redis_cpu_us_per_req"] for a, _ in pairs if "redis_cpu_us_per_req" in a]
        rcpu = f"{statistics.median(rcpus):.1f}" if rcpus else ""
        tgt = "none" if target is None else f">= {target:g}x" + (f" (goal {goal:g}x)" if goal is not None else "")
        print(f"| {name} | {tgt} | {len(pairs)} | {all_med:.3f} | {verdict(all_med)} | {len(clean)} | "
              f"{clean_med:.3f} | {verdict(clean_med)} | {cpu:.1f} | {rcpu} |")


def reload_report(by_rep, args):
    """slb_rr_reloading beside slb_rr of the same repetition: what reloading
    every 100 ms under load costs the requests."""
    pairs = [(rep, rows["slb_rr_reloading"], rows["slb_rr"]) for rep, rows in sorted(by_rep.items())
             if "slb_rr_reloading" in rows and "slb_rr" in rows]
    if not pairs:
        return
    print("\nReload under load: sessionlb round robin with its configuration reloaded every 100 ms "
          "(SIGHUP; a weight changed, back, a backend draining, back) beside slb_rr of the same "
          "repetition:\n")
    print("| rep | slb_rr req/s | slb_rr_reloading req/s | req/s ratio | slb_rr p99 ms | "
          "slb_rr_reloading p99 ms | p99 ratio | reloads applied (SIGHUP sent) | refused | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rep, r, rr in pairs:
        print(f"| {rep} | {rr['rps']:,.0f} | {r['rps']:,.0f} | {ratio(r['rps'], rr['rps']):.3f} | "
              f"{rr['p99_us'] / 1000:.3f} | {r['p99_us'] / 1000:.3f} | {ratio(r['p99_us'], rr['p99_us']):.2f} | "
              f"{r['reloads']} ({r['reloads_sent']}) | {r['reloads_failed']} | {r['errors'] + rr['errors']} |")
    clean = [(r, rr) for _, r, rr in pairs if not noisy(r, args) and not noisy(rr, args)]
    for label, ps in (("all", [(r, rr) for _, r, rr in pairs]), ("clean", clean)):
        if not ps:
            continue
        med = statistics.median
        print(f"\nmedian ({label}, {len(ps)} repetitions): slb_rr {med(rr['rps'] for _, rr in ps):,.0f} req/s "
              f"p99 {med(rr['p99_us'] for _, rr in ps) / 1000:.3f} ms; slb_rr_reloading "
              f"{med(r['rps'] for r, _ in ps):,.0f} req/s p99 {med(r['p99_us'] for r, _ in ps) / 1000:.3f} ms, "
              f"{med(r['reloads'] for r, _ in ps):.0f} reloads per run; req/s ratio "
              f"{med(r['rps'] / rr['rps'] for r, rr in ps):.3f}, p99 ratio "
              f"{med(r['p99_us'] / rr['p99_us'] for r, rr in ps):.2f}")


def tls_report(by_rep, args):
    """Each TLS row against nginx's row of the same measure and repetition,
    with sessionlb's targets, the handshakes the client saw (and sessionlb
    counted) and what was negotiated."""
    names = [n for n in dict.fromkeys(n for rows in by_rep.values() for n in rows) if tls_policy(n)]
    if not names:
        return
    print("\nTLS termination (one certificate, ECDSA P-256; TLS 1.3; round robin), each row against nginx's "
          "row of the same measure in the same repetition. tls: wrk keep-alive over HTTPS (req/s); "
          "tls_handshake / tls_resumed: tls_connect, a new connection per request with a full / resumed "
          "handshake (connections/s):\n")
    print("| rep | config | req/s | vs nginx | p50 ms | p99 ms | CPU µs/req | CPU vs nginx | "
          "client saw full/resumed | sessionlb counted full/resumed | negotiated | steal % | other % | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rep, rows in sorted(by_rep.items()):
        for name in names:
            r = rows.get(name)
            if not r:
                continue
            base = rows.get(baseline(name))
            seen = f"{r['client_full']}/{r['client_resumed']}" if "client_full" in r else ""
            counted = f"{r['server_full']}/{r['server_resumed']}" if "server_full" in r else ""
            print(f"| {rep} | {name} | {r['rps']:,.0f} | "
                  f"{ratio(r['rps'], base['rps']) if base else float('nan'):.3f} | "
                  f"{r['p50_us'] / 1000:.3f} | {r['p99_us'] / 1000:.3f} | {r['cpu_us_per_req']:.1f} | "
                  f"{ratio(r['cpu_us_per_req'], base['cpu_us_per_req']) if base else float('nan'):.2f} | "
                  f"{seen} | {counted} | {r.get('negotiated', '')} | {r.get('steal_pct', 0):.1f} | "
                  f"{r.get('other_pct', 0):.1f} | {r['errors']} |")
    print("\n| measure | client | target (sessionlb vs nginx) | repetitions | req/s vs nginx (median) | verdict | "
          "clean repetitions | median of clean | verdict | nginx CPU µs/req (median) | "
          "sessionlb CPU µs/req (median) | CPU vs nginx (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for policy, (client, target) in TLS_ROWS.items():
        pairs = [(rows[f"slb_{policy}"], rows[f"nginx_{policy}"]) for rows in by_rep.values()
                 if f"slb_{policy}" in rows and f"nginx_{policy}" in rows]
        if not pairs:
            continue
        clean = [(a, b) for a, b in pairs if not noisy(a, args) and not noisy(b, args)]

        def med(ps, f=lambda a, b: a["rps"] / b["rps"]):
            return statistics.median(f(a, b) for a, b in ps) if ps else float("nan")

        def verdict(x):
            return "n/a" if x != x or target is None else ("meets" if x >= target else "MISSES")

        all_med, clean_med = med(pairs), med(clean)
        print(f"| {policy} | {client} | {'none' if target is None else f'>= {target:g}x'} | {len(pairs)} | "
              f"{all_med:.3f} | {verdict(all_med)} | {len(clean)} | {clean_med:.3f} | {verdict(clean_med)} | "
              f"{med(pairs, lambda a, b: b['cpu_us_per_req']):.1f} | {med(pairs, lambda a, b: a['cpu_us_per_req']):.1f} | "
              f"{med(pairs, lambda a, b: a['cpu_us_per_req'] / b['cpu_us_per_req']):.3f} |")


def paired_ref(name):
    """What --paired measures a row against: slb_rr for a shared-store row,
    nginx's row of the same measure for a TLS row."""
    return baseline(name) if tls_policy(name) else "slb_rr"


def paired_report(pairs, args):
    if not pairs:
        return
    how = ("driven at once with its reference, each slice against the reference's of the same seconds"
           if args.together else "measured in turn with its reference, each slice against the mean of the "
           "reference's slices before and after it")
    kinds = [k for k, present in (("shared-store rows (reference slb_rr)", any(p["against"] == "slb_rr" for p in pairs)),
                                  ("TLS rows of sessionlb (reference: nginx's row of the same measure)",
                                   any(p["against"] != "slb_rr" for p in pairs))) if present]
    kinds = " and ".join(kinds)
    print(f"\n{kinds[:1].upper()}{kinds[1:]}, each {how} ({args.slice}s slices"
          f"{'; proxies on CPU 0, the rest on CPU 1' if args.pin else ''}):\n")
    print("| config | reference | target vs reference | slices | req/s vs reference (median, min-max) | verdict | "
          "clean slices | median of clean | CPU/req vs reference | p99 ms (reference's p99) | redis CPU µs/req | "
          "errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(p["config"] for p in pairs):
        ps = [p for p in pairs if p["config"] == name]
        clean = [p for p in ps if not p["noisy"]]
        target = STORE_ROWS[name] if name in STORE_ROWS else TLS_ROWS[tls_policy(name)][1]
        med = statistics.median(p["vs_rr"] for p in ps)
        cmed = statistics.median(p["vs_rr"] for p in clean) if clean else float("nan")
        verdict = "n/a" if target is None else ("meets" if med >= target else "MISSES")
        goal = STORE_GOALS.get(name)
        if goal is not None:
            verdict += f", goal {goal:g}x {'met' if med >= goal else 'not met'}"
        rcpus = [p["redis_cpu_us_per_req"] for p in ps if p["redis_cpu_us_per_req"] is not None]
        print(f"| {name} | {ps[0]['against']} | {'none' if target is None else f'>= {target:g}x'} | {len(ps)} | "
              f"{med:.3f} ({min(p['vs_rr'] for p in ps):.2f}-{max(p['vs_rr'] for p in ps):.2f}) | {verdict} | "
              f"{len(clean)} | {cmed:.3f} | {statistics.median(p['cpu_vs_rr'] for p in ps):.3f} | "
              f"{statistics.median(p['p99_us'] for p in ps) / 1000:.2f} "
              f"({statistics.median(p['rr_p99_us'] for p in ps) / 1000:.2f}) | "
              f"{f'{statistics.median(rcpus):.1f}' if rcpus else ''} | {sum(p['errors'] for p in ps)} |")


def report(results, idle, args):
    print(f"\n{args.repeats} repetitions, {args.duration}s each, {args.workers} worker(s) per proxy, "
          f"wrk -t{args.threads} -c{args.connections}, 3 loopback nginx backends, 1 KiB responses\n")
    print("| rep | config | req/s | ratio | p50 ms | p99 ms | p99 ratio | CPU µs/req | CPU ratio | steal % | "
          "other % | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_rep = {}
    for r in results:
        by_rep.setdefault(r["rep"], {})[r["config"]] = r
    ratios = {}
    clean = {}  # only repetitions where neither run lost time to steal or other work
    for rep, rows in sorted(by_rep.items()):
        for name, r in rows.items():
            base = rows.get(baseline(name))
            rr = [ratio(r["rps"], base["rps"]), ratio(r["p99_us"], base["p99_us"]),
                  ratio(r["cpu_us_per_req"], base["cpu_us_per_req"])] if base else [float("nan")] * 3
            ratios.setdefault(name, []).append(rr)
            if base and not noisy(r, args) and not noisy(base, args):
                clean.setdefault(name, []).append(rr)
            print(f"| {rep} | {name} | {r['rps']:,.0f} | {rr[0]:.2f} | {r['p50_us'] / 1000:.3f} | "
                  f"{r['p99_us'] / 1000:.3f} | {rr[1]:.2f} | {r['cpu_us_per_req']:.1f} | {rr[2]:.2f} | "
                  f"{r.get('steal_pct', 0):.1f} | {r.get('other_pct', 0):.1f} | {r['errors']} |")
    print("\n(ratio: to nginx round robin of the same repetition; a TLS row's to nginx's row of the same "
          "TLS measure)\n\nMedian over repetitions of the per-repetition ratios to nginx round robin "
          "(TLS rows: to nginx's TLS row):\n")
    print("| config | req/s ratio | p99 ratio | CPU/req ratio |")
    print("|---|---|---|---|")
    for name, rs in ratios.items():
        med = [statistics.median(x[i] for x in rs) for i in range(3)]
        print(f"| {name} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} |")
    print(f"\nThe same over the repetitions where neither the run nor nginx's lost more than "
          f"{args.max_steal:g}% of the machine to steal (another guest of the host) nor more than "
          f"{args.max_other:g}% to other work on it:\n")
    print("| config | repetitions | req/s ratio | p99 ratio | CPU/req ratio |")
    print("|---|---|---|---|---|")
    for name in ratios:
        rs = clean.get(name, [])
        med = [statistics.median(x[i] for x in rs) if rs else float("nan") for i in range(3)]
        print(f"| {name} | {len(rs)} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} |")
    for label, table in (("all", ratios), ("clean", clean)):
        slb = {n: [x[0] for x in rs] for n, rs in table.items() if n.startswith("slb_")}
        if "slb_rr" not in slb:
            continue
        for n in ("slb_iphash", "slb_cookie"):
            pairs = [(r[n], r["slb_rr"]) for r in by_rep.values() if n in r and "slb_rr" in r
                     and (label == "all" or not (noisy(r[n], args) or noisy(r["slb_rr"], args)))]
            if pairs:
                rel = statistics.median(a["rps"] / b["rps"] for a, b in pairs)
                print(f"\n{n} vs slb_rr, same repetition ({label}, {len(pairs)}): {rel:.3f}")
    store_report(by_rep, args)
    reload_report(by_rep, args)
    tls_report(by_rep, args)
    if idle:
        print("\n| proxy | idle conns | RSS before KiB | RSS with conns KiB | KiB per conn |")
        print("|---|---|---|---|---|")
        for i in idle:
            print(f"| {i['config']} | {i['conns']} | {i['rss_before_kib']} | {i['rss_after_kib']} | {i['kib_per_conn']:.2f} |")


if __name__ == "__main__":
    main()
