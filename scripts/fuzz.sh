#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/libfuzzer) for a bounded time each; a crash fails the script
# and leaves the input in the cache's artifacts dir (copy it to fuzz/regressions/<target>/, fix,
# and the stable test in fuzz/harness replays it from then on).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 20 s, every target)
#
# Only a stable toolchain is assumed: cargo-fuzz's nightly-only flags are avoided with
# `--sanitizer none` (libFuzzer's coverage instrumentation is stable `-C` flags) and
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz's remaining `-Z` flag through. cargo-fuzz is installed from
# crates.io when missing. Builds, corpora and crashes live in the cache dir, not in the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
shift || true
cache="${XDG_CACHE_HOME:-$HOME/.cache}/postern/fuzz"
export CARGO_TARGET_DIR="$cache/target"
export RUSTC_BOOTSTRAP=1
mkdir -p "$cache"

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

dir=(--fuzz-dir fuzz/libfuzzer)
opts=("${dir[@]}" --sanitizer none --release --target-dir "$CARGO_TARGET_DIR")
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list "${dir[@]}"); fi

cargo fuzz build "${opts[@]}"
failed=()
for t in "${targets[@]}"; do
  corpus="$cache/corpus/$t"
  artifacts="$cache/artifacts/$t/"
  mkdir -p "$corpus" "$artifacts"
  dirs=("$corpus")
  for d in "fuzz/seeds/$t" "fuzz/regressions/$t"; do [ -d "$d" ] && dirs+=("$d"); done
  echo "== fuzz $t for ${seconds}s"
  if ! cargo fuzz run "${opts[@]}" "$t" "${dirs[@]}" -- \
      -max_total_time="$seconds" -artifact_prefix="$artifacts" -print_final_stats=1 \
      2>"$cache/$t.log"; then
    tail -n 40 "$cache/$t.log" >&2
    echo "fuzz.sh: $t failed; the input is in $artifacts" >&2
    failed+=("$t")
  else
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$cache/$t.log" | tail -n 2
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: failing targets: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash"
