#!/usr/bin/env bash
# A real driver's own test suite through Custody (issue 13): asyncpg 0.30.0's
# tests, from its source distribution, run three times against one throwaway
# PostgreSQL 15:
#   a) directly;
#   b) through `custody serve` + `custody connect` (recording to file://, no
#      guardrails, no masking, a superuser upstream);
#   c) the same with every masking detector on.
# Every test that passes in (a) must pass in (b) unless
# tests/drivers/asyncpg-expected.txt lists it with a reason (and, where given,
# the failure message it must show); (c) may differ from (a) only as
# tests/drivers/asyncpg-expected-detectors.txt lists. Exits non-zero on any
# other difference and prints a table and the timings.
#
# Usage: scripts/driver-suite.sh [MODULE ...]   (e.g. tests.test_copy; default: all)
# Env:   CUSTODY_BIN        the custody binary (default target/debug/custody; never built here)
#        DRIVER_SUITE_DIR   scratch directory (default /tmp/custody-driver-suite)
#        DRIVER_CACHE_DIR   download cache (default target/driver-suite-cache)
#        DRIVER_TEST_TIMEOUT  seconds per test (default 60)
#        DRIVER_RUN_TIMEOUT   seconds per run of the suite (default 900)
#        DRIVER_RUNS        which runs (default "direct custody detectors")
#        DRIVER_KEEP=1      leave PostgreSQL and Custody running afterwards (Ctrl-C
#                           ends them); $DRIVER_SUITE_DIR/env.sh has their ports
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

ASYNCPG_VERSION=0.30.0
SDIST_URL=https://files.pythonhosted.org/packages/2f/4c/7c991e080e106d854809030d8584e15b2e996e26f16aee6d757e387bc17d/asyncpg-0.30.0.tar.gz
SDIST_SHA256=c551e9928ab6707602f44811817f82ba3c446e018bfe1d3abecc8ba5f3eac851
DISTRO_VERSION=1.9.0            # test_connect imports distro (asyncpg's "test" extra pins ~=1.9.0)

