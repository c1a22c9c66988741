#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind (steady
# on a noisy machine: it counts instructions, not seconds).
#
# Each proxy runs under `valgrind --tool=callgrind` in front of three nginx
# backends (1 KiB responses) and serves N1, then, in a second run, N2
# keep-alive requests from `h2load --h1 -c 10`; (I(N2) - I(N1)) / (N2 - N1)
# is the cost of one request without start-up and shut-down. Rows:
#   sessionlb round robin, sessionlb cookie (steady state: the route cookie
#   replayed), sessionlb shared store with the memory store and with Redis
#   (round robin plus [pools.web.session] app_cookie = "session"; steady
#   state: one `POST /login` through the proxy, whose backend answers
#   `Set-Cookie: session=<200 base64-like bytes>`, gives the `slb_sid` ticket
#   that every request then replays; the session does not change. Redis is a
#   redis-server started here, outside valgrind: only the proxy's side of
#   each GETEX is counted; its 1 s background PING adds a few instructions
#   per second of run), hyper_floor (examples/hyper_floor.rs: hyper's http1
#   server and client with a connection pool and nothing else, the floor
#   under sessionlb's design), exchange_floor (examples/exchange_floor.rs:
#   the same with a hand-written backend exchange instead of hyper's client,
#   a prototype that measures what hyper's client side costs), nginx round
#   robin (one worker).
#
# Usage, from the repository root:
#   cargo build --release --bin sessionlb --example hyper_floor --example exchange_floor
#   bash benches/load/instructions.sh [N1 N2]
# KEEP_WORK=1 keeps the callgrind outputs (NAME-a.out, NAME-b.out) for
# callgrind_annotate; ROWS="slb_rr slb_store_memory" runs only the rows
# named (slb_rr, slb_cookie, slb_store_memory, slb_store_redis, floor,
# exchange, nginx).
# Installs valgrind, h2load (nghttp2-client), nginx and redis-server from the
# Debian packages when missing. Loopback only; every process is stopped at exit.
set -euo pipefail

N1=${1:-1000}
N2=${2:-11000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SLB=${SESSIONLB_BIN:-$ROOT/target/release/sessionlb}
FLOOR=${FLOOR_BIN:-$ROOT/target/release/examples/hyper_floor}
EXCHANGE=${EXCHANGE_BIN:-$ROOT/target/release/examples/exchange_floor}
PORT=${PORT:-29080}
B1=$((PORT + 1)) B2=$((PORT + 2)) B3=$((PORT + 3))
REDIS_PORT=$((PORT + 10))
WORK=$(mktemp -d /tmp/sessionlb-instructions-XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "callgrind outputs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v redis-server >/dev/null || missing+=(redis-server)
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
# the app's session cookie: 200 bytes of base64 (URL alphabet)
SESSION=$(seq -s. 1 60 | head -c 150 | base64 -w0 | tr '+/' '-_')
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
    echo "  server { listen 127.0.0.1:$((PORT + i));"
    echo "    location = /login { add_header X-Backend b$i; add_header Set-Cookie \"session=$SESSION; Path=/; HttpOnly\"; return 200 \"$BODY\"; }"
    echo "    location = /whoami { add_header X-Backend b$i; return 200 \"\$cookie_session\"; }"
    echo "    location / { add_header X-Backend b$i; return 200 \"$BODY\"; } }"
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
{ slb_conf round_robin; printf '[pools.web.session]\napp_cookie = "session"\n'; } >"$WORK/store-memory.toml"
{ cat "$WORK/store-memory.toml"; printf '[store]\nkind = "redis"\nurl = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT"; } >"$WORK/store-redis.toml"

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
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done

# a session's ticket cookie (slb_sid=...): one login through the proxy,
# checked to bring the app's session to the backend
login() {
  local ticket body
  ticket=$(curl -s -X POST -D - -o /dev/null "http://127.0.0.1:$PORT/login" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(slb_sid=[^;]*\).*/\1/p')
  body=$(curl -s -H "Cookie: theme=dark; $ticket" "http://127.0.0.1:$PORT/whoami")
  if [ -z "$ticket" ] || [ "$body" != "$SESSION" ]; then
    echo "login through the proxy gave no working ticket (ticket '$ticket', backend saw '${body:0:40}')" >&2
    return 1
  fi
  echo "$ticket"
}

# total instructions of one callgrind run serving $1 requests
run() {
  local n=$1 out=$2 cookie=$3; shift 3
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$out.log" &
  local pid=$!
  wait_up "$PORT"
  # "@login": the ticket of a session logged in through this very proxy
  if [ "$cookie" = @login ]; then cookie=$(login) || { kill -TERM "$pid"; return 1; }; fi
  h2load --h1 -n "$n" -c 10 -H "Cookie: theme=dark; $cookie" "http://127.0.0.1:$PORT/" >"$out.h2load"
  grep -q " 0 failed, 0 errored" "$out.h2load" || grep -E "requests:" "$out.h2load" >&2
  grep -q "status codes: $n 2xx" "$out.h2load" || grep -E "status codes:" "$out.h2load" >&2
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  callgrind_annotate "$out" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",", "", $1); print $1}'
}

per_request() {
  local name=$1 cookie=$2; shift 2
  local a b
  if [ -n "${ROWS:-}" ] && [[ " $ROWS " != *" $name "* ]]; then echo "not run"; return; fi
  a=$(run "$N1" "$WORK/$name-a.out" "$cookie" "$@")
  b=$(run "$N2" "$WORK/$name-b.out" "$cookie" "$@")
  [[ "$a" =~ ^[0-9]+$ && "$b" =~ ^[0-9]+$ ]] || { echo failed; return; }
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
echo "| sessionlb shared store (memory) | $(per_request slb_store_memory @login "$SLB" run -c "$WORK/store-memory.toml") |"
echo "| sessionlb shared store (redis) | $(per_request slb_store_redis @login "$SLB" run -c "$WORK/store-redis.toml") |"
echo "| hyper_floor (hyper + tokio, nothing else) | $(per_request floor "" "$FLOOR" "127.0.0.1:$PORT" "127.0.0.1:$B1" "127.0.0.1:$B2" "127.0.0.1:$B3") |"
echo "| exchange_floor (hyper server, hand-written backend exchange) | $(per_request exchange "" "$EXCHANGE" "127.0.0.1:$PORT" "127.0.0.1:$B1" "127.0.0.1:$B2" "127.0.0.1:$B3") |"
echo "| nginx round robin | $(per_request nginx "" "$NGINX" -c "$WORK/nginx.conf" -p "$WORK") |"
