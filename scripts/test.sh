#!/usr/bin/env bash
# Postern's test command (the README's): makes sure what the tests need is there, builds the
# binaries the integration tests start, then runs every test of the workspace.
#
# Needs: the Rust toolchain; PostgreSQL on 127.0.0.1:5432 (trust auth) for the tests that use it
# (they fail with instructions when it is absent). Debian's etcd-server is installed when
# missing, as root or with sudo, and so are Debian's haproxy (topology test), prometheus (for
# promtool, which checks deploy/prometheus/alerts.yml), and nginx and wrk (the benchmark's
# smoke pass). (protoc, for etcd-client's build script, comes from
# scripts/protoc: see .cargo/config.toml.)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
# ensure COMMAND PACKAGE...: install the Debian PACKAGEs when COMMAND is missing.
ensure() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local cmd=$1; shift
  echo "test.sh: $cmd not found; installing Debian package(s) $*" >&2
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The etcd store's tests start their own etcd processes (on free loopback ports).
ensure etcd etcd-server
# The deployment topology test runs HAProxy with deploy/haproxy/haproxy.cfg.
ensure haproxy haproxy

# The alert rules in deploy/ must load and fire on Postern's metric names.
ensure promtool prometheus
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)

cargo build --workspace --bins --locked

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi

# The benchmark's smoke pass (issue 11): nginx, wrk, the upstream and Postern start and serve
# side by side, with the debug binaries just built. It judges no figure, so noise cannot fail
# it; `bench/run.sh` without --smoke is the measurement.
ensure wrk wrk
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || ensure nginx nginx
BENCH_SKIP_BUILD=1 BENCH_PROFILE=debug bench/run.sh --smoke
