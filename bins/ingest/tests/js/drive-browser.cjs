// Drives Chromium with puppeteer-core for bins/ingest/tests/it/browser.rs.
//
//   node drive-browser.cjs <chromium> <user-data-dir> <page-url> <visitors>
//
// Each visitor gets a browser context of its own (its own cookies and localStorage, so its own
// anonymousId); the visitors run at the same time. Each opens the page, calls `window.visit(n)`
// (what the page sends: analytics-next.html's identify/track/page/group/alias, say), waits until
// every request the page started has finished (so the report holds the status of each request
// sent during the visit, beacons included, whose completion the page cannot see), then closes
// the page with `beforeunload` (`runBeforeUnload`): what the page sends as it closes (a track,
// a last batch or beacon) may finish after the report, unseen.
//
// Prints one JSON line to stdout once every page is closed:
//   { visitors: [{ visitor, anonymousId, sent: [{ type, messageId }] }],
//     requests: [{ url, method, status | failure }], console: [...], errors: [...] }
// then keeps the browser open (so requests sent as the pages closed can finish) until stdin
// closes. Exits 1 with the same report on stdout if a visit fails or takes over 60 s.
'use strict'

const puppeteer = require('puppeteer-core')

const [chromium, userDataDir, pageUrl, visitorsArg] = process.argv.slice(2)
const visitors = Number(visitorsArg)
const report = { visitors: [], requests: [], console: [], errors: [] }

function finish(code, error) {
  if (error) report.errors.push(String(error && error.stack ? error.stack : error))
  process.stdout.write(JSON.stringify(report) + '\n')
  if (code !== 0) process.exit(code)
}

async function visit(browser, visitor) {
  const context = await browser.createBrowserContext()
  const page = await context.newPage()
  const tag = `visitor ${visitor}`
  page.on('console', (m) => report.console.push(`${tag}: ${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => report.errors.push(`${tag}: page error: ${e.message}`))
  // Each request the page started settles when it finishes or fails (a redirected one, when
  // its next hop starts).
  const inFlight = new Map()
  const settled = []
  const settle = (r) => {
    inFlight.get(r)?.()
    inFlight.delete(r)
  }
  page.on('request', (r) => {
    r.redirectChain().forEach(settle)
    settled.push(new Promise((resolve) => inFlight.set(r, resolve)))
  })
  page.on('requestfinished', (r) => {
    report.requests.push({ visitor, url: r.url(), method: r.method(), status: r.response()?.status() ?? null })
    settle(r)
  })
  page.on('requestfailed', (r) => {
    report.requests.push({ visitor, url: r.url(), method: r.method(), failure: r.failure()?.errorText ?? 'failed' })
    settle(r)
  })
  const response = await page.goto(pageUrl, { waitUntil: 'load' })
  if (!response || !response.ok()) throw new Error(`${tag}: the page answered ${response && response.status()}`)
  const result = await page.evaluate((n) => window.visit(n), visitor)
  report.visitors.push({ visitor, ...result })
  await Promise.all(settled)
  const closed = new Promise((resolve) => page.once('close', resolve))
  await page.close({ runBeforeUnload: true })
  await closed
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    userDataDir,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
  const deadline = setTimeout(() => {
    finish(1, new Error('the visits took over 60 s'))
  }, 60_000)
  try {
    await Promise.all(Array.from({ length: visitors }, (_, i) => visit(browser, i + 1)))
  } catch (e) {
    await browser.close().catch(() => {})
    finish(1, e)
  }
  clearTimeout(deadline)
  report.visitors.sort((a, b) => a.visitor - b.visitor)
  finish(0)
  // Wait for the test to have its records: closing the browser could cancel requests sent
  // as the pages closed.
  process.stdin.resume()
  process.stdin.on('end', async () => {
    await browser.close()
    process.exit(0)
  })
}

main().catch((e) => finish(1, e))
