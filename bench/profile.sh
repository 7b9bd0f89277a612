#!/usr/bin/env bash
# Where a data plane's CPU goes per request: perf samples of one DP (`--workers 1`, pinned to
# cpu 0) under wrk load: a (a plain route), b (jwt-auth + limit-count + prometheus), c (as b with
# the limit counted in Redis on 127.0.0.1:6379). Not a test: a profile, to read before
# optimising (issue #11). Scenario d loads 10,000 more routes
# (`/r/0` … `/r/9999`) and spreads the requests over them (a wrk Lua script); scenario e is a
# while 50 Admin API route updates a second run (config churn).
#
# `spread` measures instead of profiling: with the same 10,000 routes loaded, runs alternating
# between requests spread over all 10,000 and over 6 of them (`/r/0` … `/r/5`) — the same config
# and wrk script, so the difference is what per-route state outside the CPU's caches (and TLB)
# costs a request; prints req/s and DP CPU µs/request per run (no perf attached) and the ratios
# per round (PROFILE_ROUNDS, default 3; PROFILE_SECONDS per run).
#
#   bench/profile.sh [a|b|c|d|e|all|spread]  (default a and b; PROFILE_SECONDS, default 8; BENCH_SKIP_BUILD=1 to use
#                                    built release binaries; PROFILE_CALLGRAPH=1 for call
#                                    graphs by DWARF unwinding, much larger perf.data)
#
# Layout as bench/scenarios.sh: wrk (1 thread, 50 connections), the upstream (nginx
# `return 200 "ok"`), the control plane and Redis (pinned for the run) on cpu 1.
# `perf record -e cpu-clock` (this VM has no hardware counters). Prints, per scenario, CPU µs/request over the profile and the top symbols;
# keeps perf.data in $PROFILE_OUT (default /tmp/postern-profile).
set -euo pipefail
WHICH=${1:-ab}
SECS=${PROFILE_SECONDS:-8}
OUT=${PROFILE_OUT:-/tmp/postern-profile}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for t in nginx wrk perf taskset curl python3; do
  command -v "$t" >/dev/null 2>&1 || [[ $t == nginx && -x /usr/sbin/nginx ]] ||
    die "$t is required (apt-get install nginx wrk linux-perf)"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  (cd "$REPO" && cargo build --release --bins)
fi
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postern-profile.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
  redis_unpin
}
trap cleanup EXIT
# shellcheck source=bench/redis_affinity.sh
source "$REPO/bench/redis_affinity.sh"
redis_pin 1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); ADMIN=$(port); SYNC=$(port); DP=$(port); ST=$(port)
KEY=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
mkdir -p "$TMP"/up/{cb,px,fc,uw,sc}
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
taskset -c 0 "$BIN/data-plane" --workers 1 --control-plane "http://127.0.0.1:$SYNC" \
  --proxy-listen "127.0.0.1:$DP" --status-listen "127.0.0.1:$ST" --node-id profile-dp \
  --cache-dir "$TMP/dp-cache" >"$TMP/dp.log" 2>&1 &
DP_PID=$!
PIDS+=("$DP_PID")
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$ADMIN/admin/routes" -H "X-API-KEY: $KEY" >/dev/null && break; sleep 0.1; done
SECRET=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
EXTRA=0
[[ $WHICH == d || $WHICH == all || $WHICH == spread ]] && EXTRA=10000
python3 - "$UP" "$SECRET" "$EXTRA" >"$TMP/config.json" <<'PY'
import json, sys
up, secret, extra = sys.argv[1], sys.argv[2], int(sys.argv[3])
ups = {"nodes": {f"127.0.0.1:{up}": 1}}
limit = {"count": 1_000_000_000, "time_window": 3600, "key": "remote_addr"}
plugins = {"jwt-auth": {}, "prometheus": {}, "limit-count": limit}
redis = dict(plugins, **{"limit-count": dict(limit, policy="redis", redis_host="127.0.0.1")})
print(json.dumps({"resources": {
    "routes": [{"id": "a", "uri": "/a", "upstream": ups},
               {"id": "b", "uri": "/b", "upstream": ups, "plugins": plugins},
               {"id": "c", "uri": "/c", "upstream": ups, "plugins": redis}]
              + [{"id": f"r{i}", "uri": f"/r/{i}", "upstream": ups} for i in range(extra)],
    "consumers": [{"id": "p", "username": "p", "plugins": {"jwt-auth": {"key": "p-key", "secret": secret}}}]}}))
PY
curl -sS --fail-with-body -X PUT "http://127.0.0.1:$ADMIN/admin/config" -H "X-API-KEY: $KEY" \
  -H 'Content-Type: application/json' --data-binary @"$TMP/config.json" >/dev/null
