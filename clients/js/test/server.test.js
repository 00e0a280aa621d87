// MAGE's server side for Node game servers (`@sessiondb/client/server`)
// against the real sessiondb binary, on the embedded store and on Redis:
// register, resolve and the seed's Session calls, the actor look-ups,
// reassign, every session's events, the callback form, and MAGE's reasons.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { SessionClient } from '../src/index.js';
import { Session, SessionError, SessionStore } from '../src/server.js';
import { Recorder, viaCallback } from './support/recorder.js';
import {
  ADMIN_TOKEN,
  TEST_TIMEOUT,
  redisMissing,
  startServer,
  startServerOnRedis,
} from './support/sessiondb.js';

const FAST = { initialDelay: 50, maxDelay: 400 };

async function rejectsWith(promise, reason) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof SessionError, `not a SessionError: ${error}`);
    assert.equal(error.reason, reason, error.message);
    return true;
  });
}

function serverSuite(name, start, skip = false) {
  describe(name, { skip, timeout: TEST_TIMEOUT }, () => {
    let server;
    let store;
    before(async () => {
      server = await start();
      store = new SessionStore({ url: server.url, adminToken: ADMIN_TOKEN, reconnect: FAST });
    });
    after(async () => {
      await store?.close();
      await server?.stop();
    });

    it('register gives a session with its key; resolve finds it again, sliding its expiry', async () => {
      const session = await store.register('p-reg', 'fr', { level: 3 });
      assert.ok(session instanceof Session);
      assert.match(session.key, /^p-reg:[A-Za-z0-9_-]+$/);
      assert.equal(session.actorId, 'p-reg');
      assert.equal(session.language, 'fr');
      assert.deepEqual(session.data, { level: 3 });
      const resolved = await store.resolve(session.key);
      assert.equal(resolved.id, session.id);
      assert.equal(resolved.key, session.key);
      assert.ok(resolved.expiresAt >= session.expiresAt);
      // The language defaults to MAGE's `en`.
      const plain = await store.register('p-plain');
      assert.equal(plain.language, 'en');
      assert.deepEqual(plain.data, {});
    });

    it('resolve refuses keys with MAGE\'s reasons', async () => {
      const session = await store.register('p-refused');
      await rejectsWith(store.resolve('no-colon'), 'invalidSessionKey');
      await rejectsWith(store.resolve('ghost:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), 'noSession');
      await rejectsWith(store.resolve('p-refused:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), 'keyMismatch');
      await session.expire();
      await rejectsWith(store.resolve(session.key), 'noSession');
    });

    it('a session\'s getData, setData and delData read and write what the game client sees', async () => {
      const session = await store.register('p-data', 'en', { gold: 1 });
      const client = new SessionClient({ baseUrl: server.url, follow: false });
      await client.setSessionKey(session.key);
      assert.equal(await session.getData('gold'), 1);
      assert.equal(await session.getData('none'), undefined);
      await session.setData('bag', { sword: 1, potions: [2, 5] });
      assert.deepEqual(await client.getData('bag'), { sword: 1, potions: [2, 5] });
      assert.deepEqual(session.data.bag, { sword: 1, potions: [2, 5] });
      await client.setData('gold', 7);
      assert.equal(await session.getData('gold'), 7);
      await session.setData('gold', undefined); // MAGE: no value deletes
      assert.equal(await client.getData('gold'), undefined);
      await session.delData('bag');
      assert.equal(await session.getData('bag'), undefined);
      await session.delData('never-set');
      await rejectsWith(session.getData(''), 'invalidDataName');
      await rejectsWith(session.setData('x', 10n), 'malformedJson');
    });

    it('expire(reason) ends this session and its client hears why; extend moves the expiry', async () => {
      const session = await store.register('p-expire');
      const before = session.expiresAt;
      await new Promise((resolve) => setTimeout(resolve, 20));
      const extended = await session.extend();
      assert.equal(extended, session);
      assert.ok(session.expiresAt > before, `${session.expiresAt} > ${before}`);
      const client = new SessionClient({ baseUrl: server.url, reconnect: FAST });
      const heard = new Recorder(client);
      await client.setSessionKey(session.key);
      await heard.take('stream.open');
      await session.expire('banned');
      assert.equal(await heard.take('session.unset'), 'banned');
      await rejectsWith(session.getData('x'), 'noSession');
      await rejectsWith(session.extend(), 'noSession');
      client.close();
    });

    it('getActorSession, getActorAddresses, expireActor and reassign', async () => {
      const a = await store.register('p-a', 'de');
      await store.register('p-b');
      const found = await store.getActorSession('p-a');
      assert.equal(found.id, a.id);
      assert.equal(found.key, undefined, 'never the key');
      await rejectsWith(found.getData('x'), 'invalidSessionKey');
      assert.equal(await store.getActorSession('p-nobody'), null);
      const addresses = await store.getActorAddresses(['p-a', 'p-b', 'p-nobody']);
      assert.deepEqual(addresses.map((x) => x.actorId).sort(), ['p-a', 'p-b']);
      assert.equal(addresses.find((x) => x.actorId === 'p-a').sessionId, a.id);
      assert.equal(addresses.find((x) => x.actorId === 'p-a').language, 'de');

      const moved = await store.reassign('p-a', 'p-c');
      assert.equal(moved.id, a.id);
      assert.equal(moved.actorId, 'p-c');
      assert.match(moved.key, /^p-c:/);
      await rejectsWith(store.resolve(a.key), 'noSession');
      assert.equal((await store.resolve(moved.key)).id, a.id);
      await rejectsWith(store.reassign('p-nobody', 'p-d'), 'noSession');

      assert.equal(await store.expireActor('p-b', 'kicked'), 1);
      assert.equal(await store.expireActor('p-b'), 0);
      await rejectsWith(store.expireActor('p-c', 'not a reason!'), 'invalidReason');
      await rejectsWith(store.getActorAddresses('p-a'), 'badRequest');
      await rejectsWith(store.getActorSession(''), 'invalidActorId');
    });

    it('an actor\'s sessions: meta, listActorSessions, expireActorSession, expireOthers, rotate', async (t) => {
      // A server whose players may hold three sessions.
      const own = await start({ args: ['--max-sessions-per-actor', '3'] });
      t.after(() => own.stop());
      const store = new SessionStore({ url: own.url, adminToken: ADMIN_TOKEN });
      const phone = await store.register('p-many', 'en', { gold: 1 }, { device: 'phone' });
      assert.deepEqual(phone.meta, { device: 'phone' });
      const tablet = await store.register('p-many', 'de', undefined, { device: 'tablet' });
      const listed = await store.listActorSessions('p-many');
      assert.deepEqual(
        listed.map((s) => [s.id, s.language, s.meta.device, s.key]),
        [
          [tablet.id, 'de', 'tablet', undefined],
          [phone.id, 'en', 'phone', undefined],
        ],
      );
      assert.deepEqual(await store.listActorSessions('p-nobody'), []);
      await store.expireActorSession('p-many', tablet.id, 'stolen');
      await rejectsWith(store.resolve(tablet.key), 'keyMismatch');
      await rejectsWith(store.expireActorSession('p-many', tablet.id), 'noSession');
      await rejectsWith(store.expireActorSession('p-many', 'not an id!'), 'invalidSessionId');
      await rejectsWith(store.expireActorSession('p-many', ''), 'invalidSessionId');
      await rejectsWith(store.register('p-many', 'en', {}, { 'bad name': 'x' }), 'invalidMeta');

      const laptop = await store.register('p-many', 'en', {}, { device: 'laptop' });
      assert.equal(await laptop.expireOthers('loggedOut'), 1);
      await rejectsWith(store.resolve(phone.key), 'keyMismatch');
      assert.equal(await laptop.expireOthers(), 0);

      const oldKey = laptop.key;
      assert.equal(await laptop.rotate(), laptop);
      assert.notEqual(laptop.key, oldKey);
      assert.deepEqual(laptop.meta, { device: 'laptop' });
      await rejectsWith(store.resolve(oldKey), 'keyMismatch');
      assert.equal((await store.resolve(laptop.key)).id, laptop.id);
      // A reassign to the actor that holds the session changes nothing.
      await rejectsWith(store.reassign('p-many', 'p-many'), 'reassignToSelf');
    });

    it('on(session.set / session.unset) hears every session\'s changes', async () => {
      const heard = [];
      const opened = new Promise((resolve) => store.on('stream.open', resolve));
      store.on('session.set', (path, event) => heard.push([path, event.actorId, event.id]));
      store.on('session.unset', (path, event) => heard.push([path, event.actorId, event.reason]));
      await opened;
      const s = await store.register('p-events');
      const client = new SessionClient({ baseUrl: server.url, follow: false });
      await client.setSessionKey(s.key);
      await client.logout();
      const deadline = Date.now() + 15_000;
      while (heard.filter(([, actor]) => actor === 'p-events').length < 2 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.deepEqual(
        heard.filter(([, actor]) => actor === 'p-events'),
        [
          ['session.set', 'p-events', s.id],
          ['session.unset', 'p-events', 'loggedOut'],
        ],
      );
    });

    it('every call also takes MAGE\'s callback(err, result)', async () => {
      const registered = await viaCallback((cb) => store.register('p-cb', cb));
      const [err, session] = registered.args;
      assert.equal(err, null);
      assert.equal(session.actorId, 'p-cb');
      assert.ok(registered.returned instanceof Promise);
      const refused = await viaCallback((cb) => store.resolve('p-cb:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', cb));
      assert.equal(refused.args[0].reason, 'keyMismatch');
      refused.returned.catch(() => {});
      const set = await viaCallback((cb) => session.setData('k', 1, cb));
      assert.equal(set.args[0], null);
      const expired = await viaCallback((cb) => session.expire(cb));
      assert.equal(expired.args[0], null);
      const none = await viaCallback((cb) => store.getActorSession('p-cb', cb));
      assert.deepEqual(none.args, [null, null]);
    });
  });
}

serverSuite('the game server\'s client (embedded store)', (options) => startServer(options));

serverSuite(
  'the game server\'s client (Redis engine)',
  (options) => startServerOnRedis(options),
  redisMissing() && 'redis-server is not installed (apt-get install redis-server)',
);

describe('the game server\'s client without the server\'s trust', { timeout: TEST_TIMEOUT }, () => {
  it('a wrong admin token is refused with forbidden, none with unauthorized', async () => {
    const server = await startServer();
    try {
      const wrong = new SessionStore({ url: server.url, adminToken: 'not-the-token' });
      await rejectsWith(wrong.register('p1'), 'forbidden');
      const none = new SessionStore({ url: server.url });
      await rejectsWith(none.register('p1'), 'unauthorized');
      await rejectsWith(none.resolve('p1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), 'unauthorized');
    } finally {
      await server.stop();
    }
  });

  it('the constructor refuses bad options with a TypeError', () => {
    assert.throws(() => new SessionStore(), TypeError);
    assert.throws(() => new SessionStore({ url: 'ftp://x' }), TypeError);
    assert.throws(() => new SessionStore({ url: 'http://127.0.0.1:1', adminToken: '' }), TypeError);
    assert.throws(() => new SessionStore({ url: 'http://127.0.0.1:1', timeout: 0 }), TypeError);
  });

  it('an unreachable server gives network, and the event stream keeps retrying', async () => {
    const store = new SessionStore({ url: 'http://127.0.0.1:9', reconnect: FAST, timeout: 2000 });
    await rejectsWith(store.register('p1'), 'network');
    const retries = [];
    const retried = new Promise((resolve) => {
      store.on('stream.retry', (path, info) => {
        retries.push(info);
        if (retries.length === 2) {
          resolve();
        }
      });
    });
    store.on('session.unset', () => {});
    await retried;
    assert.equal(retries[0].attempt, 1);
    assert.equal(retries[1].error.reason, 'network');
    await store.close();
  });
});
