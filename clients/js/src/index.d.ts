// Types of sessiondb's JavaScript client (src/index.js).

/**
 * MAGE's reasons a session ends with, and `rotated` (its key was replaced
 * by a new one); a game may add its own, such as `banned`.
 */
export type UnsetReason = 'expired' | 'loggedOut' | 'replaced' | 'reassigned' | 'rotated' | (string & {});

/** MAGE's reasons a session key is refused. */
export type KeyReason = 'invalidSessionKey' | 'noSession' | 'keyMismatch' | 'badVersion' | 'expired';

/**
 * What a failed call carries in `reason`: MAGE's key reasons, the server's
 * own (`unavailable`, `invalidDataName`, `dataTooLarge`, ...), or the
 * client's: `network` (the server could not be reached), `timeout`,
 * `badResponse` (an answer that is not the API's JSON), `malformedJson`
 * (a value that is not JSON).
 */
export type ErrorReason =
  | KeyReason
  | 'network'
  | 'timeout'
  | 'badResponse'
  | 'malformedJson'
  | 'invalidDataName'
  | 'unavailable'
  | (string & {});

export declare const UNSET_REASONS: readonly ['expired', 'loggedOut', 'replaced', 'reassigned', 'rotated'];
export declare const KEY_REASONS: readonly KeyReason[];
export declare const EVENTS: readonly EventName[];

/** An error with MAGE's reason string in `reason`. */
export declare class SessionError extends Error {
  constructor(reason: ErrorReason, message?: string, details?: { status?: number; cause?: unknown });
  readonly name: 'SessionError';
  /** MAGE's reason string (or the server's or the client's, see ErrorReason). */
  readonly reason: ErrorReason;
  /** The HTTP status of the server's answer, or null when there was none. */
  readonly status: number | null;
}

/** A JSON value, as session data holds. */
export type Json = null | boolean | number | string | Json[] | { [name: string]: Json };

/** The session that `session.set` tells about. */
export interface SessionInfo {
  /** The full key `actorId:secret`. */
  key: string;
  /** The public session id. */
  id: string;
  actorId: string;
  language: string;
  /** Unix milliseconds. */
  expiresAt: number;
  /** After `restore`, the session's data; absent on events from the stream. */
  data?: Record<string, Json>;
  createdAt?: number;
  revision?: number;
  nodeId?: string;
  version?: string;
  deadline?: number;
}

/** What `restore` resolves with: the server's session, with the key. */
export interface RestoredSession extends SessionInfo {
  data: Record<string, Json>;
  createdAt: number;
  revision: number;
}

export type EventName =
  | 'session.set'
  | 'session.unset'
  | 'session.lagged'
  | 'session.reset'
  | 'stream.open'
  | 'stream.retry';

/**
 * Why a reconnected stream could not replay what it missed: `otherServer`
 * (another server process: a restart, or another node), `unknownId`.
 */
export type ResetReason = 'otherServer' | 'unknownId' | (string & {});

export interface EventPayloads {
  'session.set': SessionInfo;
  'session.unset': UnsetReason;
  'session.lagged': { missed: number };
  'session.reset': { reason: ResetReason };
  'stream.open': { key: string };
  'stream.retry': { attempt: number; delay: number; error: SessionError | null };
}

/** MAGE's eventManager handler: the event's name, then its payload. */
export type Handler<E extends EventName> = (path: E, payload: EventPayloads[E]) => void;

/** MAGE's callback: `err` null on success. */
export type Callback<T = void> = (err: SessionError | null, result?: T) => void;

/** `localStorage`, or anything with the same three methods. */
export interface KeyStorage {
  getItem(name: string): string | null;
  setItem(name: string, value: string): void;
  removeItem(name: string): void;
}

export interface ReconnectOptions {
  /** First delay, in milliseconds [default: 500]. */
  initialDelay?: number;
  /** Largest delay [default: 30000]. */
  maxDelay?: number;
  /** Growth per attempt [default: 2]. */
  factor?: number;
  /** Up to this share of each delay is cut at random [default: 0.5]. */
  jitter?: number;
}

export interface ClientOptions {
  /** The sessiondb server, e.g. `https://sessions.example.com`. */
  baseUrl: string;
  /** Where to keep the key across page loads (`localStorage`); none by default. */
  storage?: KeyStorage | null;
  /** The storage item's name [default: `sessionKey`]. */
  storageKey?: string;
  /** Follow the session's events while a key is in use [default: true]. */
  follow?: boolean;
  /** Milliseconds before a call fails with `timeout` [default: 10000]. */
  timeout?: number;
  reconnect?: ReconnectOptions;
  /** The fetch to use [default: the global one]. */
  fetch?: typeof fetch;
}

export declare class SessionClient {
  constructor(options: ClientOptions);
  /** The session key in use (MAGE's `getKey`), or null. */
  getKey(): string | null;
  /** The key the storage holds, or null. */
  storedKey(): string | null;
  /** Resolves when `sessionKey` names a live session; rejects with the reason otherwise. */
  isValid(sessionKey: string, callback?: Callback): Promise<void>;
  /** Restores the session: uses its key, emits `session.set`, follows its events. */
  restore(sessionKey: string, callback?: Callback<RestoredSession>): Promise<RestoredSession>;
  /** Uses `sessionKey` without asking the server (MAGE's `setSessionKey`). */
  setSessionKey(sessionKey: string, callback?: Callback): Promise<void>;
  /** Ends the session: `session.unset` with `loggedOut`. */
  logout(callback?: Callback): Promise<void>;
  /** Ends the player's other sessions [reason default: `loggedOut`]; resolves with how many. */
  expireOthers(reason?: UnsetReason, callback?: Callback<number>): Promise<number>;
  expireOthers(callback: Callback<number>): Promise<number>;
  /** The data value `name`, or undefined when the session has none. */
  getData<T extends Json = Json>(name: string, callback?: Callback<T | undefined>): Promise<T | undefined>;
  /** Sets the data value `name`; `undefined` deletes it (MAGE). */
  setData(name: string, value: Json | undefined, callback?: Callback): Promise<void>;
  setData(name: string, callback: Callback): Promise<void>;
  /** Deletes the data value `name`. */
  delData(name: string, callback?: Callback): Promise<void>;
  /** Adds a handler; returns a function that removes it. */
  on<E extends EventName>(name: E, handler: Handler<E>): () => void;
  off<E extends EventName>(name: E, handler: Handler<E>): void;
  /** Stops following events; the key stays in use. */
  close(): void;
}

/** `new SessionClient(options)`. */
export declare function createClient(options: ClientOptions): SessionClient;

/** Reads server-sent events from text chunks, keeping the last event id. */
export declare class SseParser {
  /** The last event id of the stream so far, or null. */
  lastEventId: string | null;
  /** The messages completed: events, and id-only messages as `{event: '', data: '', id}`. */
  push(chunk: string): { event: string; data: string; id: string | null }[];
}

/** The delay before reconnection `attempt` (0-based). */
export declare function backoffDelay(attempt: number, options?: ReconnectOptions, random?: () => number): number;
