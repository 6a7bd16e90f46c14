# bench/common.sh — what the whole-system benchmarks share: wrk, a release build of Pulse, and
# waiting for a started Pulse to answer (refusing to measure one it did not start). Sourced.

# Installs wrk from Debian's packages when missing.
ensure_wrk() {
  command -v wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
}

# Builds Pulse in release mode and prints the binary's path; PULSE_BENCH_BINARY names a binary
# to measure instead (an A/B against another commit's build).
build_pulse() {
  if [ -n "${PULSE_BENCH_BINARY:-}" ]; then
    echo "[bench] measuring $PULSE_BENCH_BINARY" >&2
    echo "$PULSE_BENCH_BINARY"
    return
  fi
  echo "[bench] building pulse (release)" >&2
  cargo build --release -q -p pulse
  echo "${CARGO_TARGET_DIR:-target}/release/pulse"
}

# The quotas stay on the request path (the check runs) but high enough never to refuse the
# benchmark's load.
export PULSE_QUOTAS__API__PER_SECOND=1000000 PULSE_QUOTAS__API__BURST=1000000

# api_key_header DATA_DIR — the `X-API-Key` header of the key `pulse up` wrote into DATA_DIR
# (a build from before API keys writes none and ignores the header).
api_key_header() {
  echo "X-API-Key: $(cat "$1/api-key" 2>/dev/null || echo none)"
}

# wait_for_pulse PID PORT LOG — waits for /healthz; fails (showing LOG) when the process PID
# died instead, e.g. because the port was taken by another Pulse.
wait_for_pulse() {
  local pid=$1 port=$2 log=$3
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.2
  done
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "[bench] pulse did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
}

# What the scripts read off wrk's output and a running Pulse (on $port).
rate() { awk '/Requests\/sec/ { print $2 }'; }
p99() { awk '$1 == "99%" { print $2 }'; }
# counter NAME [FILTER] — the sum of a metric's samples whose labels contain FILTER.
counter() {
  curl -s "http://127.0.0.1:$port/metrics" |
    awk -v name="$1" -v filter="${2:-}" '{ split($1, parts, "{") } parts[1] == name && (filter == "" || index($1, filter)) { sum += $2 } END { printf "%d", sum }'
}
url() { echo "http://127.0.0.1:$port$1"; }
