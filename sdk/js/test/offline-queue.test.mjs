// The offline queue: publishes made while disconnected wait (bounded) and go out on reconnect
// with their original idempotency keys; a publish whose answer was lost is resent and stored once.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { FakeServer } from './fake-server.mjs';
import { client, collector, next } from './helpers.mjs';

let server;
before(async () => {
  server = await new FakeServer().start();
});
after(() => server.stop());

let seq = 0;
const unique = (prefix) => `${prefix}-${++seq}`;

function offlinePlatform() {
  const fns = { online: new Set(), offline: new Set() };
  return {
    online: true,
    isOnline() {
      return this.online;
    },
    onOnline: (fn) => (fns.online.add(fn), () => fns.online.delete(fn)),
    onOffline: (fn) => (fns.offline.add(fn), () => fns.offline.delete(fn)),
    onVisible: () => () => {},
    set(online) {
      this.online = online;
      for (const fn of fns[online ? 'online' : 'offline']) fn();
    },
  };
}

test('publishes made while offline are sent in order on reconnect, keeping their keys', async (t) => {
  const name = unique('queued');
  const platform = offlinePlatform();
  const c = client(server, { platform });
  t.after(() => c.close());
  const got = collector();
  await c.channel(name).subscribe(got);
  platform.set(false);
  assert.equal(c.state, 'disconnected');
  const keys = ['k-a', 'k-b', 'k-c'];
  const results = keys.map((k, i) => c.channel(name).publish(i, { idempotencyKey: k }));
  const auto = c.channel(name).publish(3);
  assert.equal(c.queuedPublishes, 4);
  platform.set(true);
  const positions = await Promise.all([...results, auto]);
  assert.deepEqual(
    positions.map((p) => p.offset),
    [1, 2, 3, 4],
  );
  const frames = server.frames.filter((f) => f.frame.type === 'publish' && f.frame.channel === name).map((f) => f.frame);
  assert.deepEqual(
    frames.slice(0, 3).map((f) => f.idempotency_key),
    keys,
  );
  await got.until(4);
  assert.deepEqual(
    got.items.map((m) => m.data),
    [0, 1, 2, 3],
  );
  assert.equal(c.queuedPublishes, 0);
});

test('a publish whose answer was lost with the connection is resent with the same key and stored once', async (t) => {
  const name = unique('inflight');
  let dropped = false;
  const lossy = await new FakeServer({
    intercept: (frame, conn) => {
      if (frame.type === 'publish' && !dropped) {
        dropped = true;
        // Stored, but the socket dies before the answer goes out.
        lossy.publish(frame.channel, frame.data, { key: frame.idempotency_key });
        conn.ws.terminate();
        return { code: 'internal', message: 'never sent' };
      }
      return null;
    },
  }).start();
  t.after(() => lossy.stop());
  const c = client(lossy);
  t.after(() => c.close());
  await next(c, 'connected');
  const position = await c.channel(name).publish({ text: 'once' });
  assert.equal(position.offset, 1);
  const publishes = lossy.frames.filter((f) => f.frame.type === 'publish').map((f) => f.frame.idempotency_key);
  assert.equal(publishes.length, 2);
  assert.equal(publishes[0], publishes[1]);
  assert.equal(lossy.channel(name).history.length, 1);
});

test('the queue is bounded: overflow rejects with queue_full', async (t) => {
  const platform = offlinePlatform();
  platform.online = false;
  const c = client(server, { platform, offlineQueueSize: 2 });
  t.after(() => c.close());
  const a = c.channel('bounded').publish(1);
  const b = c.channel('bounded').publish(2);
  await assert.rejects(c.channel('bounded').publish(3), (e) => e.code === 'queue_full');
  c.close();
  await assert.rejects(a, (e) => e.code === 'closed');
  await assert.rejects(b, (e) => e.code === 'closed');
});

test('queue:false rejects at once while disconnected', async (t) => {
  const platform = offlinePlatform();
  platform.online = false;
  const c = client(server, { platform });
  t.after(() => c.close());
  await assert.rejects(c.channel('now-or-never').publish(1, { queue: false }), (e) => e.code === 'disconnected');
});

test('publishes keep their order across a drop with some in flight', async (t) => {
  const name = unique('order');
  const c = client(server, { backoff: { initialDelayMs: 2, maxDelayMs: 5 } });
  t.after(() => c.close());
  const got = collector();
  await c.channel(name).subscribe(got);
  const all = [];
  for (let i = 0; i < 50; i++) {
    all.push(c.channel(name).publish(i));
    if (i === 20) server.dropAll();
  }
  await Promise.all(all);
  await got.until(50);
  assert.deepEqual(
    got.items.map((m) => m.data),
    Array.from({ length: 50 }, (_, i) => i),
  );
});
