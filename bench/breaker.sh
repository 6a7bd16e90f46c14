#!/usr/bin/env bash
# bench/breaker.sh — quote latency while the cache hangs: a release Pulse on a Redis of its own,
# which is frozen with SIGSTOP (connections open, no answers) during the second wrk run. With the
# quote path's circuit breaker open, quotes answer the 1.0 fallback without waiting for Redis.
#
#   bench/breaker.sh [duration, default 10s] [connections, default 32]
#
# Prints wrk's latency distribution for quotes with Redis healthy, then hung, then the breaker
# metrics. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration="${1:-10s}"
connections="${2:-32}"
port="${PULSE_BENCH_PORT:-18080}"
redis_port="${PULSE_BENCH_REDIS_PORT:-16379}"

# shellcheck source=bench/common.sh
source bench/common.sh
ensure_wrk
command -v redis-server >/dev/null || scripts/services up redis >&2
binary="$(build_pulse)"

data="$(mktemp -d)"
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no >"$data/redis.log" 2>&1 &
redis_pid=$!
"$binary" up --listen "127.0.0.1:$port" --data-dir "$data" --log-level warn \
  --cache "redis://127.0.0.1:$redis_port" 2>"$data/pulse.log" &
pulse_pid=$!
cleanup() {
  kill -CONT "$redis_pid" 2>/dev/null || true
  kill -TERM "$pulse_pid" 2>/dev/null || true
  wait "$pulse_pid" 2>/dev/null || true
  kill -TERM "$redis_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
wait_for_pulse "$pulse_pid" "$port" "$data/pulse.log"
key="$(api_key_header "$data")"
quote="http://127.0.0.1:$port/api/v1/quote?lat=37.7793&lng=-122.4192&dropoff_lat=37.80&dropoff_lng=-122.40"

echo "== quotes, Redis healthy, $connections connections, $duration"
wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" "$quote"

kill -STOP "$redis_pid"
echo "== quotes, Redis hung (SIGSTOP), $connections connections, $duration"
wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" "$quote"
echo "== breaker metrics while Redis is hung"
curl -s "http://127.0.0.1:$port/metrics" |
  grep -E '^pulse_(circuit_breaker_[a-z_]+|quotes_total)\{' || true
kill -CONT "$redis_pid"
