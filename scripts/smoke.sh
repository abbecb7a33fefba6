#!/usr/bin/env bash
# Starts a built custody binary on its embedded defaults plus a minimal config
# and checks it answers /healthz, as the container would on Cloud Run.
# Usage: scripts/smoke.sh PATH/TO/custody
set -euo pipefail
bin=${1:-target/release/custody}
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/custody.toml" <<TOML
[identity]
audiences = ["https://custody.example"]
[[identity.issuers]]
issuer = "https://accounts.google.com"
[recording]
store = "file://$dir/recordings"
TOML
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start=$(date +%s%N)
PORT=$port "$bin" serve --config "$dir/custody.toml" 2>"$dir/log" &
pid=$!
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    echo "custody answered /healthz after $(( ($(date +%s%N) - start) / 1000000 )) ms"
    exit 0
  fi
  sleep 0.1
done
echo "custody did not answer /healthz; log:"; cat "$dir/log"; exit 1
