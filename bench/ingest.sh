#!/usr/bin/env bash
# bench/ingest.sh — the event gateway under load, with the ratios the gateway issue names measured
# in the same run:
#   * single-event ingest with its durable answer (POST /v1/events) against the quote path's rate
#     (GET /api/v1/quote), and its p99;
#   * the batch endpoint (POST /v1/events/batch, 100 events a request) in events/s against the raw
#     log's append rate (the embedded log's criterion `append` bench, batches of 100; on Kafka the
#     Kafka producer perf tool with acks=all);
#   * ingest-to-events_raw latency at a steady 200 events/s (bench/ingest-latency.py).
#
#   bench/ingest.sh [embedded|distributed] [duration, default 10s] [connections, default 32]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-embedded}"
duration="${2:-10s}"
connections="${3:-32}"
port="${PULSE_BENCH_PORT:-18080}"

# shellcheck source=bench/common.sh
source bench/common.sh
ensure_wrk
binary="$(build_pulse)"
# The events quota stays on the path, high enough never to refuse the load.
export PULSE_QUOTAS__EVENTS__PER_SECOND=1000000 PULSE_QUOTAS__EVENTS__BURST=1000000

data="$(mktemp -d)"
args=(up --listen "127.0.0.1:$port" --data-dir "$data" --log-level warn)
store="sqlite://$data/pulse.db"
if [ "$mode" = distributed ]; then
  scripts/services up >&2
  eval "$(scripts/services env)"
  database="bench_$(date +%s)"
  psql -q "$PULSE_TEST_POSTGRES_URL" -c "CREATE DATABASE $database"
  store="${PULSE_TEST_POSTGRES_URL%/*}/$database"
  args+=(--store "$store" --log "$PULSE_TEST_KAFKA_URL" --cache "$PULSE_TEST_REDIS_URL")
  export PULSE_PREFIX="bench-$(date +%s)."
elif [ "$mode" != embedded ]; then
  echo "usage: bench/ingest.sh [embedded|distributed] [duration] [connections]" >&2
  exit 2
fi

"$binary" "${args[@]}" 2>"$data/pulse.log" &
pulse_pid=$!
trap 'kill -TERM $pulse_pid 2>/dev/null; wait $pulse_pid 2>/dev/null; rm -rf "$data"' EXIT
wait_for_pulse "$pulse_pid" "$port" "$data/pulse.log"
key="$(api_key_header "$data")"

echo "== $mode: quotes (GET /api/v1/quote), $connections connections, $duration"
quotes_out="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" \
  "http://127.0.0.1:$port/api/v1/quote?lat=37.7793&lng=-122.4192&dropoff_lat=37.80&dropoff_lng=-122.40")"
echo "$quotes_out" | grep -E "Requests/sec|99%"

echo "== $mode: single events (POST /v1/events), $connections connections, $duration"
single_out="$(RUN="s$$" wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" -s bench/events.lua \
  "http://127.0.0.1:$port/v1/events")"
echo "$single_out" | grep -E "Requests/sec|99%|Non-2xx" || true

echo "== $mode: batches of 100 (POST /v1/events/batch), $connections connections, $duration"
batch_out="$(BATCH=100 RUN="b$$" wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" -s bench/events.lua \
  "http://127.0.0.1:$port/v1/events/batch")"
echo "$batch_out" | grep -E "Requests/sec|99%|Non-2xx" || true

echo "== $mode: ingest-to-events_raw at 200 events/s (after the pipeline caught up with the load)"
# The load above left a backlog in the pipeline; measure once it is drained.
for _ in $(seq 1 600); do
  lag="$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^pulse_consumer_lag\{/ && /pipeline/ { s += $2 } END { printf "%d", s }')"
  [ "${lag:-0}" -eq 0 ] && break
  sleep 1
done
python3 bench/ingest-latency.py "http://127.0.0.1:$port" "${key#X-API-Key: }" "$store" 200 2000

# The raw log gets the machine to itself, as Pulse had it.
kill -TERM $pulse_pid 2>/dev/null; wait $pulse_pid 2>/dev/null || true
echo "== raw log appends (batches of 100)"
if [ "$mode" = embedded ]; then
  # The first `thrpt:` line is the measurement (a second one compares with the previous run).
  raw="$(cargo bench -q -p pulse-embedded-log --bench append -- 'batched/100' 2>/dev/null |
    awk '/thrpt:/ && !done { v = $4; u = $5; done = 1 } END { m = 1; if (u ~ /^K/) m = 1e3; if (u ~ /^M/) m = 1e6; printf "%d", v * m }')"
  echo "criterion embedded_log_append/batched/100: $raw records/s"
else
  topic="${PULSE_PREFIX}bench-raw"
  libs="$HOME/.cache/pulse-kafka/kafka-3.9.2/libs/*"
  # The test broker creates no topic by itself; six partitions, as Pulse's own topics.
  java -cp "$libs" org.apache.kafka.tools.TopicCommand --bootstrap-server "${PULSE_TEST_KAFKA_URL#kafka://}" \
    --create --if-not-exists --topic "$topic" --partitions 6 >/dev/null 2>&1
  raw="$(java -cp "$libs" org.apache.kafka.tools.ProducerPerformance \
    --topic "$topic" --num-records 200000 --record-size 200 --throughput -1 \
    --producer-props bootstrap.servers="${PULSE_TEST_KAFKA_URL#kafka://}" acks=all batch.size=65536 linger.ms=5 2>/dev/null |
    awk '/records sent/ { v = $4 } END { printf "%d", v }')"
  echo "kafka ProducerPerformance acks=all, 200-byte records: $raw records/s"
fi

quotes="$(echo "$quotes_out" | rate)"
single="$(echo "$single_out" | rate)"
batch="$(echo "$batch_out" | rate)"
echo "== ratios ($mode, this run)"
awk -v q="$quotes" -v s="$single" -v b="$batch" -v r="$raw" -v p="$(echo "$single_out" | p99)" 'BEGIN {
  printf "single ingest / quotes: %.0f / %.0f = %.2f (target >= 0.70); single ingest p99 %s (target <= 20 ms)\n", s, q, s / q, p
  printf "batch events/s / raw appends/s: %.0f / %.0f = %.2f (target >= 0.80)\n", b * 100, r, (b * 100) / r
}'
