#!/usr/bin/env bash
# Postern with plugins, many routes, config churn and two workers, each beside nginx as a plain
# reverse proxy, in one run (issue #11's scenarios (a)-(f)). Not a test: a measurement.
#
#   bench/scenarios.sh     (BENCH_SECONDS per run, default 10; BENCH_ROUNDS, default 3;
#                           BENCH_WARMUP, default 2; BENCH_SKIP_BUILD=1 to use built binaries;
#                           BENCH_OUT, the results file, default below; BENCH_KEEP_TMP=1
#                           keeps the run's temp dir: logs, each wrk output, runs.tsv)
#
# Layout as issue #11 sets it: the proxies on cpu 0 (nginx; Postern's control plane and DP1),
# wrk (1 thread, 50 connections), the upstream (nginx `return 200 "ok"`), the Admin API writer
# and Redis (its threads pinned for the run, bench/redis_affinity.sh) on cpu 1. bench/run.sh,
# where the control plane idles, keeps it on cpu 1, as this script did until session 19;
# scenario e1 still runs it there (below).
# Two data planes follow one control plane: DP1 `--workers 1` pinned to cpu 0, DP2
# `--workers 2` not pinned (scenario f). Redis must run on 127.0.0.1:6379 (scenario c).
#
# Phase 1, 10 routes (/a, /b, /c, /churn, /r/0 … /r/5); interleaved rounds of:
#   nginx  plain nginx proxy                 a  Postern plain route
#   b      jwt-auth + limit-count (local, never reached) + prometheus
#   c      as b, limit-count policy redis    e  as a, while 50 Admin API route updates/s run
#   e1     as e with the control plane moved to cpu 1 for the run: the churn's CPU then comes
#          out of the load generator's core (the layout of sessions 1-19; reported, no target)
#   f      as a on DP2 (--workers 2, unpinned)
#   d10    requests spread over the 6 routes /r/0 … /r/5 by the wrk Lua script of d
# Phase 2, 10,004 routes (/r/6 … /r/9999 added by one PUT /admin/config); interleaved rounds of:
#   nginx, a10k (the plain route), d (requests spread over /r/0 … /r/9999 by a wrk Lua script),
#   nginx-s (nginx under that same script: what the script costs the load generator)
# d is judged against d10, not a: only runs under the same load generator compare like for like
# (a wrk `request()` function is extra work on cpu 1, which runs near its limit; measured
# against nginx, nginx-s ÷ nginx, it cost ≈ 2 % in session 9).
# Writes bench/results/<date>-<time>-scenarios.md.
set -euo pipefail
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-2}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
log() { printf '[scenarios %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/postern-scenarios.XXXXXX")
PIDS=()
CHURN_PID=""
cleanup() {
  local p
  [[ -z $CHURN_PID ]] || kill "$CHURN_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ ${BENCH_KEEP_TMP:-0} == 1 ]] && log "kept $TMP" || rm -rf "$TMP"
  redis_unpin
}
trap cleanup EXIT
# shellcheck source=bench/redis_affinity.sh
source "$REPO/bench/redis_affinity.sh"
redis_pin 1

for t in nginx wrk taskset curl python3 redis-cli; do
  command -v "$t" >/dev/null 2>&1 || [[ $t == nginx && -x /usr/sbin/nginx ]] || die "$t is required (apt-get install nginx wrk redis-tools)"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
redis-cli -h 127.0.0.1 ping >/dev/null || die "Redis must run on 127.0.0.1:6379"
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  (cd "$REPO" && cargo build --release --bins)
fi
COMMIT=$(git -C "$REPO" rev-parse --short HEAD)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); NGX=$(port); ADMIN=$(port); SYNC=$(port)
DP1=$(port); ST1=$(port); DP2=$(port); ST2=$(port)
KEY=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')

# nginx_conf NAME BODY: a self-contained config under $TMP/NAME (never /etc/nginx).
nginx_conf() {
  local d="$TMP/$1"
  mkdir -p "$d"/{cb,px,fc,uw,sc}
  cat >"$d/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 75s;
  client_body_temp_path $d/cb; proxy_temp_path $d/px; fastcgi_temp_path $d/fc;
  uwsgi_temp_path $d/uw; scgi_temp_path $d/sc;
$2
}
NGX
}
nginx_conf up "  server { listen 127.0.0.1:$UP; location / { return 200 \"ok\"; } }"
nginx_conf proxy "  upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$NGX; location / { proxy_pass http://backend; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; } }"
taskset -c 1 "$NGINX" -p "$TMP/up" -e "$TMP/up/error.log" -c "$TMP/up/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
taskset -c 0 "$NGINX" -p "$TMP/proxy" -e "$TMP/proxy/error.log" -c "$TMP/proxy/nginx.conf" >/dev/null 2>&1 &
NGX_PID=$!
PIDS+=("$NGX_PID")
taskset -c 0 "$BIN/control-plane" --data-dir "$TMP/cp" --admin-listen "127.0.0.1:$ADMIN" \
  --sync-listen "127.0.0.1:$SYNC" --admin-key "$KEY" >"$TMP/cp.log" 2>&1 &
