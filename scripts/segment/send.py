"""scripts/segment/send.py — sends one identify, one track and one page to a Segment-compatible
endpoint through segment-analytics-python's own batching path (its consumer thread posts them to
HOST/v1/batch), flushing after each call, and exits non-zero if any delivery failed.

    python send.py HOST WRITE_KEY RUN        (or HOST, WRITE_KEY, RUN in the environment)

Run with the venv's python that scripts/segment-clients made; crates/pulse/tests/segment_clients.rs
does. Message ids are `<RUN>-python-<call>`.
"""

import os
import sys

import segment.analytics as analytics


def main():
    args = sys.argv[1:] + [None] * 3
    host = args[0] or os.environ.get("HOST")
    write_key = args[1] or os.environ.get("WRITE_KEY")
    run = args[2] or os.environ.get("RUN")
    if not host or not host.startswith(("http://", "https://")) or not write_key or not run:
        print("usage: send.py HOST WRITE_KEY RUN (HOST a base URL: http://127.0.0.1:8080)", file=sys.stderr)
        return 2

    failures = []

    def on_error(error, batch):
        ids = ", ".join(str(message.get("messageId")) for message in batch)
        failures.append("{} (batch of {})".format(error, ids))

    analytics.write_key = write_key
    # The library posts to host + "/v1/batch".
    analytics.host = host
    analytics.on_error = on_error
    # Fail fast: no retries with backoff, and a request that hangs gives up after 5 s.
    analytics.max_retries = 0
    analytics.timeout = 5
    # The library's gzip path, which Pulse's ingress accepts.
    analytics.gzip = True

    user_id = "u-" + run
    calls = [
        (
            "identify",
            lambda: analytics.identify(
                user_id=user_id,
                traits={"email": user_id + "@example.com", "plan": "pro"},
                message_id=run + "-python-identify",
            ),
        ),
        (
            "track",
            lambda: analytics.track(
                user_id=user_id,
                event="Order Completed",
                # Python's json writes any int exactly: 2^53 + 1 goes out as a number.
                properties={"order_id": run + "-order", "revenue": 25.5, "currency": "EUR", "total": 9007199254740993},
                message_id=run + "-python-track",
            ),
        ),
        (
            "page",
            lambda: analytics.page(
                user_id=user_id,
                name="Home",
                properties={"path": "/", "title": "Home"},
                message_id=run + "-python-page",
            ),
        ),
    ]
    for name, call in calls:
        queued, _ = call()
        if not queued:
            failures.append(name + ": not queued")
        # Returns once the consumer thread has posted (or given up on) everything queued.
        analytics.flush()
        print("[send.py] {} flushed".format(name), file=sys.stderr)
    analytics.shutdown()

    if failures:
        print("[send.py] delivery failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("[send.py] delivered {0}-python-identify, {0}-python-track, {0}-python-page".format(run), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
