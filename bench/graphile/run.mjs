#!/usr/bin/env node
// graphile-worker side of Pulse's jobs benchmark (see README.md).
//
//   DATABASE_URL=postgres://.../empty_db node run.mjs throughput [--jobs N] [--concurrency C]
//   DATABASE_URL=postgres://.../empty_db node run.mjs latency --rate R --seconds S [--concurrency C]
//
// Prints exactly one JSON line on stdout; everything else goes to stderr.
// Exits non-zero if the run could not be measured (e.g. jobs left behind).

import { parseArgs } from "node:util";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";

// graphile-worker reads NO_LOG_SUCCESS when its modules load: without it every
// completed job builds a log line. Its own perf test sets it, so we do too;
// hence the dynamic import below rather than a static one.
process.env.NO_LOG_SUCCESS ??= "1";
const { Logger, makeWorkerUtils, run } = await import("graphile-worker");
const GW_VERSION = installedVersion("graphile-worker");

// An expected failure: reported as its message alone, without a stack.
// (Declared before use: the top-level await below runs main() right away.)
class BenchError extends Error {}

// Enqueue and start times come from the monotonic clock, in ms. Unlike
// Date.now() it has sub-ms resolution, and unlike performance.timeOrigin +
// performance.now() it is one clock for every thread (each thread has its own
// timeOrigin), so the producer thread and the worker agree on it.
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// graphile-worker's default logger prints info lines on stdout, which must
// carry only our JSON result: keep warnings and errors, on stderr.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[graphile-worker] ${level}: ${message}`);
});

if (isMainThread) {
  // Errors unwind through the `finally` blocks (worker stopped, pools ended)
  // before we exit non-zero.
  await main().catch((error) => {
    console.error(`run.mjs: ${error instanceof BenchError ? error.message : (error?.stack ?? error)}`);
    process.exitCode = 1;
  });
} else {
  // Producer thread: an error here reaches the main thread's "error" event.
  await producer(workerData);
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      mode: { type: "string" },
      jobs: { type: "string", default: "100000" },
      concurrency: { type: "string", default: "24" },
      rate: { type: "string", default: "1000" },
      seconds: { type: "string", default: "10" },
      "warmup-seconds": { type: "string", default: "1" },
      "enqueue-chunk": { type: "string", default: "10000" },
      "producer-connections": { type: "string", default: "8" },
      "database-url": { type: "string" },
    },
  });
  const mode = values.mode ?? positionals[0];
  const connectionString = values["database-url"] ?? process.env.DATABASE_URL;
  if (!connectionString) fail("DATABASE_URL (or --database-url) is required");
  if (mode !== "throughput" && mode !== "latency") {
    fail(`mode must be 'throughput' or 'latency', got ${JSON.stringify(mode)}`);
  }
  const concurrency = positiveInt(values.concurrency, "--concurrency");
  // Validate every option before touching the database.
  const opts =
    mode === "throughput"
      ? {
          jobs: positiveInt(values.jobs, "--jobs"),
          chunk: positiveInt(values["enqueue-chunk"], "--enqueue-chunk"),
        }
      : {
          rate: positiveNumber(values.rate, "--rate"),
          seconds: positiveNumber(values.seconds, "--seconds"),
          warmupSeconds: nonNegativeNumber(values["warmup-seconds"], "--warmup-seconds"),
          connections: positiveInt(values["producer-connections"], "--producer-connections"),
        };
  if (mode === "latency" && Math.round(opts.rate * opts.seconds) < 1) fail("--rate x --seconds must be at least 1 job");

  // graphile-worker's batched settings, as on its performance page
  // (worker.graphile.org/docs/performance, "Batching"): fetch up to 500 jobs
  // per query into a local queue and complete/fail jobs in batches. A delay of
  // 0 ms still batches everything that finishes in the same tick, adds no
  // timer wait, and is what its published figures use. pollInterval is left
  // at its default: new jobs arrive by LISTEN/NOTIFY, polling only matters
  // for jobs scheduled in the future. There is no `getJobBatchTime` option
  // in this version; the local queue's hold time is `localQueue.ttl`
  // (default 5 min, never reached here).
  const worker = {
    connectionString,
    concurrentJobs: concurrency,
    maxPoolSize: concurrency + 1,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  };

  // Install the schema up front, so that it is not part of any timing.
  const utils = await makeWorkerUtils({ connectionString, logger });
  try {
    await utils.migrate();
    const result =
      mode === "throughput"
        ? await throughput(utils, worker, opts)
        : await latency(utils, worker, connectionString, opts);
    const settings = { ...worker, connectionString: undefined };
    console.log(JSON.stringify({ system: "graphile-worker", version: GW_VERSION, mode, ...result, settings }));
  } finally {
    await utils.release();
  }
}

