// sessiondb's JavaScript client: MAGE's client-side session API over
// sessiondb's HTTP API v1, for browsers and Node 18+. No dependencies.
//
// Every call returns a promise and also takes MAGE's trailing
// `callback(err, result)`. Errors are `SessionError`s whose `reason` is
// MAGE's reason string (`noSession`, `keyMismatch`, ...) or the server's
// (`unavailable`, ...), or `network` / `timeout` / `badResponse` when the
// server could not be asked.
//
// While the client holds a key it follows that session's events
// (`GET /v1/session/events`, read with fetch streaming so that the key
// stays in the Authorization header), reconnecting with capped, jittered
// exponential backoff until the session ends. Each reconnection sends the
// last event id heard (`Last-Event-ID`), so the events missed while away
// arrive, once each, in order.
//
// Game servers in Node: `@sessiondb/client/server` (src/server.js).

import {
  EVENTS,
  Follower,
  Handlers,
  SessionError,
  call,
  checkKey,
  checkName,
  connection,
  request,
  toJson,
} from './internal.js';

export {
  EVENTS,
  KEY_REASONS,
  SessionError,
  SseParser,
  UNSET_REASONS,
  backoffDelay,
} from './internal.js';

/**
 * One game client's session with a sessiondb server: MAGE's
 * `mage.session` calls, the `session.set` / `session.unset` events, and
 * (optionally) the key kept in a storage such as `localStorage`.
 */
export class SessionClient {
  #conn;
  #storage;
  #storageKey;
  #followEvents;
  #key = null;
  #lastSet = null;
  #follower = null;
  #handlers = new Handlers(EVENTS);

