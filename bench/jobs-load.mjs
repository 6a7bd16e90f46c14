#!/usr/bin/env node
// Load for bench/jobs.sh: enqueues jobs into a running Pulse over its API.
//
//   node bench/jobs-load.mjs bulk   --base URL --key KEY --jobs N [--batch 500] [--connections 8]
//   node bench/jobs-load.mjs steady --base URL --key KEY --rate R --seconds S [--batch 10]
//
// bulk: N jobs of `--job-type` (pulse.noop) in batches, as fast as `--connections` requests at a
// time allow. steady: R jobs/s for S seconds, open-loop (batch k is due at start + k·batch/R
// whether or not earlier requests returned). Prints one JSON line: what was sent and committed.
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    base: { type: "string" },
    key: { type: "string" },
    jobs: { type: "string", default: "100000" },
    batch: { type: "string" },
    connections: { type: "string", default: "8" },
    rate: { type: "string", default: "1000" },
    seconds: { type: "string", default: "10" },
    "job-type": { type: "string", default: "pulse.noop" },
  },
});
const mode = positionals[0];
const base = values.base;
const jobType = values["job-type"];
if (!base || !values.key || !["bulk", "steady"].includes(mode)) {
  console.error("usage: jobs-load.mjs bulk|steady --base URL --key KEY …");
  process.exit(2);
}
const headers = { "content-type": "application/json", "x-api-key": values.key };

async function post(count) {
  const jobs = Array.from({ length: count }, () => ({ job_type: jobType, payload: {} }));
  const response = await fetch(`${base}/api/v1/jobs/batch`, {
    method: "POST",
    headers,
    body: JSON.stringify({ jobs }),
  });
  if (response.status !== 201) {
    throw new Error(`batch answered ${response.status}: ${await response.text()}`);
  }
  await response.arrayBuffer();
  return count;
}

const started = performance.now();
let committed = 0;
if (mode === "bulk") {
  const total = Number(values.jobs);
  const batch = Number(values.batch ?? 500);
  let next = 0;
  const lane = async () => {
    while (next < total) {
      const count = Math.min(batch, total - next);
      next += count;
      // Not `committed += await …`: that reads `committed` before the await and loses the
      // other lanes' counts.
      const taken = await post(count);
      committed += taken;
    }
  };
  await Promise.all(Array.from({ length: Number(values.connections) }, lane));
} else {
  const rate = Number(values.rate);
  const seconds = Number(values.seconds);
  const batch = Number(values.batch ?? 10);
  const batches = Math.round((rate * seconds) / batch);
  const pending = [];
  for (let k = 0; k < batches; k++) {
    const due = started + (k * batch * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    pending.push(post(batch).then((count) => (committed += count)));
  }
  await Promise.all(pending);
}
const elapsed = (performance.now() - started) / 1000;
console.log(JSON.stringify({ mode, committed, seconds: +elapsed.toFixed(3), committed_rate: +(committed / elapsed).toFixed(1) }));
