#!/usr/bin/env python3
"""Summarises the runs of bench/run.sh: a table and the Postern/nginx ratios on stdout, and
(except with --smoke) bench/results/<YYYY-MM-DD>.md with the machine, commit and settings.

Input: the TSV written by run.sh (one line per measured run) and BENCH_* environment variables
set by run.sh. Not meant to be run by hand.
"""

import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys

env = os.environ
RAW = env["BENCH_RAW"]
SMOKE = env["BENCH_SMOKE"] == "1"
CLK_TCK = int(env["BENCH_CLK_TCK"])
TARGETS = ("nginx", "postern")
LABEL = {"nginx": "nginx", "postern": "Postern"}

with open(RAW) as f:
    runs = list(csv.DictReader(f, delimiter="\t"))
for r in runs:
    r["requests"] = int(r["requests"])
    for k in ("rps", "p50_us", "p75_us", "p90_us", "p99_us", "seconds"):
        r[k] = float(r[k])
    r["cpu_ticks"] = int(r["cpu_ticks"])
    # CPU µs per request: ticks -> µs, divided by the requests wrk saw completed.
    r["cpu_us_per_req"] = r["cpu_ticks"] * 1e6 / CLK_TCK / max(r["requests"], 1)
    r["errors"] = int(r["non2xx"]) + int(r["socket_errors"])

busy_cols = [k for k in runs[0] if k.endswith("_busy")]


def summary(target):
    rs = [r for r in runs if r["target"] == target]
    rps = [r["rps"] for r in rs]
    return {
        "n": len(rs),
        "rps_med": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50": statistics.median(r["p50_us"] for r in rs),
        "p99": statistics.median(r["p99_us"] for r in rs),
        "p99_min": min(r["p99_us"] for r in rs),
        "p99_max": max(r["p99_us"] for r in rs),
        "cpu": statistics.median(r["cpu_us_per_req"] for r in rs),
        "cpu_min": min(r["cpu_us_per_req"] for r in rs),
        "cpu_max": max(r["cpu_us_per_req"] for r in rs),
        "requests": sum(r["requests"] for r in rs),
        "errors": sum(r["errors"] for r in rs),
        "busy": {c: statistics.median(float(r[c]) for r in rs) for c in busy_cols},
    }


S = {t: summary(t) for t in TARGETS}


def ratio(key):
    a, b = S["postern"][key], S["nginx"][key]
    return a / b if b else float("nan")


RATIOS = [
    ("req/s (median)", ratio("rps_med"), "higher is better for Postern"),
    ("CPU µs/request (median)", ratio("cpu"), "lower is better for Postern"),
    ("p99 latency (median of runs)", ratio("p99"), "lower is better for Postern"),
    ("p50 latency (median of runs)", ratio("p50"), "lower is better for Postern"),
]


def fmt_us(v):
    return f"{v / 1000:.2f} ms" if v >= 10_000 else f"{v:.0f} µs"


def summary_table():
    busy_hdr = " | ".join(f"{c.replace('_busy', '')} busy" for c in busy_cols)
    lines = [
        f"| target | req/s median | req/s min–max | p50 | p99 (min–max) | CPU µs/request (min–max) | {busy_hdr} | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in busy_cols) + " | ---: |",
    ]
    for t in TARGETS:
        s = S[t]
        busy = " | ".join(f"{s['busy'][c]:.0f}%" for c in busy_cols)
        lines.append(
            f"| {LABEL[t]} | {s['rps_med']:,.0f} | {s['rps_min']:,.0f}–{s['rps_max']:,.0f} "
            f"| {fmt_us(s['p50'])} | {fmt_us(s['p99'])} ({fmt_us(s['p99_min'])}–{fmt_us(s['p99_max'])}) "
            f"| {s['cpu']:.1f} ({s['cpu_min']:.1f}–{s['cpu_max']:.1f}) | {busy} | {s['errors']} |"
        )
    return "\n".join(lines)


def ratio_table():
    lines = ["| Postern / nginx | ratio | |", "| --- | ---: | --- |"]
    for name, v, note in RATIOS:
        lines.append(f"| {name} | {v:.2f}× | {note} |")
    return "\n".join(lines)


def runs_table():
    lines = [
        "| run | target | round | requests | req/s | p50 | p75 | p90 | p99 | proxy CPU ticks | CPU µs/request | "
        + " | ".join(c.replace("_busy", "") + " busy" for c in busy_cols)
        + " | errors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in busy_cols)
        + " | ---: |",
    ]
    for i, r in enumerate(runs, 1):
        busy = " | ".join(f"{float(r[c]):.0f}%" for c in busy_cols)
        lines.append(
            f"| {i} | {LABEL[r['target']]} | {r['round']} | {r['requests']:,} | {r['rps']:,.0f} "
            f"| {fmt_us(r['p50_us'])} | {fmt_us(r['p75_us'])} | {fmt_us(r['p90_us'])} | {fmt_us(r['p99_us'])} "
            f"| {r['cpu_ticks']} | {r['cpu_us_per_req']:.1f} | {busy} | {r['errors']} |"
        )
    return "\n".join(lines)


# ---- stdout -------------------------------------------------------------------------------
print()
print(summary_table())
print()
print(ratio_table())
print()

