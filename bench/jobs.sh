#!/usr/bin/env bash
# bench/jobs.sh — background jobs, side by side in one run:
#   * 100,000 no-op jobs enqueued in bulk, then run: graphile-worker (bench/graphile, its batched
#     settings: a local queue of 500) and Pulse on the same PostgreSQL (its default lease of 100,
#     and a lease of 500 like graphile's local queue), and Pulse embedded (SQLite); jobs/s counted
#     from the worker's start to the last job's finish;
#   * peak with enqueue and run at once (a gateway and a worker in one process, as `pulse up`),
#     then enqueue-to-start latency at half of it (a steady open-loop load in batches of 10), from
#     the jobs' own created_at/started_at;
#   * fairness (PostgreSQL): a small tenant's p99 wait at 100 jobs/s alone, and beside a tenant
#     holding a backlog of 100x the small tenant's jobs.
#
#   bench/jobs.sh [jobs, default 100000]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

jobs="${1:-100000}"
port="${PULSE_BENCH_PORT:-18090}"
# shellcheck source=bench/common.sh
source bench/common.sh
binary="$(build_pulse)"
scripts/services up postgres >&2
eval "$(scripts/services env)"
export PULSE_QUOTAS__JOBS__PER_SECOND=1000000 PULSE_QUOTAS__JOBS__BURST=1000000
export PULSE_ADMIN_TOKEN="bench-jobs-admin-token-0123456789"

databases=()
dirs=()
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for db in "${databases[@]}"; do psql -q "$PULSE_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true; done
  for dir in "${dirs[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

# new_database NAME — an empty database of this run; prints its URL.
new_database() {
  local name="bench_jobs_$1_$$"
  psql -q "$PULSE_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" >&2
  databases+=("$name")
  echo "${PULSE_TEST_POSTGRES_URL%/*}/$name"
}

# start ROLES STORE DATA — a Pulse playing ROLES on STORE (embedded log and in-process cache in
# DATA: the jobs touch only the store), waited for; sets $pid.
start() {
  "$binary" serve --role "$1" --store "$2" --data-dir "$3" --listen "127.0.0.1:$port" \
    --log-level warn >>"$3/pulse.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_for_pulse "$pid" "$port" "$3/pulse.log"
}

stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# sql STORE QUERY — one value from the store (psql, or sqlite3 for sqlite://).
sql() {
  case "$1" in
    sqlite://*) sqlite3 "${1#sqlite://}" "$2" ;;
    *) psql -qtA "$1" -c "$2" ;;
  esac
}

key_of() { cat "$1/api-key"; }

# throughput NAME STORE [LEASE_BATCH] — bulk-enqueue $jobs no-op jobs through a gateway, then time
# a worker from its start to the last job's finish; prints jobs/s.
throughput() {
  local name=$1 store=$2 batch=${3:-100} data
  data="$(mktemp -d)"; dirs+=("$data")
  start gateway "$store" "$data"
  local enqueued
  enqueued="$(node bench/jobs-load.mjs bulk --base "http://127.0.0.1:$port" --key "$(key_of "$data")" --jobs "$jobs")"
  echo "[$name] enqueue: $enqueued" >&2
  stop "$pid"
  local began
  began="$(date +%s%3N)"
  PULSE_JOBS__WORKER__LEASE_BATCH=$batch start worker "$store" "$data"
  while [ "$(sql "$store" "SELECT count(*) FROM jobs WHERE state <> 'succeeded'")" != 0 ]; do sleep 0.2; done
  local last
  last="$(sql "$store" "SELECT max(finished_at) FROM jobs")"
  stop "$pid"
  awk -v n="$jobs" -v a="$began" -v b="$last" 'BEGIN { printf "%.0f", n * 1000 / (b - a) }'
}

