// MAGE's calls against the real sessiondb binary: every call, every
// reason a key is refused with, the callback form, the key kept in a
// storage, and bad input.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';

import { SessionClient, SessionError, createClient } from '../src/index.js';
import { MemoryStorage, Recorder, until, viaCallback } from './support/recorder.js';
import { TEST_TIMEOUT, startServer } from './support/sessiondb.js';

const FAST = { initialDelay: 50, maxDelay: 500 };

/** Asserts that `promise` rejects with a SessionError of `reason`. */
async function rejectsWith(promise, reason) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof SessionError, `not a SessionError: ${error}`);
    assert.equal(error.reason, reason, error.message);
    assert.ok(error.message.length > 0);
    return true;
  });
}

describe('MAGE calls', { timeout: TEST_TIMEOUT }, () => {
  let server;
  const clients = [];
  const client = (options = {}) => {
    const c = new SessionClient({ baseUrl: server.url, reconnect: FAST, ...options });
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await server.stop();
  });

  it('restore uses the key, tells session.set, saves the key and follows the session', async () => {
    const registered = await server.admin.register('alice', { language: 'fr', data: { gold: 5 } });
    const storage = new MemoryStorage();
    const c = client({ storage });
    const heard = new Recorder(c);
    assert.equal(c.getKey(), null);
    const session = await c.restore(registered.key);
    assert.equal(session.key, registered.key);
    assert.equal(session.id, registered.id);
    assert.equal(session.actorId, 'alice');
    assert.equal(session.language, 'fr');
    assert.deepEqual(session.data, { gold: 5 });
    assert.equal(c.getKey(), registered.key);
    assert.equal(storage.getItem('sessionKey'), registered.key);
    assert.equal(c.storedKey(), registered.key);
    const set = await heard.take('session.set');
    assert.equal(set.key, registered.key);
    assert.equal(set.id, registered.id);
    assert.deepEqual(set.data, { gold: 5 });
    // The stream opens and confirms the same state: told once.
    assert.deepEqual(await heard.take('stream.open'), { key: registered.key });
    assert.equal(heard.count('session.set'), 1);
    await c.isValid(registered.key);
  });

  it('expireOthers ends the player\'s other sessions, which hear why; this one goes on', async () => {
    const server2 = await startServer({ args: ['--max-sessions-per-actor', '3'] });
    try {
      const other = await server2.admin.register('dora');
      const mine = await server2.admin.register('dora');
      const elsewhere = new SessionClient({ baseUrl: server2.url, reconnect: FAST });
      clients.push(elsewhere);
      const heard = new Recorder(elsewhere);
      await elsewhere.setSessionKey(other.key);
      await heard.take('stream.open');
      const c = new SessionClient({ baseUrl: server2.url, follow: false });
      await c.setSessionKey(mine.key);
      assert.equal(await c.expireOthers(), 1);
      assert.equal(await heard.take('session.unset'), 'loggedOut');
      assert.equal(elsewhere.getKey(), null);
      assert.equal(await c.expireOthers('kicked'), 0);
      await c.isValid(mine.key);
      await rejectsWith(c.expireOthers('has space'), 'invalidReason');
      await rejectsWith(new SessionClient({ baseUrl: server2.url }).expireOthers(), 'invalidSessionKey');
    } finally {
      await server2.stop();
    }
  });

  it('isValid and restore refuse keys with MAGE\'s reasons, and restore drops a refused stored key', async () => {
    const alice = await server.admin.register('bob');
    const c = client();
    const cases = [
      ['no-colon', 'invalidSessionKey'], // refused by the client itself
      ['bob:not a secret!', 'invalidSessionKey'],
      [`${'x'.repeat(300)}:AAAAAAAAAAAAAAAAAAAAAAAA`, 'invalidSessionKey'], // by the server
      ['ghost:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'noSession'],
      ['bob:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'keyMismatch'],
    ];
    for (const [key, reason] of cases) {
      await rejectsWith(c.isValid(key), reason);
      await rejectsWith(c.restore(key), reason);
    }
    assert.equal(c.getKey(), null);
    const storage = new MemoryStorage();
    storage.setItem('sessionKey', 'bob:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
    const withStorage = client({ storage });
    await rejectsWith(withStorage.restore(withStorage.storedKey()), 'keyMismatch');
    assert.equal(storage.getItem('sessionKey'), null, 'the seed removes a stored key that does not restore');
    await c.isValid(alice.key);
  });

  it('setSessionKey uses a key without asking; its events confirm or end it', async () => {
    const s = await server.admin.register('carol');
    const c = client();
    const heard = new Recorder(c);
    await c.setSessionKey(s.key);
    assert.equal(c.getKey(), s.key);
    const set = await heard.take('session.set');
    assert.equal(set.key, s.key);
    assert.equal(set.actorId, 'carol');
    assert.equal(set.id, s.id);
    assert.equal(set.language, 'en');
    assert.equal(typeof set.expiresAt, 'number');

    await rejectsWith(c.setSessionKey('carol'), 'invalidSessionKey');
    assert.equal(c.getKey(), s.key, 'a refused key changes nothing');

    // A key that does not work: the stream's 401 ends it with the reason.
    const dead = client();
    const deadHeard = new Recorder(dead);
    await dead.setSessionKey('carol:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
    assert.equal(await deadHeard.take('session.unset'), 'keyMismatch');
    assert.equal(dead.getKey(), null);
  });

  it('getData, setData and delData read and write the session\'s data', async () => {
    const s = await server.admin.register('dave', { data: { level: 3 } });
    const c = client({ follow: false });
    await c.restore(s.key);
    assert.equal(await c.getData('level'), 3);
    assert.equal(await c.getData('missing'), undefined);
    const values = {
      object: { sword: 1, potions: [2, 5], nested: { ok: true } },
      list: [1, 'two', null, false],
      number: 12.5,
      text: 'héllo wörld ✓',
      nothing: null,
      yes: true,
      'a name/with spaces?&#': 'encoded in the path',
    };
    for (const [name, value] of Object.entries(values)) {
      await c.setData(name, value);
      assert.deepEqual(await c.getData(name), value, name);
    }
    await c.delData('object');
    assert.equal(await c.getData('object'), undefined);
    await c.delData('object'); // deleting what is not there is no error
    await c.setData('list', undefined); // MAGE: setData without a value deletes
    assert.equal(await c.getData('list'), undefined);
    const returned = c.setData('number', () => {});
    await returned;
    assert.equal(await c.getData('number'), undefined, 'setData(name, callback) deletes');
    // Visible through the server: a second client with the same key.
    const other = client({ follow: false });
    await other.setSessionKey(s.key);
    assert.equal(await other.getData('text'), 'héllo wörld ✓');
    await rejectsWith(c.setData('big', 'x'.repeat(70 * 1024)), 'dataTooLarge');
    await rejectsWith(c.setData('x'.repeat(300), 1), 'invalidDataName');
  });

  it('logout ends the session once, drops the key and empties the storage', async () => {
    const s = await server.admin.register('erin');
    const storage = new MemoryStorage();
    const c = client({ storage });
    const heard = new Recorder(c);
    await c.restore(s.key);
    await heard.take('stream.open');
    await c.logout();
    assert.equal(await heard.take('session.unset'), 'loggedOut');
    assert.equal(c.getKey(), null);
    assert.equal(storage.getItem('sessionKey'), null);
    await rejectsWith(c.isValid(s.key), 'noSession');
    await rejectsWith(c.getData('x'), 'invalidSessionKey');
    await rejectsWith(c.logout(), 'invalidSessionKey');
    // The stream also said loggedOut; the client told it once.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(heard.count('session.unset'), 1);
  });

  it('a call refused because the session ended tells session.unset with the reason', async () => {
    const s = await server.admin.register('frank');
    const c = client({ follow: false });
    const heard = new Recorder(c);
    await c.setSessionKey(s.key);
    await server.admin.expire('frank', 'kicked');
    await rejectsWith(c.getData('gold'), 'noSession');
    assert.equal(await heard.take('session.unset'), 'noSession');
    assert.equal(c.getKey(), null);
  });

  it('every call also takes MAGE\'s callback(err, result)', async () => {
    const s = await server.admin.register('gina', { data: { gold: 1 } });
    const c = client({ follow: false });
    let r = await viaCallback((cb) => c.isValid(s.key, cb));
    assert.deepEqual(r.args, [null, undefined]);
    assert.ok(r.returned instanceof Promise);
    r = await viaCallback((cb) => c.isValid('gina:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', cb));
    assert.equal(r.args[0].reason, 'keyMismatch');
    await assert.rejects(r.returned); // the promise says the same
    r = await viaCallback((cb) => c.restore(s.key, cb));
    assert.equal(r.args[0], null);
    assert.equal(r.args[1].key, s.key);
    r = await viaCallback((cb) => c.setData('gold', 7, cb));
    assert.deepEqual(r.args, [null, undefined]);
    r = await viaCallback((cb) => c.getData('gold', cb));
    assert.deepEqual(r.args, [null, 7]);
    r = await viaCallback((cb) => c.delData('gold', cb));
    assert.deepEqual(r.args, [null, undefined]);
    r = await viaCallback((cb) => c.setSessionKey(s.key, cb));
    assert.deepEqual(r.args, [null, undefined]);
    r = await viaCallback((cb) => c.logout(cb));
    assert.deepEqual(r.args, [null, undefined]);
    r = await viaCallback((cb) => c.logout(cb));
    assert.equal(r.args[0].reason, 'invalidSessionKey');
    r = await viaCallback((cb) => c.restore(s.key, cb));
    assert.equal(r.args[0].reason, 'noSession');
    // Only a callback, no await: no unhandled rejection (the test runner
    // would fail on one).
    await new Promise((resolve) => c.restore(s.key, () => resolve()));
    await assert.rejects(c.isValid(s.key, 'not a function'), TypeError);
  });

  it('keys of actors with non-ASCII ids work in the Authorization header', async () => {
    const s = await server.admin.register('Zoë');
    const c = client();
    const heard = new Recorder(c);
    await c.restore(s.key);
    await c.setData('city', 'Zürich');
    assert.equal(await c.getData('city'), 'Zürich');
    assert.equal((await heard.take('stream.open')).key, s.key);
    await c.logout();
    assert.equal(await heard.take('session.unset'), 'loggedOut');
  });
});

describe('MAGE reasons that need another server', { timeout: TEST_TIMEOUT }, () => {
  it('an expired key is refused with expired', async () => {
    const server = await startServer({ args: ['--ttl', '1s', '--no-reaper'] });
    try {
      const s = await server.admin.register('hank');
      const c = new SessionClient({ baseUrl: server.url, follow: false });
      let reason = null;
      await until('the key expires', async () => {
        reason = await c.isValid(s.key).then(() => null, (e) => e.reason);
        return reason !== null;
      });
      assert.equal(reason, 'expired');
      await rejectsWith(c.restore(s.key), 'expired');
    } finally {
      await server.stop();
    }
  });

  it('a key made by another version of the game is refused with badVersion', async () => {
    const first = await startServer({ args: ['--app-version', '1.0.0'] });
    const s = await first.admin.register('ivy');
    await first.stop();
    const second = await startServer({ dataDir: first.dataDir, args: ['--app-version', '2.0.0'] });
    try {
      const c = new SessionClient({ baseUrl: second.url, follow: false });
      await rejectsWith(c.isValid(s.key), 'badVersion');
      await rejectsWith(c.restore(s.key), 'badVersion');
    } finally {
      await second.stop();
    }
  });
});

describe('bad input', { timeout: TEST_TIMEOUT }, () => {
  it('the constructor refuses bad options with a TypeError', () => {
    assert.throws(() => new SessionClient(), /baseUrl is required/);
    assert.throws(() => new SessionClient(null), TypeError);
    assert.throws(() => new SessionClient({ baseUrl: 'not a url' }), /is not a URL/);
    assert.throws(() => new SessionClient({ baseUrl: 'ftp://x.test' }), /http:\/\/ or https:\/\//);
    assert.throws(() => new SessionClient({ baseUrl: 'http://x.test', storage: {} }), /getItem/);
    assert.throws(() => new SessionClient({ baseUrl: 'http://x.test', timeout: 0 }), /timeout/);
    assert.throws(() => new SessionClient({ baseUrl: 'http://x.test', storageKey: '' }), /storageKey/);
    assert.throws(() => new SessionClient({ baseUrl: 'http://x.test', reconnect: { maxDelay: -1 } }), /maxDelay/);
    assert.throws(() => new SessionClient({ baseUrl: 'http://x.test', fetch: 'no' }), /fetch/);
    const c = createClient({ baseUrl: 'http://x.test/' });
    assert.throws(() => c.on('session.nope', () => {}), /unknown event/);
    assert.throws(() => c.on('session.set', 'no'), /function/);
  });

  it('calls refuse bad arguments with MAGE-style reasons, without asking the server', async () => {
    let asked = 0;
    const c = new SessionClient({
      baseUrl: 'http://x.test',
      follow: false,
      fetch: async () => {
        asked += 1;
        throw new Error('not expected');
      },
    });
    await rejectsWith(c.isValid(42), 'invalidSessionKey');
    await rejectsWith(c.restore(undefined), 'invalidSessionKey');
    await rejectsWith(c.setSessionKey(':secret'), 'invalidSessionKey');
    await rejectsWith(c.getData('x'), 'invalidSessionKey');
    await c.setSessionKey('p1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
    await rejectsWith(c.getData(''), 'invalidDataName');
    await rejectsWith(c.getData(42), 'invalidDataName');
    await rejectsWith(c.setData('big', 10n), 'malformedJson');
    const loop = {};
    loop.self = loop;
    await rejectsWith(c.setData('loop', loop), 'malformedJson');
    await rejectsWith(c.setData('symbol', Symbol('x')), 'malformedJson');
    assert.equal(asked, 0);
  });

  it('calls fetch as a plain function, as a browser\'s window.fetch requires', async () => {
    const seen = [];
    const c = new SessionClient({
      baseUrl: 'http://x.test',
      follow: false,
      fetch(url, init) {
        // A browser's fetch throws "Illegal invocation" for any other this.
        seen.push(this === undefined || this === globalThis);
        return Promise.resolve(new Response('{"valid":true}', { status: 200 }));
      },
    });
    await c.isValid('p1:AAAA');
    assert.deepEqual(seen, [true]);
  });

  it('a server that cannot be reached, does not answer, or is not sessiondb gets a clear reason', async () => {
    // A port nothing listens on.
    const closed = http.createServer();
    await new Promise((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedUrl = `http://127.0.0.1:${closed.address().port}`;
    await new Promise((resolve) => closed.close(resolve));
    const unreachable = new SessionClient({ baseUrl: closedUrl, follow: false });
    await rejectsWith(unreachable.isValid('p1:AAAA'), 'network');

    // A server that never answers, and one that answers HTML.
    const silent = http.createServer(() => {});
    const html = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end('<html>a proxy page</html>');
    });
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
    await new Promise((resolve) => html.listen(0, '127.0.0.1', resolve));
    try {
      const slow = new SessionClient({ baseUrl: `http://127.0.0.1:${silent.address().port}`, timeout: 200, follow: false });
      await rejectsWith(slow.isValid('p1:AAAA'), 'timeout');
      const wrong = new SessionClient({ baseUrl: `http://127.0.0.1:${html.address().port}`, follow: false });
      await rejectsWith(wrong.restore('p1:AAAA'), 'badResponse');
    } finally {
      silent.closeAllConnections();
      await new Promise((resolve) => silent.close(resolve));
      await new Promise((resolve) => html.close(resolve));
    }
  });
});
