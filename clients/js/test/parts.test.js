// The client's parts that need no server: the SSE parser and the backoff.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { KEY_REASONS, SseParser, UNSET_REASONS, backoffDelay } from '../src/index.js';

describe('SseParser', { timeout: 10_000 }, () => {
  it('reads events split anywhere, with any line ending, skipping comments', () => {
    const text =
      ': keep-alive\n\nevent: session.set\ndata: {"id":"A"}\n\n' +
      'event: session.lagged\r\ndata: {"missed":3}\r\n\r\n' +
      'event: session.unset\rdata: {"reason":\rdata: "banned"}\r\r\n';
    for (const size of [1, 2, 3, 7, text.length]) {
      const parser = new SseParser();
      const events = [];
      for (let i = 0; i < text.length; i += size) {
        events.push(...parser.push(text.slice(i, i + size)));
      }
      assert.deepEqual(
        events,
        [
          { event: 'session.set', data: '{"id":"A"}', id: null },
          { event: 'session.lagged', data: '{"missed":3}', id: null },
          { event: 'session.unset', data: '{"reason":\n"banned"}', id: null },
        ],
        `chunks of ${size}`,
      );
    }
  });

  it('keeps an unfinished event until its blank line', () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push('event: session.set\ndata: {}\n'), []);
    assert.deepEqual(parser.push('\n'), [{ event: 'session.set', data: '{}', id: null }]);
  });

  it('keeps the last event id as the SSE standard does, id-only messages included', () => {
    const parser = new SseParser();
    assert.equal(parser.lastEventId, null);
    const out = parser.push(
      'id: e-0\n\n' + // an id-only message: the stream's position
        'id: e-1\nevent: session.set\ndata: {}\n\n' +
        'event: session.lagged\ndata: {}\n\n' + // no id: the last one holds
        'id: bad\u0000id\nevent: session.unset\ndata: {}\n\n', // a NUL: ignored
    );
    assert.deepEqual(out, [
      { event: '', data: '', id: 'e-0' },
      { event: 'session.set', data: '{}', id: 'e-1' },
      { event: 'session.lagged', data: '{}', id: 'e-1' },
      { event: 'session.unset', data: '{}', id: 'e-1' },
    ]);
    assert.equal(parser.lastEventId, 'e-1');
    // An id is kept only once its message is complete.
    assert.deepEqual(parser.push('id: e-2\n'), []);
    assert.equal(parser.lastEventId, 'e-1');
    assert.deepEqual(parser.push('\n'), [{ event: '', data: '', id: 'e-2' }]);
    assert.equal(parser.lastEventId, 'e-2');
  });
});

describe('backoffDelay', { timeout: 10_000 }, () => {
  it('doubles from the initial delay up to the cap, cut by at most the jitter', () => {
    const options = { initialDelay: 100, maxDelay: 1000, factor: 2, jitter: 0.5 };
    const top = [0, 1, 2, 3, 4, 5, 50, 5000].map((n) => backoffDelay(n, options, () => 0));
    assert.deepEqual(top, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
    const bottom = [0, 1, 4].map((n) => backoffDelay(n, options, () => 1));
    assert.deepEqual(bottom, [50, 100, 500]);
    for (let i = 0; i < 100; i += 1) {
      const d = backoffDelay(3, options);
      assert.ok(d >= 400 && d <= 800, `${d}`);
    }
    // The defaults: 500 ms doubling to 30 s.
    assert.equal(backoffDelay(0, undefined, () => 0), 500);
    assert.equal(backoffDelay(20, undefined, () => 0), 30_000);
  });
});

it('exports MAGE\'s reason strings', { timeout: 10_000 }, () => {
  assert.deepEqual([...UNSET_REASONS], ['expired', 'loggedOut', 'replaced', 'reassigned', 'rotated']);
  assert.deepEqual([...KEY_REASONS], ['invalidSessionKey', 'noSession', 'keyMismatch', 'badVersion', 'expired']);
});