custody=${CUSTODY_BIN:-target/debug/custody}
case $custody in /*) ;; *) custody=$repo/$custody ;; esac
work=${DRIVER_SUITE_DIR:-/tmp/custody-driver-suite}
cache=${DRIVER_CACHE_DIR:-$repo/target/driver-suite-cache}
timeout_s=${DRIVER_TEST_TIMEOUT:-60}
run_timeout=${DRIVER_RUN_TIMEOUT:-900}
runs=${DRIVER_RUNS:-direct custody detectors}
pgbin=/usr/lib/postgresql/15/bin
drivers=$repo/tests/drivers
modules=("$@")

log() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -f "$work/pg/postmaster.pid" ]; then
    runpg "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
runpg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  local i
  for i in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "nothing listens on 127.0.0.1:$1 ($2); see $work/*.log" >&2
  return 1
}

[ -x "$custody" ] || { echo "no custody binary at $custody (build it first, or set CUSTODY_BIN)" >&2; exit 1; }

# ---------------------------------------------------------------- installs
t_setup=$(now)
need_apt=()
[ -x $pgbin/postgres ] || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
command -v curl >/dev/null || need_apt+=(curl)
command -v runuser >/dev/null || need_apt+=(util-linux)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
pip_install() {
  # Debian's own python3 refuses system-wide pip installs (PEP 668) unless told.
  python3 -m pip install -q "$@" 2>/dev/null \
    || python3 -m pip install -q --break-system-packages "$@"
}
if [ "$(python3 -c 'import asyncpg; print(asyncpg.__version__)' 2>/dev/null)" != "$ASYNCPG_VERSION" ]; then
  log "installing asyncpg==$ASYNCPG_VERSION (binary wheel)"
  pip_install "asyncpg==$ASYNCPG_VERSION"
fi
if [ "$(python3 -c 'import distro; print(distro.__version__)' 2>/dev/null)" != "$DISTRO_VERSION" ]; then
  log "installing distro==$DISTRO_VERSION (imported by asyncpg's test_connect)"
  pip_install "distro==$DISTRO_VERSION"
fi

# asyncpg's tests come from its source distribution, checked against the
# published sha256 and cached so reruns do not download again.
mkdir -p "$cache"
sdist=$cache/asyncpg-$ASYNCPG_VERSION.tar.gz
if ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - >/dev/null 2>&1; then
  log "downloading asyncpg-$ASYNCPG_VERSION.tar.gz"
  curl -fsSL --retry 3 -o "$sdist.part" "$SDIST_URL"
  echo "$SDIST_SHA256  $sdist.part" | sha256sum -c --quiet - \
    || { echo "asyncpg sdist: sha256 mismatch" >&2; rm -f "$sdist.part"; exit 1; }
  mv "$sdist.part" "$sdist"
fi

# Only tests/ is extracted, outside any source tree, so `import asyncpg` is
# the installed wheel (it ships asyncpg/_testbase).
rm -rf "$work"; mkdir -p "$work/suite" "$work/keys" "$work/recordings" "$work/results"
tar -xzf "$sdist" -C "$work/suite" --strip-components=1 "asyncpg-$ASYNCPG_VERSION/tests"
# The suite's one test of our own: a replication connection (see the file).
cp "$drivers/test_custody_replication.py" "$work/suite/tests/"
[ "$(id -u)" = 0 ] && chown -R postgres "$work"
chmod -R a+rX "$work"

# ---------------------------------------------------------------- PostgreSQL
log "starting PostgreSQL 15"
pg_port=$(free_port)
su_pw="su-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$su_pw" > "$work/su.pw"
[ "$(id -u)" = 0 ] && chown postgres "$work/su.pw"
runpg $pgbin/initdb -D "$work/pg" -U postgres --auth=scram-sha-256 --pwfile="$work/su.pw" >/dev/null
cat >>"$work/pg/postgresql.conf" <<EOF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
jit = off
log_min_messages = warning
EOF
runpg $pgbin/pg_ctl -D "$work/pg" -l "$work/pg.log" -w start >/dev/null
# Through Custody the client cannot choose the database (the connection
# names it), so tests that create and drop a database of their own leave
# their tables behind in the connection's. Each gateway run gets a fresh
# database so one run's leftovers cannot fail the next (run (a) uses
# `postgres`, as asyncpg's own harness does).
for db in run_custody run_detectors; do
  PGPASSWORD=$su_pw psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c "create database $db"
done
chmod 600 "$work/su.pw"   # the gateway reads it as file: below

# ---------------------------------------------------------------- Custody
log "starting custody (dev issuer, serve, connect) from $custody"
issuer_port=$(free_port); gw_port=$(free_port); plain_port=$(free_port); detect_port=$(free_port)
issuer=http://127.0.0.1:$issuer_port
gateway=http://127.0.0.1:$gw_port
"$custody" dev keygen --out "$work/keys/recording-signing.pem" > "$work/keys/recording-signing.pub"
cat >"$work/custody.toml" <<EOF
[server]
listen = "127.0.0.1:$gw_port"

[identity]
audiences = ["$gateway"]

[[identity.issuers]]
issuer = "$issuer"

[recording]
store = "file://$work/recordings"
signing_key = "file:$work/keys/recording-signing.pem"

# (b): recording on, no guardrails, no masking, a superuser upstream.
[[connections]]
name = "pg-plain"
kind = "postgres"
host = "127.0.0.1"
port = $pg_port
database = "run_custody"
user = "postgres"
password = "file:$work/su.pw"
tls = "disable"
allow = ["user:driver-suite@example.com"]

# (c): the same with every detector on (README, Masking).
[[connections]]
name = "pg-detectors"
kind = "postgres"
host = "127.0.0.1"
port = $pg_port
database = "run_detectors"
user = "postgres"
password = "file:$work/su.pw"
tls = "disable"
allow = ["user:driver-suite@example.com"]

[connections.masking]
detectors = ["email", "credit_card", "us_ssn", "iban", "phone", "ip_address",
             "gcp_api_key", "private_key", "jwt", "aws_access_key"]
EOF
"$custody" config check "$work/custody.toml" >/dev/null
"$custody" dev issuer --listen "127.0.0.1:$issuer_port" --key-dir "$work/keys" 2>"$work/issuer.log" &
pids+=($!)
wait_port "$issuer_port" "custody dev issuer"
start_gateway() {
  CUSTODY_LOG=${CUSTODY_LOG:-warn} "$custody" serve --config "$work/custody.toml" 2>>"$work/gateway.log" &
  pids+=($!)
  for _ in $(seq 1 150); do curl -fsS "$gateway/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS "$gateway/readyz" >/dev/null || { echo "custody serve is not ready; see $work/gateway.log" >&2; exit 1; }
}
start_gateway
export CUSTODY_GATEWAY=$gateway
CUSTODY_TOKEN=$("$custody" dev token --key-dir "$work/keys" --issuer "$issuer" --audience "$gateway" \
  --email driver-suite@example.com --ttl 14400)
export CUSTODY_TOKEN
"$custody" connect pg-plain --listen "127.0.0.1:$plain_port" 2>"$work/connect-plain.log" &
pids+=($!)
"$custody" connect pg-detectors --listen "127.0.0.1:$detect_port" 2>"$work/connect-detectors.log" &
pids+=($!)
wait_port "$plain_port" "custody connect pg-plain"
wait_port "$detect_port" "custody connect pg-detectors"
t_setup=$(python3 -c "print(f'{$(now) - $t_setup:.1f}')")
cat >"$work/env.sh" <<EOF
# source me: the driver suite's servers (while DRIVER_KEEP=1 keeps them)
export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres
export DIRECT_PORT=$pg_port PLAIN_PORT=$plain_port DETECT_PORT=$detect_port SU_PASSWORD=$su_pw
export CUSTODY_GATEWAY=$gateway CUSTODY_TOKEN=$CUSTODY_TOKEN
EOF

# ---------------------------------------------------------------- runs
declare -A seconds
run_suite() {  # NAME PORT PASSWORD [HEALTH_URL]
  local name=$1 port=$2 pw=$3 health=${4:-} out=$work/results/$1.jsonl t0 rc
  log "run $name: asyncpg $ASYNCPG_VERSION tests against 127.0.0.1:$port"
  t0=$(now)
  while :; do
    rc=0
    # A whole run is bounded too (a hang in a class's setUpClass is outside
    # the runner's per-test watchdog).
    PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGPASSWORD=$pw PGDATABASE=postgres \
      PGINSTALLATION=$pgbin PGSSLMODE=disable \
      DRIVER_SUITE_RUN=$name DRIVER_SUITE_DIRECT_PORT=$pg_port \
      PYTHONFAULTHANDLER=1 PYTHONDONTWRITEBYTECODE=1 \
      timeout -k 10 "$run_timeout" python3 "$drivers/asyncpg_runner.py" --tests "$work/suite" --out "$out" \
        --exclude "$drivers/asyncpg-not-run.txt" --timeout "$timeout_s" --resume \
        ${health:+--health "$health"} "${modules[@]}" 2>>"$work/results/$name.stderr" || rc=$?
    case $rc in
      3) echo "  a test hung past ${timeout_s}s; going on after it (stacks in $work/results/$name.stderr)" ;;
      4) echo "  CUSTODY SERVE DIED (see $work/gateway.log); restarting it to finish the run"
         printf '\n=== restarted after it died during run %s\n' "$name" >>"$work/gateway.log"
         start_gateway ;;
      124|137) echo "run $name did not finish within ${run_timeout}s (DRIVER_RUN_TIMEOUT)" >&2; exit 1 ;;
      *) break ;;
    esac
  done
  seconds[$name]=$(python3 -c "print(f'{$(now) - $t0:.1f}')")
  [ $rc = 0 ] || { echo "runner failed in run $name (exit $rc):" >&2; tail -20 "$work/results/$name.stderr" >&2; exit 1; }
}
for r in $runs; do
  case $r in
    direct) run_suite direct "$pg_port" "$su_pw" ;;
    custody) run_suite custody "$plain_port" "" "$gateway/healthz" ;;
    detectors) run_suite detectors "$detect_port" "" "$gateway/healthz" ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
  esac
done

# ---------------------------------------------------------------- compare
log "comparison"
rc=0
python3 "$drivers/compare.py" --results "$work/results" \
  --expected custody="$drivers/asyncpg-expected.txt" \
  --expected detectors="$drivers/asyncpg-expected-detectors.txt" || rc=$?

log "timings"
printf '  %-22s %8ss\n' "setup" "$t_setup"
for r in $runs; do printf '  %-22s %8ss\n' "run $r" "${seconds[$r]}"; done
echo "  (results: $work/results/*.jsonl; gateway log: $work/gateway.log)"
if [ "${DRIVER_KEEP:-}" = 1 ]; then
  echo "still running (DRIVER_KEEP=1): source $work/env.sh; Ctrl-C ends it"
  wait
fi
exit $rc
