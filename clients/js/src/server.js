// sessiondb for Node game servers: the server side of MAGE's session
// module over sessiondb's HTTP API v1, with the admin token.
//
//   import { SessionStore } from '@sessiondb/client/server';
//   const sessions = new SessionStore({ url: 'http://127.0.0.1:7420', adminToken });
//   const session = await sessions.register('player-7', 'en', { level: 1 });
//   // hand session.key to the game client; on each of its requests:
//   const same = await sessions.resolve(keyFromTheClient);
//   await same.setData('level', 2);
//
// Every call returns a promise and also takes MAGE's trailing
// `callback(err, result)`; errors are `SessionError`s carrying MAGE's
// reasons (`noSession`, `keyMismatch`, ...). `on('session.set' |
// 'session.unset', handler)` follows every session's events
// (`GET /v1/events`), reconnecting with backoff as the game client does
// and resuming after the last event heard (`Last-Event-ID`), so a
// revocation made while the stream was down is still heard.

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

export { EVENTS, KEY_REASONS, SessionError, UNSET_REASONS } from './internal.js';

const SESSION_EVENTS = ['session.set', 'session.unset', 'session.lagged', 'session.reset'];

function checkActorId(actorId, what = 'actorId') {
  if (typeof actorId !== 'string' || actorId.length === 0) {
    throw new SessionError('invalidActorId', `${what} must be a non-empty string`);
  }
  return actorId;
}

const path = {
  actor: (actorId, rest) => `/v1/actors/${encodeURIComponent(checkActorId(actorId))}/${rest}`,
  data: (name) => `/v1/session/data/${encodeURIComponent(checkName(name))}`,
};

/**
 * A session as MAGE's server side sees it: `key` (when the caller may see
 * it), `id`, `actorId`, `language`, `createdAt`, `expiresAt`, `revision`,
 * `data` (as read), `meta` (what the game server gave at register), and
 * `nodeId`, `version`, `deadline` when set; with the seed's `Session`
 * calls, `rotate` and `expireOthers`.
 */
export class Session {
  #store;

  constructor(store, fields) {
    this.#store = store;
    Object.assign(this, fields);
  }

