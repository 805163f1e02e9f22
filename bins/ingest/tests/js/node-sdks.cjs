// The Node server SDKs, used through their ordinary API, for bins/ingest/tests/it/node_sdks.rs.
//
//   node node-sdks.cjs <segment|rudder|segment-mixed|rudder-mixed> <ingest-url> <write-key>
//
// Sends identify, track, page, group, alias (and screen for rudder) for one user, flushes,
// and prints one JSON line: { sent: [{ type, messageId }] }. Exits 1 on a delivery error.
// The -mixed runs send three valid track calls and one the edge refuses (one the library
// lets through) in one batch, with two retries allowed, and print
// { sent: [messageId], invalid: messageId, errors: [text] }: the edge's 400 is the error.
'use strict'

const [sdk, host, writeKey] = process.argv.slice(2)

const mixedIds = (name) => ({
  valid: [0, 1, 2].map((i) => `${name}-ok-${i}-${process.pid}`),
  invalid: `${name}-bad-${process.pid}`,
})

async function segmentMixed() {
  const { Analytics } = require('@segment/analytics-node')
  const analytics = new Analytics({ writeKey, host, maxRetries: 2, flushAt: 100, flushInterval: 60_000 })
  const errors = []
  const done = (err) => err && errors.push(String(err.reason?.message ?? err.message ?? err))
  const ids = mixedIds('segment-node')
  ids.valid.forEach((messageId, i) =>
    analytics.track({ userId: 'node-user', event: 'Signed Up', properties: { i }, messageId }, done)
  )
  // analytics-node checks only that `event` is a string.
  analytics.track({ userId: 'node-user', event: '', messageId: ids.invalid }, done)
  await analytics.closeAndFlush({ timeout: 20_000 })
  return { sent: ids.valid, invalid: ids.invalid, errors: [...new Set(errors)] }
}

async function rudderMixed() {
  const Analytics = require('@rudderstack/rudder-sdk-node')
  const errors = []
  const client = new Analytics(writeKey, {
    dataPlaneUrl: host,
    flushAt: 100,
    flushInterval: 60_000,
    retryCount: 2,
    errorHandler: (e) => errors.push(e.message),
  })
  const ids = mixedIds('rudder-node')
  ids.valid.forEach((messageId, i) =>
    client.track({ userId: 'rudder-user', event: 'Signed Up', properties: { i }, messageId })
  )
  // rudder-sdk-node does not check the type of `properties`.
  client.track({ userId: 'rudder-user', event: 'Signed Up', properties: 'not an object', messageId: ids.invalid })
  await new Promise((resolve) => client.flush(() => resolve()))
  return { sent: ids.valid, invalid: ids.invalid, errors }
}

async function segment() {
  const { Analytics } = require('@segment/analytics-node')
  const analytics = new Analytics({ writeKey, host, maxRetries: 0, flushInterval: 60_000 })
  const errors = []
  analytics.on('error', (e) => errors.push(e))
  const statuses = []
  analytics.on('http_response', (r) => statuses.push(r.status))
  const sent = []
  // Each callback runs once its batch got its answer.
  const done = (err, ctx) => {
    if (err) errors.push(err)
    sent.push({ type: ctx.event.type, messageId: ctx.event.messageId })
  }
  const userId = 'node-user'
  analytics.identify({ userId, traits: { email: 'node@example.com' } }, done)
  analytics.track({ userId, event: 'Signed Up', properties: { plan: 'pro' } }, done)
  analytics.page({ userId, category: 'Docs', name: 'Install', properties: { path: '/docs/install' } }, done)
  analytics.group({ userId, groupId: 'node-group', traits: { name: 'Acme' } }, done)
  analytics.alias({ userId, previousId: 'node-anon' }, done)
  await analytics.closeAndFlush({ timeout: 20_000 })
  if (errors.length || statuses.some((s) => s !== 200)) {
    const reasons = errors.map((e) => e.reason?.message ?? e.message ?? JSON.stringify(e))
    throw new Error(`delivery failed: statuses ${statuses}, errors ${reasons.join(', ')}`)
  }
  return sent
}

async function rudder() {
  const Analytics = require('@rudderstack/rudder-sdk-node')
  const errors = []
  const client = new Analytics(writeKey, {
    dataPlaneUrl: host,
    flushAt: 100,
    flushInterval: 60_000,
    retryCount: 0,
    errorHandler: (e) => errors.push(e),
  })
  const sent = []
  const record = (type) => (message) => {
    sent.push({ type, messageId: message.messageId })
  }
  const userId = 'rudder-user'
  const calls = [
    ['identify', { userId, traits: { email: 'rudder@example.com' } }],
    ['track', { userId, event: 'Signed Up', properties: { plan: 'pro' } }],
    ['page', { userId, category: 'Docs', name: 'Install', properties: { path: '/docs/install' } }],
    ['screen', { userId, name: 'Home', properties: { tab: 'feed' } }],
    ['group', { userId, groupId: 'rudder-group', traits: { name: 'Acme' } }],
    ['alias', { userId, previousId: 'rudder-anon' }],
  ]
  for (const [type, message] of calls) {
    // The SDK fills in messageId; set one here so the test can find each event.
    message.messageId = `rudder-${type}-${process.pid}`
    client[type](message)
    record(type)(message)
  }
  await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())))
  if (errors.length) throw new Error(`delivery failed: ${errors.map((e) => e.message).join(', ')}`)
  return sent
}

const run = { segment, rudder, 'segment-mixed': segmentMixed, 'rudder-mixed': rudderMixed }[sdk]
if (!run) {
  console.error(`unknown SDK ${sdk}`)
  process.exit(2)
}
run().then(
  (result) => {
    process.stdout.write(JSON.stringify(Array.isArray(result) ? { sent: result } : result) + '\n')
    process.exit(0)
  },
  (e) => {
    console.error(e && e.stack ? e.stack : e)
    process.exit(1)
  }
)
