import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SseParser } from '../dist/esm/index.js';

function parse(chunks) {
  const events = [];
  const p = new SseParser((e) => events.push(e));
  for (const c of chunks) p.feed(c);
  return events;
}

test('parses events with id, event name and multi-line data', () => {
  const events = parse(['id: 7\nevent: message\ndata: {"a":1}\ndata: x\n\n']);
  assert.deepEqual(events, [{ event: 'message', data: '{"a":1}\nx', id: '7' }]);
});

test('events split across chunks and CRLF line endings', () => {
  // A CR ending a chunk may be half of a CRLF, so "world" is only complete once more text comes.
  const events = parse(['data: he', 'llo\r', '\n\r\n', 'data: world\r\r', 'data: more\n\n']);
  assert.deepEqual(
    events.map((e) => e.data),
    ['hello', 'world', 'more'],
  );
});

test('comments (heartbeats) and empty events dispatch nothing', () => {
  assert.deepEqual(parse([': heartbeat\n\n', 'id: 3\n\n']), []);
});

test('default event name is message and id is null when absent', () => {
  assert.deepEqual(parse(['data:x\n\n']), [{ event: 'message', data: 'x', id: null }]);
});
