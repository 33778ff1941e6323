#!/usr/bin/env bash
# outbox-relay end to end, without Docker: a throwaway PostgreSQL cluster
# with wal_level=logical, the outbox schema, the relay, one order and its
# event committed together, and the message as a consumer receives it.
# Cleans up after itself (cluster, relay, consumer queue).
#
# Needs: PostgreSQL server binaries (apt-get install postgresql), RabbitMQ
# on 127.0.0.1:5672 (or RELAY_AMQP_URL), cargo.
#
# Environment: RELAY_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# DEMO_EXCHANGE (default outbox), RELAY_BIN / CONSUME_BIN to use prebuilt
# binaries instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export RELAY_AMQP_URL=${RELAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
exchange=${DEMO_EXCHANGE:-outbox}

say() { printf '\n== %s\n' "$*"; }

# PostgreSQL server binaries: pg_config --bindir, else the newest installed.
bindir=$(pg_config --bindir 2>/dev/null || true)
if [ ! -x "$bindir/initdb" ]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ ! -x "$bindir/initdb" ]; then
  echo "no PostgreSQL server binaries found: apt-get install postgresql" >&2
  exit 1
fi

work=$(mktemp -d)
relay_pid=""
consumer_pid=""
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # initdb and postgres refuse to run as root.
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
pgctl() { "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/postgres.log" "$@"; }
cleanup() {
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
  [ -n "$consumer_pid" ] && kill "$consumer_pid" 2>/dev/null
  [ -f "$work/data/postmaster.pid" ] && pgctl -m immediate stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pg_url="postgres://postgres@127.0.0.1:$port/postgres"

say "building outbox-relay"
if [ -z "${RELAY_BIN:-}" ] || [ -z "${CONSUME_BIN:-}" ]; then
  cargo build -q -p outbox-relay --bin outbox-relay --example consume
fi
target=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
relay_bin=${RELAY_BIN:-$target/debug/outbox-relay}
consume_bin=${CONSUME_BIN:-$target/debug/examples/consume}

say "starting a throwaway PostgreSQL ($("$bindir/postgres" --version)) on port $port"
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -U postgres -A trust --no-sync >/dev/null
pgctl -w -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off" start >/dev/null
psql() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
psql -f "$root/sql/outbox.sql"
psql -f "$root/examples/orders.sql"

say "binding a queue to exchange $exchange (order.#)"
"$consume_bin" --exchange "$exchange" --binding 'order.#' --count 1 --timeout-secs 60 \
  >"$work/consumer.log" 2>&1 &
consumer_pid=$!
for _ in $(seq 1 100); do grep -q '^ready' "$work/consumer.log" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready' "$work/consumer.log" || { cat "$work/consumer.log" >&2; exit 1; }

say "starting outbox-relay run"
RELAY_PG_URL=$pg_url RELAY_EXCHANGE=$exchange RELAY_METRICS_ADDR=127.0.0.1:0 \
  "$relay_bin" run >"$work/relay.log" 2>&1 &
relay_pid=$!
for _ in $(seq 1 300); do grep -q 'streaming from the slot' "$work/relay.log" && break; sleep 0.1; done
grep -q 'streaming from the slot' "$work/relay.log" || { cat "$work/relay.log" >&2; exit 1; }

say "committing an order and its event in one transaction"
cat "$root/examples/produce.sql"
psql -f "$root/examples/produce.sql"

say "what the consumer received"
if ! wait "$consumer_pid"; then
  consumer_pid=""
  cat "$work/consumer.log" "$work/relay.log" >&2
  exit 1
fi
consumer_pid=""
grep -v '^ready' "$work/consumer.log"

say "slot status"
# The acknowledgement follows the broker's confirm within a moment.
for _ in $(seq 1 100); do
  lag=$(RELAY_PG_URL=$pg_url "$relay_bin" status --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["lag_bytes"])')
  [ "$lag" = 0 ] && break
  sleep 0.1
done
RELAY_PG_URL=$pg_url "$relay_bin" status
echo
echo "demo done: the event went from PostgreSQL's WAL to RabbitMQ, confirmed, and the slot advanced."