// Bulk-enqueue `jobs` no-op jobs, then time one worker pool draining them.
async function throughput(utils, worker, { jobs, chunk }) {
  // addJobs inserts a whole array with one add_jobs() call; chunks keep each
  // statement's JSON parameter to a sane size.
  const enqueueStart = nowMs();
  for (let done = 0; done < jobs; done += chunk) {
    const n = Math.min(chunk, jobs - done);
    await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: {} })));
  }
  const enqueueSeconds = (nowMs() - enqueueStart) / 1000;

  let ran = 0;
  let allRan;
  const allRanPromise = new Promise((resolve) => (allRan = resolve));
  const taskList = {
    noop: async () => {
      if (++ran === jobs) allRan();
    },
  };

  // The clock covers the pool's start-up (tens of ms) and its graceful stop,
  // which flushes the last completion batch: the run is over when the queue
  // table is empty, not when the last handler returned.
  const start = nowMs();
  const runner = await run({ logger, preset: { worker }, taskList, crontab: "" });
  // If the pool dies before the last job, fail instead of waiting forever.
  // (`died` also rejects once our own stop() below ends the pool; race() has
  // subscribed to it by then, so that rejection is handled and ignored.)
  const died = runner.promise.then(() => fail(`the worker pool stopped after ${ran} of ${jobs} jobs`));
  await Promise.race([allRanPromise, died]);
  await runner.stop();
  const seconds = (nowMs() - start) / 1000;

  const left = await remainingJobs(utils);
  if (ran !== jobs || left !== 0) fail(`expected ${jobs} runs and an empty queue; ran ${ran}, ${left} jobs left`);
  return {
    jobs,
    seconds: round(seconds, 3),
    jobs_per_second: round(jobs / seconds, 1),
    enqueue_seconds: round(enqueueSeconds, 3),
    enqueue_jobs_per_second: round(jobs / enqueueSeconds, 1),
    concurrency: worker.concurrentJobs,
  };
}

// Enqueue one job at a time at a steady rate, from a producer thread, while a
// worker pool runs them; report enqueue-to-start latency.
async function latency(utils, worker, connectionString, { rate, seconds, warmupSeconds, connections }) {
  const samples = [];
  let started = 0;
  const taskList = {
    latency: async (payload) => {
      started++;
      if (!payload.warmup) samples.push(nowMs() - payload.t);
    },
  };
  const runner = await run({ logger, preset: { worker }, taskList, crontab: "" });
  try {
    // A separate thread (own event loop) so that the producer's send schedule
    // is not held up by the worker's job handling and vice versa, as when
    // producers and workers are separate processes.
    const thread = new Worker(new URL(import.meta.url), {
      workerData: { connectionString, rate, seconds, warmupSeconds, connections },
      stdout: false,
    });
    const sent = await new Promise((resolve, reject) => {
      thread.once("message", resolve);
      thread.once("error", reject);
      thread.once("exit", (code) => reject(new Error(`producer thread exited with code ${code}`)));
    });
    await thread.terminate();

    // Wait (bounded) for the last jobs to start.
    const deadline = nowMs() + 30_000;
    while (started < sent.total && nowMs() < deadline) await sleep(10);
    if (started < sent.total) fail(`only ${started} of ${sent.total} enqueued jobs started within 30 s`);

    samples.sort((a, b) => a - b);
    const pct = (p) => percentile(samples, p);
    return {
      rate,
      seconds,
      // n sends span n - 1 intervals.
      achieved_rate: round((sent.measured - 1) / sent.elapsedSeconds, 1),
      // Rate at which those adds were committed: below `rate` means the
      // one-transaction-per-job producer, not the worker, is the bottleneck
      // and the latencies below are mostly time spent waiting to be inserted.
      committed_rate: round(sent.measured / sent.committedSeconds, 1),
      count: samples.length,
      warmup_count: sent.total - sent.measured,
      p50_ms: pct(50),
      p90_ms: pct(90),
      p99_ms: pct(99),
      max_ms: round(samples[samples.length - 1], 3),
      mean_ms: round(samples.reduce((s, x) => s + x, 0) / samples.length, 3),
      // Share of the above spent in addJob() itself (call to commit).
      add_p50_ms: sent.addP50,
      add_p99_ms: sent.addP99,
      concurrency: worker.concurrentJobs,
    };
  } finally {
    await runner.stop();
  }
}