CP_PID=$!
PIDS+=("$CP_PID")
taskset -c 0 "$BIN/data-plane" --workers 1 --control-plane "http://127.0.0.1:$SYNC" \
  --proxy-listen "127.0.0.1:$DP1" --status-listen "127.0.0.1:$ST1" --node-id bench-dp1 \
  --cache-dir "$TMP/dp1-cache" >"$TMP/dp1.log" 2>&1 &
DP1_PID=$!
PIDS+=("$DP1_PID")
"$BIN/data-plane" --workers 2 --control-plane "http://127.0.0.1:$SYNC" \
  --proxy-listen "127.0.0.1:$DP2" --status-listen "127.0.0.1:$ST2" --node-id bench-dp2 \
  --cache-dir "$TMP/dp2-cache" >"$TMP/dp2.log" 2>&1 &
DP2_PID=$!
PIDS+=("$DP2_PID")
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$ADMIN/admin/routes" -H "X-API-KEY: $KEY" >/dev/null && break; sleep 0.1; done
# The nginx proxy and its upstream answer before anything is measured. A port picked above can
# be taken in between (by any outgoing connection's local port, from the same range); in
# session 19 the proxy then failed to bind, and every nginx run counted refused connections as
# requests.
nginx_code=""
for _ in $(seq 50); do
  nginx_code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGX/") || true
  [[ $nginx_code == 200 ]] && break
  sleep 0.1
done
[[ $nginx_code == 200 ]] \
  || die "the nginx proxy on port $NGX does not answer 200: $(tail -n 3 "$TMP/proxy/error.log" "$TMP/up/error.log" 2>&1)"

# The whole config in one PUT /admin/config: /a, /b, /c, /churn and N routes /r/0 … /r/N-1.
JWT_SECRET=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
config_doc() {
  python3 - "$UP" "$JWT_SECRET" "$1" <<'PY'
import json, sys
up, secret, spread = sys.argv[1], sys.argv[2], int(sys.argv[3])
ups = {"type": "roundrobin", "nodes": {f"127.0.0.1:{up}": 1}}
limit = {"count": 1_000_000_000, "time_window": 3600, "key": "remote_addr"}
def plugins(policy):
    lc = dict(limit, **({"policy": "redis", "redis_host": "127.0.0.1"} if policy else {}))
    return {"jwt-auth": {}, "limit-count": lc, "prometheus": {}}
routes = [
    {"id": "a", "uri": "/a", "upstream": ups},
    {"id": "b", "uri": "/b", "upstream": ups, "plugins": plugins(False)},
    {"id": "c", "uri": "/c", "upstream": ups, "plugins": plugins(True)},
    {"id": "churn", "uri": "/churn", "upstream": ups, "desc": "0"},
]
routes += [{"id": f"r{i}", "uri": f"/r/{i}", "upstream": ups} for i in range(spread)]
consumers = [{"id": "bench", "username": "bench", "plugins": {"jwt-auth": {"key": "bench-key", "secret": secret}}}]
print(json.dumps({"resources": {"routes": routes, "consumers": consumers}}))
PY
}
# put_config N: replaces the config; waits until both DPs applied its revision.
put_config() {
  config_doc "$1" >"$TMP/config.json"
  local resp rev
  resp=$(curl -sS --fail-with-body -X PUT "http://127.0.0.1:$ADMIN/admin/config" -H "X-API-KEY: $KEY" \
    -H 'Content-Type: application/json' --data-binary @"$TMP/config.json") || die "PUT /admin/config: $resp"
  rev=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])' <<<"$resp")
  for st in "$ST1" "$ST2"; do
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$st/readyz" | grep -Eq "\"version\": ?$rev[,}]" && continue 2
      sleep 0.1
    done
    die "a data plane did not apply revision $rev"
  done
  log "config with $((4 + $1)) routes applied (revision $rev)"
}
put_config 6
TOKEN=$(python3 "$(dirname "${BASH_SOURCE[0]}")/jwt_token.py" "$JWT_SECRET")
AUTH="Authorization: Bearer $TOKEN"
for path in a b c; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "http://127.0.0.1:$DP1/$path")
  [[ $code == 200 ]] || die "/$path answers $code"
