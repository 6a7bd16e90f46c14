#!/usr/bin/env python3
"""bench/ingest-latency.py — ingest-to-events_raw latency at a steady rate (stdlib only).

Sends COUNT events to POST /v1/events at RATE per second (each with its own event_id), waits
until all are in events_raw, and prints the p50 / p99 / max of archived_at - received_at (both
stamped by Pulse: the time from the durable 202 to the row).

  bench/ingest-latency.py BASE KEY STORE_URL [RATE=200] [COUNT=2000]
"""
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

base, key, store = sys.argv[1], sys.argv[2], sys.argv[3]
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 200.0
count = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
run = uuid.uuid4().hex[:12]
ids = [f"lat-{run}-{n}" for n in range(count)]


def send(event_id):
    body = json.dumps({"event_type": "latency_probe", "event_id": event_id, "user_id": event_id}).encode()
    request = urllib.request.Request(f"{base}/v1/events", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-API-Key": key})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202, response.status


start = time.monotonic()
threads = []
for n, event_id in enumerate(ids):
    delay = start + n / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    thread = threading.Thread(target=send, args=(event_id,))
    thread.start()
    threads.append(thread)
for thread in threads:
    thread.join()

if store.startswith("sqlite://"):
    query = ("SELECT (julianday(archived_at) - julianday(received_at)) * 86400000.0 FROM events_raw "
             f"WHERE event_id LIKE 'lat-{run}-%'")

    def fetch():
        with sqlite3.connect(store[len("sqlite://"):], timeout=30) as db:
            return [row[0] for row in db.execute(query)]
else:
    query = ("SELECT EXTRACT(EPOCH FROM (archived_at - received_at)) * 1000 FROM events_raw "
             f"WHERE event_id LIKE 'lat-{run}-%'")

    def fetch():
        out = subprocess.run(["psql", "-qAt", store, "-c", query], check=True, capture_output=True, text=True)
        return [float(line) for line in out.stdout.split()]

deadline = time.monotonic() + 60
while True:
    latencies = fetch()
    if len(latencies) >= count or time.monotonic() > deadline:
        break
    time.sleep(0.2)
latencies.sort()
if len(latencies) < count:
    sys.exit(f"only {len(latencies)} of {count} events reached events_raw within 60 s")
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
print(f"ingest-to-events_raw over {count} events at {rate:.0f}/s: "
      f"p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {latencies[-1]:.1f} ms")
