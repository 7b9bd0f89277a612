#!/usr/bin/env bash
# Two data-plane builds side by side (before/after a change): interleaved wrk runs against each,
# CPU µs per request and req/s per run, medians at the end, and the median of each round's
# new/old ratio. Not a test: a measurement.
#
#   bench/compare.sh OLD_DIR NEW_DIR     (each holding data-plane and control-plane binaries)
#
# Both DPs follow one control plane and are pinned to cpu 0; wrk (1 thread, 50 connections) and
# the upstream (nginx `return 200 "ok"`) run on cpu 1. OLD gets TOKIO_WORKER_THREADS=1 (builds
# before `--workers`), NEW `--workers 1`; override with OLD_ARGS / NEW_ARGS (words).
# BENCH_SECONDS (10), BENCH_ROUNDS (5). COMPARE_PLUGINS: the route's `plugins` object (JSON),
# e.g. '{"limit-count": {"count": 1000000000, "time_window": 60, "policy": "redis",
# "redis_host": "127.0.0.1"}}' to compare the Redis limiter (scenario c).
set -euo pipefail
OLD=$1 NEW=$2
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-5}
read -r -a OLD_ARGS <<<"${OLD_ARGS:-}"
read -r -a NEW_ARGS <<<"${NEW_ARGS:---workers 1}"
PLUGINS=${COMPARE_PLUGINS:-"{}"}
TMP=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$TMP"; redis_unpin' EXIT
# shellcheck source=bench/redis_affinity.sh
source "$(dirname "${BASH_SOURCE[0]}")/redis_affinity.sh"
redis_pin 1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); ADMIN=$(port); SYNC=$(port)
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
taskset -c 1 "$(command -v nginx || echo /usr/sbin/nginx)" -p "$TMP/up" -e "$TMP/up/error.log" \
  -c "$TMP/up/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
taskset -c 1 "$NEW/control-plane" --data-dir "$TMP/cp" --admin-listen "127.0.0.1:$ADMIN" \
  --sync-listen "127.0.0.1:$SYNC" --admin-key "$KEY" >"$TMP/cp.log" 2>&1 &
PIDS+=($!)
declare -A PORT PID
for which in old new; do
  PORT[$which]=$(port)
  if [[ $which == old ]]; then bin=$OLD; args=("${OLD_ARGS[@]}"); env=(TOKIO_WORKER_THREADS=1)
  else bin=$NEW; args=("${NEW_ARGS[@]}"); env=(); fi
  env "${env[@]}" taskset -c 0 "$bin/data-plane" "${args[@]}" --control-plane "http://127.0.0.1:$SYNC" \
    --proxy-listen "127.0.0.1:${PORT[$which]}" --status-listen "127.0.0.1:$(port)" \
    --node-id "$which" --cache-dir "$TMP/$which-cache" >"$TMP/$which.log" 2>&1 &
  PID[$which]=$!
  PIDS+=($!)
done
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$ADMIN/admin/routes" -H "X-API-KEY: $KEY" >/dev/null && break; sleep 0.1; done
curl -sf -X PUT "http://127.0.0.1:$ADMIN/admin/routes/p" -H "X-API-KEY: $KEY" \
  -d "{\"uri\": \"/*\", \"plugins\": $PLUGINS, \"upstream\": {\"nodes\": {\"127.0.0.1:$UP\": 1}}}" >/dev/null
for which in old new; do
  for _ in $(seq 100); do [[ $(curl -s "http://127.0.0.1:${PORT[$which]}/") == ok ]] && break; sleep 0.1; done
  [[ $(curl -s "http://127.0.0.1:${PORT[$which]}/") == ok ]] || { echo "$which does not proxy" >&2; cat "$TMP/$which.log" >&2; exit 1; }
done
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
echo -e "which\tround\treq/s\tCPU us/req" >"$TMP/runs.tsv"
for r in $(seq "$ROUNDS"); do
  for which in old new; do
    url="http://127.0.0.1:${PORT[$which]}/"
    taskset -c 1 wrk -t1 -c50 -d2s "$url" >/dev/null
    t0=$(ticks "${PID[$which]}")
    out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "$url")
    t1=$(ticks "${PID[$which]}")
    req=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    cpu=$(python3 -c "print(f'{($t1 - $t0) * 1e6 / $TCK / $req:.1f}')")
    echo -e "$which\t$r\t$rps\t$cpu" | tee -a "$TMP/runs.tsv"
  done
done
python3 - "$TMP/runs.tsv" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
m = {w: (st.median(float(r["req/s"]) for r in rows if r["which"] == w),
         st.median(float(r["CPU us/req"]) for r in rows if r["which"] == w)) for w in ("old", "new")}
for w, (rps, cpu) in m.items():
    print(f"{w}: median {rps:,.0f} req/s, {cpu:.1f} µs CPU/request")
print(f"new/old: req/s {m['new'][0] / m['old'][0]:.2f}x, CPU/request {m['new'][1] / m['old'][1]:.2f}x")
# Each round's new run beside its own old run: on a VM whose speed drifts within a run, the
# ratios of neighbours move less than the ratio of the two medians.
by = {(r["which"], r["round"]): r for r in rows}
pairs = [(by["new", k]["req/s"], by["old", k]["req/s"], by["new", k]["CPU us/req"], by["old", k]["CPU us/req"])
         for w, k in by if w == "old" and ("new", k) in by]
rps = [float(a) / float(b) for a, b, _, _ in pairs]
cpu = [float(a) / float(b) for _, _, a, b in pairs]
print(f"new/old, round by round: req/s median {st.median(rps):.2f}x ({min(rps):.2f}-{max(rps):.2f}), "
      f"CPU/request median {st.median(cpu):.2f}x ({min(cpu):.2f}-{max(cpu):.2f}), "
      f"new cheaper in {sum(c < 1 for c in cpu)} of {len(cpu)} rounds")
PY