done
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DP1/b") == 401 ]] || die "/b without a token is not refused"
curl -sf -D - -o /dev/null -H "$AUTH" "http://127.0.0.1:$DP1/c" | grep -qi '^x-ratelimit-limit' || die "no limit on /c"

# Scenarios d and d10: requests spread over /r/0 … /r/N-1 by bench/spread.lua.
SPREAD_LUA="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/spread.lua"

# The Admin API writer of scenario e: 50 route updates a second for the measured run, one curl
# on one keepalive connection (`--rate`), each body new (its `desc` and node weight change, so
# no write is a no-op). curl rather than a Python loop: the writer shares the load generator's
# core, where a Python http.client loop took about 4 % (0.7-0.8 ms a write), curl 1.5-1.7 %.
# Prints each write's status, one a line, to $TMP/churn.out.
churn() { # churn ROUND
  python3 - "http://127.0.0.1:$ADMIN/admin/routes/churn" "$KEY" "$UP" "$1" "$((SECS * 50))" \
    >"$TMP/churn.curl" <<'PY'
import json, sys
url, key, up, rnd, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def block(i):
    body = json.dumps({"uri": "/churn", "desc": str(i), "upstream": {"nodes": {f"127.0.0.1:{up}": 1 + i % 2}}})
    return (f'url = "{url}"\nrequest = "PUT"\nheader = "X-API-KEY: {key}"\n'
            'header = "Content-Type: application/json"\noutput = "/dev/null"\n'
            'write-out = "%{http_code} new connections %{num_connects}\\n"\n'
            f"data-binary = {json.dumps(body)}\n")
print("next\n".join(block(i) for i in range(rnd * n, rnd * n + n)))
PY
  # The writer's CPU comes from `times` in its own subshell: at the end of a run curl may have
  # exited before /proc could be read (its 150 writes take the run's 3 s, and wrk starts after).
  (
    taskset -c 1 curl -sS --rate 50/s -K "$TMP/churn.curl" >"$TMP/churn.out" 2>&1
    rc=$?
    times >"$TMP/churn.times"
    exit $rc
  ) &
  CHURN_PID=$!
}

# Clock ticks of CPU (user + system) the churn writer took, from its subshell's `times` (the
# second line: its children's, e.g. `0m0.080s 0m0.030s`).
writer_ticks() {
  awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
                 printf "%d\n", t * 100 + 0.5 }' "$TMP/churn.times"
}

ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*) }; read -r -a f <<<"$s"; echo $((f[11] + f[12])); }
ngx_ticks() { local t=0 p; for p in "$NGX_PID" $(pgrep -P "$NGX_PID"); do t=$((t + $(ticks "$p"))); done; echo "$t"; }
# Redis' CPU in (c): its share of the load generator's core.
redis_ticks() { local t=0 p; for p in $(pgrep -x redis-server); do t=$((t + $(ticks "$p"))); done; echo "$t"; }
RAW="$TMP/runs.tsv"
printf 'phase\ttarget\tround\trequests\trps\tp50_us\tp99_us\tcpu_ticks\terrors\textra\tp90_us\n' >"$RAW"

