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

command -v wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
echo "[bench] building pulse (release)" >&2
cargo build --release -q -p pulse
binary="${CARGO_TARGET_DIR:-target}/release/pulse"

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
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.2
done
# A Pulse that could not start (port taken) must not let wrk measure someone else's.
if ! kill -0 "$pulse_pid" 2>/dev/null; then
  echo "[bench] pulse did not start:" >&2
  cat "$data/pulse.log" >&2
  exit 1
fi

echo "== $mode: quotes (GET /api/v1/quote), $connections connections, $duration"
wrk -t1 -c"$connections" -d"$duration" --latency \
  "http://127.0.0.1:$port/api/v1/quote?lat=37.7793&lng=-122.4192&dropoff_lat=37.80&dropoff_lng=-122.40"

echo "== $mode: orders (POST /api/v1/orders), $connections connections, $duration"
wrk -t1 -c"$connections" -d"$duration" --latency -s bench/orders.lua \
  "http://127.0.0.1:$port/api/v1/orders"

echo "== outbox backlog right after the order run"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^(pulse_outbox_backlog|orders_placed_total) ' || true
