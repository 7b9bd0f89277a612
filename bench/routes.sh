#!/usr/bin/env bash
# Route-table benchmark: snapshot compile time and route lookup cost for 100 … 50,000 routes
# (exact, :param, prefix, host-bound and ~regex paths; a plugin on every tenth route).
#
#   bench/routes.sh                 all sizes; writes bench/results/<date>-routes.md
#   ROUTES=10000 bench/routes.sh    chosen sizes (comma-separated)
#
# Runs in-process (data-plane/benches/route_table.rs, release profile, pinned to cpu 0 when
# taskset exists): no network, so the figures are the router's and the compiler's alone.
set -euo pipefail
cd "$(dirname "$0")/.."
out="bench/results/$(date -u +%F)-routes.md"
mkdir -p bench/results
pin=()
command -v taskset >/dev/null && pin=(taskset -c 0)
bin=$(cargo bench -p postern-data-plane --bench route_table --no-run --message-format=json \
  | grep -o '"executable":"[^"]*route_table[^"]*"' | tail -1 | cut -d'"' -f4)
{
  echo "# Route table: compile and lookup ($(date -u +%FT%TZ), $(nproc) CPUs, pinned: ${pin[*]:-no})"
  echo
  "${pin[@]}" "$bin"
} | tee "$out"
echo "written: $out"