# waits STORE [TENANT] [AFTER_MS] — p50/p90/p99/max of started_at − created_at, ms.
waits() {
  local where="started_at IS NOT NULL AND created_at > ${3:-0}"
  [ -n "${2:-}" ] && where="$where AND tenant_id = '$2'"
  sql "$1" "SELECT started_at - created_at FROM jobs WHERE $where ORDER BY 1" |
    awk 'function at(q,  i) { i = int(NR * q); if (i < 1) i = 1; return v[i] }
      { v[NR] = $1 }
      END { if (NR == 0) { print "no jobs"; exit }
        printf "n=%d p50=%d p90=%d p99=%d max=%d ms\n", NR, at(0.5), at(0.9), at(0.99), v[NR] }'
}

# combined NAME STORE — a gateway and a worker in one process, $jobs enqueued while it runs them,
# in requests of 10 jobs as the latency load sends them (8 at a time); jobs/s from the first
# enqueue to the last finish.
combined() {
  local name=$1 store=$2 data
  data="$(mktemp -d)"; dirs+=("$data")
  start gateway,worker "$store" "$data"
  local began; began="$(date +%s%3N)"
  node bench/jobs-load.mjs bulk --base "http://127.0.0.1:$port" --key "$(key_of "$data")" --jobs "$jobs" --batch 10 >/dev/null
  while [ "$(sql "$store" "SELECT count(*) FROM jobs WHERE state <> 'succeeded'")" != 0 ]; do sleep 0.2; done
  local last; last="$(sql "$store" "SELECT max(finished_at) FROM jobs")"
  stop "$pid"
  awk -v n="$jobs" -v a="$began" -v b="$last" 'BEGIN { printf "%.0f", n * 1000 / (b - a) }'
}

# latency NAME STORE RATE — a gateway and worker in one process (as `pulse up`), RATE jobs/s for
# 10 s after a 2 s warm-up; the waits of the measured jobs.
latency() {
  local name=$1 store=$2 rate=$3 data
  data="$(mktemp -d)"; dirs+=("$data")
  start gateway,worker "$store" "$data"
  local key; key="$(key_of "$data")"
  node bench/jobs-load.mjs steady --base "http://127.0.0.1:$port" --key "$key" --rate "$rate" --seconds 2 >/dev/null
  local after; after="$(date +%s%3N)"
  local load
  load="$(node bench/jobs-load.mjs steady --base "http://127.0.0.1:$port" --key "$key" --rate "$rate" --seconds 10)"
  sleep 1
  echo "[$name] load at $rate jobs/s: $load" >&2
  stop "$pid"
  waits "$store" "" "$after"
}

echo "== graphile-worker $(node -p 'require("./bench/graphile/package.json").dependencies["graphile-worker"]') on PostgreSQL: $jobs no-op jobs"
(cd bench/graphile && { [ -d node_modules ] || npm ci --silent --no-audit --no-fund >&2; })
graphile_db="$(new_database graphile)"
graphile_out="$(DATABASE_URL="$graphile_db" node bench/graphile/run.mjs throughput --jobs "$jobs")"
echo "$graphile_out"
graphile_rate="$(echo "$graphile_out" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(Math.round(JSON.parse(s).jobs_per_second)))')"

echo "== Pulse on the same PostgreSQL: $jobs no-op jobs"
pulse_pg_default="$(throughput postgres "$(new_database pulse)")"
echo "pulse (postgres, lease 100): $pulse_pg_default jobs/s"
pulse_pg="$(throughput postgres "$(new_database pulse500)" 500)"
echo "pulse (postgres, lease 500): $pulse_pg jobs/s"

echo "== Pulse embedded (SQLite): $jobs no-op jobs"
embedded_dir="$(mktemp -d)"; dirs+=("$embedded_dir")
pulse_embedded="$(throughput embedded "sqlite://$embedded_dir/pulse.db")"
echo "pulse (embedded): $pulse_embedded jobs/s"

echo "== peak with enqueue and run at once (gateway and worker in one process)"
peak_pg="$(combined postgres "$(new_database combined)")"
echo "pulse (postgres): $peak_pg jobs/s"
combined_dir="$(mktemp -d)"; dirs+=("$combined_dir")
peak_embedded="$(combined embedded "sqlite://$combined_dir/pulse.db")"
echo "pulse (embedded): $peak_embedded jobs/s"

