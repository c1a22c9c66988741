#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind (steady
# on a noisy machine: it counts instructions, not seconds).
#
# Each proxy runs under `valgrind --tool=callgrind` in front of three nginx
# backends (1 KiB responses) and serves N1, then, in a second run, N2
# keep-alive requests from `h2load --h1 -c 10`; (I(N2) - I(N1)) / (N2 - N1)
# is the cost of one request without start-up and shut-down. Rows:
#   sessionlb round robin, sessionlb cookie (steady state: the route cookie
#   replayed), hyper_floor (examples/hyper_floor.rs: hyper's http1 server and
#   client with a connection pool and nothing else, the floor under
#   sessionlb's design), exchange_floor (examples/exchange_floor.rs: the same
#   with a hand-written backend exchange instead of hyper's client, a
#   prototype that measures what hyper's client side costs), nginx round
#   robin (one worker).
#
# Usage, from the repository root:
#   cargo build --release --bin sessionlb --example hyper_floor --example exchange_floor
#   bash benches/load/instructions.sh [N1 N2]
# Installs valgrind, h2load (nghttp2-client) and nginx from the Debian
# packages when missing. Loopback only; every process is stopped at exit.
set -euo pipefail

N1=${1:-1000}
N2=${2:-11000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SLB=${SESSIONLB_BIN:-$ROOT/target/release/sessionlb}
FLOOR=${FLOOR_BIN:-$ROOT/target/release/examples/hyper_floor}
EXCHANGE=${EXCHANGE_BIN:-$ROOT/target/release/examples/exchange_floor}
PORT=${PORT:-29080}
B1=$((PORT + 1)) B2=$((PORT + 2)) B3=$((PORT + 3))
WORK=$(mktemp -d /tmp/sessionlb-instructions-XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for bin in "$SLB" "$FLOOR" "$EXCHANGE"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build --release --bin sessionlb --example hyper_floor --example exchange_floor" >&2; exit 1; }
done

BODY=$(printf 'a%.0s' $(seq 1 1024))
nginx_common() {
  cat <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $WORK/cb; proxy_temp_path $WORK/pt; fastcgi_temp_path $WORK/ft;
  uwsgi_temp_path $WORK/ut; scgi_temp_path $WORK/st;
CONF
}
{
  nginx_common backends
  for i in 1 2 3; do
    echo "  server { listen 127.0.0.1:$((PORT + i)); location / { add_header X-Backend b$i; return 200 \"$BODY\"; } }"
  done
  echo "}"
} >"$WORK/backends.conf"
{
  nginx_common proxy
  echo "  upstream be { server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3; keepalive 64; }"
  echo "  server { listen 127.0.0.1:$PORT; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  echo "}"
} >"$WORK/nginx.conf"
slb_conf() {
  cat <<CONF
[server]
listen = ["127.0.0.1:$PORT"]
workers = 1
[pools.web]
policy = "$1"
backends = [{ addr = "127.0.0.1:$B1" }, { addr = "127.0.0.1:$B2" }, { addr = "127.0.0.1:$B3" }]
[log]
access_log = false
CONF
  if [ "$1" = cookie ]; then printf '[pools.web.sticky]\nsecret = "instructions"\n'; fi
}
slb_conf round_robin >"$WORK/rr.toml"
slb_conf cookie >"$WORK/cookie.toml"

"$NGINX" -c "$WORK/backends.conf" -p "$WORK" &
PIDS+=($!)

wait_up() {
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2
  return 1
}
wait_up "$B1"

# total instructions of one callgrind run serving $1 requests
run() {
  local n=$1 out=$2 cookie=$3; shift 3
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$out.log" &
  local pid=$!
  wait_up "$PORT"
  h2load --h1 -n "$n" -c 10 -H "Cookie: theme=dark; $cookie" "http://127.0.0.1:$PORT/" >"$out.h2load"
  grep -q " 0 failed, 0 errored" "$out.h2load" || grep -E "requests:" "$out.h2load" >&2
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  callgrind_annotate "$out" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",", "", $1); print $1}'
}

per_request() {
  local name=$1 cookie=$2; shift 2
  local a b
  a=$(run "$N1" "$WORK/$name-a.out" "$cookie" "$@")
  b=$(run "$N2" "$WORK/$name-b.out" "$cookie" "$@")
  echo "$(( (b - a) / (N2 - N1) ))"
}

# the steady-state route cookie: the one sessionlb hands out
"$SLB" run -c "$WORK/cookie.toml" >/dev/null 2>&1 &
PIDS+=($!)
wait_up "$PORT"
ROUTE=$(curl -s -D - -o /dev/null "http://127.0.0.1:$PORT/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(slb_route=[^;]*\).*/\1/p')
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
unset 'PIDS[-1]'
while curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do sleep 0.1; done

echo "instructions per proxied request (callgrind, h2load --h1 -c 10, $N2 minus $N1 requests)"
echo "| proxy | instructions per request |"
echo "|---|---|"
echo "| sessionlb round robin | $(per_request slb_rr "" "$SLB" run -c "$WORK/rr.toml") |"
echo "| sessionlb cookie (steady state) | $(per_request slb_cookie "$ROUTE" "$SLB" run -c "$WORK/cookie.toml") |"
echo "| hyper_floor (hyper + tokio, nothing else) | $(per_request floor "" "$FLOOR" "127.0.0.1:$PORT" "127.0.0.1:$B1" "127.0.0.1:$B2" "127.0.0.1:$B3") |"
echo "| exchange_floor (hyper server, hand-written backend exchange) | $(per_request exchange "" "$EXCHANGE" "127.0.0.1:$PORT" "127.0.0.1:$B1" "127.0.0.1:$B2" "127.0.0.1:$B3") |"
echo "| nginx round robin | $(per_request nginx "" "$NGINX" -c "$WORK/nginx.conf" -p "$WORK") |"
