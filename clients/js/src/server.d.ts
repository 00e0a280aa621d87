// Types of sessiondb's client for Node game servers (src/server.js),
// `@sessiondb/client/server`.

import type {
  Callback,
  ErrorReason,
  Json,
  ReconnectOptions,
  ResetReason,
  SessionError,
  UnsetReason,
} from './index.js';

export { EVENTS, KEY_REASONS, SessionError, UNSET_REASONS } from './index.js';
export type { Callback, ErrorReason, Json, ReconnectOptions, ResetReason, UnsetReason } from './index.js';

/**
 * What the game server says of a session at register: at most 16 names of
 * 1 to 64 `[A-Za-z0-9_.-]`, each to a string of at most 256 bytes without
 * control characters.
 */
export type SessionMeta = Record<string, string>;

export interface StoreOptions {
  /** The sessiondb server, e.g. `http://127.0.0.1:7420`. */
  url: string;
  /** The server's admin token; leave it out for a server on loopback without one. */
  adminToken?: string;
  /** Milliseconds before a call fails with `timeout` [default: 10000]. */
  timeout?: number;
  /** Backoff between reconnections of the event stream. */
  reconnect?: ReconnectOptions;
  /** The fetch to use [default: the global one]. */
  fetch?: typeof fetch;
}

/** A session, with the seed's `Session` calls. */
export declare class Session {
  /** The full key `actorId:secret`; absent on `getActorSession`'s sessions; `rotate` replaces it. */
  readonly key?: string;
  /** The public session id (safe to log). */
  readonly id: string;
  readonly actorId: string;
  readonly language: string;
  /** Unix milliseconds. */
  readonly createdAt: number;
  /** Unix milliseconds, as stored (`extend` updates it). */
  expiresAt: number;
  revision: number;
  /** The data as read (kept up to date by this object's own writes). */
  data: Record<string, Json>;
  /** What the game server gave at register (`{}` when nothing). */
  readonly meta: SessionMeta;
  readonly nodeId?: string;
  readonly version?: string;
  readonly deadline?: number;
  /** The stored value `name` (read now), or undefined. */
  getData<T extends Json = Json>(name: string, callback?: Callback<T | undefined>): Promise<T | undefined>;
  /** Stores `value` as `name`; `undefined` deletes it (MAGE). */
  setData(name: string, value: Json | undefined, callback?: Callback): Promise<void>;
  setData(name: string, callback: Callback): Promise<void>;
  /** Deletes the value `name` (no error when it was not set). */
  delData(name: string, callback?: Callback): Promise<void>;
  /** Ends this session with `reason` [default: `expired`]. */
  expire(reason?: UnsetReason, callback?: Callback): Promise<void>;
  expire(callback: Callback): Promise<void>;
  /** A new expiry from now, written; resolves with this session. */
  extend(callback?: Callback<Session>): Promise<Session>;
  /** A new key for this session (the old one stops at once); resolves with this session, its `key` the new one. */
  rotate(callback?: Callback<Session>): Promise<Session>;
  /** Ends the actor's other sessions [reason default: `loggedOut`]; resolves with how many. */
  expireOthers(reason?: UnsetReason, callback?: Callback<number>): Promise<number>;
  expireOthers(callback: Callback<number>): Promise<number>;
}

/** One of an actor's sessions, as `listActorSessions` gives it: never its key. */
export interface ListedSession {
  /** The public session id: what `expireActorSession` takes. */
  id: string;
  actorId: string;
  language: string;
  /** Unix milliseconds. */
  createdAt: number;
  /** Unix milliseconds, as stored. */
  expiresAt: number;
  meta: SessionMeta;
  nodeId?: string;
  version?: string;
  deadline?: number;
}

/** Where an actor's session is (MAGE's getActorAddresses). */
export interface ActorAddress {
  actorId: string;
  /** The node (MAGE's cluster id) that made the session, or null. */
  nodeId: string | null;
  /** The public session id. */
  sessionId: string;
  language: string;
}

export type StoreEventName =
  | 'session.set'
  | 'session.unset'
  | 'session.lagged'
  | 'session.reset'
  | 'stream.open'
  | 'stream.retry';

export interface StoreEventPayloads {
  'session.set': { actorId: string; id: string; language: string; expiresAt: number };
  'session.unset': { actorId: string; id: string; reason: UnsetReason };
  'session.lagged': { missed: number };
  'session.reset': { reason: ResetReason };
  'stream.open': Record<string, never>;
  'stream.retry': { attempt: number; delay: number; error: SessionError | null };
}

/** MAGE's eventManager handler: the event's name, then its payload. */
export type StoreHandler<E extends StoreEventName> = (path: E, payload: StoreEventPayloads[E]) => void;

export declare class SessionStore {
  constructor(options: StoreOptions);
  readonly url: string;
  /** A new session for the actor, with its `key` [language default: `en`]. */
  register(
    actorId: string,
    language?: string,
    data?: Record<string, Json>,
    meta?: SessionMeta,
    callback?: Callback<Session>,
  ): Promise<Session>;
  register(actorId: string, callback: Callback<Session>): Promise<Session>;
  register(actorId: string, language: string, callback: Callback<Session>): Promise<Session>;
  register(actorId: string, language: string, data: Record<string, Json>, callback: Callback<Session>): Promise<Session>;
  /** The session of a key a game client sent, its expiry slid forward. */
  resolve(sessionKey: string, callback?: Callback<Session>): Promise<Session>;
  /** The actor's newest live session (without its key), or null. */
  getActorSession(actorId: string, callback?: Callback<Session | null>): Promise<Session | null>;
  /** Every live session of the actor, newest first, without keys. */
  listActorSessions(actorId: string, callback?: Callback<ListedSession[]>): Promise<ListedSession[]>;
  /** Ends the actor's session with this public id [reason default: `expired`]; rejects with `noSession` when none. */
  expireActorSession(actorId: string, sessionId: string, reason?: UnsetReason, callback?: Callback): Promise<void>;
  expireActorSession(actorId: string, sessionId: string, callback: Callback): Promise<void>;
  /** Where each actor with a live session is; the others are left out. */
  getActorAddresses(actorIds: string[], callback?: Callback<ActorAddress[]>): Promise<ActorAddress[]>;
  /** Ends every live session of the actor [reason default: `expired`]; resolves with how many. */
  expireActor(actorId: string, reason?: UnsetReason, callback?: Callback<number>): Promise<number>;
  expireActor(actorId: string, callback: Callback<number>): Promise<number>;
  /** Moves the actor's session to `toActorId`, with a new key. */
  reassign(fromActorId: string, toActorId: string, callback?: Callback<Session>): Promise<Session>;
  /** Adds a handler (the first for a session event starts following); returns a function that removes it. */
  on<E extends StoreEventName>(name: E, handler: StoreHandler<E>): () => void;
  off<E extends StoreEventName>(name: E, handler: StoreHandler<E>): void;
  /** Stops following events. */
  close(callback?: Callback): Promise<void>;
}
