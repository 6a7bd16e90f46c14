#!/usr/bin/env bash
# bench/profiles.sh — profile reads under load against the quote path, in the same run (issue
# 17: reads ≥ 0.8× the quote path's rate with p99 ≤ 1.5× its p99). A release `pulse up`, wrk with
# one thread on the same machine:
#
#   1. PROFILES customers are loaded through the Segment door (POST /v1/batch, identify calls
#      with traits, 100 a batch) and the run waits until the `profiles` processor applied them;
#   2. quotes: GET /api/v1/quote, then reads: GET /api/v1/profiles/by-user/{id} over every loaded
#      customer (bench/profiles-reads.lua), then quotes again (the ratio uses their mean);
#   3. where reads were answered from (pulse_profiles_reads_total by source), from /metrics.
#
#   bench/profiles.sh [embedded|distributed] [duration, default 10s] [connections, default 32]
#
# distributed = PostgreSQL + Kafka + Redis from scripts/services (a fresh database and prefix,
# dropped or deleted at the end). PROFILES (default 10000) sets how many customers. Traffic goes
# to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-embedded}"
duration="${2:-10s}"
connections="${3:-32}"
port="${PULSE_BENCH_PORT:-18081}"
profiles="${PROFILES:-10000}"
if [ "$mode" != embedded ] && [ "$mode" != distributed ]; then
  echo "usage: bench/profiles.sh [embedded|distributed] [duration] [connections]" >&2
  exit 2
fi

# shellcheck source=bench/common.sh
source bench/common.sh
ensure_wrk
binary="$(build_pulse)"

run_id="$(date +%s)"
data="$(mktemp -d)"
database=""
prefix=""
pulse_pid=""
args=(up --listen "127.0.0.1:$port" --data-dir "$data" --log-level warn)
environment=()
if [ "$mode" = distributed ]; then
  scripts/services up >&2
  eval "$(scripts/services env)"
  database="bench_profiles_$run_id"
  psql -q "$PULSE_TEST_POSTGRES_URL" -c "CREATE DATABASE $database"
  prefix="bench-profiles-$run_id."
  environment+=("PULSE_PREFIX=$prefix")
  args+=(--store "${PULSE_TEST_POSTGRES_URL%/*}/$database" --log "$PULSE_TEST_KAFKA_URL" --cache "$PULSE_TEST_REDIS_URL")
fi

cleanup() {
  if [ -n "$pulse_pid" ]; then
    kill -TERM "$pulse_pid" 2>/dev/null || true
    wait "$pulse_pid" 2>/dev/null || true
  fi
  if [ -n "$database" ]; then
    psql -q "$PULSE_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
  fi
  if [ -n "$prefix" ]; then
    redis-cli -u "$PULSE_TEST_REDIS_URL" --scan --pattern "${prefix}*" |
      xargs -r redis-cli -u "$PULSE_TEST_REDIS_URL" DEL >/dev/null || true
    java -cp "$HOME/.cache/pulse-kafka/kafka-3.9.2/libs/*" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "${PULSE_TEST_KAFKA_URL#kafka://}" --delete --topic "${prefix//./\\.}.*" \
      >/dev/null 2>&1 || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

env ${environment[@]+"${environment[@]}"} "$binary" "${args[@]}" 2>"$data/pulse.log" &
pulse_pid=$!
wait_for_pulse "$pulse_pid" "$port" "$data/pulse.log"
key="$(api_key_header "$data")"

echo "== $mode: loading $profiles customers through POST /v1/batch"
started=$(date +%s.%N)
for ((first = 0; first < profiles; first += 100)); do
  body="$(awk -v first="$first" -v count="$profiles" 'BEGIN {
    printf "{\"batch\":["
    for (i = first; i < first + 100 && i < count; i++)
      printf "%s{\"type\":\"identify\",\"userId\":\"bench-u-%d\",\"anonymousId\":\"bench-a-%d\",\"traits\":{\"email\":\"u%d@example.com\",\"plan\":\"%s\"},\"context\":{\"userAgent\":\"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1\"}}", (i > first ? "," : ""), i, i, i, (i % 2 ? "pro" : "free")
    printf "]}" }')"
  curl -sf -o /dev/null -H "$key" -H 'content-type: application/json' -d "$body" "$(url /v1/batch)"
done
until [ "$(counter pulse_profiles_events_total 'outcome="applied"')" -ge "$profiles" ]; do
  sleep 0.5
done
echo "loaded and applied in $(echo "$(date +%s.%N) - $started" | bc) s"

quote_url="$(url '/api/v1/quote?lat=37.7793&lng=-122.4192&dropoff_lat=37.80&dropoff_lng=-122.40')"
echo "== $mode: quotes (GET /api/v1/quote), $connections connections, $duration"
quotes_a="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" "$quote_url")"
echo "$quotes_a" | grep -E "Requests/sec|50%|99%|Non-2xx" || true

hot_before="$(counter pulse_profiles_reads_total 'source="hot"')"
cold_before="$(counter pulse_profiles_reads_total 'source="cold"')"
echo "== $mode: profile reads (GET /api/v1/profiles/by-user/{id}), $connections connections, $duration"
reads="$(PROFILES=$profiles wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" \
  -s bench/profiles-reads.lua "$(url /api/v1/profiles/by-user/x)")"
echo "$reads" | grep -E "Requests/sec|50%|99%|Non-2xx" || true
hot=$(( $(counter pulse_profiles_reads_total 'source="hot"') - hot_before ))
cold=$(( $(counter pulse_profiles_reads_total 'source="cold"') - cold_before ))
echo "reads answered hot: $hot, from the store: $cold"

echo "== $mode: quotes again"
quotes_b="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" "$quote_url")"
echo "$quotes_b" | grep -E "Requests/sec|50%|99%|Non-2xx" || true

to_ms() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } printf "%.3f", v }'; }
quote_rate="$(echo "$(echo "$quotes_a" | rate) $(echo "$quotes_b" | rate)" | awk '{ printf "%.0f", ($1 + $2) / 2 }')"
quote_p99="$(echo "$(echo "$quotes_a" | p99 | to_ms) $(echo "$quotes_b" | p99 | to_ms)" | awk '{ printf "%.3f", ($1 + $2) / 2 }')"
read_rate="$(echo "$reads" | rate)"
read_p99="$(echo "$reads" | p99 | to_ms)"
echo "== $mode summary: reads $read_rate/s (p99 $read_p99 ms) vs quotes $quote_rate/s (p99 $quote_p99 ms):" \
  "$(awk -v r="$read_rate" -v q="$quote_rate" 'BEGIN { printf "%.2fx the rate", r / q }')," \
  "$(awk -v r="$read_p99" -v q="$quote_p99" 'BEGIN { printf "%.2fx the p99", r / q }')"