  #key() {
    if (typeof this.key !== 'string') {
      throw new SessionError(
        'invalidSessionKey',
        'this session was read without its key (getActorSession); resolve the key the client holds',
      );
    }
    return this.key;
  }

  /** MAGE's `session.getData(name)`: the stored value (read now), or undefined. */
  getData(name, callback) {
    return call(callback, async () => {
      try {
        const body = await request(this.#store, 'GET', path.data(name), { bearer: this.#key() });
        return body?.value;
      } catch (error) {
        if (error.reason === 'noData') {
          return undefined;
        }
        throw error;
      }
    });
  }

  /** MAGE's `session.setData(name, value)`; `undefined` deletes, as in MAGE. */
  setData(name, value, callback) {
    if (typeof value === 'function' && callback === undefined && arguments.length === 2) {
      return this.delData(name, value);
    }
    return call(callback, async () => {
      if (value === undefined) {
        await request(this.#store, 'DELETE', path.data(name), { bearer: this.#key() });
        delete this.data?.[name];
        return;
      }
      const json = toJson(name, value);
      await request(this.#store, 'PUT', path.data(name), { bearer: this.#key(), body: json });
      if (this.data && typeof this.data === 'object') {
        this.data[name] = JSON.parse(json);
      }
    });
  }

  /** MAGE's `session.delData(name)` (no error when it was not set). */
  delData(name, callback) {
    return call(callback, async () => {
      await request(this.#store, 'DELETE', path.data(name), { bearer: this.#key() });
      delete this.data?.[name];
    });
  }

  /**
   * MAGE's `session.expire(reason)`: ends this session; the client hears
   * `session.unset` with the reason [default: `expired`].
   */
  expire(reason, callback) {
    if (typeof reason === 'function' && callback === undefined) {
      return this.expire(undefined, reason);
    }
    return call(callback, async () => {
      const json = { sessionKey: this.#key() };
      if (reason !== undefined) {
        json.reason = reason;
      }
      await request(this.#store, 'POST', '/v1/sessions/expire', { bearer: this.#store.adminToken, json });
    });
  }

  /**
   * A new key for this session (on a change of privilege, as OWASP asks):
   * the old key stops working at once, and this object takes the new one
   * (`key`), to hand to the game client (`setSessionKey`); the session's
   * id, data and expiry are kept. Its old key's holder hears
   * `session.unset` with `rotated`. Resolves with this session.
   */
  rotate(callback) {
    return call(callback, async () => {
      const body = await request(this.#store, 'POST', '/v1/sessions/rotate', {
        bearer: this.#store.adminToken,
        json: { sessionKey: this.#key() },
      });
      Object.assign(this, body);
      return this;
    });
  }

  /**
   * Ends every other session of this session's actor ("log out the other
   * devices") with `reason` [default: `loggedOut`]; resolves with how many
   * ended. This one goes on.
   */
  expireOthers(reason, callback) {
    if (typeof reason === 'function' && callback === undefined) {
      return this.expireOthers(undefined, reason);
    }
    return call(callback, async () => {
      const json = reason === undefined ? {} : { reason };
      const body = await request(this.#store, 'POST', '/v1/session/expireOthers', { bearer: this.#key(), json });
      return body.expired;
    });
  }

  /** MAGE's `session.extend()`: a new expiry from now, written; resolves with this session. */
  extend(callback) {
    return call(callback, async () => {
      const body = await request(this.#store, 'POST', '/v1/sessions/extend', {
        bearer: this.#store.adminToken,
        json: { sessionKey: this.#key() },
      });
      Object.assign(this, body, { key: this.key });
      return this;
    });
  }
}

/**
 * A game server's handle on a sessiondb server: MAGE's `register`,
 * `resolve`, `getActorSession`, `getActorAddresses`, `reassign`, the
 * admin's `expireActor`, an actor's sessions (`listActorSessions`,
 * `expireActorSession`), and every session's events.
 */
export class SessionStore {
  #conn;
  #handlers = new Handlers(EVENTS);
  #follower = null;

  /**
   * @param {object} options
   * @param {string} options.url The sessiondb server, e.g. `http://127.0.0.1:7420`.
   * @param {string} [options.adminToken] Its admin token (`--admin-token`); without one,
   *   the server answers admin routes on loopback only.
   * @param {number} [options.timeout] Milliseconds before a call fails with `timeout` [default: 10000].
   * @param {{initialDelay?: number, maxDelay?: number, factor?: number, jitter?: number}} [options.reconnect]
   *   Backoff between reconnections of the event stream [default: 500 ms doubling up to 30 s].
   * @param {typeof fetch} [options.fetch] The fetch to use [default: the global one].
   */
  constructor(options = {}) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError('new SessionStore({ url, adminToken }) takes an options object');
    }
    const { adminToken } = options;
    if (adminToken !== undefined && (typeof adminToken !== 'string' || adminToken === '')) {
      throw new TypeError('adminToken must be a non-empty string (or left out for a loopback server)');
    }
    this.#conn = { ...connection(options, 'url'), adminToken };
  }

  /** The server's URL. */
  get url() {
    return this.#conn.baseUrl;
  }

  #admin(method, route, json) {
    return request(this.#conn, method, route, { bearer: this.#conn.adminToken, json });
  }

  #session(fields) {
    return new Session(this.#conn, fields);
  }

  /**
   * MAGE's `register(actorId, language, meta)`: a new session for the
   * actor, with its `key` to hand to the game client (the one time it is
   * told). `language` defaults to `en`, `data` to none; `meta` is what the
   * game server says of the session (device, platform, address: at most
   * 16 names of `[A-Za-z0-9_.-]`, each to a string of at most 256 bytes),
   * shown wherever the session is read and in `listActorSessions`.
   */
  register(actorId, language, data, meta, callback) {
    if (typeof language === 'function') {
      return this.register(actorId, undefined, undefined, undefined, language);
    }
    if (typeof data === 'function') {
      return this.register(actorId, language, undefined, undefined, data);
    }
    if (typeof meta === 'function') {
      return this.register(actorId, language, data, undefined, meta);
    }
    return call(callback, async () => {
      const json = { actorId: checkActorId(actorId) };
      if (language !== undefined && language !== null) {
        json.language = language;
      }
      if (data !== undefined && data !== null) {
        json.data = data;
      }
      if (meta !== undefined && meta !== null) {
        json.meta = meta;
      }
      return this.#session(await this.#admin('POST', '/v1/sessions', json));
    });
  }

  /**
   * MAGE's `resolve(fullKey)`: the session of a key a game client sent,
   * its expiry slid forward. Rejects with MAGE's reason when the key is
   * not valid.
   */
  resolve(sessionKey, callback) {
    return call(callback, async () => {
      checkKey(sessionKey);
      const body = await this.#admin('POST', '/v1/sessions/resolve', { sessionKey });
      return this.#session({ ...body, key: sessionKey });
    });
  }

  /** MAGE's `getActorSession(actorId)`: the actor's newest live session (without its key), or null. */
  getActorSession(actorId, callback) {
    return call(callback, async () => {
      try {
        return this.#session(await this.#admin('GET', path.actor(actorId, 'session')));
      } catch (error) {
        if (error.reason === 'noSession' && error.status === 404) {
          return null;
        }
        throw error;
      }
    });
  }

  /**
   * Every live session of the actor, newest first: `{id, actorId,
   * language, createdAt, expiresAt, meta}` (and `deadline`, `nodeId`,
   * `version` when set), never a key. An empty array when it has none.
   */
  listActorSessions(actorId, callback) {
    return call(callback, async () => {
      const body = await this.#admin('GET', path.actor(actorId, 'sessions'));
      return body.sessions;
    });
  }

  /**
   * Ends the actor's session whose public id is `sessionId` (as
   * `listActorSessions` gives it) with `reason` [default: `expired`]; its
   * client hears `session.unset` with the reason. Rejects with `noSession`
   * when the actor has no such session.
   */
  expireActorSession(actorId, sessionId, reason, callback) {
    if (typeof reason === 'function' && callback === undefined) {
      return this.expireActorSession(actorId, sessionId, undefined, reason);
    }
    return call(callback, async () => {
      if (typeof sessionId !== 'string' || sessionId.length === 0) {
        throw new SessionError('invalidSessionId', 'sessionId must be a non-empty string');
      }
      const json = reason === undefined ? {} : { reason };
      await this.#admin('POST', path.actor(actorId, `sessions/${encodeURIComponent(sessionId)}/expire`), json);
    });
  }

  /**
   * MAGE's `getActorAddresses(actorIds)`: for each actor with a live
   * session, `{actorId, nodeId, sessionId, language}`; others are left out.
   */
  getActorAddresses(actorIds, callback) {
    return call(callback, async () => {
      if (!Array.isArray(actorIds)) {
        throw new SessionError('badRequest', 'actorIds must be an array of actor ids');
      }
      actorIds.forEach((id) => checkActorId(id, 'each actor id'));
      const body = await this.#admin('POST', '/v1/actors/addresses', { actorIds });
      return body.addresses;
    });
  }

  /**
   * Ends every live session of the actor with `reason` [default:
   * `expired`]; resolves with how many ended.
   */
  expireActor(actorId, reason, callback) {
    if (typeof reason === 'function' && callback === undefined) {
      return this.expireActor(actorId, undefined, reason);
    }
    return call(callback, async () => {
      const json = reason === undefined ? {} : { reason };
      const body = await this.#admin('POST', path.actor(actorId, 'expire'), json);
      return body.expired;
    });
  }

  /**
   * MAGE's `reassign(fromActorId, toActorId)`: the actor's session goes
   * on under `toActorId` with a new key (in the result); `fromActorId`'s
   * sessions end with `reassigned`.
   */
  reassign(fromActorId, toActorId, callback) {
    return call(callback, async () => {
      const json = { to: checkActorId(toActorId, 'toActorId') };
      return this.#session(await this.#admin('POST', path.actor(fromActorId, 'reassign'), json));
    });
  }

  /**
   * Calls `handler(path, payload)` on each `name` event, as MAGE's
   * eventManager does: `session.set` `{actorId, id, language, expiresAt}`,
   * `session.unset` `{actorId, id, reason}` and `session.lagged`
   * `{missed}` for every session on the server (every node's, on Redis),
   * `session.reset` `{reason}`, `stream.open` `{}` and `stream.retry`
   * `{attempt, delay, error}`. The first handler of a session event starts
   * following the server's event stream. Events while the stream is
   * disconnected are replayed when it reconnects (it sends the last id it
   * heard), once each, in order; only when the server no longer holds them
   * (`session.lagged`: too many or too old) or cannot tell (`session.reset`:
   * another server process, after a restart or on another node) resynchronise,
   * with `getActorSession` or `listActorSessions`. Returns a function that
   * removes the handler.
   */
  on(name, handler) {
    const off = this.#handlers.on(name, handler);
    if (SESSION_EVENTS.includes(name) && this.#follower === null) {
      this.#follow();
    }
    return off;
  }

  /** Removes a handler added with `on`. */
  off(name, handler) {
    this.#handlers.off(name, handler);
  }

  /** Stops following events; calls still work, and a later `on` follows again. */
  close(callback) {
    return call(callback, () => {
      this.#follower?.stop();
      this.#follower = null;
    });
  }

  #follow() {
    this.#follower = new Follower(this.#conn, '/v1/events', this.#conn.adminToken, {
      open: () => this.#handlers.emit('stream.open', {}),
      event: (name, payload) => {
        if (SESSION_EVENTS.includes(name)) {
          this.#handlers.emit(name, payload);
        }
        return undefined;
      },
      retry: (info) => this.#handlers.emit('stream.retry', info),
    });
  }
}
