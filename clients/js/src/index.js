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
// exponential backoff until the session ends.

/** MAGE's reasons a session ends with (a game may add its own, such as `banned`). */
export const UNSET_REASONS = Object.freeze(['expired', 'loggedOut', 'replaced', 'reassigned']);

/** MAGE's reasons a session key is refused. */
export const KEY_REASONS = Object.freeze([
  'invalidSessionKey',
  'noSession',
  'keyMismatch',
  'badVersion',
  'expired',
]);

/** The events `on` accepts. */
export const EVENTS = Object.freeze([
  'session.set',
  'session.unset',
  'session.lagged',
  'stream.open',
  'stream.retry',
]);

const DEFAULT_RECONNECT = Object.freeze({
  initialDelay: 500,
  maxDelay: 30_000,
  factor: 2,
  jitter: 0.5,
});

/** An error with MAGE's reason string in `reason`. */
export class SessionError extends Error {
  /**
   * @param {string} reason MAGE's reason string, or the client's own.
   * @param {string} [message] A human explanation.
   * @param {{status?: number, cause?: unknown}} [details]
   */
  constructor(reason, message, details = {}) {
    super(message || reason, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'SessionError';
    this.reason = reason;
    this.status = details.status ?? null;
  }
}

const SECRET = /^[A-Za-z0-9_-]+$/;

/** Refuses what cannot be a full key `actorId:secret`, as the server would. */
function checkKey(key) {
  if (typeof key !== 'string' || key.length > 4096) {
    throw new SessionError('invalidSessionKey', 'a session key is a string "actorId:secret"');
  }
  const colon = key.lastIndexOf(':');
  if (colon <= 0 || !SECRET.test(key.slice(colon + 1))) {
    throw new SessionError(
      'invalidSessionKey',
      'a session key is "actorId:secret", the secret of letters, digits, "-" and "_"',
    );
  }
  return key;
}

function checkName(name) {
  if (typeof name !== 'string' || name.length === 0) {
    throw new SessionError('invalidDataName', 'a data name is a non-empty string');
  }
  return name;
}

/**
 * Header values are bytes: a key with non-ASCII letters (an actor id such
 * as "Zoë") goes as its UTF-8 bytes, which is how the server reads it.
 */
function headerValue(text) {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(text)) {
    return text;
  }
  return String.fromCharCode(...new TextEncoder().encode(text));
}

/**
 * Runs `fn` and settles its outcome through MAGE's `callback(err, result)`
 * too, if one is given; returns the promise either way.
 */
function call(callback, fn) {
  if (callback !== undefined && typeof callback !== 'function') {
    return Promise.reject(new TypeError('the callback must be a function'));
  }
  let promise;
  try {
    promise = Promise.resolve(fn());
  } catch (error) {
    promise = Promise.reject(error);
  }
  if (callback !== undefined) {
    // The rejection handler attached here means that a caller who only
    // passes a callback never sees an unhandled rejection. A callback that
    // throws does so outside the promise chain, as in MAGE.
    promise.then(
      (value) => queueMicrotask(() => callback(null, value)),
      (error) => queueMicrotask(() => callback(error)),
    );
  }
  return promise;
}

/** Reads server-sent events from text chunks. */
export class SseParser {
  #buffer = '';
  #event = '';
  #data = [];

  /**
   * Feeds a chunk of the stream; returns the events it completed.
   * @param {string} chunk
   * @returns {{event: string, data: string}[]}
   */
  push(chunk) {
    this.#buffer += chunk;
    const out = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.#buffer);
      if (!match) {
        break;
      }
      // A lone \r at the end may be the first half of \r\n.
      if (match[0] === '\r' && match.index === this.#buffer.length - 1) {
        break;
      }
      const line = this.#buffer.slice(0, match.index);
      this.#buffer = this.#buffer.slice(match.index + match[0].length);
      if (line === '') {
        if (this.#data.length > 0 || this.#event !== '') {
          out.push({ event: this.#event || 'message', data: this.#data.join('\n') });
        }
        this.#event = '';
        this.#data = [];
        continue;
      }
      if (line.startsWith(':')) {
        continue;
      }
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) {
        value = value.slice(1);
      }
      if (field === 'event') {
        this.#event = value;
      } else if (field === 'data') {
        this.#data.push(value);
      }
    }
    return out;
  }
}

