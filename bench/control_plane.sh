#!/usr/bin/env bash
# Control-plane figures: propagation of a change to 3 data planes (p50/p99 over 200 changes),
# a 10,000-route snapshot built, pushed and compiled, a one-route change at 10,000 routes, and
# data-plane memory at 10 and 10,000 routes (bench/control_plane.py says how each is taken).
#
#   bench/control_plane.sh     build (release), run, print the table and write
#                              bench/results/<date>-control-plane.md
#
# BENCH_SKIP_BUILD=1 uses the binaries already built; BENCH_DPS=N runs N data planes (default 3);
# BENCH_STORE=etcd runs the CP on an etcd of its own (or BENCH_STORE=<store URL>; default sqlite);
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO" && cargo build --release --bins --locked)
fi
OUT="$REPO/bench/results/$(date +%F)-control-plane.md"
{
  echo "# Control-plane figures, $(date '+%F %H:%M')"
  echo
  echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)."
  echo "Postern commit: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet || echo ' (with uncommitted changes)')."
  echo "One control plane (store: ${BENCH_STORE:-sqlite}) and ${BENCH_DPS:-3} data planes on this machine, release build."
  echo
  python3 "$REPO/bench/control_plane.py" "$TARGET_DIR/release"
} | tee "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "written: $OUT" >&2
