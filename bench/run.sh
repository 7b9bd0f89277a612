#!/usr/bin/env bash
# Postern vs nginx as a plain HTTP/1.1 reverse proxy, side by side in one run.
#
#   bench/run.sh            full run (defaults: 5 rounds x 10 s per target, 2 s warm-up each)
#   bench/run.sh --smoke    2 s, 1 round: checks that everything starts and serves, never
#                           judges performance (exit 0 unless something fails to start/serve)
#
# Layout (2-core machine):
#   cpu 0: the proxy under test      nginx (1 worker)  |  Postern data-plane (--workers 1)
#   cpu 1: wrk (1 thread, 50 conns) and the upstream (nginx, 1 worker, `return 200 "ok"`),
#          plus the Postern control plane (idle during the runs)
#
# Runs are interleaved (nginx, Postern, nginx, Postern, ...) so that drift on the machine hits
# both alike. For every run we record wrk's req/s and latency distribution, and the proxy's CPU
# time (utime+stime from /proc/<pid>/stat, all threads; for nginx master + worker) over the run.
#
# Settings (environment):
#   BENCH_SECONDS   measured seconds per run           (default 10; smoke: 2)
#   BENCH_ROUNDS    rounds; each round runs both       (default 5; smoke: 1)
#   BENCH_WARMUP    warm-up seconds before each run    (default 2; smoke: 1)
#   BENCH_CONNS     wrk connections                    (default 50)
#   BENCH_DP_WORKERS  the DP's --workers               (default 1)
#   BENCH_RESULTS_NAME  results file name in bench/results (default <date>.md, or
#                     <date>-<HHMM>.md when that exists: never overwritten)
#   BENCH_KEEP_TMP=1  keep the temp dir (configs, logs, raw wrk output) after exit
#   BENCH_SKIP_BUILD=1  use the binaries already built (default: cargo build --release --bins)
#   BENCH_PROFILE   the build profile's binaries to run  (default release; CI's smoke pass uses
#                   debug, the binaries its tests built: it checks that things start, no more)
#   CARGO_TARGET_DIR  where cargo puts the binaries    (default <repo>/target)
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Arguments and settings
# ---------------------------------------------------------------------------------------------
SMOKE=0
case "${1:-}" in
  "") ;;
  --smoke) SMOKE=1 ;;
  -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac

if [[ $SMOKE == 1 ]]; then
  SECONDS_PER_RUN=${BENCH_SECONDS:-2}
  ROUNDS=${BENCH_ROUNDS:-1}
  WARMUP=${BENCH_WARMUP:-1}
else
  SECONDS_PER_RUN=${BENCH_SECONDS:-10}
  ROUNDS=${BENCH_ROUNDS:-5}
  WARMUP=${BENCH_WARMUP:-2}
fi
CONNS=${BENCH_CONNS:-50}
DP_WORKERS=${BENCH_DP_WORKERS:-${BENCH_DP_THREADS:-1}}
WRK_THREADS=1
PROXY_CPU=0   # the proxy under test
LOAD_CPU=1    # wrk, the upstream and the control plane