# run TARGET ROUND: warm-up, then one measured wrk run against TARGET.
run() {
  local target=$1 round=$2 url pid=$DP1_PID args=() script=() extra=""
  case $target in
    nginx) url="http://127.0.0.1:$NGX/" ;;
    nginx-s) url="http://127.0.0.1:$NGX/"; args=(-s "$SPREAD_LUA"); script=(-- 10000) ;;
    a|a10k|e|e1) url="http://127.0.0.1:$DP1/a" ;;
    b|c) url="http://127.0.0.1:$DP1/$target"; args=(-H "$AUTH") ;;
    d) url="http://127.0.0.1:$DP1/"; args=(-s "$SPREAD_LUA"); script=(-- 10000) ;;
    d10) url="http://127.0.0.1:$DP1/"; args=(-s "$SPREAD_LUA"); script=(-- 6) ;;
    f) url="http://127.0.0.1:$DP2/a"; pid=$DP2_PID ;;
  esac
  # e1: the control plane (all its threads) beside wrk for this run, back beside DP1 after it.
  [[ $target != e1 ]] || taskset -a -p -c 1 "$CP_PID" >/dev/null
  taskset -c 1 wrk -t1 -c50 -d"${WARMUP}s" "${args[@]}" "$url" "${script[@]}" >/dev/null
  [[ $target != e* ]] || churn "$round"
  local t0 t1 r0 r1 c0 out="$TMP/$target-$round.txt"
  if [[ $target == nginx* ]]; then t0=$(ngx_ticks); else t0=$(ticks "$pid"); fi
  r0=$(redis_ticks)
  [[ $target != e* ]] || c0=$(ticks "$CP_PID")
  taskset -c 1 wrk -t1 -c50 -d"${SECS}s" --latency "${args[@]}" "$url" "${script[@]}" >"$out"
  if [[ $target == nginx* ]]; then t1=$(ngx_ticks); else t1=$(ticks "$pid"); fi
  r1=$(redis_ticks)
  [[ $target != c ]] || extra="redis_ticks=$((r1 - r0))"
  if [[ $target == e* ]]; then
    # What the churn itself costs: the CP's CPU (on cpu 0 in e, on wrk's cpu 1 in e1) and the
    # writer's (on cpu 1).
    local c1
    c1=$(ticks "$CP_PID")
    # Its writes end about when the measured run does (50 a second for SECS seconds).
    wait "$CHURN_PID" || die "the Admin API writer failed: $(tail -n 3 "$TMP/churn.out")"
    CHURN_PID=""
    extra="updates $(grep -c . "$TMP/churn.out") failed $(grep -vc '^2' "$TMP/churn.out" || true)"
    extra+=" cp_ticks $((c1 - c0)) writer_ticks $(writer_ticks)"
  fi
  [[ $target != e1 ]] || taskset -a -p -c 0 "$CP_PID" >/dev/null
  python3 - "$PHASE" "$target" "$round" "$((t1 - t0))" "$out" "$extra" >>"$RAW" <<'PY'
import re, sys
phase, target, rnd, ticks, path, extra = sys.argv[1:]
text = open(path).read()
def us(v, u): return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[u]
req = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = {p: us(*re.search(p + r"%\s+([\d.]+)(us|ms|s)\b", text).groups()) for p in ("50", "90", "99")}
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errs = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errs += sum(map(int, m.groups())) if m else 0
print("\t".join(map(str, (phase, target, rnd, req, rps, lat["50"], lat["99"], ticks, errs, extra, lat["90"]))))
PY
  tail -n 1 "$RAW" | awk -F'\t' -v tck="$(getconf CLK_TCK)" \
    '{ printf "[scenarios] %-5s round %s: %8.0f req/s  p99 %6.0f us  %5.1f us CPU/req  errors %d %s\n", $2, $3, $5, $7, $8*1e6/tck/$4, $9, $10 }' >&2
}

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
PHASE=1
log "phase 1 (10 routes): $ROUNDS rounds of nginx a b c e e1 f d10, ${SECS}s each"
for r in $(seq "$ROUNDS"); do for t in nginx a b c e e1 f d10; do run "$t" "$r"; done; done
put_config 10000
PHASE=2
log "phase 2 (10,004 routes): $ROUNDS rounds of nginx a10k d nginx-s"
for r in $(seq "$ROUNDS"); do for t in nginx a10k d nginx-s; do run "$t" "$r"; done; done
RSS1=$(awk '/VmRSS/ {print $2}' "/proc/$DP1_PID/status")

OUT=${BENCH_OUT:-"$REPO/bench/results/$(date -u +%F-%H%M)-scenarios.md"}
python3 - "$RAW" "$OUT" "$(getconf CLK_TCK)" "$COMMIT" "$LOAD" "$RSS1" "$SECS" "$ROUNDS" <<'PY'
import csv, statistics as st, sys, datetime, platform
raw, out, tck, commit, load, rss, secs, rounds = sys.argv[1:]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
S = {}
for r in rows:
    s = S.setdefault(r["target"], {"rps": [], "cpu": [], "p50": [], "p99": [], "err": 0, "extra": []})
    s["rps"].append(float(r["rps"])); s["p50"].append(float(r["p50_us"])); s["p99"].append(float(r["p99_us"]))
    s["cpu"].append(int(r["cpu_ticks"]) * 1e6 / int(tck) / max(int(r["requests"]), 1))
    s["err"] += int(r["errors"])
    if r["extra"]: s["extra"].append(r["extra"])
