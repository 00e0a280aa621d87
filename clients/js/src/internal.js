// What the game client (`index.js`) and the game server's client
// (`server.js`) share: MAGE's reason strings and errors, the promise-plus-
// callback call form, requests to the HTTP API, and following a stream of
// server-sent events with capped, jittered reconnection. Not an entry
// point of the package: import from `@sessiondb/client` or
// `@sessiondb/client/server`.

/**
 * MAGE's reasons a session ends with, and `rotated` (the key was replaced
 * by a new one: the session goes on under it). A game may add its own,
 * such as `banned`.
 */
export const UNSET_REASONS = Object.freeze(['expired', 'loggedOut', 'replaced', 'reassigned', 'rotated']);

/** MAGE's reasons a session key is refused. */
export const KEY_REASONS = Object.freeze([
  'invalidSessionKey',
  'noSession',
  'keyMismatch',
  'badVersion',
  'expired',
]);

export const DEFAULT_RECONNECT = Object.freeze({
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

/**
 * Header values are bytes: a key with non-ASCII letters (an actor id such
 * as "Zoë") goes as its UTF-8 bytes, which is how the server reads it.
 */
export function headerValue(text) {
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
export function call(callback, fn) {
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

/**
 * Reads server-sent events from text chunks, keeping the last event id as
 * the SSE standard does (`lastEventId`): an `id` field sets it (one with a
 * NUL is ignored), and it holds until the next one, across events.
 */
export class SseParser {
  #buffer = '';
  #event = '';
  #data = [];
  #id = null;
  #sawId = false;

  /** The last event id of the stream so far, or null. */
  lastEventId = null;

  /**
   * Feeds a chunk of the stream; returns the messages it completed: each
   * event with its name, data and the last event id at that point, and an
   * id-only message (no data, no name: the server saying where the stream
   * is) as `{event: '', data: '', id}`.
   * @param {string} chunk
   * @returns {{event: string, data: string, id: string|null}[]}
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
        this.lastEventId = this.#id;
        if (this.#data.length > 0 || this.#event !== '') {
          out.push({ event: this.#event || 'message', data: this.#data.join('\n'), id: this.#id });
        } else if (this.#sawId) {
          out.push({ event: '', data: '', id: this.#id });
        }
        this.#event = '';
        this.#data = [];
        this.#sawId = false;
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
      } else if (field === 'id' && !value.includes('\u0000')) {
        this.#id = value;
        this.#sawId = true;
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

/** A JSON answer of the API, or its error as a SessionError. */
export function parseAnswer(response, text) {
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


/** The events `on` accepts. */
export const EVENTS = Object.freeze([
  'session.set',
  'session.unset',
  'session.lagged',
  'session.reset',
  'stream.open',
  'stream.retry',
]);

const SECRET = /^[A-Za-z0-9_-]+$/;

/** Refuses what cannot be a full key `actorId:secret`, as the server would. */
export function checkKey(key) {
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

export function checkName(name) {
  if (typeof name !== 'string' || name.length === 0) {
    throw new SessionError('invalidDataName', 'a data name is a non-empty string');
  }
  return name;
}

/** `value` as JSON text, or a `malformedJson` SessionError naming `name`. */
export function toJson(name, value) {
  let json;
  try {
    json = JSON.stringify(value);
  } catch (cause) {
    throw new SessionError('malformedJson', `the value of ${name} is not JSON: ${cause.message}`, { cause });
  }
  if (json === undefined) {
    throw new SessionError('malformedJson', `the value of ${name} is not JSON (a function or a symbol)`);
  }
  return json;
}

/**
 * One request to the API: JSON in (`json`) or a raw body (`body`), the
 * credentials (`bearer`) in `Authorization`, at most `timeout` ms.
 * Resolves with the parsed JSON answer (null for none); rejects with a
 * SessionError: the server's reason, or `network` / `timeout` /
 * `badResponse` when it could not be asked.
 */
export async function request({ fetch, baseUrl, timeout }, method, path, { bearer, json, body } = {}) {
  const headers = { Accept: 'application/json' };
  if (bearer !== undefined) {
    headers.Authorization = `Bearer ${headerValue(bearer)}`;
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
  }, timeout);
  let response;
  let text;
  try {
    response = await fetch(`${baseUrl}${path}`, {
      method,
      headers,
      body,
      signal: controller.signal,
      cache: 'no-store',
    });
    text = await response.text();
  } catch (cause) {
    if (timedOut) {
      throw new SessionError('timeout', `sessiondb at ${baseUrl} did not answer within ${timeout} ms`, { cause });
    }
    throw new SessionError('network', `cannot reach sessiondb at ${baseUrl}: ${cause?.message ?? cause}`, { cause });
  } finally {
    clearTimeout(timer);
  }
  return parseAnswer(response, text);
}

/**
 * Checks the options both clients take: the server's URL (`http://` or
 * `https://`), `fetch`, `timeout` and `reconnect`; returns them with
 * their defaults, the URL without a trailing `/`.
 */
export function connection(options, urlName) {
  const url = options[urlName];
  if (typeof url !== 'string' || url === '') {
    throw new TypeError(`${urlName} is required: the sessiondb server, e.g. "https://sessions.example.com"`);
  }
  let parsed;
  try {
    parsed = new URL(url);
  } catch (cause) {
    throw new TypeError(`${urlName} ${JSON.stringify(url)} is not a URL`, { cause });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new TypeError(`${urlName} ${JSON.stringify(url)} must be http:// or https://`);
  }
  const fetchImpl = options.fetch ?? globalThis.fetch;
  if (typeof fetchImpl !== 'function') {
    throw new TypeError('no fetch: use a browser or Node 18+, or pass options.fetch');
  }
  const timeout = options.timeout ?? 10_000;
  if (!(Number.isFinite(timeout) && timeout > 0)) {
    throw new TypeError('timeout must be a positive number of milliseconds');
  }
  const reconnect = { ...DEFAULT_RECONNECT, ...options.reconnect };
  for (const [name, value] of Object.entries(reconnect)) {
    if (!(Number.isFinite(value) && value >= 0)) {
      throw new TypeError(`reconnect.${name} must be a number >= 0`);
    }
  }
  return {
    baseUrl: parsed.href.replace(/\/+$/, ''),
    // Called as a plain function: a browser's fetch refuses to run with
    // another `this` than the window ("Illegal invocation").
    fetch: (input, init) => fetchImpl(input, init),
    timeout,
    reconnect,
  };
}

/**
 * Follows a stream of server-sent events, reconnecting with capped,
 * jittered exponential backoff until stopped or until a handler says the
 * stream has ended. Every reconnection sends the last event id it heard as
 * `Last-Event-ID`, so the server goes on after it: the events missed while
 * away arrive, once each, in order (or `session.lagged` / `session.reset`
 * says what could not be).
 *
 * `handlers`:
 * - `event(name, payload)`: each event, its data parsed as JSON; return
 *   `'end'` to stop following.
 * - `open()`: the stream is connected: on its first message (`openOn:
 *   'event'`: an event, or the id-only message that tells a resumed
 *   stream's position), or as soon as the server answers (`openOn:
 *   'response'`). The backoff starts again from its first delay.
 * - `refused(error)`: the server answered with an error; return `'end'`
 *   to stop following, else it counts as a failed try.
 * - `retry({attempt, delay, error})`: the stream broke or could not
 *   connect (`error` null when the server ended it); the next try is in
 *   `delay` ms.
 */
export class Follower {
  #conn;
  #path;
  #bearer;
  #openOn;
  #handlers;
  #stopped = false;
  #controller = null;
  #wake = null;
  #lastEventId = null;

  /**
   * Starts following `path` on `conn` (from `connection`), with `bearer`
   * as the credentials (none when undefined).
   */
  constructor(conn, path, bearer, { openOn = 'response', ...handlers }) {
    this.#conn = conn;
    this.#path = path;
    this.#bearer = bearer;
    this.#openOn = openOn;
    this.#handlers = handlers;
    this.#loop().catch((error) => {
      queueMicrotask(() => {
        throw error;
      });
    });
  }

  /** The last event id heard, which the next connection sends; or null. */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** Stops following (the connection is closed at once). */
  stop() {
    this.#stopped = true;
    this.#controller?.abort();
    this.#wake?.();
  }

  async #loop() {
    let failures = 0;
    const opened = () => {
      failures = 0;
      this.#handlers.open?.();
    };
    while (!this.#stopped) {
      let error = null;
      try {
        if ((await this.#once(opened)) === 'ended') {
          return;
        }
      } catch (cause) {
        error =
          cause instanceof SessionError ? cause : new SessionError('network', String(cause?.message ?? cause), { cause });
      }
      if (this.#stopped) {
        return;
      }
      const delay = backoffDelay(failures, this.#conn.reconnect);
      failures += 1;
      this.#handlers.retry?.({ attempt: failures, delay, error });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }

  /** One connection; 'ended' when following should stop. */
  async #once(opened) {
    const { baseUrl, fetch } = this.#conn;
    this.#controller = new AbortController();
    let response;
    try {
      const headers = { Accept: 'text/event-stream' };
      if (this.#bearer !== undefined) {
        headers.Authorization = `Bearer ${headerValue(this.#bearer)}`;
      }
      if (this.#lastEventId !== null) {
        headers['Last-Event-ID'] = headerValue(this.#lastEventId);
      }
      response = await fetch(`${baseUrl}${this.#path}`, {
        headers,
        signal: this.#controller.signal,
        cache: 'no-store',
      });
    } catch (cause) {
      if (this.#stopped) {
        return 'ended';
      }
      throw new SessionError('network', `cannot reach sessiondb at ${baseUrl}: ${cause?.message ?? cause}`, { cause });
    }
    if (!response.ok || response.body === null) {
      const text = await response.text().catch(() => '');
      try {
        parseAnswer(response, text);
      } catch (error) {
        if (this.#handlers.refused?.(error) === 'end') {
          return 'ended';
        }
        throw error;
      }
      throw new SessionError('badResponse', `the event stream answered ${response.status}`, { status: response.status });
    }
    let open = false;
    if (this.#openOn === 'response') {
      open = true;
      opened();
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
          if (this.#stopped) {
            return 'ended';
          }
          throw new SessionError('network', `the event stream broke: ${cause?.message ?? cause}`, { cause });
        }
        if (chunk.done) {
          return 'closed';
        }
        for (const { event, data, id } of parser.push(decoder.decode(chunk.value, { stream: true }))) {
          if (this.#stopped) {
            return 'ended';
          }
          if (id !== null) {
            this.#lastEventId = id;
          }
          if (!open) {
            open = true;
            opened();
          }
          if (event === '') {
            // An id-only message: where the stream is; nothing to tell.
            continue;
          }
          let payload;
          try {
            payload = JSON.parse(data);
          } catch {
            continue;
          }
          if (this.#handlers.event(event, payload) === 'end') {
            return 'ended';
          }
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }
}

/** A handler table for `on`/`off`: names checked against `events`. */
export class Handlers {
  #events;
  #handlers = new Map();

  constructor(events) {
    this.#events = events;
  }

  /** Adds `handler` for `name`; returns a function that removes it. */
  on(name, handler) {
    if (!this.#events.includes(name)) {
      throw new TypeError(`unknown event ${JSON.stringify(name)}; one of ${this.#events.join(', ')}`);
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

  off(name, handler) {
    this.#handlers.get(name)?.delete(handler);
  }

  /** How many handlers `name` has. */
  count(name) {
    return this.#handlers.get(name)?.size ?? 0;
  }

  /** Calls each handler of `name` as MAGE's eventManager does: `handler(name, payload)`. */
  emit(name, payload) {
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
}
