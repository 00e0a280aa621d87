// Test harness: runs the real `sessiondb` binary on a free loopback port
// with a temporary data directory (or a redis-server on a unix socket).
//
// Every process it starts dies with the test process, however that ends:
// on a normal exit the harness kills them, and a watchdog (a small shell
// loop per process) kills them when the test process is gone, after a
// SIGKILL too. A missing binary fails each test that needs it at once,
// with the message saying how to build it.
//
// The binary: $SESSIONDB_BIN, else the repository's target/debug/sessiondb
// (`cargo build -p sessiondb-server`).

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SESSIONDB_BIN
  ? path.resolve(process.env.SESSIONDB_BIN)
  : path.resolve(here, '../../../../target/debug/sessiondb');
export const ADMIN_TOKEN = 'js-client-tests-admin-token';

/** Every test's time limit (each `describe` passes it to its tests). */
export const TEST_TIMEOUT = 60_000;

const running = new Set();
const scratch = new Set();
function killAll() {
  for (const child of running) {
    child.kill('SIGKILL');
  }
}
process.on('exit', () => {
  killAll();
  for (const dir of scratch) {
    rmSync(dir, { recursive: true, force: true });
  }
});
// When a test file's tests are done, whatever they left running goes, so
// that a failed test cannot keep the file's process (and the run) alive.
if (process.env.NODE_TEST_CONTEXT) {
  after(killAll);
}

/**
 * Starts a watchdog that kills `child` (SIGKILL) once this process is
 * gone; it ends by itself when `child` does.
 */
function watch(child) {
  const script =
    'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 0.2; done; kill -9 "$2" 2>/dev/null';
  const dog = spawn('sh', ['-c', script, 'watchdog', String(process.pid), String(child.pid)], {
    stdio: 'ignore',
    detached: true,
  });
  dog.unref();
}

/** Throws, saying how to build it, when the sessiondb binary is missing. */
export function requireBinary() {
  if (!existsSync(BIN)) {
    throw new Error(`no sessiondb binary at ${BIN}: run \`cargo build -p sessiondb-server\` or set SESSIONDB_BIN`);
  }
}

export function tempDir(prefix = 'sessiondb-js-') {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  scratch.add(dir);
  return dir;
}

/** The environment without the variables sessiondb reads. */
function cleanEnv() {
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    if (name.startsWith('SESSIONDB_')) {
      delete env[name];
    }
  }
  return env;
}

function exited(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
    } else {
      child.once('exit', () => resolve());
    }
  });
}

/**
 * Starts `sessiondb serve` on 127.0.0.1 (`port` 0 picks a free one) with
 * an admin token, on `dataDir` (a new temporary one by default) or, with
 * `redisUrl`, on Redis; `args` are more flags. Resolves once it says
 * `listening on`.
 */
export async function startServer({ port = 0, dataDir, redisUrl, args = [] } = {}) {
  requireBinary();
  const store = redisUrl ? ['--redis-url', redisUrl] : ['--data-dir', dataDir ?? path.join(tempDir(), 'data')];
  const child = spawn(
    BIN,
    ['serve', '--listen', `127.0.0.1:${port}`, '--admin-token', ADMIN_TOKEN, ...store, ...args],
    { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  running.add(child);
  watch(child);
  child.once('exit', () => running.delete(child));
  let log = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text) => {
    log += text;
  });
  child.stdout.setEncoding('utf8');
  const address = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error('sessiondb did not say it was listening within 60 s')), 60_000);
    const fail = (error) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${error.message}\n${log}`));
    };
    child.stdout.on('data', (text) => {
      out += text;
      const match = /^listening on (\S+)\n/m.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.once('exit', (code, signal) => fail(new Error(`sessiondb exited (${code ?? signal}) before listening`)));
  });
  const dir = store[0] === '--data-dir' ? store[1] : null;
  const url = `http://${address}`;
  return {
    url,
    pid: child.pid,
    port: Number(address.split(':').pop()),
    dataDir: dir,
    log: () => log,
    /** SIGTERM: the server ends its streams and closes the store cleanly. */
    async stop() {
      child.kill('SIGTERM');
      await exited(child);
    },
    /** SIGKILL: a crash. */
    async kill() {
      child.kill('SIGKILL');
      await exited(child);
    },
    admin: adminApi(url),
  };
}

