#!/usr/bin/env bash
# bench/rides.sh — the rides' HTTP paths under load, with the ratios issue 15 names measured in
# the same run (a release `pulse up`, wrk with one thread on the same machine):
#
#   1. pings: POST /api/v1/drivers/{id}/location (bench/rides-pings.lua, a new driver id every
#      request) against the quote path (GET /api/v1/quote) on the same running Pulse;
#   2. fleets: POST /api/v1/drivers/locations in batches of 100 and 200 (bench/rides-fleet.lua),
#      positions/s against the raw append rate of the same log with the same records in batches
#      of the same size (`cargo bench -p pulse --bench supply_append`, run after Pulse stopped);
#      and what a batch of 1,000 is answered;
#   3. nearby: on a second, fresh Pulse, 100,000 drivers loaded through the batch endpoint over
#      a city of 30 x 30 km (central Berlin), then GET /api/v1/drivers/nearby (2 km, the 10
#      nearest; bench/rides-nearby.lua) with its p99;
#   4. dispatch, whole system: orders at a steady rate near those drivers (bench/rides-orders.lua)
#      matched by the `dispatch` processor; the placement-to-match histogram and the attempts
#      from /metrics.
#
#   bench/rides.sh [embedded|distributed] [duration, default 10s] [connections, default 32]
#
# distributed = PostgreSQL + Kafka + Redis from scripts/services (fresh databases, prefixes of
# their own; dropped or deleted at the end). The loaded drivers must stay fresh for the whole
# nearby and dispatch phases: `tracker.max_age_ms` is raised to 10 minutes for the second Pulse.
# PULSE_BENCH_ORDER_CONNECTIONS (default 10) and PULSE_BENCH_ORDER_DELAY_MS (default 20) pace the
# orders; PULSE_BENCH_SETTLE_S (default 0) waits that long after the drivers are indexed before
# the nearby phase. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-embedded}"
duration="${2:-10s}"
connections="${3:-32}"
port="${PULSE_BENCH_PORT:-18080}"
order_connections="${PULSE_BENCH_ORDER_CONNECTIONS:-10}"
order_delay="${PULSE_BENCH_ORDER_DELAY_MS:-20}"
settle="${PULSE_BENCH_SETTLE_S:-0}"
if [ "$mode" != embedded ] && [ "$mode" != distributed ]; then
  echo "usage: bench/rides.sh [embedded|distributed] [duration] [connections]" >&2
  exit 2
fi

# shellcheck source=bench/common.sh
source bench/common.sh
ensure_wrk
binary="$(build_pulse)"
# The raw append bench is built now, not while Pulse is measured.
echo "[bench] building the supply_append bench" >&2
cargo bench -q -p pulse --bench supply_append --no-run 2>/dev/null

run_id="$(date +%s)"
data="$(mktemp -d)"
databases=()
prefixes=()
pulse_pid=""
if [ "$mode" = distributed ]; then
  scripts/services up >&2
  eval "$(scripts/services env)"
fi

cleanup() {
  if [ -n "$pulse_pid" ]; then
    kill -TERM "$pulse_pid" 2>/dev/null || true
    wait "$pulse_pid" 2>/dev/null || true
  fi
  for database in "${databases[@]}"; do
    psql -q "$PULSE_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
  done
  for prefix in "${prefixes[@]}"; do
    redis-cli -u "$PULSE_TEST_REDIS_URL" --scan --pattern "${prefix}*" |
      xargs -r redis-cli -u "$PULSE_TEST_REDIS_URL" DEL >/dev/null || true
    java -cp "$HOME/.cache/pulse-kafka/kafka-3.9.2/libs/*" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "${PULSE_TEST_KAFKA_URL#kafka://}" --delete --topic "${prefix//./\\.}.*" \
      >/dev/null 2>&1 || true
  done
  rm -rf "$data"
}
trap cleanup EXIT

# start_pulse NAME [VAR=VALUE…] — a fresh Pulse (its own data directory, and distributed its own
# database and prefix) on $port, in the background; sets pulse_pid and key.
start_pulse() {
  local name=$1
  shift
  local dir="$data/$name"
  mkdir -p "$dir"
  local args=(up --listen "127.0.0.1:$port" --data-dir "$dir" --log-level warn)
  local environment=("$@")
  if [ "$mode" = distributed ]; then
    local database="bench_rides_${run_id}_$name"
    psql -q "$PULSE_TEST_POSTGRES_URL" -c "CREATE DATABASE $database"
    databases+=("$database")
    local prefix="bench-rides-$run_id-$name."
    prefixes+=("$prefix")
    environment+=("PULSE_PREFIX=$prefix")
    args+=(--store "${PULSE_TEST_POSTGRES_URL%/*}/$database" --log "$PULSE_TEST_KAFKA_URL" --cache "$PULSE_TEST_REDIS_URL")
  fi
  env "${environment[@]}" "$binary" "${args[@]}" 2>"$dir/pulse.log" &
  pulse_pid=$!
  wait_for_pulse "$pulse_pid" "$port" "$dir/pulse.log"
  key="$(api_key_header "$dir")"
}

