// The demo's game server: serves the page (public/) and the client module
// (clients/js/src), and logs players in through sessiondb's admin API,
// handing the page its session key. Everything else the page does, it
// does itself against sessiondb, cross-origin (CORS).
//
//   node examples/browser/server.mjs
//
// starts a sessiondb of its own (the repository's target/debug/sessiondb,
// or $SESSIONDB_BIN; build it with `cargo build -p sessiondb-server`) with
// a temporary data directory, an admin token and --cors-origin set to the
// page's origin, then prints the page's address. To use a sessiondb that
// runs already, set SESSIONDB_URL and SESSIONDB_ADMIN_TOKEN (and start it
// with --cors-origin for the page's origin). PORT picks the page's port.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');

const FILES = {
  '/': [path.join(here, 'public/index.html'), 'text/html; charset=utf-8'],
  '/app.js': [path.join(here, 'public/app.js'), 'text/javascript; charset=utf-8'],
  '/client/index.js': [path.join(root, 'clients/js/src/index.js'), 'text/javascript; charset=utf-8'],
  '/client/internal.js': [path.join(root, 'clients/js/src/internal.js'), 'text/javascript; charset=utf-8'],
};

/** A player name the demo accepts as an actor id. */
const NAME = /^[A-Za-z0-9_-]{1,32}$/;

/** Starts `sessiondb serve` for the page at `origins`; resolves with its URL. */
async function startSessiondb({ bin, adminToken, origins, dataDir }) {
  if (!existsSync(bin)) {
    throw new Error(`no sessiondb binary at ${bin}: run \`cargo build -p sessiondb-server\` or set SESSIONDB_BIN`);
  }
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SESSIONDB_')));
  const child = spawn(
    bin,
    [
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--data-dir',
      dataDir,
      '--admin-token',
      adminToken,
      ...origins.flatMap((o) => ['--cors-origin', o]),
    ],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (t) => {
    log += t;
  });
  const address = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (t) => {
      out += t;
      const m = /^listening on (\S+)\n/m.exec(out);
      if (m) {
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`sessiondb exited (${code}) before listening:\n${log}`)));
  });
  return { url: `http://${address}`, child, log: () => log };
}

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
}

async function readJson(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 10_000) {
      throw new Error('too large');
    }
  }
  return JSON.parse(text);
}

/**
 * Starts the demo. Options: `port` (0 picks one), `sessiondbUrl` and
 * `adminToken` for a running sessiondb (else one is started), `bin`,
 * `dataDir`. Resolves with `{url, sessiondbUrl, adminToken, pointPagesAt(url),
 * stop()}`.
 */
export async function startDemo(options = {}) {
  const host = '127.0.0.1';
  let sessiondb = null;
  let scratch = null;
  const state = { sessiondbUrl: options.sessiondbUrl, adminToken: options.adminToken };

  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, `http://${host}`);
      if (req.method === 'GET' && FILES[url.pathname]) {
        const [file, type] = FILES[url.pathname];
        return send(res, 200, readFileSync(file), type);
      }
      if (req.method === 'GET' && url.pathname === '/config.json') {
        return send(res, 200, { sessiondbUrl: state.pageSessiondbUrl ?? state.sessiondbUrl });
      }
      if (req.method === 'POST' && url.pathname === '/login') {
        // A real game would check a password or a platform token here.
        let name;
        try {
          ({ name } = await readJson(req));
        } catch {
          return send(res, 400, { error: 'badRequest', message: 'send {"name": "..."}' });
        }
        if (typeof name !== 'string' || !NAME.test(name)) {
          return send(res, 400, { error: 'badName', message: 'a name is 1 to 32 letters, digits, "-" or "_"' });
        }
        const registered = await fetch(`${state.sessiondbUrl}/v1/sessions`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${state.adminToken}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ actorId: name, data: { gold: 0 } }),
        });
        const session = await registered.json();
        if (!registered.ok) {
          return send(res, 502, session);
        }
        return send(res, 200, { key: session.key });
      }
      return send(res, 404, { error: 'notFound' });
    } catch (error) {
      return send(res, 500, { error: 'internal', message: String(error?.message ?? error) });
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, resolve);
  });
  const { port } = server.address();
  const url = `http://${host}:${port}`;

  if (!state.sessiondbUrl) {
    state.adminToken = randomBytes(24).toString('base64url');
    if (!options.dataDir) {
      scratch = mkdtempSync(path.join(tmpdir(), 'sessiondb-demo-'));
    }
    try {
      sessiondb = await startSessiondb({
        bin: options.bin ?? process.env.SESSIONDB_BIN ?? path.join(root, 'target/debug/sessiondb'),
        adminToken: state.adminToken,
        // The page's origin, as the browser spells it for either address.
        origins: [url, `http://localhost:${port}`],
        dataDir: options.dataDir ?? path.join(scratch, 'data'),
      });
    } catch (error) {
      server.close();
      throw error;
    }
    state.sessiondbUrl = sessiondb.url;
  }

  return {
    url,
    sessiondbUrl: state.sessiondbUrl,
    adminToken: state.adminToken,
    sessiondbLog: () => sessiondb?.log() ?? '',
    /**
     * Pages loaded from now on reach sessiondb at `url` instead (a test's
     * relay in front of it, to cut their connections).
     */
    pointPagesAt(url) {
      state.pageSessiondbUrl = url;
    },
    async stop() {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(resolve));
      if (sessiondb) {
        const exited = new Promise((resolve) => sessiondb.child.once('exit', resolve));
        sessiondb.child.kill('SIGTERM');
        await exited;
      }
      if (scratch) {
        rmSync(scratch, { recursive: true, force: true });
      }
    },
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const demo = await startDemo({
    port: Number(process.env.PORT ?? 8080),
    sessiondbUrl: process.env.SESSIONDB_URL,
    adminToken: process.env.SESSIONDB_ADMIN_TOKEN,
  });
  console.log(`demo on ${demo.url}`);
  console.log(`sessiondb on ${demo.sessiondbUrl}, admin token ${demo.adminToken}; Ctrl-C stops both`);
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, async () => {
      await demo.stop();
      process.exit(0);
    });
  }
}