  /**
   * @param {object} options
   * @param {string} options.baseUrl The server, e.g. `https://sessions.example.com`.
   * @param {{getItem(k: string): string|null, setItem(k: string, v: string): void, removeItem(k: string): void}} [options.storage]
   *   Where to keep the key across page loads (`localStorage`); none by default.
   * @param {string} [options.storageKey] The storage item's name [default: `sessionKey`].
   * @param {boolean} [options.follow] Follow the session's events while a key is set [default: true].
   * @param {number} [options.timeout] Milliseconds before a call fails with `timeout` [default: 10000].
   * @param {{initialDelay?: number, maxDelay?: number, factor?: number, jitter?: number}} [options.reconnect]
   *   Backoff between reconnections [default: 500 ms doubling up to 30 s, each cut by up to half at random].
   * @param {typeof fetch} [options.fetch] The fetch to use [default: the global one].
   */
  constructor(options = {}) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError('new SessionClient({ baseUrl }) takes an options object');
    }
    this.#conn = connection(options, 'baseUrl');
    const { storage, storageKey = 'sessionKey', follow = true } = options;
    if (storage !== undefined && storage !== null) {
      for (const method of ['getItem', 'setItem', 'removeItem']) {
        if (typeof storage[method] !== 'function') {
          throw new TypeError(`storage needs ${method}() (localStorage has it)`);
        }
      }
      this.#storage = storage;
    }
    if (typeof storageKey !== 'string' || storageKey === '') {
      throw new TypeError('storageKey must be a non-empty string');
    }
    this.#storageKey = storageKey;
    this.#followEvents = follow !== false;
  }

  // ----- MAGE's calls -----

  /** The session key in use (MAGE's `getKey`), or null. */
  getKey() {
    return this.#key;
  }

  /** The key in the storage, if a storage was given and holds one. */
  storedKey() {
    try {
      return this.#storage?.getItem(this.#storageKey) ?? null;
    } catch {
      return null;
    }
  }

  /**
   * Whether `sessionKey` names a live session (MAGE's `isValid`): resolves
   * when it does, rejects with the reason otherwise. Does not use the key.
   */
  isValid(sessionKey, callback) {
    return call(callback, async () => {
      checkKey(sessionKey);
      const body = await request(this.#conn, 'POST', '/v1/session/isValid', { json: { sessionKey } });
      if (!body || body.valid !== true) {
        const reason = typeof body?.reason === 'string' ? body.reason : 'badResponse';
        throw new SessionError(reason, `the session key is not valid: ${reason}`);
      }
    });
  }

  /**
   * Restores the session of `sessionKey` (MAGE's `restore`): the server
   * checks it and slides its expiry; the client uses the key from then on,
   * emits `session.set` (saving the key to the storage) and follows the
   * session's events. Resolves with the session. On a refused key, the
   * stored copy of it is removed.
   */
  restore(sessionKey, callback) {
    return call(callback, async () => {
      checkKey(sessionKey);
      let session;
      try {
        session = await request(this.#conn, 'POST', '/v1/session/restore', { json: { sessionKey } });
      } catch (error) {
        if (error.status === 401) {
          this.#forget(sessionKey);
          this.#end(sessionKey, error.reason);
        }
        throw error;
      }
      this.#use(sessionKey);
      const restored = { ...session, key: sessionKey };
      this.#emitSet(restored);
      return restored;
    });
  }

  /**
   * Uses `sessionKey` without asking the server (MAGE's `setSessionKey`),
   * for instance after `isValid`, or the key a game server handed over.
   * Following its events confirms it (`session.set`) or ends it
   * (`session.unset` with the reason).
   */
  setSessionKey(sessionKey, callback) {
    return call(callback, () => {
      this.#use(checkKey(sessionKey));
    });
  }

  /**
   * Ends every other session of this player ("log out my other devices")
   * with `reason` [default: `loggedOut`]; this one goes on. Resolves with
   * how many ended; their clients hear `session.unset` with the reason.
   */
  expireOthers(reason, callback) {
    if (typeof reason === 'function' && callback === undefined) {
      return this.expireOthers(undefined, reason);
    }
    return call(callback, async () => {
      const key = this.#requireKey();
      const body = reason === undefined ? undefined : JSON.stringify({ reason });
      const answer = await this.#withKey(key, 'POST', '/v1/session/expireOthers', body);
      return answer.expired;
    });
  }

  /** Ends the session (MAGE's `logout`): `session.unset` with `loggedOut`. */
  logout(callback) {
    return call(callback, async () => {
      const key = this.#requireKey();
      await this.#withKey(key, 'POST', '/v1/session/logout');
      this.#end(key, 'loggedOut');
    });
  }

  /** The session's data value `name`, or undefined when it has none. */
  getData(name, callback) {
    return call(callback, async () => {
      const key = this.#requireKey();
      const path = `/v1/session/data/${encodeURIComponent(checkName(name))}`;
      try {
        const body = await this.#withKey(key, 'GET', path);
        return body?.value;
      } catch (error) {
        if (error.reason === 'noData') {
          return undefined;
        }
        throw error;
      }
    });
  }

  /**
   * Sets the session's data value `name` to `value` (any JSON value); as
   * in MAGE, `undefined` deletes it.
   */
  setData(name, value, callback) {
    if (typeof value === 'function' && callback === undefined && arguments.length === 2) {
      // setData(name, callback): MAGE's setData without a value deletes.
      return this.delData(name, value);
    }
    return call(callback, async () => {
      const key = this.#requireKey();
      checkName(name);
      if (value === undefined) {
        return this.#delData(key, name);
      }
      const json = toJson(name, value);
      await this.#withKey(key, 'PUT', `/v1/session/data/${encodeURIComponent(name)}`, json);
    });
  }

  /** Deletes the session's data value `name` (no error when it has none). */
  delData(name, callback) {
    return call(callback, () => this.#delData(this.#requireKey(), checkName(name)));
  }

  // ----- events -----

  /**
   * Calls `handler(path, payload)` on each `name` event, as MAGE's
   * eventManager does: `session.set` with the session (`key`, `id`,
   * `actorId`, `language`, `expiresAt`, and `data` after a restore),
   * `session.unset` with the reason (`rotated`: the game server gave the
   * session a new key; use the one it hands over with `setSessionKey`),
   * `session.lagged` with `{missed}` and `session.reset` with `{reason}`
   * (events the server could not replay after a reconnection: the state
   * follows as `session.set`), `stream.open` with `{key}` and
   * `stream.retry` with `{attempt, delay, error}`. Returns a function that
   * removes the handler.
   */
  on(name, handler) {
    return this.#handlers.on(name, handler);
  }

  /** Removes a handler added with `on`. */
  off(name, handler) {
    this.#handlers.off(name, handler);
  }

  /**
   * Stops following events (the key stays in use); a later `restore` or
   * `setSessionKey` follows again.
   */
  close() {
    this.#stopFollowing();
  }

  // ----- inside -----

  #emit(name, payload) {
    this.#handlers.emit(name, payload);
  }

  #requireKey() {
    if (this.#key === null) {
      throw new SessionError('invalidSessionKey', 'no session key in use: restore a session or set its key first');
    }
    return this.#key;
  }

  #use(key) {
    if (this.#key !== key) {
      this.#stopFollowing();
      this.#key = key;
      this.#lastSet = null;
    }
    if (this.#followEvents && this.#follower === null) {
      this.#follow(key);
    }
  }

  /** The session of `key` ended: the client drops the key and says why. */
  #end(key, reason) {
    if (this.#key !== key) {
      return;
    }
    this.#stopFollowing();
    this.#key = null;
    this.#lastSet = null;
    this.#forget(key);
    this.#emit('session.unset', reason);
  }

  /** Removes `key` from the storage if it is the one stored there. */
  #forget(key) {
    try {
      if (this.#storage && this.#storage.getItem(this.#storageKey) === key) {
        this.#storage.removeItem(this.#storageKey);
      }
    } catch {
      // A storage that fails (full, disabled) only loses persistence.
    }
  }

  #emitSet(session) {
    // The same state twice (a restore, then the stream's first event) is
    // told once.
    const tag = `${session.id}\u0000${session.expiresAt}`;
    if (tag === this.#lastSet) {
      return;
    }
    this.#lastSet = tag;
    try {
      this.#storage?.setItem(this.#storageKey, session.key);
    } catch {
      // As in #forget.
    }
    this.#emit('session.set', session);
  }

  async #delData(key, name) {
    await this.#withKey(key, 'DELETE', `/v1/session/data/${encodeURIComponent(name)}`);
  }

  /** A session-key request; a refused key ends the session here too. */
  async #withKey(key, method, path, body) {
    try {
      return await request(this.#conn, method, path, { bearer: key, body });
    } catch (error) {
      if (error.status === 401) {
        this.#end(key, error.reason);
      }
      throw error;
    }
  }

  #stopFollowing() {
    const follower = this.#follower;
    this.#follower = null;
    follower?.stop();
  }

  /** Follows the session's own events until it ends or the client stops. */
  #follow(key) {
    this.#follower = new Follower(this.#conn, '/v1/session/events', key, {
      // The server's first message is the session's state, or (resuming)
      // its position: the stream is open once it arrives.
      openOn: 'event',
      open: () => this.#emit('stream.open', { key }),
      event: (name, payload) => {
        if (name === 'session.set') {
          this.#emitSet({ key, ...payload });
        } else if (name === 'session.unset') {
          this.#end(key, typeof payload.reason === 'string' ? payload.reason : 'expired');
          return 'end';
        } else if (name === 'session.lagged') {
          this.#emit('session.lagged', { missed: payload.missed });
        } else if (name === 'session.reset') {
          this.#emit('session.reset', { reason: payload.reason });
        }
        return undefined;
      },
      refused: (error) => {
        if (error.status === 401) {
          this.#end(key, error.reason);
          return 'end';
        }
        return undefined;
      },
      retry: (info) => this.#emit('stream.retry', info),
    });
  }
}

/** A client for the server at `baseUrl`; the same options as `new SessionClient`. */
export function createClient(options) {
  return new SessionClient(options);
}
