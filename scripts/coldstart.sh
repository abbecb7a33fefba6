#!/usr/bin/env bash
# Measures cold start: process start of `custody serve` to the first 200 from
# /readyz (config loaded, issuer keys fetched, recording store writable).
# Usage: scripts/coldstart.sh [RUNS]   (default 10; uses target/release/custody)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
bin=target/release/custody
[ -x $bin ] || cargo build --release --locked
dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
iss_port=$(port)
$bin dev issuer --listen 127.0.0.1:$iss_port --key-dir "$dir/keys" 2>/dev/null &
pids+=($!)
until curl -fsS http://127.0.0.1:$iss_port/jwks.json >/dev/null 2>&1; do sleep 0.05; done
cat >"$dir/custody.toml" <<TOML
[identity]
audiences = ["http://127.0.0.1"]
[[identity.issuers]]
issuer = "http://127.0.0.1:$iss_port"
[recording]
store = "file://$dir/recordings"
TOML
times=()
for _ in $(seq 1 "$runs"); do
  p=$(port)
  start=$(date +%s%N)
  $bin serve --config "$dir/custody.toml" --listen 127.0.0.1:$p 2>/dev/null &
  pid=$!
  until curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1; do sleep 0.002; done
  times+=($(( ($(date +%s%N) - start) / 1000000 )))
  kill $pid; wait $pid 2>/dev/null || true
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
echo "cold start to /readyz over $runs runs (ms): min $(echo "$sorted" | head -1), median $(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p"), max $(echo "$sorted" | tail -1)"
