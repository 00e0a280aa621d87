// Streams that resume, against the real sessiondb binary: both clients send
// the last event id they heard on every reconnection by themselves, so a
// connection cut while changes go on (by a relay standing for the network
// or a load balancer) loses nothing: every change arrives once, in order,
// a revocation made meanwhile is heard with its real reason, and a new key
// from a rotation ends the old key's stream. Also on the Redis engine.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { SessionClient } from '../src/index.js';
import { SessionStore } from '../src/server.js';
import { Recorder, until } from './support/recorder.js';
import { ADMIN_TOKEN, TEST_TIMEOUT, redisMissing, startRelay, startServer, startServerOnRedis } from './support/sessiondb.js';

const FAST = { initialDelay: 50, maxDelay: 400 };

function resumeSuite(name, start, skip = false) {
  describe(name, { skip, timeout: TEST_TIMEOUT }, () => {
    let server;
    let relay;
    const closers = [];
    before(async () => {
      server = await start();
      relay = await startRelay(server.url);
    });
    after(async () => {
      for (const close of closers) {
        await close();
      }
      await relay?.stop();
      await server?.stop();
    });

    it('the game server\'s client hears every change made while its stream was cut, once, in order', async () => {
      const store = new SessionStore({ url: relay.url, adminToken: ADMIN_TOKEN, reconnect: FAST });
      closers.push(() => store.close());
      const heard = new Recorder(store);
      const seen = [];
      store.on('session.set', (path, e) => seen.push(`set ${e.actorId}`));
      store.on('session.unset', (path, e) => seen.push(`unset ${e.actorId} ${e.reason}`));
      await heard.take('stream.open');
      const a = await server.admin.register('r-a');
      await until('the first change', () => seen.length === 1);

      relay.cut({ hold: true });
      await heard.take('stream.retry');
      // While the stream is away: the changes a game server must not miss.
      const b = await server.admin.register('r-b');
      await server.admin.expireSession(b.key, 'kicked');
      await server.admin.expire('r-a', 'banned');
      await server.admin.register('r-c');
      assert.equal(seen.length, 1, 'nothing heard while away');
      relay.release();
      await heard.take('stream.open');
      await until('every change', () => seen.length === 5);
      assert.deepEqual(seen, ['set r-a', 'set r-b', 'unset r-b kicked', 'unset r-a banned', 'set r-c']);
      assert.equal(heard.count('session.lagged') + heard.count('session.reset'), 0);
      // Live again, and nothing twice.
      await server.admin.register('r-d');
      await until('the live change', () => seen.length === 6);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.deepEqual(seen.slice(5), ['set r-d']);
      assert.ok(a.id);
    });

    it('a game client whose session was revoked while its stream was cut hears the real reason', async () => {
      const s = await server.admin.register('r-banned');
      const client = new SessionClient({ baseUrl: relay.url, reconnect: FAST });
      closers.push(() => client.close());
      const heard = new Recorder(client);
      await client.setSessionKey(s.key);
      await heard.take('stream.open');
      relay.cut({ hold: true });
      await heard.take('stream.retry');
      await server.admin.expire('r-banned', 'banned');
      relay.release();
      // Reconnecting with its last id, it hears how its session ended
      // (without that id it could only be told `noSession`).
      assert.equal(await heard.take('session.unset'), 'banned');
      assert.equal(client.getKey(), null);
    });

    it('a rotation ends the old key\'s stream with rotated; the new key streams on', async () => {
      const store = new SessionStore({ url: server.url, adminToken: ADMIN_TOKEN });
      const session = await store.register('r-rotate', 'en', { gold: 1 }, { device: 'phone' });
      const oldKey = session.key;
      const client = new SessionClient({ baseUrl: relay.url, reconnect: FAST });
      closers.push(() => client.close());
      const heard = new Recorder(client);
      await client.setSessionKey(oldKey);
      await heard.take('stream.open');

      assert.equal(await session.rotate(), session);
      assert.notEqual(session.key, oldKey);
      assert.deepEqual(session.meta, { device: 'phone' });
      assert.equal(await heard.take('session.unset'), 'rotated');
      assert.equal(client.getKey(), null);
      // The game server hands the new key over.
      await client.setSessionKey(session.key);
      const open = await heard.take('stream.open');
      assert.equal(open.key, session.key);
      assert.equal(await client.getData('gold'), 1);
      assert.equal(heard.count('session.unset'), 1);
    });
  });
}

resumeSuite('streams that resume (embedded store)', () => startServer());

resumeSuite(
  'streams that resume (Redis engine)',
  () => startServerOnRedis(),
  redisMissing() && 'redis-server is not installed (apt-get install redis-server)',
);
