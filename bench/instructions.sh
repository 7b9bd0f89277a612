#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind (callgrind, no cache
# simulation): a figure the machine's noise does not move, where CPU time per request swings
# ±20 % between runs on a shared VM. Not a test: a measurement, to compare builds.
#
#   bench/instructions.sh DIR...     (each DIR holding data-plane and control-plane binaries;
#                                     the word `nginx` instead of a DIR measures nginx as the
#                                     plain reverse proxy of bench/run.sh, one process)
#
# For each DIR in turn: an nginx upstream (`return 200 "ok"`), its control plane, one route
# `/*`, and its data plane (`--workers 1`) under callgrind. wrk (1 thread, 10 connections) warms
# it up, the counters are zeroed (`callgrind_control -z`), wrk runs INSTR_SECONDS (default 10)
# more, the counters are dumped, and the instructions counted are divided by the requests wrk
# completed. INSTR_PLUGINS: the route's `plugins` object (JSON), as COMPARE_PLUGINS in
# compare.sh; INSTR_JWT=1 adds jwt-auth with a consumer and a token. INSTR_KEEP=DIR keeps each
# callgrind dump there (`callgrind_annotate FILE` reads one). INSTR_ROUTES=N loads N more routes
# /r/0 … /r/N-1 (each with its own upstream block, as scenario d of scenarios.sh) and spreads the
# requests over them at random (a wrk script), to compare 10 routes with 10,000.
# INSTR_CACHE_SIM=1 has callgrind simulate the caches too and prints first-level instruction and
# data misses and last-level data misses per request (I1mr, D1mr+D1mw, DLmr+DLmw; callgrind's
# model, with this machine's cache sizes but no prefetching, and several times slower). Kernel
# work (the syscalls) is not counted: strace counts those.
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 DIR..." >&2; exit 2; }
SECS=${INSTR_SECONDS:-10}
PLUGINS=${INSTR_PLUGINS:-"{}"}
ROUTES=${INSTR_ROUTES:-0}
[[ $ROUTES =~ ^[0-9]+$ ]] || { echo "INSTR_ROUTES must be a number of routes, not '$ROUTES'" >&2; exit 2; }
SIM=(--cache-sim=no)
[[ ${INSTR_CACHE_SIM:-0} == 1 ]] && SIM=(--cache-sim=yes)
# INSTR_CACHE_LL=SIZE,ASSOC,LINE: the simulated last level (callgrind models two levels and takes
# the machine's largest; `2097152,16,64` models a per-core 2 MiB L2 as the last level instead).
[[ -n ${INSTR_CACHE_LL:-} ]] && SIM+=(--LL="$INSTR_CACHE_LL")
for t in valgrind callgrind_control nginx wrk curl python3; do
  command -v "$t" >/dev/null 2>&1 || [[ $t == nginx && -x /usr/sbin/nginx ]] ||
    { echo "$t is required (apt-get install valgrind nginx wrk)" >&2; exit 1; }
done
TMP=$(mktemp -d)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; PIDS=(); }
trap 'stop_all; rm -rf "$TMP"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# INSTR_JWT=1: the route gets jwt-auth too (scenario b), with a consumer and a signed token
# that every request carries.
AUTH=()
if [[ ${INSTR_JWT:-0} == 1 ]]; then
  JWT_SECRET=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  TOKEN=$(python3 "$(dirname "${BASH_SOURCE[0]}")/jwt_token.py" "$JWT_SECRET")
  AUTH=(-H "Authorization: Bearer $TOKEN")
  PLUGINS=$(python3 -c 'import json,sys; p=json.loads(sys.argv[1]); p["jwt-auth"]={}; print(json.dumps(p))' "$PLUGINS")
fi

# INSTR_ROUTES: every request to one of /r/0 … /r/N-1, at random (bench/spread.lua).
SPREAD=()
if [[ $ROUTES -gt 0 ]]; then
  SPREAD=(-s "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/spread.lua" -- "$ROUTES")
fi

# count_under PID URL: zero, load, dump; prints requests and instructions.
count_under() {
  wrk -t1 -c10 -d3s "${AUTH[@]}" "$2" "${SPREAD[@]}" >/dev/null
  callgrind_control -z "$1" >/dev/null 2>&1
  local out
  out=$(wrk -t1 -c10 -d"${SECS}s" "${AUTH[@]}" "$2" "${SPREAD[@]}")
  callgrind_control -d "$1" >/dev/null 2>&1
  sleep 0.5
  local req dump ir
  req=$(awk '/requests in/ {print $1}' <<<"$out")
  # Error answers are cheaper than proxied ones: a count over them would flatter the build.
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "$3: not every request was answered 2xx:" >&2; echo "$out" >&2; exit 1
  fi
  dump=$(ls -t "$run"/callgrind.out* | head -n 1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  python3 -c "print(f'$3\t$req\t$ir\t{$ir / $req:,.0f}')"
  if [[ ${INSTR_CACHE_SIM:-0} == 1 ]]; then
    # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
    awk -v req="$req" '/^(summary|totals):/ {
      printf "\tD1 misses/request %.1f, LL data misses/request %.2f, I1 misses/request %.1f\n",
        ($6 + $7) / req, ($9 + $10) / req, $5 / req; exit }' "$dump"
  fi
  if [[ -n ${INSTR_KEEP:-} ]]; then
    mkdir -p "$INSTR_KEEP"
    cp "$dump" "$INSTR_KEEP/$(basename "$(dirname "$3/.")")-$RANDOM.callgrind"
  fi
}

