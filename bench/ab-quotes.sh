#!/usr/bin/env bash
# bench/ab-quotes.sh — an A/B of the quote path between builds, in one run: every binary is up at
# once (embedded default, each its own port and data dir) and wrk drives each in turn, round
# after round, so the machine's noise falls on all of them alike. Prints each round's req/s and,
# per build, the median and its ratio to the first build's median.
#
#   bench/ab-quotes.sh [--rounds N] [--duration 4s] [--connections 32] BINARY [BINARY ...]
#
# e.g. an issue's base against the working tree:
#   git worktree add /tmp/base 7f01abf && (cd /tmp/base && cargo build --release -p pulse)
#   bench/ab-quotes.sh target/release/pulse-base target/release/pulse
# (copy each build's binary aside first: one target dir holds one `pulse`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=7
duration=4s
connections=32
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "usage: bench/ab-quotes.sh [--rounds N] [--duration D] [--connections C] BINARY BINARY [...]" >&2
  exit 2
fi
binaries=("$@")

# shellcheck source=bench/common.sh
source bench/common.sh
ensure_wrk

base_port="${PULSE_BENCH_PORT:-18180}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for i in "${!binaries[@]}"; do
  port=$((base_port + i))
  mkdir -p "$work/$i"
  "${binaries[$i]}" up --listen "127.0.0.1:$port" --data-dir "$work/$i" --log-level warn \
    2>"$work/$i/pulse.log" &
  pids+=("$!")
  wait_for_pulse "${pids[$i]}" "$port" "$work/$i/pulse.log"
  echo "[ab] build $i: ${binaries[$i]} on port $port" >&2
done

quote_path="/api/v1/quote?lat=37.7793&lng=-122.4192&dropoff_lat=37.80&dropoff_lng=-122.40"
declare -A rates
for round in $(seq 1 "$rounds"); do
  line="round $round:"
  for i in "${!binaries[@]}"; do
    port=$((base_port + i))
    key="$(api_key_header "$work/$i")"
    rate="$(wrk -t1 -c"$connections" -d"$duration" -H "$key" "$(url "$quote_path")" | rate)"
    rates[$i]+="$rate "
    line+=" $rate"
  done
  echo "$line"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
first="$(echo "${rates[0]}" | median)"
for i in "${!binaries[@]}"; do
  m="$(echo "${rates[$i]}" | median)"
  awk -v i="$i" -v b="${binaries[$i]}" -v m="$m" -v f="$first" \
    'BEGIN { printf "build %d (%s): median %.0f req/s, %.3fx build 0\n", i, b, m, m / f }'
done