/** The delay before reconnection `attempt` (0-based): capped exponential, jittered down. */
export function backoffDelay(attempt, options = DEFAULT_RECONNECT, random = Math.random) {
  const { initialDelay, maxDelay, factor, jitter } = { ...DEFAULT_RECONNECT, ...options };
  const base = Math.min(maxDelay, initialDelay * factor ** Math.min(attempt, 64));
  return Math.round(base * (1 - jitter * random()));
}

/**
 * One game client's session with a sessiondb server: MAGE's
 * `mage.session` calls, the `session.set` / `session.unset` events, and
 * (optionally) the key kept in a storage such as `localStorage`.
 */
export class SessionClient {
  #baseUrl;
  #fetch;
  #storage;
  #storageKey;
  #timeout;
  #reconnect;
  #followEvents;
  #key = null;
  #lastSet = null;
  #follower = null;
  #handlers = new Map();

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
    const { baseUrl, storage, storageKey = 'sessionKey', follow = true } = options;
    if (typeof baseUrl !== 'string' || baseUrl === '') {
      throw new TypeError('baseUrl is required: the sessiondb server, e.g. "https://sessions.example.com"');
    }
    let url;
    try {
      url = new URL(baseUrl);
    } catch (cause) {
      throw new TypeError(`baseUrl ${JSON.stringify(baseUrl)} is not a URL`, { cause });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new TypeError(`baseUrl ${JSON.stringify(baseUrl)} must be http:// or https://`);
    }
    this.#baseUrl = url.href.replace(/\/+$/, '');
    const fetchImpl = options.fetch ?? globalThis.fetch;
    if (typeof fetchImpl !== 'function') {
      throw new TypeError('no fetch: use a browser or Node 18+, or pass options.fetch');
    }
    // Called as a plain function: a browser's fetch refuses to run with
    // another `this` than the window ("Illegal invocation").
    this.#fetch = (url, init) => fetchImpl(url, init);
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
    this.#timeout = options.timeout ?? 10_000;
    if (!(Number.isFinite(this.#timeout) && this.#timeout > 0)) {
      throw new TypeError('timeout must be a positive number of milliseconds');
    }
    this.#reconnect = { ...DEFAULT_RECONNECT, ...options.reconnect };
    for (const [name, value] of Object.entries(this.#reconnect)) {
      if (!(Number.isFinite(value) && value >= 0)) {
        throw new TypeError(`reconnect.${name} must be a number >= 0`);
      }
    }
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
      const body = await this.#request('POST', '/v1/session/isValid', { json: { sessionKey } });
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
        session = await this.#request('POST', '/v1/session/restore', { json: { sessionKey } });
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
      let json;
      try {
        json = JSON.stringify(value);
      } catch (cause) {
        throw new SessionError('malformedJson', `the value of ${name} is not JSON: ${cause.message}`, { cause });
      }
      if (json === undefined) {
        throw new SessionError('malformedJson', `the value of ${name} is not JSON (a function or a symbol)`);
      }
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
   * `session.unset` with the reason, `session.lagged` with `{missed}`,
   * `stream.open` with `{key}` and `stream.retry` with
   * `{attempt, delay, error}`. Returns a function that removes the handler.
   */
  on(name, handler) {
    if (!EVENTS.includes(name)) {
      throw new TypeError(`unknown event ${JSON.stringify(name)}; one of ${EVENTS.join(', ')}`);
    }
    if (typeof handler !== 'function') {
      throw new TypeError('the handler must be a function');
    }
    if (!this.#handlers.has(name)) {
      this.#handlers.set(name, new Set());
    }
    this.#handlers.get(name).add(handler);
    return () => this.off(name, handler);
  }

  /** Removes a handler added with `on`. */
  off(name, handler) {
    this.#handlers.get(name)?.delete(handler);
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
    for (const handler of [...(this.#handlers.get(name) ?? [])]) {
      try {
        handler(name, payload);
      } catch (error) {
        // A failing handler must not stop the client; report it as an
        // uncaught error, outside the client's code.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
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
      return await this.#request(method, path, { key, body });
    } catch (error) {
      if (error.status === 401) {
        this.#end(key, error.reason);
      }
      throw error;
    }
  }

  async #request(method, path, { key, json, body } = {}) {
    const headers = { Accept: 'application/json' };
    if (key !== undefined) {
      headers.Authorization = `Bearer ${headerValue(key)}`;
    }
    if (json !== undefined) {
      body = JSON.stringify(json);
    }
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
    }
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.#timeout);
    let response;
    let text;
    try {
      response = await this.#fetch(`${this.#baseUrl}${path}`, {
        method,
        headers,
        body,
        signal: controller.signal,
        cache: 'no-store',
      });
      text = await response.text();
    } catch (cause) {
      if (timedOut) {
        throw new SessionError('timeout', `sessiondb at ${this.#baseUrl} did not answer within ${this.#timeout} ms`, {
          cause,
        });
      }
      throw new SessionError('network', `cannot reach sessiondb at ${this.#baseUrl}: ${cause?.message ?? cause}`, {
        cause,
      });
    } finally {
      clearTimeout(timer);
    }
    return parseAnswer(response, text);
  }

  #stopFollowing() {
    const follower = this.#follower;
    this.#follower = null;
    if (follower) {
      follower.stopped = true;
      follower.controller?.abort();
      follower.wake?.();
    }
  }

  #follow(key) {
    const follower = { key, stopped: false, controller: null, wake: null };
    this.#follower = follower;
    this.#followLoop(follower).catch((error) => {
      queueMicrotask(() => {
        throw error;
      });
    });
  }

  async #followLoop(f) {
    let failures = 0;
    while (!f.stopped) {
      let error = null;
      try {
        const outcome = await this.#followOnce(f, () => {
          failures = 0;
        });
        if (outcome === 'ended') {
          return;
        }
      } catch (cause) {
        error = cause instanceof SessionError ? cause : new SessionError('network', String(cause?.message ?? cause), { cause });
      }
      if (f.stopped) {
        return;
      }
      const delay = backoffDelay(failures, this.#reconnect);
      failures += 1;
      this.#emit('stream.retry', { attempt: failures, delay, error });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        f.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      f.wake = null;
    }
  }

  /** One connection to the session's events; 'ended' when the session did. */
  async #followOnce(f, opened) {
    f.controller = new AbortController();
    let response;
    try {
      response = await this.#fetch(`${this.#baseUrl}/v1/session/events`, {
        headers: { Authorization: `Bearer ${headerValue(f.key)}`, Accept: 'text/event-stream' },
        signal: f.controller.signal,
        cache: 'no-store',
      });
    } catch (cause) {
      if (f.stopped) {
        return 'ended';
      }
      throw new SessionError('network', `cannot reach sessiondb at ${this.#baseUrl}: ${cause?.message ?? cause}`, {
        cause,
      });
    }
    if (!response.ok || response.body === null) {
      const text = await response.text().catch(() => '');
      try {
        parseAnswer(response, text);
      } catch (error) {
        if (error.status === 401) {
          this.#end(f.key, error.reason);
          return 'ended';
        }
        throw error;
      }
      throw new SessionError('badResponse', `the event stream answered ${response.status}`, { status: response.status });
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (cause) {
          if (f.stopped) {
            return 'ended';
          }
          throw new SessionError('network', `the event stream broke: ${cause?.message ?? cause}`, { cause });
        }
        if (chunk.done) {
          return 'closed';
        }
        for (const { event, data } of parser.push(decoder.decode(chunk.value, { stream: true }))) {
          if (f.stopped) {
            return 'ended';
          }
          let payload;
          try {
            payload = JSON.parse(data);
          } catch {
            continue;
          }
          if (event === 'session.set') {
            if (opened) {
              opened();
              opened = null;
              this.#emit('stream.open', { key: f.key });
            }
            this.#emitSet({ key: f.key, ...payload });
          } else if (event === 'session.unset') {
            this.#end(f.key, typeof payload.reason === 'string' ? payload.reason : 'expired');
            return 'ended';
          } else if (event === 'session.lagged') {
            this.#emit('session.lagged', { missed: payload.missed });
          }
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }
}

/** A JSON answer of the API, or its error as a SessionError. */
function parseAnswer(response, text) {
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
  }
  if (response.ok) {
    if (body === undefined) {
      throw new SessionError('badResponse', `sessiondb answered ${response.status} without JSON`, {
        status: response.status,
      });
    }
    return body;
  }
  const reason = typeof body?.error === 'string' ? body.error : 'badResponse';
  const message = typeof body?.message === 'string' ? body.message : `sessiondb answered ${response.status}`;
  throw new SessionError(reason, message, { status: response.status });
}

/** A client for the server at `baseUrl`; the same options as `new SessionClient`. */
export function createClient(options) {
  return new SessionClient(options);
}
