#!/usr/bin/env bash
# Postern's test command (the README's): makes sure what the tests need is there, builds the
# binaries the integration tests start, then runs every test of the workspace.
#
# Needs: the Rust toolchain; PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 for the
# tests that use them (they fail with instructions when absent). Debian packages the tests need
# are installed when missing (as root, or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
# ensure_pkg COMMAND PACKAGE: install PACKAGE from Debian when COMMAND is missing.
ensure_pkg() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "test.sh: $1 not found; installing Debian package $2" >&2
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

cargo build --workspace --bins --locked

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