TOKEN=$(python3 "$REPO/bench/jwt_token.py" "$SECRET" p-key)
for _ in $(seq 300); do
  [[ $(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$DP/b") == ok ]] && break
  sleep 0.1
done
SPREAD_LUA="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/spread.lua"
[[ $(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$DP/b") == ok ]] || die "the DP does not proxy /b"

ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*) }; read -r -a f <<<"$s"; echo $((f[11] + f[12])); }
TCK=$(getconf CLK_TCK)
graph=()
[[ ${PROFILE_CALLGRAPH:-0} == 1 ]] && graph=(--call-graph dwarf,16384)
# 50 route updates a second to the Admin API (scenario e), until killed.
churn() {
  taskset -c 1 python3 - "127.0.0.1:$ADMIN" "$KEY" "$UP" <<'PY' &
import http.client, json, sys, time
admin, key, up = sys.argv[1:]
host, port = admin.split(":")
conn = http.client.HTTPConnection(host, int(port), timeout=5)
done, start = 0, time.monotonic()
while True:
    body = json.dumps({"uri": "/churn", "desc": str(done), "upstream": {"nodes": {f"127.0.0.1:{up}": 1 + done % 2}}})
    conn.request("PUT", "/admin/routes/churn", body, {"X-API-KEY": key, "Content-Type": "application/json"})
    conn.getresponse().read()
    done += 1
    time.sleep(max(0.0, start + done / 50 - time.monotonic()))
PY
  CHURN_PID=$!
  PIDS+=("$CHURN_PID")
}

profile() {
  local name=$1 path=$2 script=()
  [[ $name == d ]] && script=(-s "$SPREAD_LUA")
  log "scenario $name: warm-up, then $SECS s under perf"
  taskset -c 1 wrk -t1 -c50 -d2s "${script[@]}" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$DP$path" >/dev/null
  local t0 out
  t0=$(ticks "$DP_PID")
  perf record -q -e cpu-clock -F 4999 "${graph[@]}" -p "$DP_PID" -o "$OUT/$name.data" -- sleep "$SECS" &
  local perf_pid=$!
  out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "${script[@]}" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$DP$path")
  local t1
  t1=$(ticks "$DP_PID")
  wait "$perf_pid" || true
  local reqs
  reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
  python3 -c "import sys; t, r, hz = map(float, sys.argv[1:]); print(f'scenario $name: {r:.0f} requests, {t / hz * 1e6 / r:.1f} CPU µs/request (with perf attached)')" \
    "$((t1 - t0))" "$reqs" "$TCK"
  perf report -i "$OUT/$name.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -"${PROFILE_TOP:-45}"
}
# Rounds of: requests spread over 10,000 routes, then over 6; CPU per request from /proc.
spread_rounds() {
  log "spread: warm-up over 10,000 routes, then ${PROFILE_ROUNDS:-3} rounds of ${SECS}s runs"
  taskset -c 1 wrk -t1 -c50 -d3s -s "$SPREAD_LUA" "http://127.0.0.1:$DP/" -- 10000 >/dev/null
  local r n t0 t1 out reqs
  for r in $(seq "${PROFILE_ROUNDS:-3}"); do
    local -A rps=() cpu=()
    for n in 10000 6; do
      t0=$(ticks "$DP_PID")
      out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" -s "$SPREAD_LUA" "http://127.0.0.1:$DP/" -- "$n")
      t1=$(ticks "$DP_PID")
      reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
      rps[$n]=$(python3 -c "print(f'{$reqs / $SECS:.0f}')")
      cpu[$n]=$(python3 -c "print(f'{($t1 - $t0) / $TCK * 1e6 / $reqs:.2f}')")
      echo "round $r, requests spread over $n routes: ${rps[$n]} req/s, ${cpu[$n]} CPU µs/request"
    done
    python3 -c "print(f'round $r, 10,000 ÷ 6 routes: req/s {${rps[10000]} / ${rps[6]}:.3f}×, CPU/request {${cpu[10000]} / ${cpu[6]}:.3f}×')"
  done
  echo "DP $(grep VmRSS "/proc/$DP_PID/status" | tr -s ' \t' ' ')"
}
case $WHICH in
  a) profile a /a ;;
  b) profile b /b ;;
  c) profile c /c ;;
  d) profile d /r/0 ;;
  e) churn; profile e /a; kill "$CHURN_PID" ;;
  ab) profile a /a; profile b /b ;;
  all) profile a /a; profile b /b; profile d /r/0 ;;
  spread) spread_rounds ;;
  *) die "usage: bench/profile.sh [a|b|c|d|e|all|spread]" ;;
esac