stop_pulse() {
  kill -TERM "$pulse_pid" 2>/dev/null || true
  wait "$pulse_pid" 2>/dev/null || true
  pulse_pid=""
}


# ---------------------------------------------------------------------------------------------
start_pulse a
echo "== $mode: quotes (GET /api/v1/quote), $connections connections, $duration"
quotes_out="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" \
  "$(url '/api/v1/quote?lat=37.7793&lng=-122.4192&dropoff_lat=37.80&dropoff_lng=-122.40')")"
echo "$quotes_out" | grep -E "Requests/sec|50%|99%|Non-2xx" || true

echo "== $mode: pings (POST /api/v1/drivers/{id}/location), $connections connections, $duration"
pings_out="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" -s bench/rides-pings.lua \
  "$(url /api/v1/drivers/ping/location)")"
echo "$pings_out" | grep -E "Requests/sec|50%|99%|Non-2xx" || true

declare -A fleet_out
for batch in 100 200; do
  echo "== $mode: fleets of $batch (POST /api/v1/drivers/locations), $connections connections, $duration"
  fleet_out[$batch]="$(BATCH=$batch wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" \
    -s bench/rides-fleet.lua "$(url /api/v1/drivers/locations)")"
  echo "${fleet_out[$batch]}" | grep -E "Requests/sec|50%|99%|Non-2xx" || true
done

echo "== $mode: one fleet of 1,000 positions"
body="$(awk 'BEGIN { printf "{\"locations\":["; for (i = 0; i < 1000; i++) printf "%s{\"driver_id\":\"big-%d\",\"lat\":37.7%05d,\"lng\":-122.4%05d,\"available\":true}", (i ? "," : ""), i, i, i; printf "]}" }')"
echo "body: ${#body} bytes"
curl -s -o "$data/big.json" -w "status %{http_code}: " -H "$key" -H 'content-type: application/json' \
  --data-binary "$body" "$(url /api/v1/drivers/locations)"
head -c 300 "$data/big.json"
echo
stop_pulse

# ---------------------------------------------------------------------------------------------
start_pulse b PULSE_TRACKER__MAX_AGE_MS=600000
drivers=100000
echo "== $mode: loading $drivers drivers (POST /api/v1/drivers/locations, 200 a request)"
loaded_at=$(date +%s%N)
python3 - "$port" "${key#X-API-Key: }" "$drivers" <<'PY'
import http.client, json, random, sys
port, key, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(20240601)
half_lat = 15000 / 111195
half_lng = half_lat / 0.6085
conn = http.client.HTTPConnection("127.0.0.1", port)
for first in range(0, count, 200):
    locations = [{"driver_id": f"city-{n:06d}",
                  "lat": round(52.52 + (rng.random() * 2 - 1) * half_lat, 6),
                  "lng": round(13.405 + (rng.random() * 2 - 1) * half_lng, 6),
                  "available": True} for n in range(first, min(first + 200, count))]
    body = json.dumps({"locations": locations}, separators=(",", ":"))
    conn.request("POST", "/api/v1/drivers/locations", body,
                 {"Content-Type": "application/json", "X-API-Key": key})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 202:
        sys.exit(f"batch at {first}: {response.status} {answer[:200]!r}")
PY
echo "accepted in $(( ($(date +%s%N) - loaded_at) / 1000000 )) ms; waiting for the tracker to index them"
for _ in $(seq 1 1200); do
  [ "$(counter pulse_tracker_records_total 'kind="ping"')" -ge "$drivers" ] && break
  sleep 0.1
done
echo "indexed $(counter pulse_tracker_records_total 'outcome="applied"') positions, $(( ($(date +%s%N) - loaded_at) / 1000000 )) ms after the first batch"
curl -s -H "$key" "$(url '/api/v1/drivers/nearby?lat=52.52&lng=13.405&radius_m=2000&limit=10')" | head -c 300
echo
if [ "$settle" -gt 0 ]; then
  echo "settling ${settle}s before the nearby phase"
  sleep "$settle"
fi

echo "== $mode: nearby (GET /api/v1/drivers/nearby, 2 km, 10 nearest, $drivers drivers), $connections connections, $duration"
nearby_out="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "$key" -s bench/rides-nearby.lua "$(url /)")"
echo "$nearby_out" | grep -E "Requests/sec|50%|90%|99%|Non-2xx" || true
echo "== $mode: nearby, one connection (latency without queueing), $duration"
nearby_one_out="$(wrk -t1 -c1 -d"$duration" --latency -H "$key" -s bench/rides-nearby.lua "$(url /)")"
echo "$nearby_one_out" | grep -E "Requests/sec|50%|90%|99%|Non-2xx" || true