// Producer thread: open loop, i.e. job k is due at start + k/rate whether or
// not earlier adds have returned (a closed loop would slow down exactly when
// the queue does and hide its latency). Each job is one addJob() call, i.e.
// one transaction, with its enqueue time in the payload; that time is taken
// when the call is made, so waiting for a free connection counts as latency.
async function producer({ connectionString, rate, seconds, warmupSeconds, connections }) {
  const utils = await makeWorkerUtils({ connectionString, maxPoolSize: connections, logger });
  const warmup = Math.round(rate * warmupSeconds);
  const measured = Math.round(rate * seconds);
  const total = warmup + measured;
  const inFlight = new Set();
  const errors = [];
  const addMs = [];
  let sent = 0;
  let measuredStart = 0;
  const start = nowMs();
  while (sent < total) {
    const due = Math.min(total, Math.floor(((nowMs() - start) * rate) / 1000) + 1);
    for (; sent < due; sent++) {
      if (sent === warmup) measuredStart = nowMs();
      const isWarmup = sent < warmup;
      const t = nowMs();
      const p = utils.addJob("latency", isWarmup ? { t, warmup: true } : { t }).then(
        () => {
          if (!isWarmup) addMs.push(nowMs() - t);
          inFlight.delete(p);
        },
        (error) => {
          errors.push(error);
          inFlight.delete(p);
        },
      );
      inFlight.add(p);
    }
    if (sent < total) await sleep(Math.max(0, start + (sent * 1000) / rate - nowMs()));
  }
  const elapsedSeconds = (nowMs() - measuredStart) / 1000;
  await Promise.all(inFlight);
  const committedSeconds = (nowMs() - measuredStart) / 1000;
  await utils.release();
  if (errors.length > 0) throw errors[0];
  addMs.sort((a, b) => a - b);
  parentPort.postMessage({
    total,
    measured,
    elapsedSeconds,
    committedSeconds,
    addP50: percentile(addMs, 50),
    addP99: percentile(addMs, 99),
  });
}

async function remainingJobs(utils) {
  return utils.withPgClient(async (client) => {
    const { rows } = await client.query("select count(*)::int as n from graphile_worker._private_jobs");
    return rows[0].n;
  });
}

// The version of the package actually loaded. Read from its package.json by
// walking up from its entry point, because newer graphile-worker releases
// list only their entry point in "exports", so "pkg/package.json" won't
// resolve.
function installedVersion(name) {
  const entry = createRequire(import.meta.url).resolve(name);
  for (let dir = dirname(entry); dir !== dirname(dir); dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
      if (pkg.name === name) return pkg.version;
    } catch (error) {
      if (error.code !== "ENOENT") throw error;
    }
  }
  throw new Error(`cannot find the package.json of ${name}`);
}

// Nearest-rank percentile of an ascending array, in ms to 3 decimals.
function percentile(sorted, p) {
  return round(sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)], 3);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function positiveInt(s, name) {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) fail(`${name} must be a positive integer, got ${JSON.stringify(s)}`);
  return n;
}

function positiveNumber(s, name) {
  const n = Number(s);
  if (!(n > 0) || !Number.isFinite(n)) fail(`${name} must be a positive number, got ${JSON.stringify(s)}`);
  return n;
}

function nonNegativeNumber(s, name) {
  const n = Number(s);
  if (!(n >= 0) || !Number.isFinite(n)) fail(`${name} must be a number >= 0, got ${JSON.stringify(s)}`);
  return n;
}

function fail(message) {
  throw new BenchError(message);
}
