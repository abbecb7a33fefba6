#!/usr/bin/env bash
# Runs Custody locally on its embedded defaults and shows it working:
# a throwaway PostgreSQL (127.0.0.1:54329) with a demo schema, the development
# OIDC issuer (127.0.0.1:9000), `custody serve` with examples/custody.toml
# (127.0.0.1:8080), then `custody exec` and psql through `custody connect`,
# and the session recordings under /tmp/custody-quickstart/recordings.
#
# Usage: scripts/quickstart.sh          # demo, then clean up
#        scripts/quickstart.sh --keep   # leave it running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

work=/tmp/custody-quickstart
pgbin=/usr/lib/postgresql/15/bin
gateway=http://127.0.0.1:8080
pids=()
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$work/pg/postmaster.pid" ]; then
    runpg "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
runpg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

need=()
[ -x $pgbin/postgres ] || need+=(postgresql-15)
command -v psql >/dev/null || need+=(postgresql-client-15)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs"; exit 1; }
for port in 8080 9000 54329 6432; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is in use; stop whatever listens there (an earlier quickstart --keep?)"; exit 1
  fi
done

say "building custody"
cargo build --quiet
custody=target/debug/custody

say "starting a throwaway PostgreSQL on 127.0.0.1:54329"
rm -rf "$work"; mkdir -p "$work/pg" "$work/keys"
export CUSTODY_DEMO_PG_PASSWORD="demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
[ "$(id -u)" = 0 ] && chown -R postgres "$work"
echo "postgres-$CUSTODY_DEMO_PG_PASSWORD" > "$work/su.pw"; chmod 644 "$work/su.pw"
runpg $pgbin/initdb -D "$work/pg" -U postgres --auth=scram-sha-256 --pwfile="$work/su.pw" >/dev/null
runpg $pgbin/pg_ctl -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p 54329 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work" start >/dev/null
export PGPASSWORD="postgres-$CUSTODY_DEMO_PG_PASSWORD"
psql -X -q -h 127.0.0.1 -p 54329 -U postgres -d postgres \
  -c "create role app login password '$CUSTODY_DEMO_PG_PASSWORD'" -c "create database app owner app"
PGPASSWORD=$CUSTODY_DEMO_PG_PASSWORD psql -X -q -h 127.0.0.1 -p 54329 -U app -d app <<'SQL'
create table customers (id serial primary key, name text, email text, plan text);
insert into customers (name, email, plan) values
  ('Ada Lovelace', 'ada@example.com', 'pro'), ('Alan Turing', 'alan@example.com', 'free'),
  ('Grace Hopper', 'grace@example.com', 'pro');
SQL
unset PGPASSWORD

say "starting the development OIDC issuer on 127.0.0.1:9000"
$custody dev issuer --listen 127.0.0.1:9000 --key-dir "$work/keys" 2>"$work/issuer.log" &
pids+=($!)

say "making the recording signing key (custody dev keygen)"
$custody dev keygen --out "$work/keys/recording-signing.pem" > "$work/keys/recording-signing.pub"
$custody dev keygen --out "$work/keys/delegation-signing.pem" > /dev/null

say "starting custody serve with examples/custody.toml"
$custody config check examples/custody.toml
CUSTODY_LOG=info $custody serve --config examples/custody.toml 2>"$work/gateway.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS $gateway/readyz >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS $gateway/readyz; echo

export CUSTODY_GATEWAY=$gateway
export CUSTODY_TOKEN=$($custody dev token --key-dir "$work/keys" --issuer http://127.0.0.1:9000 \
  --audience $gateway --email dev@example.com --group sre@example.com)

say "custody exec pg-demo -- \"select ...\""
$custody exec pg-demo -- "select id, name, plan from customers order by id" 2>"$work/exec.err"
cat "$work/exec.err"
audit=$(sed -n 's/.*audit id //p' "$work/exec.err" | head -1)

say "psql through custody connect (127.0.0.1:6432)"
$custody connect pg-demo --listen 127.0.0.1:6432 2>"$work/connect.log" &
pids+=($!)
sleep 0.5
psql -X "host=127.0.0.1 port=6432 dbname=app user=anything" \
  -c "select plan, count(*) from customers group by plan order by plan" \
  -c "update customers set plan = 'pro' where id = 2"
sleep 0.3
cat "$work/connect.log"

say "a refusal: a principal outside the allow list"
CUSTODY_TOKEN=$($custody dev token --key-dir "$work/keys" --audience $gateway --email mallory@example.com) \
  $custody exec pg-demo -- "select 1" || echo "(exit code $?)"

say "chain of custody: dev@example.com hands custody to a nightly job's service account"
export CUSTODY_DELEGATION=$($custody delegate --to serviceAccount:nightly@demo.iam.gserviceaccount.com --connections pg-demo --ttl 10m)
nightly_token=$($custody dev token --key-dir "$work/keys" --audience $gateway \
  --email nightly@demo.iam.gserviceaccount.com --group sre@example.com)
CUSTODY_TOKEN=$nightly_token $custody exec pg-demo -- "select count(*) as customers from customers" 2>"$work/nightly.err"
cat "$work/nightly.err"
nightly_audit=$(sed -n 's/.*audit id //p' "$work/nightly.err" | head -1)
unset CUSTODY_DELEGATION
$custody replay "$nightly_audit" --store file://$work/recordings | head -2

say "the recording of the exec session ($audit)"
$custody replay "$audit" --store file://$work/recordings
psql_audit=$(sed -n 's/.*session \([0-9a-f-]*\) opened.*/\1/p' "$work/connect.log" | head -1)
say "the recording of the psql session ($psql_audit)"
$custody replay "$psql_audit" --store file://$work/recordings
say "custody verify: signature, hash chain, order and completeness"
for _ in $(seq 1 50); do
  [ -n "$(find "$work/recordings" -path "*$psql_audit/manifest.json" 2>/dev/null)" ] && break; sleep 0.2
done
$custody verify "$psql_audit" --store file://$work/recordings --public-key "$work/keys/recording-signing.pub"
echo
echo "All recordings: $work/recordings   (custody replay|verify AUDIT_ID --store file://$work/recordings)"

if $keep; then
  say "running; in another shell:"
  echo "  export CUSTODY_GATEWAY=$gateway CUSTODY_TOKEN=$CUSTODY_TOKEN"
  echo "  $custody exec pg-demo -- 'select * from customers'"
  echo "  psql 'host=127.0.0.1 port=6432 dbname=app user=anything'"
  echo "Ctrl-C stops everything."
  wait
fi