/** The admin API, as a game server calls it. */
export function adminApi(url) {
  const call = async (method, route, body) => {
    const response = await fetch(`${url}${route}`, {
      method,
      headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) {
      throw new Error(`${method} ${route}: ${response.status} ${text}`);
    }
    return text ? JSON.parse(text) : null;
  };
  return {
    /** Logs `actorId` in; resolves with the session, `key` included. */
    register: (actorId, extra = {}) => call('POST', '/v1/sessions', { actorId, ...extra }),
    expireSession: (key, reason) => call('POST', '/v1/sessions/expire', { sessionKey: key, reason }),
    expire: (actorId, reason) => call('POST', `/v1/actors/${encodeURIComponent(actorId)}/expire`, reason ? { reason } : {}),
    reassign: (from, to) => call('POST', `/v1/actors/${encodeURIComponent(from)}/reassign`, { to }),
  };
}

/**
 * A TCP relay in front of a server, standing for the network (or a load
 * balancer) between client and server: `cut()` closes every connection
 * through it at once, as a server going away or a network failure would,
 * while new connections go through again.
 */
export async function startRelay(serverUrl) {
  const target = new URL(serverUrl);
  const sockets = new Set();
  let holding = false;
  const relay = net.createServer((client) => {
    if (holding) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
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
    /**
     * Closes every connection made through the relay so far; with `hold`,
     * refuses new ones too until `release()`.
     */
    cut({ hold = false } = {}) {
      holding = hold;
      for (const socket of sockets) {
        socket.destroy();
      }
    },
    /** Lets connections through again after `cut({ hold: true })`. */
    release() {
      holding = false;
    },
    async stop() {
      this.cut();
      await new Promise((resolve) => relay.close(resolve));
    },
  };
}

/** Runs an offline `sessiondb` tool to completion. */
export function tool(args) {
  const out = spawnSync(BIN, args, { env: cleanEnv(), encoding: 'utf8' });
  if (out.status !== 0) {
    throw new Error(`sessiondb ${args.join(' ')}: ${out.status}\n${out.stderr}`);
  }
  return out.stdout;
}

/** A path that holds an executable named `name`, or null. */
function which(name) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, name);
    if (dir && existsSync(candidate)) {
      return candidate;
    }
  }
  return null;
}

function redisBinary() {
  return process.env.SESSIONDB_TEST_REDIS_SERVER || which('redis-server');
}

/**
 * Whether the Redis tests must be skipped: no redis-server here, and not
 * in CI (where that is a failure, raised by `startRedis`).
 */
export function redisMissing() {
  return !redisBinary() && process.env.CI !== 'true';
}

/**
 * A redis-server on a unix socket in a temporary directory.
 * `$SESSIONDB_TEST_REDIS_SERVER` names another binary (valkey-server).
 */
export async function startRedis() {
  const binary = redisBinary();
  if (!binary) {
    throw new Error('redis-server is not installed (apt-get install redis-server); CI=true requires it');
  }
  const dir = tempDir('sessiondb-js-redis-');
  const socket = path.join(dir, 'redis.sock');
  const child = spawn(binary, ['--port', '0', '--unixsocket', socket, '--dir', dir, '--save', ''], {
    stdio: 'ignore',
  });
  running.add(child);
  watch(child);
  child.once('exit', () => running.delete(child));
  const deadline = Date.now() + 20_000;
  while (!existsSync(socket)) {
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not start (${binary})`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    url: `redis+unix://${socket}`,
    pid: child.pid,
    async stop() {
      child.kill('SIGTERM');
      await exited(child);
    },
  };
}

/**
 * A sessiondb on a redis-server of its own; `stop` stops both. The binary
 * is checked first, so that a missing one starts no redis-server.
 */
export async function startServerOnRedis(options = {}) {
  requireBinary();
  const redis = await startRedis();
  let server;
  try {
    server = await startServer({ ...options, redisUrl: redis.url });
  } catch (error) {
    await redis.stop();
    throw error;
  }
  return {
    ...server,
    redis,
    async stop() {
      await server.stop();
      await redis.stop();
    },
  };
}
