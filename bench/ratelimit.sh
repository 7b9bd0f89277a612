#!/usr/bin/env bash
# Requests/s through one data plane with no limiter, `limit-count` local and `limit-count` on
# Redis, side by side (interleaved rounds), and the ratios. Not a test: a measurement.
#
#   bench/ratelimit.sh      (BENCH_SECONDS per run, default 10; BENCH_ROUNDS, default 3)
#
# Layout as bench/run.sh: the data plane on cpu 0 with one tokio worker; wrk (1 thread,
# 50 connections), the upstream (nginx, `return 200 "ok"`) and the control plane on cpu 1.
# Redis is the one on 127.0.0.1:6379 (wherever the system runs it). Every request is counted
# against one key (the client address) with a limit too high to reject: the cost measured is
# the decision itself. Needs nginx and wrk (installed with apt-get when missing, as root) and
# the release binaries (`cargo build --release --bins`, honouring CARGO_TARGET_DIR).
set -euo pipefail
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$TMP"
}
trap cleanup EXIT
log() { printf '[ratelimit-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if ((${#need[@]})); then
  [[ -e /usr/sbin/policy-rc.d ]] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added_policy=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [[ -z ${added_policy:-} ]] || rm -f /usr/sbin/policy-rc.d
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
redis-cli -h 127.0.0.1 ping >/dev/null || { log "Redis must run on 127.0.0.1:6379"; exit 1; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); ADMIN=$(port); SYNC=$(port); PROXY=$(port); STATUS=$(port)
KEY=$(head -c 64 /dev/urandom | base64 -w0 | tr -dc 'a-zA-Z0-9' | head -c 40)

mkdir -p "$TMP/up"/{cb,px,fc,uw,sc}
cat >"$TMP/up/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $TMP/up/nginx.pid; error_log $TMP/up/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $TMP/up/cb; proxy_temp_path $TMP/up/px; fastcgi_temp_path $TMP/up/fc;
  uwsgi_temp_path $TMP/up/uw; scgi_temp_path $TMP/up/sc;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
NGX
taskset -c 1 "$NGINX" -p "$TMP/up" -e "$TMP/up/error.log" -c "$TMP/up/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
taskset -c 1 "$BIN/control-plane" --data-dir "$TMP/cp" --admin-listen "127.0.0.1:$ADMIN" \
  --sync-listen "127.0.0.1:$SYNC" --admin-key "$KEY" >"$TMP/cp.log" 2>&1 &
PIDS+=($!)
TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN/data-plane" --control-plane "http://127.0.0.1:$SYNC" \
  --proxy-listen "127.0.0.1:$PROXY" --status-listen "127.0.0.1:$STATUS" --node-id bench \
  --cache-dir "$TMP/dp-cache" >"$TMP/dp.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$ADMIN/admin/routes" -H "X-API-KEY: $KEY" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$ADMIN/admin/routes" -H "X-API-KEY: $KEY" >/dev/null || { log "the control plane did not start"; cat "$TMP/cp.log"; exit 1; }

put() {
  curl -sS --fail-with-body -X PUT "http://127.0.0.1:$ADMIN/admin/routes/$1" -H "X-API-KEY: $KEY" -d "$2" >/dev/null
}
UPS="\"upstream\": {\"nodes\": {\"127.0.0.1:$UP\": 1}}"
put none "{\"uri\": \"/none\", $UPS}"
put local "{\"uri\": \"/local\", $UPS, \"plugins\": {\"limit-count\": {\"count\": 1000000000, \"time_window\": 3600}}}"
put redis "{\"uri\": \"/redis\", $UPS, \"plugins\": {\"limit-count\": {\"count\": 1000000000, \"time_window\": 3600, \"policy\": \"redis\", \"redis_host\": \"127.0.0.1\"}}}"
for _ in $(seq 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROXY/redis") == 200 ]] &&
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROXY/local") == 200 ]] && break
  sleep 0.1
done
curl -sf -D - -o /dev/null "http://127.0.0.1:$PROXY/redis" | grep -qi '^x-ratelimit-limit' || { log "no limit on /redis"; cat "$TMP/dp.log"; exit 1; }

declare -A SUM
for r in $(seq "$ROUNDS"); do
  for path in none local redis; do
    taskset -c 1 wrk -t1 -c50 -d2s "http://127.0.0.1:$PROXY/$path" >/dev/null
    out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" --latency "http://127.0.0.1:$PROXY/$path")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    log "round $r /$path: $rps req/s, p99 $p99${non2xx:+, non-2xx $non2xx}"
    SUM[$path]=$(python3 -c "print(${SUM[$path]:-0} + $rps)")
  done
done
python3 - "${SUM[none]}" "${SUM[local]}" "${SUM[redis]}" "$ROUNDS" <<'PY'
import sys
none, local, redis, n = map(float, sys.argv[1:])
none, local, redis = none / n, local / n, redis / n
print(f"| no limiter | limit-count local | limit-count redis | local/none | redis/none | redis/local |")
print(f"| --- | --- | --- | --- | --- | --- |")
print(f"| {none:.0f} req/s | {local:.0f} req/s | {redis:.0f} req/s | {local/none:.2f} | {redis/none:.2f} | {redis/local:.2f} |")
PY
