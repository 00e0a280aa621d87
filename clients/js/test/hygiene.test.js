// The test harness itself: a missing binary fails the tests at once with
// the message, and the servers the tests start die with the test process,
// even when it is killed with SIGKILL.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { TEST_TIMEOUT, redisMissing, requireBinary } from './support/sessiondb.js';
import { until } from './support/recorder.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const support = path.join(here, 'support/sessiondb.js');

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('test hygiene', { timeout: TEST_TIMEOUT }, () => {
  it('a missing binary fails the tests that need it at once, saying how to build it', () => {
    const started = Date.now();
    // A run of its own, not a part of this one.
    const { NODE_TEST_CONTEXT, ...env } = process.env;
    const out = spawnSync(process.execPath, ['--test', 'test/client.test.js', 'test/events.test.js'], {
      cwd: path.resolve(here, '..'),
      env: { ...env, SESSIONDB_BIN: '/nonexistent/sessiondb', CI: '' },
      encoding: 'utf8',
      timeout: 50_000,
    });
    assert.equal(out.signal, null, `the run did not end by itself within 50 s:\n${out.stdout}`);
    assert.notEqual(out.status, 0);
    assert.match(out.stdout, /no sessiondb binary at \/nonexistent\/sessiondb: run `cargo build -p sessiondb-server`/);
    // Each test that needs the server fails, or is cancelled with its
    // suite, whose `before` failed with the message.
    const count = (what) => Number(new RegExp(`^# ${what} (\\d+)$`, 'm').exec(out.stdout)?.[1]);
    const failed = count('fail') + count('cancelled');
    assert.ok(failed >= 15, `only ${failed} tests failed:\n${out.stdout}`);
    assert.ok(Date.now() - started < 50_000);
  });

  it('the servers a test process started die with it, after a SIGKILL too', async (t) => {
    requireBinary();
    const withRedis = !redisMissing();
    const script = `
      import { startServer, startServerOnRedis } from ${JSON.stringify(support)};
      const servers = [await startServer()];
      if (${withRedis}) servers.push(await startServerOnRedis());
      console.log(JSON.stringify(servers.flatMap((s) => [s.pid, s.redis?.pid].filter(Boolean))));
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    t.after(() => child.kill('SIGKILL'));
    const pids = await new Promise((resolve, reject) => {
      let text = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (chunk) => {
        text += chunk;
        const line = text.split('\n').find((l) => l.startsWith('['));
        if (line) {
          resolve(JSON.parse(line));
        }
      });
      child.once('exit', (code) => reject(new Error(`the test process exited (${code}) before starting its servers`)));
    });
    assert.equal(pids.length, withRedis ? 3 : 1);
    pids.forEach((pid) => assert.ok(alive(pid), `${pid} runs`));
    child.kill('SIGKILL');
    await until('every server gone', () => pids.every((pid) => !alive(pid)), 15_000);
  });
});
