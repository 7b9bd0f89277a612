#!/usr/bin/env bash
# Chaos under load (tests/tests/chaos.rs): two data planes behind HAProxy, a control plane on a
# Postgres of the test's own, a Redis of its own behind a cluster-wide limit-count; kills Redis,
# Postgres, the CP (-9) and a DP (-9) in turn, each restarted, and prints for each fault the
# failed requests, the mode that applied and the time to recover, then checks that no
# acknowledged Admin API write was lost. Loopback only, about 40 s.
#
# Needs what scripts/test.sh provides (haproxy, PostgreSQL server binaries, redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --workspace --bins --locked
cargo test -p postern-tests --test chaos --locked -- --nocapture
