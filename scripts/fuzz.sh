#!/usr/bin/env bash
# Fuzzes the PostgreSQL frame decoder and scanner for a fixed time.
# Usage: scripts/fuzz.sh [SECONDS]   (default 60)
# Installs cargo-fuzz if missing. The toolchain here is stable, so
# RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags; no sanitizer is used.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p fuzz/corpus/frames
# Seed with a real startup packet and a Query frame.
printf '\x00\x00\x00\x00\x13\x00\x03\x00\x00user\x00x\x00\x00Q\x00\x00\x00\x0dselect 1\x00' > fuzz/corpus/frames/seed-startup-query
RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none frames fuzz/corpus/frames -- -max_total_time="$secs" -max_len=4096
echo "fuzzed frames for ${secs}s without a crash"
