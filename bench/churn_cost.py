#!/usr/bin/env python3
"""What one Admin API write costs the control plane and a data plane, without proxy traffic.

    bench/churn_cost.py BIN_DIR [UPDATES]     (BIN_DIR holds release control-plane and data-plane)

Starts a CP (SQLite store in a temporary directory) and one DP (--workers 1), loads ROUTES
(environment, default 10) routes, then makes UPDATES (default 500) writes of one route at 50 a
second, as scenario (e) of bench/scenarios.sh does, and prints per write: CPU milliseconds of the
CP, of the DP and of this client (utime + stime from /proc), and the context switches of each
process (by CP thread name too); and the Admin API's answer time (request sent to response read,
this client's own time included), median and 90th percentile. In scenario (e) the CP and the
client share the load generator's core, so their CPU per write is what the churn takes from the
measured requests/s.
"""
import collections
import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ticks(pid):
    """utime + stime of every thread of pid, in clock ticks."""
    total = 0
    for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
        fields = open(stat).read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def switches(pid):
    """Voluntary + involuntary context switches of pid's threads, by thread name."""
    by_name = collections.Counter()
    for task in glob.glob(f"/proc/{pid}/task/*"):
        name = open(f"{task}/comm").read().strip()
        for line in open(f"{task}/status"):
            if "ctxt_switches" in line:
                by_name[name] += int(line.split()[1])
    return by_name


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bindir = sys.argv[1]
    try:
        updates = int(sys.argv[2]) if len(sys.argv) > 2 else 500
        routes = int(os.environ.get("ROUTES", "10"))
    except ValueError as e:
        sys.exit(f"UPDATES and ROUTES are whole numbers: {e}")
    if updates < 1 or routes < 0:
        sys.exit("UPDATES must be at least 1 and ROUTES not negative")
    for binary in ("control-plane", "data-plane"):
        if not os.access(f"{bindir}/{binary}", os.X_OK):
            sys.exit(f"no executable {bindir}/{binary} (build with cargo build --release)")
    tmp = tempfile.mkdtemp(prefix="postern-churn-")
    admin, sync, proxy, status, upstream = (free_port() for _ in range(5))
    key = os.urandom(16).hex()
    cp = subprocess.Popen(
        [f"{bindir}/control-plane", "--data-dir", f"{tmp}/cp",
         "--admin-listen", f"127.0.0.1:{admin}", "--sync-listen", f"127.0.0.1:{sync}",
         "--admin-key", key],
        stdout=open(f"{tmp}/cp.log", "w"), stderr=subprocess.STDOUT)
    dp = subprocess.Popen(
        [f"{bindir}/data-plane", "--workers", "1", "--control-plane", f"http://127.0.0.1:{sync}",
         "--proxy-listen", f"127.0.0.1:{proxy}", "--status-listen", f"127.0.0.1:{status}",
         "--node-id", "churn-cost", "--cache-dir", f"{tmp}/dp-cache"],
        stdout=open(f"{tmp}/dp.log", "w"), stderr=subprocess.STDOUT)
    try:
        headers = {"X-API-KEY": key, "Content-Type": "application/json"}
        conn = None
        for _ in range(150):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
                conn.request("GET", "/admin/routes", headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"the control plane did not start (log: {tmp}/cp.log)")
        nodes = {f"127.0.0.1:{upstream}": 1}
        config = {"resources": {"routes": [
            {"id": f"r{i}", "uri": f"/r/{i}", "upstream": {"type": "roundrobin", "nodes": nodes}}
            for i in range(routes)]}}
        conn.request("PUT", "/admin/config", json.dumps(config), headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"PUT /admin/config answered {response.status}")
        time.sleep(2)  # the DP connects and applies the config

        before = ticks(cp.pid), ticks(dp.pid), os.times(), switches(cp.pid), switches(dp.pid)
        start = time.monotonic()
        answered = []
        for done in range(updates):
            body = json.dumps({"uri": "/churn", "desc": str(done),
                               "upstream": {"nodes": {f"127.0.0.1:{upstream}": 1 + done % 2}}})
            sent = time.monotonic()
            conn.request("PUT", "/admin/routes/churn", body, headers)
            response = conn.getresponse()
            response.read()
            answered.append(time.monotonic() - sent)
            if response.status >= 300:
                sys.exit(f"PUT /admin/routes/churn answered {response.status}")
            time.sleep(max(0.0, start + (done + 1) / 50 - time.monotonic()))
        time.sleep(0.5)  # the last change reaches the DP
        after = ticks(cp.pid), ticks(dp.pid), os.times(), switches(cp.pid), switches(dp.pid)

        ms = 1e3 / os.sysconf("SC_CLK_TCK") / updates
        client = (after[2].user - before[2].user + after[2].system - before[2].system) * 1e3
        print(f"{updates} writes at 50/s, {routes + 1} routes; per write:")
        print(f"  CPU: control plane {(after[0] - before[0]) * ms:.3f} ms, "
              f"data plane {(after[1] - before[1]) * ms:.3f} ms, this client {client / updates:.3f} ms")
        cp_switches = {name: (after[3][name] - before[3][name]) / updates for name in after[3]}
        dp_switches = sum(after[4].values()) - sum(before[4].values())
        print(f"  context switches: control plane {sum(cp_switches.values()):.1f} ("
              + ", ".join(f"{name} {n:.1f}" for name, n in sorted(cp_switches.items()) if n)
              + f"), data plane {dp_switches / updates:.1f}")
        answered.sort()
        print(f"  answer time: median {answered[len(answered) // 2] * 1e3:.2f} ms, "
              f"90th percentile {answered[len(answered) * 9 // 10] * 1e3:.2f} ms")
    finally:
        for process in (cp, dp):
            process.terminate()
        for process in (cp, dp):
            process.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