echo -e "build\trequests\tinstructions\tinstructions/request"
for dir in "$@"; do
  if [[ $dir == nginx ]]; then
    run="$TMP/run-nginx-$RANDOM"
    mkdir -p "$run"/{up,px}/{cb,px,fc,uw,sc}
    UP=$(port); PROXY=$(port)
    for which in up px; do
      if [[ $which == up ]]; then
        server="server { listen 127.0.0.1:$UP; location / { return 200 \"ok\"; } }"
      else
        server="upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$PROXY; location / { proxy_pass http://backend; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; } }"
      fi
      cat >"$run/$which/nginx.conf" <<NGX
daemon off; master_process off; worker_processes 1; pid $run/$which/nginx.pid;
error_log $run/$which/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 75s;
  client_body_temp_path $run/$which/cb; proxy_temp_path $run/$which/px;
  fastcgi_temp_path $run/$which/fc; uwsgi_temp_path $run/$which/uw; scgi_temp_path $run/$which/sc;
  $server }
NGX
    done
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    "$NGINX" -p "$run/up" -e "$run/up/error.log" -c "$run/up/nginx.conf" >/dev/null 2>&1 &
    PIDS+=($!)
    valgrind --tool=callgrind "${SIM[@]}" --branch-sim=no --dump-line=no \
      --callgrind-out-file="$run/callgrind.out" \
      "$NGINX" -p "$run/px" -e "$run/px/error.log" -c "$run/px/nginx.conf" >"$run/nginx.log" 2>&1 &
    NGX=$!
    PIDS+=("$NGX")
    for _ in $(seq 300); do [[ $(curl -s "http://127.0.0.1:$PROXY/" || true) == ok ]] && break; sleep 0.1; done
    count_under "$NGX" "http://127.0.0.1:$PROXY/" nginx
    stop_all
    continue
  fi
  run="$TMP/run-$(basename "$(dirname "$dir/.")")-$RANDOM"
  mkdir -p "$run"/up/{cb,px,fc,uw,sc}
  UP=$(port); ADMIN=$(port); SYNC=$(port); PROXY=$(port)
  KEY=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
  cat >"$run/up/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $run/up/nginx.pid; error_log $run/up/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $run/up/cb; proxy_temp_path $run/up/px; fastcgi_temp_path $run/up/fc;
  uwsgi_temp_path $run/up/uw; scgi_temp_path $run/up/sc;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
NGX
  "$(command -v nginx || echo /usr/sbin/nginx)" -p "$run/up" -e "$run/up/error.log" \
    -c "$run/up/nginx.conf" >/dev/null 2>&1 &
  PIDS+=($!)
  "$dir/control-plane" --data-dir "$run/cp" --admin-listen "127.0.0.1:$ADMIN" \
    --sync-listen "127.0.0.1:$SYNC" --admin-key "$KEY" >"$run/cp.log" 2>&1 &
  PIDS+=($!)
  valgrind --tool=callgrind "${SIM[@]}" --branch-sim=no --dump-line=no \
    --callgrind-out-file="$run/callgrind.out" \
    "$dir/data-plane" --workers 1 --control-plane "http://127.0.0.1:$SYNC" \
    --proxy-listen "127.0.0.1:$PROXY" --status-listen "127.0.0.1:$(port)" \
    --node-id instructions --cache-dir "$run/dp-cache" >"$run/dp.log" 2>&1 &
  DP=$!
  PIDS+=("$DP")
  for _ in $(seq 150); do curl -sf "http://127.0.0.1:$ADMIN/admin/routes" -H "X-API-KEY: $KEY" >/dev/null && break; sleep 0.1; done
  # The whole config in one PUT /admin/config: the route `/*` (with INSTR_PLUGINS), the
  # INSTR_ROUTES routes /r/i, and the jwt-auth consumer (INSTR_JWT).
  python3 - "$UP" "$PLUGINS" "$ROUTES" "${JWT_SECRET:-}" >"$run/config.json" <<'PY'
import json, sys
up, plugins, spread, secret = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ups = {"nodes": {f"127.0.0.1:{up}": 1}}
routes = [{"id": "p", "uri": "/*", "plugins": plugins, "upstream": ups}]
routes += [{"id": f"r{i}", "uri": f"/r/{i}", "upstream": ups} for i in range(spread)]
consumers = []
if secret:
    consumers = [{"id": "bench", "username": "bench",
                  "plugins": {"jwt-auth": {"key": "bench-key", "secret": secret}}}]
print(json.dumps({"resources": {"routes": routes, "consumers": consumers}}))
PY
  curl -sf -X PUT "http://127.0.0.1:$ADMIN/admin/config" -H "X-API-KEY: $KEY" \
    -H 'Content-Type: application/json' --data-binary @"$run/config.json" >/dev/null
  probe="http://127.0.0.1:$PROXY/"
  [[ $ROUTES -gt 0 ]] && probe="http://127.0.0.1:$PROXY/r/$((ROUTES - 1))"
  for _ in $(seq 600); do [[ $(curl -s "${AUTH[@]}" "$probe" || true) == ok ]] && break; sleep 0.1; done
  [[ $(curl -s "${AUTH[@]}" "$probe") == ok ]] || { echo "$dir: the DP does not proxy" >&2; cat "$run/dp.log" >&2; exit 1; }
  count_under "$DP" "http://127.0.0.1:$PROXY/" "$dir"
  stop_all
done
