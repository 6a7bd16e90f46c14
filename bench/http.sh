#!/usr/bin/env bash
# bench/http.sh — HTTP load on a release build of Pulse with wrk (Debian package, installed when
# missing): quotes and order placement, reporting req/s and the latency distribution.
#
#   bench/http.sh [embedded|distributed] [duration, default 15s] [connections, default 32]
#
# distributed = PostgreSQL + Kafka + Redis from scripts/services (a fresh database per run).
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-embedded}"
duration="${2:-15s}"
connections="${3:-32}"
port="${PULSE_BENCH_PORT:-18080}"

# shellcheck source=bench/common.sh
source bench/common.sh
ensure_wrk
binary="$(build_pulse)"

data="$(mktemp -d)"
args=(up --listen "127.0.0.1:$port" --data-dir "$data" --log-level warn)
if [ "$mode" = distributed ]; then
  scripts/services up >&2
  eval "$(scripts/services env)"
  database="bench_$(date +%s)"
  psql -q "$PULSE_TEST_POSTGRES_URL" -c "CREATE DATABASE $database"
  args+=(--store "${PULSE_TEST_POSTGRES_URL%/*}/$database" --log "$PULSE_TEST_KAFKA_URL" --cache "$PULSE_TEST_REDIS_URL")
elif [ "$mode" != embedded ]; then
  echo "usage: bench/http.sh [embedded|distributed] [duration] [connections]" >&2
  exit 2
fi

"$binary" "${args[@]}" 2>"$data/pulse.log" &
pulse_pid=$!
trap 'kill -TERM $pulse_pid 2>/dev/null; wait $pulse_pid 2>/dev/null; rm -rf "$data"' EXIT
wait_for_pulse "$pulse_pid" "$port" "$data/pulse.log"
key="$(api_key_header "$data")"

echo "== $mode: quotes (GET /api/v1/quote), $connections connections, $duration"
wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" \
  "http://127.0.0.1:$port/api/v1/quote?lat=37.7793&lng=-122.4192&dropoff_lat=37.80&dropoff_lng=-122.40"

echo "== $mode: orders (POST /api/v1/orders), $connections connections, $duration"
wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" -s bench/orders.lua \
  "http://127.0.0.1:$port/api/v1/orders"

# The relay shares the machine with the load: report how far behind it ended and how long it
# took to catch up. (Counters, not the backlog gauge, which is refreshed every 5 s.)
counter() {
  curl -s "http://127.0.0.1:$port/metrics" |
    awk -v name="$1" '$1 == name { sum += $2 } END { printf "%d", sum }'
}
placed="$(counter orders_placed_total)"
behind=$((placed - $(counter pulse_relay_published_total)))
echo "== relay: $placed orders placed, $behind not yet on the log when the load stopped"
started=$(date +%s%N)
while [ "$(counter pulse_relay_published_total)" -lt "$placed" ]; do
  if [ $(( ($(date +%s%N) - started) / 1000000000 )) -ge 120 ]; then
    echo "== relay: still behind after 120 s" >&2
    exit 1
  fi
  sleep 0.1
done
echo "== relay: caught up $(( ($(date +%s%N) - started) / 1000000 )) ms after the load stopped"
