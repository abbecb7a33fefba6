#!/usr/bin/env bash
# SSH throughput through Custody against a direct connection, in one run
# (called by `scripts/bench.sh ssh`).
#
#   1. 128 MiB of text output: base64 -w 76 /dev/urandom | head -c 134217728
#   2. a 128 MiB scp upload
#
# each direct (ssh -> sshd) and through Custody (ssh -> custody connect
# --stdio -> gateway, recording on -> sshd), printing MB/s and the ratio.
# It also checks that every Custody session ended and sealed its recording.
#
# Environment: BENCH_MIB (default 128), BENCH_RUNS rounds (default 5;
# medians and the ratio of each round are printed), BENCH_STORE file (default) | gcs,
# BENCH_KEEP=1 keeps the temporary directory, BENCH_NO_BUILD=1 skips the
# release build check, BENCH_SSH_CIPHERS sets the ssh client's Ciphers on
# both paths (OpenSSH picks chacha20-poly1305 by default; the gateway's
# client leg then pays for it in software, see README Performance).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=$root/target/release/custody
MIB=${BENCH_MIB:-128}
RUNS=${BENCH_RUNS:-5}
BYTES=$((MIB * 1024 * 1024))
USER_NAME=custodytest

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || {
  log "installing openssh-server"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
}
if [ "${BENCH_NO_BUILD:-0}" != 1 ] && { [ ! -x "$BIN" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$BIN" -print -quit)" ]; }; then
  log "building target/release/custody"
  cargo build --release --quiet
fi
id "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/bash "$USER_NAME"
usermod -p '*' "$USER_NAME"

tmp=$(mktemp -d -t custody-bench-ssh.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
  local rc=$?
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; die "nothing listens on $1"; }

# ---------------------------------------------------------------- sshd
ssh-keygen -q -t ed25519 -N "" -f "$tmp/host"
ssh-keygen -q -t ed25519 -N "" -f "$tmp/key"
cp "$tmp/key.pub" "$tmp/authorized_keys"
chmod 644 "$tmp/authorized_keys"
sshd_port=$(free_port)
cat >"$tmp/sshd_config" <<EOF
Port $sshd_port
ListenAddress 127.0.0.1
HostKey $tmp/host
AuthorizedKeysFile $tmp/authorized_keys
PidFile $tmp/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
AcceptEnv LANG LC_* CUSTODY_AUDIT_ID TRACEPARENT
Subsystem sftp internal-sftp
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$tmp/sshd_config" 2>"$tmp/sshd.log" &
pids+=($!)
wait_port "$sshd_port"

# ---------------------------------------------------------------- issuer + gateway
iss_port=$(free_port)
issuer=http://127.0.0.1:$iss_port
mkdir -p "$tmp/keys" "$tmp/recordings"
"$BIN" dev issuer --listen "127.0.0.1:$iss_port" --key-dir "$tmp/keys" >"$tmp/issuer.log" 2>&1 &
pids+=($!)
# The issuer binds before it writes its keys: wait until it serves them, or
# `dev token` below would mint with keys of its own.
for _ in $(seq 1 100); do curl -fsS "$issuer/jwks.json" >/dev/null 2>&1 && break; sleep 0.1; done
[ -s "$tmp/keys/rsa.pem" ] && [ -s "$tmp/keys/ec.pem" ] || die "the dev issuer did not write its keys"
"$BIN" dev keygen --out "$tmp/recording.pem" >/dev/null 2>&1
gw_port=$(free_port)
gateway=http://127.0.0.1:$gw_port
store_toml="store = \"file://$tmp/recordings\""
if [ "${BENCH_STORE:-file}" = gcs ]; then
  (exec 3<>/dev/tcp/127.0.0.3/80) 2>/dev/null || die "BENCH_STORE=gcs needs fake-gcs-server on 127.0.0.3:80 (scripts/bench.sh pg starts one)"
  bucket="bench-ssh-$(date +%s)-$$"
  curl -fsS -X POST -H 'Content-Type: application/json' -d "{\"name\":\"$bucket\"}" "http://127.0.0.3/storage/v1/b?project=bench" >/dev/null
  store_toml="store = \"gs://$bucket/custody\"
endpoint = \"http://127.0.0.3\""
fi
cat >"$tmp/custody.toml" <<EOF
[server]
listen = "127.0.0.1:0"

[identity]
audiences = ["$gateway"]

[[identity.issuers]]
issuer = "$issuer"

[recording]
$store_toml
signing_key = "file:$tmp/recording.pem"

[[connections]]
name = "web"
kind = "ssh"
host = "127.0.0.1"
port = $sshd_port
user = "$USER_NAME"
private_key = "file:$tmp/key"
host_key = "$(cat "$tmp/host.pub")"
allow = ["user:bench@example.com"]
EOF
CUSTODY_LOG=warn "$BIN" serve --config "$tmp/custody.toml" --listen "127.0.0.1:$gw_port" >"$tmp/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
wait_port "$gw_port"
token=$("$BIN" dev token --key-dir "$tmp/keys" --issuer "$issuer" --audience "$gateway" --email bench@example.com)