med = {t: {k: st.median(v) for k, v in s.items() if k in ("rps", "cpu", "p50", "p99")} for t, s in S.items()}
redis_cpu = st.median(int(r["extra"].split("=")[1]) * 1e6 / int(tck) / max(int(r["requests"]), 1)
                      for r in rows if r["target"] == "c")
# The nginx runs of both phases: one baseline.
ng = {k: st.median(S["nginx"][k]) for k in ("rps", "cpu", "p99")}
# Round-paired ratios: each run against a neighbour of the same round and phase, so drift of the
# machine between rounds (±20 % on some VMs) cancels; reported as median (min–max) over rounds.
R = {(r["phase"], r["target"], r["round"]): {
    "rps": float(r["rps"]), "p99": float(r["p99_us"]), "p90": float(r["p90_us"]),
    "cpu": int(r["cpu_ticks"]) / max(int(r["requests"]), 1)} for r in rows}
def paired(f):
    v = []
    for rnd in sorted({r["round"] for r in rows}, key=int):
        try: v.append(f(lambda t, k, ph="1": R[(ph, t, rnd)][k]))
        except KeyError: pass
    return f"{st.median(v):.2f}× ({min(v):.2f}–{max(v):.2f})" if v else "n/a"
phase_of = {"a10k": "2", "d": "2", "nginx-s": "2"}
names = {"nginx": "nginx plain proxy", "a": "(a) Postern plain", "b": "(b) jwt-auth + limit-count local + prometheus",
         "c": "(c) as (b), limit-count redis", "e": "(e) as (a), 50 Admin API updates/s",
         "e1": "(e1) as (e), the control plane on wrk's core",
         "f": "(f) as (a), --workers 2 unpinned", "d10": "(d10) 6 of 10 routes, requests spread (wrk script)",
         "a10k": "(a) with 10,004 routes loaded", "d": "(d) 10,000 routes, requests spread (wrk script)",
         "nginx-s": "nginx plain proxy, the wrk script of (d)"}
