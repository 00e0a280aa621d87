// The demo in a real browser: Debian's chromium, headless, driven by
// puppeteer-core (no browser download). Logs in, reloads and is still
// logged in, goes offline, is banned through the admin API meanwhile and,
// back online, sees the reason (its stream resumed), logs in again and
// logs out. The page calls sessiondb cross-origin, so CORS is
// exercised for real. Saves a screenshot to target/artifacts/.
//
// Needs the sessiondb binary (`cargo build -p sessiondb-server`, or
// $SESSIONDB_BIN), chromium ($CHROMIUM_PATH, else /usr/bin/chromium) and
// `npm ci` here. Locally, a missing browser or puppeteer-core skips the
// test with one line saying so; with CI=true it fails.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { startDemo } from '../server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = process.env.SESSIONDB_ARTIFACTS ?? path.resolve(here, '../../../target/artifacts');
const ENABLE =
  'apt-get install chromium && (cd examples/browser && PUPPETEER_SKIP_DOWNLOAD=1 npm ci) && ' +
  '(cd examples/browser && node --test test/*.test.js)';

function findChromium() {
  const candidates = [
    process.env.CHROMIUM_PATH,
    '/usr/bin/chromium',
    '/usr/bin/chromium-browser',
    '/usr/bin/google-chrome',
  ].filter(Boolean);
  return candidates.find((p) => existsSync(p)) ?? null;
}

async function loadPuppeteer() {
  try {
    return (await import('puppeteer-core')).default;
  } catch {
    return null;
  }
}

const chromium = findChromium();
const puppeteer = await loadPuppeteer();
const missing = [!chromium && "Debian's chromium", !puppeteer && 'puppeteer-core (npm ci)'].filter(Boolean);
if (missing.length > 0 && process.env.CI === 'true') {
  throw new Error(`the browser test needs ${missing.join(' and ')}, and CI=true requires it: ${ENABLE}`);
}
const skip = missing.length > 0 && `skipped: the browser test needs ${missing.join(' and ')}; run: ${ENABLE}`;

/** Waits until the element `selector`'s text contains `text`. */
async function waitForText(page, selector, text, timeout = 20_000) {
  try {
    await page.waitForFunction(
      (s, t) => document.querySelector(s)?.textContent.includes(t),
      { timeout, polling: 50 },
      selector,
      text,
    );
  } catch (error) {
    const now = await page.$eval(selector, (e) => e.textContent).catch(() => '(missing)');
    throw new Error(`${selector} never showed ${JSON.stringify(text)} (it shows ${JSON.stringify(now)}): ${error.message}`);
  }
}

async function visible(page, selector) {
  return page.$eval(selector, (e) => !e.hidden);
}

/**
 * A TCP relay in front of `target` (a URL), standing for the page's
 * network: `cut({hold: true})` closes its connections and refuses new ones
 * until `release()`.
 */