common=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR)
[ -z "${BENCH_SSH_CIPHERS:-}" ] || common+=(-o "Ciphers=$BENCH_SSH_CIPHERS")
direct=("${common[@]}" -i "$tmp/key" -p "$sshd_port" -o IdentitiesOnly=yes)
custody=("${common[@]}" -o "ProxyCommand=$BIN connect --stdio %n --gateway $gateway")
scp_direct=("${common[@]}" -i "$tmp/key" -P "$sshd_port" -o IdentitiesOnly=yes)
export CUSTODY_TOKEN=$token CUSTODY_LOG=warn

cmd="base64 -w 76 /dev/urandom | head -c $BYTES"
if [ -n "${BENCH_HOLD:-}" ]; then # debugging: print the environment and wait
  echo "gateway=$gateway token=$token tmp=$tmp sshd_port=$sshd_port" >&2
  sleep "$BENCH_HOLD"
fi
head -c "$BYTES" /dev/urandom >"$tmp/payload.bin"

timed() { # timed OUTFILE CMD... -> seconds
  local start end out=$1
  shift
  start=$(date +%s.%N)
  "$@" >"$out.out" 2>"$out.err" || { cat "$out.err" >&2; die "failed: $*"; }
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}
mbs() { awk -v m="$MIB" -v t="$1" 'BEGIN { printf "%.1f", m * 1.048576 / t }'; }
ratio() { awk -v d="$1" -v c="$2" 'BEGIN { printf "%.2f", d / c }'; }

# Rounds alternate direct and custody, so a slow spell of this shared
# machine hits both; each round's ratio is its own.
results=$tmp/results.tsv # round measure direct_s custody_s
: >"$results"
for round in $(seq 1 "$RUNS"); do
  log "round $round/$RUNS: output ${MIB} MiB direct"
  t_od=$(timed "$tmp/o1" ssh "${direct[@]}" "$USER_NAME@127.0.0.1" "$cmd")
  [ "$(stat -c %s "$tmp/o1.out")" = "$BYTES" ] || die "direct output is short"
  log "round $round/$RUNS: output ${MIB} MiB through custody"
  t_oc=$(timed "$tmp/o2" ssh "${custody[@]}" web "$cmd")
  [ "$(stat -c %s "$tmp/o2.out")" = "$BYTES" ] || die "custody output is short ($(stat -c %s "$tmp/o2.out"))"
  rm -f "$tmp/o1.out" "$tmp/o2.out"
  log "round $round/$RUNS: scp ${MIB} MiB direct"
  t_sd=$(timed "$tmp/s1" scp "${scp_direct[@]}" "$tmp/payload.bin" "$USER_NAME@127.0.0.1:/tmp/custody-bench-direct.bin")
  log "round $round/$RUNS: scp ${MIB} MiB through custody"
  t_sc=$(timed "$tmp/s2" scp "${custody[@]}" "$tmp/payload.bin" "web:/tmp/custody-bench-custody.bin")
  cmp "$tmp/payload.bin" /tmp/custody-bench-custody.bin || die "the file copied through custody differs"
  rm -f /tmp/custody-bench-direct.bin /tmp/custody-bench-custody.bin
  printf '%s\toutput\t%s\t%s\n%s\tscp\t%s\t%s\n' "$round" "$t_od" "$t_oc" "$round" "$t_sd" "$t_sc" >>"$results"
done

# Every session must have ended (and sealed) once its channel closed.
sleep 2
sessions=$(find "$tmp/recordings" -name 000001.jsonl | wc -l)
sealed=$(find "$tmp/recordings" -name manifest.json | wc -l)

echo
echo "custody bench ssh: $(date -u +%Y-%m-%dT%H:%M:%SZ), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, ciphers ${BENCH_SSH_CIPHERS:-ssh default}, $RUNS round(s), medians; ratio = custody MB/s / direct MB/s within a round (target >= 0.85, no round below 0.75)"
python3 - "$results" "$MIB" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
mib = float(sys.argv[2])
mbs = lambda t: mib * 1.048576 / t
print(f"{'SSH (%d MiB)' % mib:<26} {'direct MB/s':>12} {'custody MB/s':>13} {'ratio':>6} {'rounds':>22}")
for name, label in (("output", "text output (recorded)"), ("scp", "scp upload")):
    r = [(float(d), float(c)) for _, m, d, c in rows if m == name]
    ratios = [d / c for d, c in r]
    verdict = "ok" if statistics.median(ratios) >= 0.85 and min(ratios) >= 0.75 else "MISS"
    print(f"{label:<26} {statistics.median([mbs(d) for d, _ in r]):>12.1f} {statistics.median([mbs(c) for _, c in r]):>13.1f} "
          f"{statistics.median(ratios):>6.2f} {' '.join('%.2f' % x for x in ratios):>22} {verdict}")
PY
printf 'sessions sealed: %s of %s (store %s)\n' "$sealed" "$sessions" "${BENCH_STORE:-file}"
[ "$sealed" = "$sessions" ] || die "some sessions did not end when their channel closed"
