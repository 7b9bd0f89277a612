#!/usr/bin/env python3
"""Control-plane figures (issue 11): how fast a config change reaches data planes, how long a
10,000-route snapshot takes to build, push and compile, and what a data plane holds in memory.

Started by bench/control_plane.sh, which builds the release binaries; this script starts one
control plane (SQLite store) and three data planes on free loopback ports, then measures:

- propagation: 200 single-route writes, one after another; for each, the time from the Admin
  API's 2xx to the moment every DP's /readyz reports that revision (DPs polled round-robin over
  keep-alive connections, so the resolution is a fraction of a millisecond); p50/p90/p99/max;
- 10,000 routes: one `PUT /admin/config` of 10,000 routes (one revision), then the time until
  all three DPs serve it, and the DPs' own compile time (their log's `compile_ms`);
- a one-route change on top of 10,000 routes: 20 writes of `desc`, then 20 path changes,
  propagation p50/max as above, with the CP's build and the DPs' compile times from their logs;
- the bytes the CP sent the DPs while they took the 10,000-route snapshot (`ss -ti`'s
  bytes_sent of the sync port's connections: what the wire carried, compressed);
- DP resident memory (VmRSS) with 10 routes and with 10,000 routes.

Writes a Markdown report to stdout. Standard library only.
"""

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# BENCH_DPS: how many data planes (default 3, as issue 11 asks).
DPS = int(os.environ.get("BENCH_DPS", "3"))
# BENCH_STORE: `sqlite` (default), `etcd` (a fresh etcd of the run's own, Debian's etcd-server),
# or a store URL for --store (say a Postgres database made for the run).
STORE = os.environ.get("BENCH_STORE", "sqlite")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """One keep-alive connection to one loopback address."""

    def __init__(self, port, key=None):
        self.port, self.key = port, key
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None):
        headers = {"content-type": "application/json"}
        if self.key:
            headers["x-api-key"] = self.key
        data = None if body is None else json.dumps(body)
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read()
                return resp.status, (json.loads(text) if text else None)
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise


