#!/usr/bin/env bash
# A profile-guided release build of the control plane and the data plane.
#
#   scripts/build-pgo.sh        (PGO_DIR, default $CARGO_TARGET_DIR/pgo or target/pgo;
#                                PGO_TRAIN_SECONDS per training run, default 3)
#
# 1. builds both binaries instrumented (`-Cprofile-generate`),
# 2. trains them: bench/scenarios.sh's workload, one short round (plain proxying, jwt-auth +
#    limit-count + prometheus, the Redis limiter, config churn, two workers, 10,000 routes;
#    needs what bench/scenarios.sh needs: nginx, wrk and Redis on 127.0.0.1:6379),
# 3. merges the profiles with the llvm-profdata of rustc's own LLVM version (Debian's llvm-N,
#    installed when missing, or rustup's llvm-tools),
# 4. rebuilds both binaries with the profile (`-Cprofile-use`) into $PGO_DIR/release.
#
# LLVM then lays out and inlines the code by what ran: hot paths together, rarely taken branches
# out of line. Code the training never ran (TLS termination, OIDC, gRPC transcoding, …) is
# still built optimised, but inlined less eagerly. The ordinary `cargo build --release` stays
# the default; this is the build bench/README.md measures as `pgo`.
# Takes two full release builds plus a minute of training (about 25 min on 2 cores).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
PGO_DIR=${PGO_DIR:-$TARGET/pgo}
TRAIN_SECONDS=${PGO_TRAIN_SECONDS:-3}
[[ $TRAIN_SECONDS =~ ^[1-9][0-9]*$ ]] ||
  { echo "PGO_TRAIN_SECONDS must be a whole number of seconds, not '$TRAIN_SECONDS'" >&2; exit 2; }
log() { printf '[build-pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $HOST && -n $LLVM_MAJOR ]] || die "cannot read the host triple and LLVM version from rustc -vV"

# llvm-profdata must read the raw profile format of rustc's LLVM: the same major version.
find_profdata() {
  local p
  for p in "$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata" \
    "/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata" "$(command -v "llvm-profdata-$LLVM_MAJOR" || true)"; do
    [[ -n $p && -x $p ]] && { echo "$p"; return; }
  done
  # None found: print nothing and succeed, so `set -e` does not end the script before it
  # installs one (it did, silently, on a machine without llvm-N).
  return 0
}
PROFDATA=$(find_profdata)
if [[ -z $PROFDATA ]]; then
  log "no llvm-profdata for LLVM $LLVM_MAJOR; installing Debian's llvm-$LLVM_MAJOR"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    die "run 'apt-get install llvm-$LLVM_MAJOR' as root (or 'rustup component add llvm-tools')"
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o DPkg::Lock::Timeout=300 "llvm-$LLVM_MAJOR" >&2 ||
    die "could not install llvm-$LLVM_MAJOR (or run 'rustup component add llvm-tools')"
  PROFDATA=$(find_profdata)
  [[ -n $PROFDATA ]] || die "llvm-$LLVM_MAJOR installed no llvm-profdata"
fi

# --target keeps RUSTFLAGS off build scripts and proc macros: only the binaries are instrumented.
build() { # build TARGET_DIR RUSTFLAGS
  CARGO_TARGET_DIR=$1 RUSTFLAGS=$2 cargo build --release --locked --target "$HOST" \
    --manifest-path "$REPO/Cargo.toml" -p postern-control-plane -p postern-data-plane
}

RAW=$PGO_DIR/profiles/raw
rm -rf "$RAW" && mkdir -p "$RAW"
log "1/4 instrumented build ($PGO_DIR/generate)"
build "$PGO_DIR/generate" "-Cprofile-generate=$RAW"

log "2/4 training: bench/scenarios.sh, 1 round of $TRAIN_SECONDS s per target"
BENCH_SKIP_BUILD=1 CARGO_TARGET_DIR="$PGO_DIR/generate/$HOST" BENCH_ROUNDS=1 BENCH_WARMUP=1 \
  BENCH_SECONDS="$TRAIN_SECONDS" BENCH_OUT="$PGO_DIR/training.md" \
  "$REPO/bench/scenarios.sh" >/dev/null
compgen -G "$RAW/*.profraw" >/dev/null || die "the training wrote no profile to $RAW"
# A training whose requests failed would teach the optimiser the error paths.
read -r failed rows < <(awk -F'|' '/^\| (nginx|\()/ && NF == 10 { gsub(/ /, "", $9); s += $9; n++ }
  END { print s + 0, n + 0 }' "$PGO_DIR/training.md")
[[ $rows -gt 0 ]] || die "no runs found in the training's results table $PGO_DIR/training.md"
[[ $failed -eq 0 ]] || die "the training had $failed failed requests: see $PGO_DIR/training.md"

log "3/4 merging $(ls "$RAW" | wc -l) raw profiles with $PROFDATA"
"$PROFDATA" merge -o "$PGO_DIR/profiles/postern.profdata" "$RAW"

log "4/4 optimised build ($PGO_DIR/use)"
build "$PGO_DIR/use" "-Cprofile-use=$PGO_DIR/profiles/postern.profdata"
mkdir -p "$PGO_DIR/release"
cp "$PGO_DIR/use/$HOST/release/control-plane" "$PGO_DIR/use/$HOST/release/data-plane" "$PGO_DIR/release/"
log "done: $PGO_DIR/release/control-plane and $PGO_DIR/release/data-plane"
log "benchmark them with: BENCH_SKIP_BUILD=1 CARGO_TARGET_DIR=$PGO_DIR bench/scenarios.sh"