async function startRelay(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  let holding = false;
  const relay = net.createServer((client) => {
    if (holding) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ]) {
      sockets.add(a);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  });
  await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${relay.address().port}`,
    cut({ hold = false } = {}) {
      holding = hold;
      sockets.forEach((s) => s.destroy());
    },
    release() {
      holding = false;
    },
    close() {
      sockets.forEach((s) => s.destroy());
      relay.close();
    },
  };
}

test('the demo keeps a session across reloads and shows why it ended', { skip, timeout: 120_000 }, async () => {
  const demo = await startDemo();
  // The page reaches sessiondb through a relay the test can cut.
  const relay = await startRelay(demo.sessiondbUrl);
  demo.pointPagesAt(relay.url);
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  const problems = [];
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 720, height: 640 });
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      // The refused admin call below is expected to log its refusal.
      // So are the failed tries while the relay holds the page off.
      const refusal = /\/v1\/sessions'.*CORS|net::ERR_(FAILED|CONNECTION_(RESET|REFUSED|CLOSED)|EMPTY_RESPONSE|INCOMPLETE_CHUNKED_ENCODING)/.test(
        message.text(),
      );
      if (message.type() === 'error' && !refusal) {
        problems.push(`console: ${message.text()}`);
      }
    });
    const calls = [];
    page.on('request', (request) => {
      if (request.url().startsWith(relay.url)) {
        calls.push(`${request.method()} ${new URL(request.url()).pathname}`);
      }
    });

    // Log in.
    await page.goto(demo.url);
    await waitForText(page, '#status', 'Logged out');
    await page.type('#name', 'alice');
    await page.click('#login-button');
    await waitForText(page, '#status', 'Logged in as alice');
    await waitForText(page, '#stream-state', 'live');
    await page.click('#add-gold');
    await waitForText(page, '#gold', '1');
    await page.click('#add-gold');
    await waitForText(page, '#gold', '2');
    const key = await page.evaluate(() => localStorage.getItem('sessionKey'));
    assert.match(key, /^alice:/);

    // Reload: still logged in, with the same key and the data.
    await page.reload();
    await waitForText(page, '#status', 'Logged in as alice');
    await waitForText(page, '#gold', '2');
    await waitForText(page, '#stream-state', 'live');
    assert.equal(await page.evaluate(() => localStorage.getItem('sessionKey')), key);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-demo-logged-in.png') });

    // The page's connection drops (the relay cuts it), and the game bans alice through the
    // admin API meanwhile. Back online, the client resumes its stream
    // (sending Last-Event-ID, which the CORS preflight allows) and hears
    // why, not just that the key stopped working.
    relay.cut({ hold: true });
    await waitForText(page, '#stream-state', 'reconnecting');
    const banned = await fetch(`${demo.sessiondbUrl}/v1/actors/alice/expire`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${demo.adminToken}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ reason: 'banned' }),
    });
    assert.equal(banned.status, 200);
    const resumed = page.waitForRequest(
      (r) => r.url().endsWith('/v1/session/events') && r.headers()['last-event-id'] !== undefined,
      { timeout: 20_000 },
    );
    relay.release();
    await resumed;
    await waitForText(page, '#reason', 'banned');
    await waitForText(page, '#status', 'Logged out');
    assert.ok(await visible(page, '#ended'));
    assert.ok(await visible(page, '#login'));
    assert.equal(await page.evaluate(() => localStorage.getItem('sessionKey')), null);
    const screenshot = path.join(ARTIFACTS, 'browser-demo.png');
    await page.screenshot({ path: screenshot });
    console.log(`screenshot: ${screenshot}`);

    // The page may call the session routes, never the admin routes.
    const admin = await page.evaluate(
      (url) =>
        fetch(`${url}/v1/sessions`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ actorId: 'mallory' }),
        }).then(
          (r) => `answered ${r.status}`,
          () => 'refused',
        ),
      demo.sessiondbUrl,
    );
    assert.equal(admin, 'refused');

    // Log in again, then log out.
    await page.click('#name', { count: 3 });
    await page.type('#name', 'alice');
    await page.click('#login-button');
    await waitForText(page, '#status', 'Logged in as alice');
    assert.equal(await visible(page, '#ended'), false);
    await page.click('#logout');
    await waitForText(page, '#reason', 'loggedOut');
    await waitForText(page, '#status', 'Logged out');
    assert.equal(await page.evaluate(() => localStorage.getItem('sessionKey')), null);

    // A reload after logging out starts logged out.
    await page.reload();
    await waitForText(page, '#status', 'Logged out');

    // Everything went to sessiondb itself, cross-origin.
    for (const call of [
      'POST /v1/session/restore',
      'GET /v1/session/events',
      'GET /v1/session/data/gold',
      'PUT /v1/session/data/gold',
      'POST /v1/session/logout',
    ]) {
      assert.ok(calls.includes(call), `${call} in ${JSON.stringify(calls)}`);
    }
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    relay.close();
    await demo.stop();
  }
});