L = [f"# Postern scenarios vs nginx — {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC", "",
     f"`bench/scenarios.sh` at {commit}; {rounds} interleaved rounds of {secs} s per target; "
     f"machine: {platform.node()} nproc 2, kernel {platform.release()}; load average before: {load} "
     "(the machine is shared with other agents building code: numbers are noisy).", "",
     "| target | req/s median (min–max) | CPU µs/request | p50 | p99 | req/s ÷ nginx | CPU ÷ nginx | failed requests |",
     "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for t in ("nginx", "a", "b", "c", "e", "e1", "f", "d10", "a10k", "d", "nginx-s"):
    if t not in S: continue
    m, s = med[t], S[t]
    L.append(f"| {names[t]} | {m['rps']:,.0f} ({min(s['rps']):,.0f}–{max(s['rps']):,.0f}) | {m['cpu']:.1f} | "
             f"{m['p50']:.0f} µs | {m['p99']:.0f} µs | {m['rps']/ng['rps']:.2f}× | {m['cpu']/ng['cpu']:.2f}× | {s['err']} |")
L += ["", "Each run ÷ the nginx run of the same round and phase (round-paired), median (min–max) over rounds:", "",
      "| target | CPU ÷ nginx | req/s ÷ nginx | p90 ÷ nginx | p99 ÷ nginx |", "| --- | ---: | ---: | ---: | ---: |"]
for t in ("a", "b", "c", "e", "e1", "f", "d10", "a10k", "d", "nginx-s"):
    if t not in S: continue
    ph = phase_of.get(t, "1")
    L.append(f"| {names[t]} | {paired(lambda g: g(t, 'cpu', ph) / g('nginx', 'cpu', ph))} | "
             f"{paired(lambda g: g(t, 'rps', ph) / g('nginx', 'rps', ph))} | "
             f"{paired(lambda g: g(t, 'p90', ph) / g('nginx', 'p90', ph))} | "
             f"{paired(lambda g: g(t, 'p99', ph) / g('nginx', 'p99', ph))} |")
# (d) against (d10) across phases: each against its own phase's nginx of the round.
d_pair = paired(lambda g: (g("d", "rps", "2") / g("nginx", "rps", "2")) / (g("d10", "rps") / g("nginx", "rps")))
# The churn's own CPU, as a share of one core over the (e) and (e1) runs.
def churn_share(t):
    churn = [dict(zip(e.split()[::2], map(int, e.split()[1::2]))) for e in S[t]["extra"]]
    return {k: st.median(c[k] / int(tck) / int(secs) for c in churn) for k in ("cp_ticks", "writer_ticks")}
share = {t: churn_share(t) for t in ("e", "e1")}
L += ["", "| check | medians | round-paired | issue #11 target |", "| --- | ---: | ---: | --- |",
      f"| (a) CPU/request ÷ nginx | {med['a']['cpu']/ng['cpu']:.2f}× | {paired(lambda g: g('a', 'cpu') / g('nginx', 'cpu'))} | ≤ 1.05× |",
      f"| (a) req/s ÷ nginx | {med['a']['rps']/ng['rps']:.2f}× | {paired(lambda g: g('a', 'rps') / g('nginx', 'rps'))} | ≥ 0.95× |",
      f"| (a) p99 ÷ nginx | {med['a']['p99']/ng['p99']:.2f}× | {paired(lambda g: g('a', 'p99') / g('nginx', 'p99'))} | ≤ 1× |",
      f"| (a) p90 ÷ nginx: the tail short of the VM's stalls (no target) | | {paired(lambda g: g('a', 'p90') / g('nginx', 'p90'))} | |",
      f"| (b) CPU/request ÷ nginx plain | {med['b']['cpu']/ng['cpu']:.2f}× | {paired(lambda g: g('b', 'cpu') / g('nginx', 'cpu'))} | ≤ 1.25× |",
      f"| (c) req/s ÷ (b) | {med['c']['rps']/med['b']['rps']:.2f}× | {paired(lambda g: g('c', 'rps') / g('b', 'rps'))} | ≥ 0.7× |",
      f"| (c) Redis CPU µs/request (on the load generator's core) | {redis_cpu:.1f} | | |",
      f"| (d) req/s ÷ (d10): 10,000 vs 10 routes, the same wrk script | {med['d']['rps']/med['d10']['rps']:.2f}× | {d_pair} (each ÷ its phase's nginx) | ≥ 0.95× |",
      f"| (d) CPU/request ÷ (d10) | {med['d']['cpu']/med['d10']['cpu']:.2f}× | | |",
      f"| (d) req/s ÷ (a) (no script; earlier runs' figure) | {med['d']['rps']/med['a']['rps']:.2f}× | | |",
      f"| (d) req/s ÷ nginx under the same script | {med['d']['rps']/med['nginx-s']['rps']:.2f}× | {paired(lambda g: g('d', 'rps', '2') / g('nginx-s', 'rps', '2'))} | |",
      f"| (e) failed requests; req/s ÷ (a) | {S['e']['err']}; {med['e']['rps']/med['a']['rps']:.2f}× | {paired(lambda g: g('e', 'rps') / g('a', 'rps'))} | 0; ≥ 0.9× |",
      f"| (e) Admin API writes per run | {'; '.join(' '.join(e.split()[:4]) for e in S['e']['extra'])} | | 50/s |",
      f"| (e) the churn's CPU: control plane (cpu 0, beside DP1); Admin API writer (cpu 1) | "
      f"{share['e']['cp_ticks']:.1%}; {share['e']['writer_ticks']:.1%} of a core | | |",
      f"| (e1) failed requests; req/s ÷ (a): the control plane on wrk's core (no target) | {S['e1']['err']}; {med['e1']['rps']/med['a']['rps']:.2f}× | {paired(lambda g: g('e1', 'rps') / g('a', 'rps'))} | |",
      f"| (e1) the churn's CPU on wrk's core: control plane; Admin API writer | "
      f"{share['e1']['cp_ticks']:.1%}; {share['e1']['writer_ticks']:.1%} | | |",
      f"| (f) req/s ÷ (a) | {med['f']['rps']/med['a']['rps']:.2f}× | {paired(lambda g: g('f', 'rps') / g('a', 'rps'))} | (scaling) |",
      f"| DP1 resident memory with 10,004 routes | {int(rss)/1024:.0f} MiB | | ≤ 64 MiB |",
      "", "CPU µs/request: the process's utime+stime (all threads; nginx: master + workers) over the "
      "measured run ÷ requests completed. DP1 (`--workers 1`), the control plane (but in e1) and nginx on "
      "cpu 0; wrk, the upstream, the Admin API writer and Redis on cpu 1; DP2 (`--workers 2`) not pinned.", ""]
open(out, "w").write("\n".join(L))
print("\n".join(L))
print(f"written: {out}", file=sys.stderr)
PY