echo "== $mode: orders paced ($order_connections connections, $order_delay ms between answers), $duration, matched by the dispatcher"
orders_out="$(DELAY_MS=$order_delay RUN="r$run_id" wrk -t1 -c"$order_connections" -d"$duration" --latency -H "$key" \
  -s bench/rides-orders.lua "$(url /api/v1/orders)")"
echo "$orders_out" | grep -E "Requests/sec|50%|99%|Non-2xx" || true
placed="$(counter orders_placed_total)"
for _ in $(seq 1 600); do
  decided=$(( $(counter pulse_dispatch_attempts_total 'outcome="matched"') + $(counter pulse_dispatch_attempts_total 'outcome="no_driver"') ))
  [ "$decided" -ge "$placed" ] && break
  sleep 0.1
done
echo "placed $placed; attempts: matched $(counter pulse_dispatch_attempts_total 'outcome="matched"'), no_driver $(counter pulse_dispatch_attempts_total 'outcome="no_driver"'), stale_candidate $(counter pulse_dispatch_attempts_total 'outcome="stale_candidate"'), decided $(counter pulse_dispatch_attempts_total 'outcome="decided"')"
echo "placement-to-match (pulse_dispatch_match_latency_seconds, cumulative buckets):"
curl -s "$(url /metrics)" | awk '
  /^pulse_dispatch_match_latency_seconds_bucket/ {
    match($1, /le="[^"]*"/); le = substr($1, RSTART + 4, RLENGTH - 5); n++; les[n] = le; counts[n] = $2 }
  /^pulse_dispatch_match_latency_seconds_count/ { total = $2 }
  /^pulse_dispatch_match_latency_seconds_sum/ { sum = $2 }
  END {
    if (!total) { print "  (no matches)"; exit }
    for (i = 1; i <= n; i++) printf "  le %s: %d\n", les[i], counts[i]
    for (q = 1; q <= 3; q++) {
      target = (q == 1 ? 0.5 : (q == 2 ? 0.9 : 0.99)) * total
      for (i = 1; i <= n && counts[i] < target; i++) {}
      printf "  p%s <= %s s\n", (q == 1 ? "50" : (q == 2 ? "90" : "99")), les[i]
    }
    printf "  mean %.1f ms over %d matches\n", sum / total * 1000, total
  }'
stop_pulse

# ---------------------------------------------------------------------------------------------
# The raw log gets the machine to itself, as Pulse had it.
echo "== raw supply appends, same records, same batch sizes (cargo bench -p pulse --bench supply_append)"
if [ "$mode" = embedded ]; then
  raw_out="$(env -u PULSE_TEST_KAFKA_URL PULSE_BENCH_LOG=embedded PULSE_BENCH_BATCHES=100,200,1000 PULSE_BENCH_RECORDS=300000 \
    cargo bench -q -p pulse --bench supply_append 2>/dev/null)"
else
  prefixes+=("bench-rides-$run_id-raw.")
  raw_out="$(PULSE_BENCH_LOG=kafka PULSE_BENCH_KAFKA_TOPIC="bench-rides-$run_id-raw.supply.updates" PULSE_BENCH_BATCHES=100,200,1000 PULSE_BENCH_RECORDS=300000 \
    cargo bench -q -p pulse --bench supply_append 2>/dev/null)"
fi
echo "$raw_out"
raw() { echo "$raw_out" | awk -v batch="$1" -v producers="$2" '$4 == batch && $6 == producers { print $(NF - 1) }'; }

echo "== ratios ($mode, this run)"
awk -v q="$(echo "$quotes_out" | rate)" -v p="$(echo "$pings_out" | rate)" -v pp99="$(echo "$pings_out" | p99)" \
  -v f100="$(echo "${fleet_out[100]}" | rate)" -v f200="$(echo "${fleet_out[200]}" | rate)" \
  -v r100s="$(raw 100 1)" -v r100c="$(raw 100 32)" -v r200s="$(raw 200 1)" -v r200c="$(raw 200 32)" \
  -v c="$connections" -v n99="$(echo "$nearby_out" | p99)" -v n="$(echo "$nearby_out" | rate)" \
  -v o99="$(echo "$nearby_one_out" | p99)" -v o="$(echo "$nearby_one_out" | rate)" 'BEGIN {
  printf "pings / quotes: %.0f / %.0f = %.2f (target >= 0.80); pings p99 %s\n", p, q, p / q, pp99
  printf "fleets of 100: %.0f positions/s; raw appends of 100: %.0f (1 producer), %.0f (32): %.2f, %.2f (target >= 0.80)\n", f100 * 100, r100s, r100c, f100 * 100 / r100s, f100 * 100 / r100c
  printf "fleets of 200: %.0f positions/s; raw appends of 200: %.0f (1 producer), %.0f (32): %.2f, %.2f (target >= 0.80)\n", f200 * 200, r200s, r200c, f200 * 200 / r200s, f200 * 200 / r200c
  printf "nearby over HTTP: %.0f req/s, p99 %s with %s connections; %.0f req/s, p99 %s with one (target <= 5 ms)\n", n, n99, c, o, o99
}'