for v in SECONDS_PER_RUN ROUNDS WARMUP CONNS DP_WORKERS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 1 ]] || { echo "bench: $v must be a positive integer (got '${!v}')" >&2; exit 2; }
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$REPO/bench"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: every process we start is recorded in PIDS and stopped on any exit (normal, error,
# Ctrl-C, TERM). nginx masters stop their workers on TERM; anything left after 5 s gets KILL.
# ---------------------------------------------------------------------------------------------
PIDS=()
TMP=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 5))
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop on TERM; sending KILL"
      # An nginx master's workers are its children: take them along.
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ $rc != 0 && $rc != 130 && $rc != 143 ]]; then
      # On failure (not on Ctrl-C) show what the servers said before the evidence goes away.
      local f
      for f in "$TMP"/logs/*.log; do
        [[ -s $f ]] || continue
        echo "---- tail of $f" >&2
        tail -n 20 "$f" >&2 || true
      done
    fi
    if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
      log "kept $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Tools: nginx and wrk from Debian when missing (as root); the rest is on every machine here.
# ---------------------------------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if ((${#need_apt[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${need_apt[*]}: run as root or apt-get install ${need_apt[*]}"
  log "installing ${need_apt[*]} (apt-get)"
  # Debian's nginx package would start a system nginx on :80 where an init system runs; a
  # policy-rc.d that answers 101 ("action forbidden") prevents that. Only for this install,
  # and only if the machine has no policy-rc.d of its own.
  policy_rc=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy_rc=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
    chmod 755 "$policy_rc"
  fi
  apt_rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; } || apt_rc=$?
  [[ -z $policy_rc ]] || rm -f "$policy_rc"
  ((apt_rc == 0)) || die "apt-get install ${need_apt[*]} failed"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WRK=$(command -v wrk)
for t in taskset curl python3 git; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
(($(nproc) >= 2)) || die "needs at least 2 CPUs (proxy on cpu $PROXY_CPU, load on cpu $LOAD_CPU)"

# ---------------------------------------------------------------------------------------------
# Build Postern (release).
# ---------------------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# What is measured: the commit and any uncommitted changes to tracked files, taken before the
# build (the tree may change while the benchmark runs; that is checked again at the end).
git_state() {
  local head dirty
  head=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | awk '{print $NF}' | paste -sd' ' -)
  if [[ -n $dirty ]]; then echo "$head + uncommitted changes to: $dirty"; else echo "$head"; fi
}
COMMIT=$(git_state)
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building Postern: cargo build --release --bins (target dir $TARGET_DIR)"
  (cd "$REPO" && cargo build --release --bins)
fi
PROFILE=${BENCH_PROFILE:-release}
CP_BIN="$TARGET_DIR/$PROFILE/control-plane"
DP_BIN="$TARGET_DIR/$PROFILE/data-plane"
[[ -x $CP_BIN && -x $DP_BIN ]] || die "no $PROFILE binaries in $TARGET_DIR/$PROFILE"

# ---------------------------------------------------------------------------------------------
# Temp dir, ports, admin key.
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postern-bench.XXXXXX")
mkdir -p "$TMP"/{logs,runs,upstream,proxy,cp,dp-cache}

# Six free loopback ports, chosen by the kernel (bind to port 0), all distinct.
read -r UP_PORT NGX_PORT ADMIN_PORT SYNC_PORT DP_PORT STATUS_PORT < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(6):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(*(s.getsockname()[1] for s in socks))
EOF
)

# 48 hex chars from the kernel's CSPRNG (the CP wants at least 32).
ADMIN_KEY=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
ADMIN="http://127.0.0.1:$ADMIN_PORT"

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# wait_http URL SECONDS [PATTERN]: until URL answers 2xx (and its body matches PATTERN).
wait_http() {
  local url=$1 limit=$2 pattern=${3:-} deadline body
  deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    if body=$(curl -fsS --max-time 1 "$url" 2>/dev/null); then
      if [[ -z $pattern ]] || grep -Eq "$pattern" <<<"$body"; then return 0; fi
    fi
    sleep 0.1
  done
  return 1
}

# alive PID NAME: fail with the server's log if it died.
alive() { kill -0 "$1" 2>/dev/null || die "$2 (pid $1) exited; see its log above"; }

# cpu_ticks PID...: utime+stime (clock ticks) of each process, all its threads, summed.
# Fields 14 and 15 of /proc/<pid>/stat, counted after the ")" that ends the command name.
cpu_ticks() {
  local total=0 pid rest
  for pid in "$@"; do
    rest=$(<"/proc/$pid/stat")
    rest=${rest##*) }
    # After ") " field 3 (state) is $1, so utime (14) is $12 and stime (15) is $13.
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# cpu_jiffies CPU: "busy total" jiffies of one CPU from /proc/stat.
cpu_jiffies() {
  # user nice system idle iowait irq softirq steal (guest time is already inside user).
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# nginx_pids MASTER: the master and its workers.
nginx_pids() { echo "$1" $(pgrep -P "$1" || true); }

# nginx_conf NAME PORT BODY: writes a self-contained nginx config under $TMP/NAME whose every
# path (pid, logs, temp dirs) is in $TMP; it never reads /etc/nginx.
nginx_conf() {
  local name=$1 port=$2 body=$3 dir="$TMP/$1"
  mkdir -p "$dir"/{client_body,proxy,fastcgi,uwsgi,scgi}
  cat >"$dir/nginx.conf" <<EOF
# Generated by bench/run.sh
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $TMP/logs/nginx-$name.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    # Keep client connections open for the whole run (nginx closes after 1000 requests by
    # default; wrk would then pay reconnects that hyper never asks for).
    keepalive_requests 10000000;
    keepalive_timeout 75s;
$body
}
EOF
}

# ---------------------------------------------------------------------------------------------
# 1. Upstream: nginx, 1 worker, `return 200 "ok"`, on the load CPU.
# ---------------------------------------------------------------------------------------------
nginx_conf upstream "$UP_PORT" "    server {
        listen 127.0.0.1:$UP_PORT;
        location / {
            return 200 \"ok\";
        }
    }"
log "starting upstream nginx on 127.0.0.1:$UP_PORT (cpu $LOAD_CPU)"
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/upstream" -e "$TMP/logs/nginx-upstream.log" \
  -c "$TMP/upstream/nginx.conf" >"$TMP/logs/nginx-upstream.out" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")

# ---------------------------------------------------------------------------------------------
# 2. nginx as a plain reverse proxy to it, 1 worker, on the proxy CPU.
# ---------------------------------------------------------------------------------------------
nginx_conf proxy "$NGX_PORT" "    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
log "starting nginx proxy on 127.0.0.1:$NGX_PORT (cpu $PROXY_CPU)"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/proxy" -e "$TMP/logs/nginx-proxy.log" \
  -c "$TMP/proxy/nginx.conf" >"$TMP/logs/nginx-proxy.out" 2>&1 &
NGX_PID=$!
PIDS+=("$NGX_PID")

# ---------------------------------------------------------------------------------------------
# 3. Postern: control plane (load CPU, idle during runs) and one data plane (proxy CPU).
# ---------------------------------------------------------------------------------------------
log "starting Postern control plane (admin 127.0.0.1:$ADMIN_PORT, sync 127.0.0.1:$SYNC_PORT)"
taskset -c "$LOAD_CPU" "$CP_BIN" \
  --data-dir "$TMP/cp" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --sync-listen "127.0.0.1:$SYNC_PORT" \
  --admin-key "$ADMIN_KEY" \
  >"$TMP/logs/control-plane.log" 2>&1 &
CP_PID=$!
PIDS+=("$CP_PID")

log "starting Postern data plane on 127.0.0.1:$DP_PORT (cpu $PROXY_CPU, --workers $DP_WORKERS)"
taskset -c "$PROXY_CPU" "$DP_BIN" \
  --workers "$DP_WORKERS" \
  --control-plane "http://127.0.0.1:$SYNC_PORT" \
  --proxy-listen "127.0.0.1:$DP_PORT" \
  --status-listen "127.0.0.1:$STATUS_PORT" \
  --cache-dir "$TMP/dp-cache" \
  --node-id bench-dp \
  >"$TMP/logs/data-plane.log" 2>&1 &
DP_PID=$!
PIDS+=("$DP_PID")

# Everything answers?
wait_http "http://127.0.0.1:$UP_PORT/" 10 '^ok$' || { alive "$UP_PID" "upstream nginx"; die "upstream nginx does not answer"; }
wait_http "http://127.0.0.1:$NGX_PORT/" 10 '^ok$' || { alive "$NGX_PID" "nginx proxy"; die "nginx proxy does not answer"; }
deadline=$((SECONDS + 30))
until curl -fsS --max-time 1 -H "X-API-KEY: $ADMIN_KEY" "$ADMIN/admin/status" >/dev/null 2>&1; do
  alive "$CP_PID" "control plane"
  ((SECONDS < deadline)) || die "the Admin API did not come up in 30 s"
  sleep 0.1
done

# One route, every path, to the upstream (inline upstream, round robin, one node).
ROUTE_JSON=$(printf '{"uri": "/*", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:%s": 1}}}' "$UP_PORT")
resp=$(curl -fsS --max-time 5 -X PUT "$ADMIN/admin/routes/bench" \
  -H "X-API-KEY: $ADMIN_KEY" -H 'Content-Type: application/json' -d "$ROUTE_JSON") \
  || die "creating the route failed"
VERSION=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])' <<<"$resp")
log "route created at revision $VERSION; waiting for the data plane to apply it"

# /readyz reports {"ready":true,"version":V,...}: wait for exactly that version.
wait_http "http://127.0.0.1:$STATUS_PORT/readyz" 30 "\"version\": ?$VERSION[,}]" \
  || { alive "$DP_PID" "data plane"; die "the data plane did not report version $VERSION in 30 s"; }
[[ $(curl -fsS --max-time 2 "http://127.0.0.1:$DP_PORT/") == ok ]] || die "Postern does not proxy to the upstream"
# The exact binaries running (a shared target dir may be rebuilt by others meanwhile).
DP_SHA=$(sha256sum "/proc/$DP_PID/exe" | cut -c1-16)
CP_SHA=$(sha256sum "/proc/$CP_PID/exe" | cut -c1-16)
log "all up: nginx proxy :$NGX_PORT, Postern DP :$DP_PORT, upstream :$UP_PORT"

# ---------------------------------------------------------------------------------------------
# 4. Interleaved runs.
# ---------------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
RAW="$TMP/runs.tsv"
printf 'target\tround\trequests\tseconds\trps\tp50_us\tp75_us\tp90_us\tp99_us\tcpu_ticks\tnon2xx\tsocket_errors\tcpu%s_busy\tcpu%s_busy\n' \
  "$PROXY_CPU" "$LOAD_CPU" >"$RAW"

# measure NAME PORT PID...: warm-up, then one measured wrk run; appends one line to $RAW.
measure() {
  local name=$1 port=$2 round=$3; shift 3
  local pids=("$@") url="http://127.0.0.1:$port/" out="$TMP/runs/$name-$round.txt"
  local limit=$((SECONDS_PER_RUN + 30))   # a hard bound on top of wrk's own -d
  local pid
  for pid in "${pids[@]}"; do alive "$pid" "$name"; done
  timeout --foreground -k 5 "$((WARMUP + 30))" taskset -c "$LOAD_CPU" "$WRK" -t"$WRK_THREADS" -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null \
    || die "wrk warm-up against $name ($url) failed"
  local t0 c0 l0 t1 c1 l1
  t0=$(cpu_ticks "${pids[@]}"); c0=$(cpu_jiffies "$PROXY_CPU"); l0=$(cpu_jiffies "$LOAD_CPU")
  timeout --foreground -k 5 "$limit" taskset -c "$LOAD_CPU" "$WRK" -t"$WRK_THREADS" -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency "$url" >"$out" \
    || die "wrk against $name ($url) failed: $(cat "$out")"
  t1=$(cpu_ticks "${pids[@]}"); c1=$(cpu_jiffies "$PROXY_CPU"); l1=$(cpu_jiffies "$LOAD_CPU")
  python3 - "$name" "$round" "$((t1 - t0))" "$c0" "$c1" "$l0" "$l1" "$out" >>"$RAW" <<'EOF'
import re, sys
name, rnd, ticks, c0, c1, l0, l1, path = sys.argv[1:]
text = open(path).read()
def num(pattern, default=None):
    m = re.search(pattern, text)
    if not m:
        if default is None:
            sys.exit(f"bench: cannot parse wrk output {path}: no match for {pattern!r}\n{text}")
        return default
    return m.groups()
def us(value, unit):
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
requests, secs = num(r"(\d+) requests in ([\d.]+)s")
rps, = num(r"Requests/sec:\s+([\d.]+)")
lat = {}
for pct in ("50", "75", "90", "99"):
    v, u = num(pct + r"%\s+([\d.]+)(us|ms|s)\b")
    lat[pct] = us(v, u)
non2xx, = num(r"Non-2xx or 3xx responses: (\d+)", ("0",))
errs = num(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", ("0",) * 4)
def busy(a, b):
    (ba, ta), (bb, tb) = (map(int, a.split()), map(int, b.split()))
    return 100.0 * (bb - ba) / max(tb - ta, 1)
print("\t".join(str(x) for x in (
    name, rnd, requests, secs, rps, lat["50"], lat["75"], lat["90"], lat["99"], ticks,
    non2xx, sum(map(int, errs)), f"{busy(c0, c1):.1f}", f"{busy(l0, l1):.1f}")))
EOF
  tail -n 1 "$RAW" | awk -F'\t' -v tck="$CLK_TCK" \
    '{ printf "[bench] %-7s round %s: %9.0f req/s  p50 %6.0f us  p99 %6.0f us  %5.1f us CPU/req  cpu0 %s%% cpu1 %s%%  errors %d\n",
       $1, $2, $5, $6, $9, $10 * 1e6 / tck / $3, $13, $14, $11 + $12 }' >&2
}

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "runs: $ROUNDS round(s) x (nginx, postern), ${SECONDS_PER_RUN}s each after ${WARMUP}s warm-up; wrk -t$WRK_THREADS -c$CONNS"
for ((round = 1; round <= ROUNDS; round++)); do
  alive "$NGX_PID" "nginx proxy"; alive "$DP_PID" "data plane"; alive "$UP_PID" "upstream nginx"
  # shellcheck disable=SC2046
  measure nginx "$NGX_PORT" "$round" $(nginx_pids "$NGX_PID")
  measure postern "$DP_PORT" "$round" "$DP_PID"
done

# ---------------------------------------------------------------------------------------------
# 5. Report: table + ratios on stdout; with a full run, bench/results/<date>.md too.
# ---------------------------------------------------------------------------------------------
DP_THREADS_SEEN=$(ls "/proc/$DP_PID/task" | wc -l)
COMMIT_END=$(git_state)
[[ $COMMIT_END == "$COMMIT" ]] || log "WARNING: the source tree changed during the run (was: $COMMIT; now: $COMMIT_END)"

export BENCH_RAW="$RAW" BENCH_SMOKE="$SMOKE" BENCH_CLK_TCK="$CLK_TCK" BENCH_COMMIT="$COMMIT" BENCH_COMMIT_END="$COMMIT_END" \
  BENCH_DP_SHA="$DP_SHA" BENCH_CP_SHA="$CP_SHA" BENCH_LOADAVG="$LOADAVG_BEFORE" \
  BENCH_SECONDS_PER_RUN="$SECONDS_PER_RUN" BENCH_ROUNDS_N="$ROUNDS" BENCH_WARMUP_S="$WARMUP" \
  BENCH_CONNS_N="$CONNS" BENCH_DP_THREADS_N="$DP_WORKERS" BENCH_DP_THREADS_SEEN="$DP_THREADS_SEEN" \
  BENCH_NGINX_VERSION="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')" \
  BENCH_WRK_VERSION="$("$WRK" -v 2>&1 | head -n 1 | awk '{print $1, $2}')" \
  BENCH_NGINX_PROXY_CONF="$TMP/proxy/nginx.conf" BENCH_NGINX_UPSTREAM_CONF="$TMP/upstream/nginx.conf" \
  BENCH_ROUTE_JSON="$ROUTE_JSON" BENCH_PROXY_CPU="$PROXY_CPU" BENCH_LOAD_CPU="$LOAD_CPU" \
  BENCH_RESULTS_DIR="$BENCH_DIR/results" BENCH_RESULTS_NAME="${BENCH_RESULTS_NAME:-}" \
  BENCH_CP_CMD="taskset -c $LOAD_CPU control-plane --data-dir TMP/cp --admin-listen 127.0.0.1:$ADMIN_PORT --sync-listen 127.0.0.1:$SYNC_PORT --admin-key <48 random hex chars>" \
  BENCH_DP_CMD="taskset -c $PROXY_CPU data-plane --workers $DP_WORKERS --control-plane http://127.0.0.1:$SYNC_PORT --proxy-listen 127.0.0.1:$DP_PORT --status-listen 127.0.0.1:$STATUS_PORT --cache-dir TMP/dp-cache --node-id bench-dp" \
  BENCH_WRK_CMD="taskset -c $LOAD_CPU wrk -t$WRK_THREADS -c$CONNS -d${SECONDS_PER_RUN}s --latency http://127.0.0.1:PORT/"
python3 "$BENCH_DIR/report.py"
