// scripts/segment/send.mjs — sends one identify, one track and one page to a Segment-compatible
// endpoint through @segment/analytics-node's own batching path (POST HOST/v1/batch), flushing
// after each call, and exits non-zero if any delivery failed.
//
//   node send.mjs HOST WRITE_KEY RUN        (or HOST, WRITE_KEY, RUN in the environment)
//
// scripts/segment-clients copies it into its npm project (where its import resolves) and
// crates/pulse/tests/segment_clients.rs runs it. Message ids are `<RUN>-node-<call>`.
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, run] = [
  process.argv[2] ?? process.env.HOST,
  process.argv[3] ?? process.env.WRITE_KEY,
  process.argv[4] ?? process.env.RUN,
]
if (!host || !/^https?:\/\//.test(host) || !writeKey || !run) {
  console.error('usage: node send.mjs HOST WRITE_KEY RUN (HOST a base URL: http://127.0.0.1:8080)')
  process.exit(2)
}

const analytics = new Analytics({
  writeKey,
  host,
  path: '/v1/batch',
  // Fail fast: no retries with backoff, and a request that hangs gives up after 5 s.
  maxRetries: 0,
  httpRequestTimeout: 5000,
  // Left at its default (10 s): the batch goes out because of the flush, not the timer.
  flushInterval: 10000,
})

// One line per distinct failure (the callback, the 'error' event and the response each see it).
const failures = new Set()
analytics.on('error', (error) => {
  failures.add(`${error.code}: ${error.reason?.message ?? error.reason}`)
})
analytics.on('http_response', (response) => {
  console.error(`[send.mjs] POST ${response.url} -> ${response.status}`)
  if (response.status < 200 || response.status >= 300) {
    failures.add(`POST ${response.url} answered ${response.status} ${response.statusText}`)
  }
})

// Each call's callback is told whether its event was delivered.
const delivered = (call) => (error) => {
  if (error) failures.add(`${call}: ${error.message ?? error}`)
}

const userId = `u-${run}`
const calls = [
  [
    'identify',
    () =>
      analytics.identify(
        {
          userId,
          messageId: `${run}-node-identify`,
          traits: { email: `${userId}@example.com`, plan: 'pro' },
        },
        delivered('identify'),
      ),
  ],
  [
    'track',
    () =>
      analytics.track(
        {
          userId,
          messageId: `${run}-node-track`,
          event: 'Order Completed',
          // JSON.stringify cannot carry 2^53 + 1 as a number (a JS number rounds it to 2^53,
          // a BigInt throws), so the node library sends the largest exact one.
          properties: { order_id: `${run}-order`, revenue: 25.5, currency: 'EUR', total: Number.MAX_SAFE_INTEGER },
        },
        delivered('track'),
      ),
  ],
  [
    'page',
    () =>
      analytics.page(
        {
          userId,
          messageId: `${run}-node-page`,
          name: 'Home',
          properties: { path: '/', title: 'Home' },
        },
        delivered('page'),
      ),
  ],
]

for (const [name, call] of calls) {
  call()
  // Bounded: on a timeout the library aborts the request and fails the event.
  await analytics.flush({ timeout: 15000 })
  console.error(`[send.mjs] ${name} flushed`)
}
await analytics.closeAndFlush({ timeout: 15000 })

if (failures.size) {
  console.error(`[send.mjs] delivery failed:\n  ${[...failures].join('\n  ')}`)
  process.exit(1)
}
console.error(`[send.mjs] delivered ${run}-node-identify, ${run}-node-track, ${run}-node-page`)
process.exit(0)