problems = [f"{LABEL[t]}: {S[t]['errors']} failed requests (non-2xx or socket errors)"
            for t in TARGETS if S[t]["errors"]]
problems += [f"{LABEL[t]}: no requests served" for t in TARGETS if S[t]["requests"] == 0]

if SMOKE:
    # The smoke run judges only that both proxies served; never performance.
    if problems:
        print("smoke: FAILED\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"smoke: OK (nginx served {S['nginx']['requests']:,} requests, "
          f"Postern {S['postern']['requests']:,}, no errors)")
    sys.exit(0)

for p in problems:
    print(f"WARNING: {p}", file=sys.stderr)

# ---- results file -------------------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def read(path):
    with open(path) as f:
        return f.read().rstrip()


nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
now = datetime.datetime.now().astimezone()
os.makedirs(env["BENCH_RESULTS_DIR"], exist_ok=True)
# Never overwrite an earlier result: a second run the same day gets the time too.
name = env.get("BENCH_RESULTS_NAME") or f"{now:%Y-%m-%d}.md"
out_path = os.path.join(env["BENCH_RESULTS_DIR"], name)
if os.path.exists(out_path):
    out_path = os.path.join(env["BENCH_RESULTS_DIR"], f"{now:%Y-%m-%d-%H%M%S}.md")
proxy_cpu, load_cpu = env["BENCH_PROXY_CPU"], env["BENCH_LOAD_CPU"]

doc = f"""# Postern vs nginx as a plain reverse proxy — {now:%Y-%m-%d}

Generated by `bench/run.sh` at {now:%Y-%m-%d %H:%M %Z}. Each proxy forwards `GET /` to the same
upstream (nginx, `return 200 "ok"`) over keepalive connections; wrk drives it. The proxy under
test runs alone on cpu {proxy_cpu}; wrk and the upstream share cpu {load_cpu}. Runs are interleaved
(nginx, Postern, nginx, Postern, …).

## Result

{summary_table()}

{ratio_table()}

- req/s: median of the {S['nginx']['n']} runs per target, with min–max. p50/p99: wrk's
  `--latency` percentiles, median over the runs.
- CPU µs/request: the proxy's utime+stime over the measured run (`/proc/<pid>/stat`, all
  threads; nginx: master + worker), clock ticks (1/{CLK_TCK} s) → µs, ÷ requests completed.
- cpu{proxy_cpu}/cpu{load_cpu} busy: share of that CPU not idle during the run (`/proc/stat`; includes
  softirq time). When cpu{load_cpu} (wrk + upstream) is near 100%, req/s is bounded by the
  load side, not by the proxy: compare CPU µs/request then.
- errors: non-2xx responses plus socket errors reported by wrk, over all runs.

## Every run

{runs_table()}

## Machine

- nproc: {nproc}; CPU: {cpu_model()}; memory: {mem_total()}
- kernel: {platform.release()} ({platform.machine()})
- nginx: {env['BENCH_NGINX_VERSION']}; wrk: {env['BENCH_WRK_VERSION']}
- Postern: {env['BENCH_COMMIT']} (taken before `cargo build --release --bins`); sha256 of the
  running binaries (first 16 hex): data-plane `{env['BENCH_DP_SHA']}`, control-plane `{env['BENCH_CP_SHA']}`
- load average before the runs: {env['BENCH_LOADAVG']} (1, 5, 15 min; the build just before raises it)

## Settings

- rounds: {env['BENCH_ROUNDS_N']}; each run: {env['BENCH_WARMUP_S']} s warm-up (not measured), then
  {env['BENCH_SECONDS_PER_RUN']} s measured; wrk 1 thread, {env['BENCH_CONNS_N']} connections, `--latency`
  (`BENCH_ROUNDS`, `BENCH_SECONDS`, `BENCH_WARMUP`, `BENCH_CONNS` override).
- wrk: `{env['BENCH_WRK_CMD']}`
- Postern data plane: `{env['BENCH_DP_CMD']}` (RUST_LOG unset: level `info`;
  the process had {env['BENCH_DP_THREADS_SEEN']} threads at the end of the run: the main runtime's
  threads, the proxy worker(s) and any blocking-pool threads still alive)
- Postern control plane: `{env['BENCH_CP_CMD']}`
- Route (Admin API `PUT /admin/routes/bench`): `{env['BENCH_ROUTE_JSON']}`
- nginx proxy: `taskset -c {proxy_cpu} nginx -p TMP/proxy -e … -c TMP/proxy/nginx.conf`, config:

```nginx
{read(env['BENCH_NGINX_PROXY_CONF'])}
```

- upstream: `taskset -c {load_cpu} nginx -p TMP/upstream -e … -c TMP/upstream/nginx.conf`, config:

```nginx
{read(env['BENCH_NGINX_UPSTREAM_CONF'])}
```
"""
if env["BENCH_COMMIT_END"] != env["BENCH_COMMIT"]:
    problems.append(f"the source tree changed during the run: at the end it was {env['BENCH_COMMIT_END']}; "
                    "the binaries measured are the ones built at the start")
if problems:
    doc += "\n## Warnings\n\n" + "\n".join(f"- {p}" for p in problems) + "\n"

with open(out_path, "w") as f:
    f.write(doc)
print(f"wrote {os.path.relpath(out_path, os.getcwd()) if out_path.startswith(os.getcwd()) else out_path}")
