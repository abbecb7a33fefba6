#!/usr/bin/env bash
# Runs each fuzz target for a fixed time, one after another.
# Usage: scripts/fuzz.sh [SECONDS]   (per target; default 180)
#   frames  the PostgreSQL frame decoder and scanner
#   verify  `custody verify` over mutated copies of a real sealed recording
#   tracker the masking tracker: random extended-protocol pipelines against a
#           simulated PostgreSQL; no ruled column may come back in clear
# To add a target: put it in fuzz/fuzz_targets/, register it in
# fuzz/Cargo.toml, add its name to TARGETS and, optionally, seeds below.
# Installs cargo-fuzz if missing. The toolchain here is stable, so
# RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags; no sanitizer is used.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-180}
TARGETS=(frames verify tracker)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

seed() {
  case "$1" in
    # A real startup packet and a Query frame.
    frames) printf '\x00\x00\x00\x00\x13\x00\x03\x00\x00user\x00x\x00\x00Q\x00\x00\x00\x0dselect 1\x00' > fuzz/corpus/frames/seed-startup-query ;;
    # Mutation programs (see fuzz_targets/verify.rs): flip a byte of segment 2;
    # copy segment 2 to "00002.jsonl" (the forgery of issue 11).
    verify)
      printf '\x00\x00\x00\x00\x01\x00\x40\x20' > fuzz/corpus/verify/seed-flip
      printf '\x00\x00\x04\x00\x01\x00\x05' > fuzz/corpus/verify/seed-second-spelling ;;
    # The stale-Describe attack: Parse s2, Describe s2, Sync, SQL-level swap, Bind, Execute, Sync.
    tracker) printf '\x00\x02\x02\x02\x06\x00\x07\x27\x01\x02\x04\x00\x06\x00' > fuzz/corpus/tracker/seed-stale-describe ;;
  esac
}

for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  seed "$target"
  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -max_len=4096
  echo "fuzzed $target for ${secs}s without a crash"
done
