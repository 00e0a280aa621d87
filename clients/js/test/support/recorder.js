// Records a client's events, and waits for them with a timeout.

import { EVENTS } from '../../src/index.js';

export class Recorder {
  /** Every event so far: `{name, payload}`. */
  events = [];
  #taken = new Set();
  #waiters = [];

  constructor(client) {
    for (const name of EVENTS) {
      client.on(name, (path, payload) => {
        this.events.push({ name: path, payload });
        this.#check();
      });
    }
  }

  /** Resolves with the payload of the first `name` event not taken yet. */
  take(name, timeout = 15_000) {
    return new Promise((resolve, reject) => {
      const waiter = { name, resolve };
      waiter.timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`no ${name} within ${timeout} ms; heard ${JSON.stringify(this.events)}`));
      }, timeout);
      this.#waiters.push(waiter);
      this.#check();
    });
  }

  /** How many `name` events were heard. */
  count(name) {
    return this.events.filter((e) => e.name === name).length;
  }

  /** The payloads of the `name` events heard. */
  payloads(name) {
    return this.events.filter((e) => e.name === name).map((e) => e.payload);
  }

  #check() {
    for (const waiter of [...this.#waiters]) {
      const index = this.events.findIndex((e, i) => e.name === waiter.name && !this.#taken.has(i));
      if (index !== -1) {
        this.#taken.add(index);
        clearTimeout(waiter.timer);
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        waiter.resolve(this.events[index].payload);
      }
    }
  }
}

/** An in-memory `localStorage`. */
export class MemoryStorage {
  items = new Map();

  getItem(name) {
    return this.items.has(name) ? this.items.get(name) : null;
  }

  setItem(name, value) {
    this.items.set(name, String(value));
  }

  removeItem(name) {
    this.items.delete(name);
  }
}

/** Resolves with `fn`'s callback arguments, `fn` being called with a callback. */
export function viaCallback(fn) {
  return new Promise((resolve) => {
    const returned = fn((...args) => resolve({ args, returned }));
  });
}

/** Waits until `check()` holds, polling; fails after `timeout`. */
export async function until(what, check, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await check()) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: not within ${timeout} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