half_pg=$(( peak_pg / 2 ))
half_embedded=$(( peak_embedded / 2 ))
echo "== enqueue-to-start at half of peak: postgres $half_pg jobs/s"
latency_pg="$(latency postgres "$(new_database latency)" "$half_pg")"
echo "pulse (postgres) at $half_pg jobs/s: $latency_pg"
echo "== enqueue-to-start at half of peak: embedded $half_embedded jobs/s"
latency_dir="$(mktemp -d)"; dirs+=("$latency_dir")
latency_embedded="$(latency embedded "sqlite://$latency_dir/pulse.db" "$half_embedded")"
echo "pulse (embedded) at $half_embedded jobs/s: $latency_embedded"

echo "== fairness (postgres): a small tenant at 100 jobs/s for 8 s, alone and beside a backlog of 100x its jobs"
fair_store="$(new_database fairness)"
fair_dir="$(mktemp -d)"; dirs+=("$fair_dir")
start gateway "$fair_store" "$fair_dir"
tenant_key() {
  curl -sf -X POST "http://127.0.0.1:$port/admin/v1/tenants" -H "Authorization: Bearer $PULSE_ADMIN_TOKEN" \
    -H 'Content-Type: application/json' -d "{\"tenant_id\": \"$1\"}" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).api_key))'
}
small_key="$(tenant_key small)"
big_key="$(tenant_key big)"
stop "$pid"
start gateway,worker "$fair_store" "$fair_dir"
alone_after="$(date +%s%3N)"
node bench/jobs-load.mjs steady --base "http://127.0.0.1:$port" --key "$small_key" --rate 100 --seconds 8 --batch 1 >/dev/null
sleep 1
alone="$(waits "$fair_store" small "$alone_after")"
# The backlog is enqueued with no worker running, so the small tenant's jobs meet all of it.
stop "$pid"
start gateway "$fair_store" "$fair_dir"
node bench/jobs-load.mjs bulk --base "http://127.0.0.1:$port" --key "$big_key" --jobs 80000 >/dev/null
stop "$pid"
start gateway,worker "$fair_store" "$fair_dir"
beside_after="$(date +%s%3N)"
node bench/jobs-load.mjs steady --base "http://127.0.0.1:$port" --key "$small_key" --rate 100 --seconds 8 --batch 1 >/dev/null
left="$(sql "$fair_store" "SELECT count(*) FROM jobs WHERE tenant_id = 'big' AND state <> 'succeeded'")"
echo "big jobs still waiting when the small tenant's load ended: $left"
while [ "$(sql "$fair_store" "SELECT count(*) FROM jobs WHERE state <> 'succeeded'")" != 0 ]; do sleep 0.2; done
beside="$(waits "$fair_store" small "$beside_after")"
big="$(waits "$fair_store" big 0)"
stop "$pid"
echo "small alone:           $alone"
echo "small beside big:      $beside"
echo "big (80,000 backlog):  $big"

echo "== ratios (this run)"
p99_of() { sed -E 's/.*p99=([0-9]+).*/\1/'; }
awk -v d="$pulse_pg_default" -v p="$pulse_pg" -v g="$graphile_rate" -v e="$pulse_embedded" -v lp="$(echo "$latency_pg" | p99_of)" \
    -v le="$(echo "$latency_embedded" | p99_of)" -v a="$(echo "$alone" | p99_of)" -v b="$(echo "$beside" | p99_of)" 'BEGIN {
  printf "pulse (postgres, lease 500) / graphile-worker: %d / %d = %.2f (target >= 2.0)\n", p, g, p / g
  printf "pulse (postgres, lease 100) / graphile-worker: %d / %d = %.2f\n", d, g, d / g
  printf "pulse (embedded) / graphile-worker: %d / %d = %.2f\n", e, g, e / g
  printf "enqueue-to-start p99 at half of peak: postgres %d ms, embedded %d ms (target <= 10 ms)\n", lp, le
  printf "small tenant p99 beside / alone: %d / %d ms (target <= 2x, or within 1 ms of its own)\n", b, a
}'
