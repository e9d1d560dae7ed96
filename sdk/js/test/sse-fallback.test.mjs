// The SSE fallback: receive over an event stream read with fetch (token in Authorization, never
// in the URL), resume with Last-Event-ID, publish through the app's `publishFallback`, and the
// automatic switch when WebSockets cannot connect at all.
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

test('receives over SSE with the token in the Authorization header', async (t) => {
  const name = unique('sse');
  const c = client(server, { transports: ['sse'] });
  t.after(() => c.close());
  const got = collector();
  const connected = next(c, 'connected');
  await c.channel(name).subscribe(got);
  assert.equal((await connected).transport, 'sse');
  server.publish(name, 'hello');
  const [m] = await got.until(1);
  assert.equal(m.data, 'hello');
  const req = server.sseRequests.at(-1);
  assert.equal(req.url.searchParams.get('channels'), name);
  assert.equal(req.url.searchParams.get('token'), null);
  assert.match(req.headers.authorization, /^Bearer tok-/);
});

test('a broken stream resumes with Last-Event-ID: missed messages once, in order', async (t) => {
  const name = unique('sse-resume');
  const c = client(server, { transports: ['sse'] });
  t.after(() => c.close());
  const got = collector();
  await c.channel(name).subscribe(got);
  server.publish(name, 1);
  await got.until(1);
  server.dropSse();
  await next(c, 'disconnected');
  server.publish(name, 2);
  server.publish(name, 3);
  await next(c, 'connected');
  server.publish(name, 4);
  await got.until(4);
  assert.deepEqual(
    got.items.map((m) => m.data),
    [1, 2, 3, 4],
  );
  assert.match(server.sseRequests.at(-1).headers['last-event-id'], /^v1\./);
});

test('subscribing another channel reopens the stream with both, resuming the first', async (t) => {
  const a = unique('sse-a');
  const b = unique('sse-b');
  const c = client(server, { transports: ['sse'] });
  t.after(() => c.close());
  const gotA = collector();
  const gotB = collector();
  await c.channel(a).subscribe(gotA);
  server.publish(a, 'a1');
  await gotA.until(1);
  await c.channel(b).subscribe(gotB);
  assert.deepEqual(server.sseRequests.at(-1).url.searchParams.get('channels').split(',').sort(), [a, b].sort());
  server.publish(a, 'a2');
  server.publish(b, 'b1');
  await gotA.until(2);
  await gotB.until(1);
  assert.deepEqual(
    gotA.items.map((m) => m.data),
    ['a1', 'a2'],
  );
});

test('publishing on SSE goes through publishFallback with an idempotency key', async (t) => {
  const calls = [];
  const c = client(server, {
    transports: ['sse'],
    publishFallback: async (p) => {
      calls.push(p);
      return server.publish(p.channel, p.data, { key: p.idempotencyKey });
    },
  });
  t.after(() => c.close());
  await c.channel(unique('sse-pub')).subscribe(() => {});
  const position = await c.channel('via-backend').publish({ x: 1 });
  assert.equal(position.offset, 1);
  assert.equal(calls.length, 1);
  assert.match(calls[0].idempotencyKey, /^[0-9a-f]{32}$/);
  await assert.rejects(c.channel('via-backend').history(), (e) => e.code === 'unsupported');
  await assert.rejects(c.channel('via-backend').presence.enter('x'), (e) => e.code === 'unsupported');

  const bare = client(server, { transports: ['sse'] });
  t.after(() => bare.close());
  await bare.channel(unique('sse-bare')).subscribe(() => {});
  await assert.rejects(bare.channel('x').publish(1), (e) => e.code === 'unsupported');
});

test('falls back to SSE when WebSocket attempts never open', async (t) => {
  const name = unique('blocked');
  // Upgrades to this path are refused, as a proxy that blocks WebSockets would.
  const c = client(server, { url: server.url + '/blocked/connect', sseUrl: server.httpUrl + '/v1/sse' });
  t.after(() => c.close());
  const got = collector();
  const sub = c.channel(name).subscribe(got);
  const connected = await next(c, 'connected');
  assert.equal(connected.transport, 'sse');
  await sub;
  server.publish(name, 'through sse');
  await got.until(1);
});

test('a stream refused with 401 fetches a new token', async (t) => {
  let n = 0;
  const c = client(server, { transports: ['sse'], getToken: async () => (++n === 1 ? 'bad' : `tok-sse-${n}`) });
  t.after(() => c.close());
  await c.channel(unique('sse-auth')).subscribe(() => {});
  assert.equal(n, 2);
});

test('a channel subscribed while the stream is opening is added once it is open', async (t) => {
  const a = unique('sse-early-a');
  const b = unique('sse-early-b');
  const c = client(server, { transports: ['sse'], autoConnect: false });
  t.after(() => c.close());
  const gotA = collector();
  const gotB = collector();
  const first = c.channel(a).subscribe(gotA);
  // b is added while the request for the [a] stream is in flight.
  const requested = new Promise((resolve) => server.once('sse', resolve));
  c.connect();
  await requested;
  const second = c.channel(b).subscribe(gotB);
  await Promise.all([first, second]);
  server.publish(b, 'b1');
  await gotB.until(1);
});