def wait_until(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"control_plane.py: timed out waiting for {what}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bytes_sent_from(port):
    """Bytes sent so far on the established TCP connections from a local port (`ss -ti`)."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True).stdout
    return sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", out))


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    bin_dir = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="postern-cp-bench-")
    procs = []
    key = secrets.token_hex(24)
    admin_port, sync_port = free_port(), free_port()

    def spawn(name, args):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        store = []
        if STORE == "etcd":
            client, peer = free_port(), free_port()
            spawn("etcd", ["etcd", "--data-dir", f"{tmp}/etcd", "--name", "bench",
                           "--listen-client-urls", f"http://127.0.0.1:{client}",
                           "--advertise-client-urls", f"http://127.0.0.1:{client}",
                           "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                           "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                           "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
                           # The 10,000-route write is one transaction (README: `PUT /admin/config`).
                           "--max-txn-ops", "100000", "--max-request-bytes", "33554432"])
            store = ["--store", f"etcd://127.0.0.1:{client}/postern-bench"]
        elif STORE != "sqlite":
            store = ["--store", STORE]
        cp = spawn("cp", [f"{bin_dir}/control-plane", "--data-dir", f"{tmp}/cp",
                     "--admin-listen", f"127.0.0.1:{admin_port}",
                     "--sync-listen", f"127.0.0.1:{sync_port}", "--admin-key", key] + store)
        admin = Http(admin_port, key)
        wait_until("the Admin API", lambda: admin.call("GET", "/admin/status")[0] == 200)
        dps = []
        for i in range(DPS):
            proxy, status = free_port(), free_port()
            p = spawn(f"dp{i}", [f"{bin_dir}/data-plane",
                                 "--control-plane", f"http://127.0.0.1:{sync_port}",
                                 "--proxy-listen", f"127.0.0.1:{proxy}",
                                 "--status-listen", f"127.0.0.1:{status}",
                                 "--cache-dir", f"{tmp}/dp{i}-cache", "--node-id", f"bench-dp{i}"])
            dps.append((p, Http(status)))
        for i, (_, h) in enumerate(dps):
            wait_until(f"data plane {i}", lambda h=h: h.call("GET", "/healthz")[0] == 200)

        def versions():
            out = []
            for _, h in dps:
                code, body = h.call("GET", "/readyz")
                out.append(body.get("version", 0) if code == 200 and body else 0)
            return out

        def propagate(path, body, method="PUT"):
            code, answer = admin.call(method, path, body)
            assert code in (200, 201), (code, answer)
            rev = answer["revision"]
            t0 = time.perf_counter()
            pending = list(range(DPS))
            while pending:
                i = pending.pop(0)
                code, ready = dps[i][1].call("GET", "/readyz")
                if not (code == 200 and ready.get("version", 0) >= rev):
                    pending.append(i)
            return (time.perf_counter() - t0) * 1e3, rev

        upstream = {"nodes": {"127.0.0.1:9": 1}}
        for i in range(10):
            propagate(f"/admin/routes/r{i}", {"uri": f"/r{i}", "upstream": upstream})
        time.sleep(1)
        rss_small = [rss_kib(p.pid) for p, _ in dps]

        times = []
        for n in range(200):
            ms, _ = propagate(f"/admin/routes/r{n % 10}",
                              {"uri": f"/r{n % 10}", "upstream": upstream, "desc": f"change {n}"})
            times.append(ms)

        routes = [{"id": f"big{i}", "uri": f"/big/{i}/*", "upstream": upstream} for i in range(10_000)]
        sent_before = bytes_sent_from(sync_port)
        t0 = time.perf_counter()
        code, answer = admin.call("PUT", "/admin/config", {"resources": {"routes": routes}})
        assert code == 200, (code, answer)
        write_ms = (time.perf_counter() - t0) * 1e3
        rev = answer["revision"]
        t1 = time.perf_counter()
        wait_until("10,000 routes on every DP", lambda: min(versions()) >= rev, timeout=120)
        big_ms = (time.perf_counter() - t1) * 1e3
        sync_kib = (bytes_sent_from(sync_port) - sent_before) / 1024
        time.sleep(1)
        rss_big = [rss_kib(p.pid) for p, _ in dps]

        big_times = []
        cp_cpu_before = cpu_seconds(cp.pid)
        for n in range(20):
            ms, _ = propagate(f"/admin/routes/big{n}",
                              {"uri": f"/big/{n}/*", "upstream": upstream, "desc": f"change {n}"})
            big_times.append(ms)
        cp_cpu_ms = (cpu_seconds(cp.pid) - cp_cpu_before) * 1e3 / 20
        # A path change: the route's matching changes, so the DP's router changes too.
        path_times = []
        for n in range(20):
            ms, _ = propagate(f"/admin/routes/big{n}",
                              {"uri": f"/big/{n}/v2/*", "upstream": upstream})
            path_times.append(ms)

        ansi = re.compile(r"\x1b\[[0-9;]*m")

        def logged(name, field):
            """{version: value of `field`} from the lines of a log that carry both."""
            out = {}
            with open(os.path.join(tmp, f"{name}.log")) as f:
                for line in f:
                    line = ansi.sub("", line)
                    m = re.search(field + r"=([0-9.]+)", line)
                    v = re.search(r"version=(\d+)", line)
                    if m and v:
                        out[int(v.group(1))] = float(m.group(1))
            return out

        compile_ms = [logged(f"dp{i}", "compile_ms").get(rev) for i in range(DPS)]
        compile_ms = [c for c in compile_ms if c is not None]
        small_revs = range(rev + 1, rev + 21)
        path_revs = range(rev + 21, rev + 41)
        cp_build = logged("cp", "build_ms")
        small_build = [cp_build[r] for r in small_revs if r in cp_build]
        small_compile = [c for i in range(DPS) for r, c in logged(f"dp{i}", "compile_ms").items()
                         if r in small_revs]
        path_build = [cp_build[r] for r in path_revs if r in cp_build]
        path_compile = [c for i in range(DPS) for r, c in logged(f"dp{i}", "compile_ms").items()
                        if r in path_revs]

        print("| figure | value |")
        print("| --- | ---: |")
        print(f"| propagation to {DPS} DPs, 200 single-route changes at 10 routes: p50 / p90 / p99 / max "
              f"| {pct(times, 50):.1f} / {pct(times, 90):.1f} / {pct(times, 99):.1f} / {max(times):.1f} ms |")
        print(f"| `PUT /admin/config` of 10,000 routes (one revision): the write | {write_ms:.0f} ms |")
        print(f"| … then until all {DPS} DPs serve it (snapshot build + push + compile + swap) | {big_ms:.0f} ms |")
        if compile_ms:
            print(f"| … of which each DP's compile (log `compile_ms`) | "
                  f"{' / '.join(f'{c:.0f}' for c in compile_ms)} ms |")
        print(f"| … bytes the CP sent to the {DPS} DPs meanwhile (`ss`: the snapshot as sent) | "
              f"{sync_kib:.0f} KiB |")
        print(f"| propagation of a one-route change at 10,000 routes, 20 changes: p50 / max "
              f"| {pct(big_times, 50):.1f} / {max(big_times):.1f} ms |")
        if small_build:
            print(f"| … of which the CP's snapshot build (log `build_ms`), p50 | {pct(small_build, 50):.1f} ms |")
        if small_compile:
            print(f"| … and each DP's compile (log `compile_ms`), p50 | {pct(small_compile, 50):.1f} ms |")
        print(f"| … the CP's CPU per change (write, build, a delta to each of {DPS} DPs) | {cp_cpu_ms:.1f} ms |")
        print(f"| propagation of a one-route path change at 10,000 routes, 20 changes: p50 / max "
              f"| {pct(path_times, 50):.1f} / {max(path_times):.1f} ms |")
        if path_build:
            print(f"| … of which the CP's snapshot build (log `build_ms`), p50 | {pct(path_build, 50):.1f} ms |")
        if path_compile:
            print(f"| … and each DP's compile (log `compile_ms`), p50 / max | "
                  f"{pct(path_compile, 50):.1f} / {max(path_compile):.1f} ms |")
        print(f"| DP resident memory (VmRSS) at 10 routes | "
              f"{' / '.join(f'{r / 1024:.1f}' for r in rss_small)} MiB |")
        print(f"| DP resident memory (VmRSS) at 10,000 routes | "
              f"{' / '.join(f'{r / 1024:.1f}' for r in rss_big)} MiB |")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("BENCH_KEEP_TMP") == "1":
            print(f"\n(logs kept in {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
