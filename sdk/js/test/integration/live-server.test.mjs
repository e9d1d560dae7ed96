// Integration tests against a real `aviary dev` server. Both are required:
//   AVIARY_URL             e.g. http://127.0.0.1:7070 (WebSocket /v1/connect and SSE /v1/sse live there)
//   AVIARY_DEMO_TOKEN_URL  e.g. http://127.0.0.1:7070/demo/token (POST {"client_id"} -> {"token","expires_at"})
// Without them the suite FAILS (a run that tested nothing must not read as a pass), unless
// skipping is asked for explicitly with AVIARY_SKIP_INTEGRATION=1.
// Optional:
//   AVIARY_TEST_CHANNEL_PREFIX  namespace the demo token may use (default "chat:")
//   AVIARY_TEST_ROUNDS          forced disconnects in the loss/duplication test (default 10)
//
// Connections to cut go through an in-process TCP proxy, so "the network dropped" is real: the
// server sees a dead socket, the client sees a close without a handshake.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createConnection, createServer } from 'node:net';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { Aviary } from '../../dist/esm/index.js';

const AVIARY_URL = process.env.AVIARY_URL;
const TOKEN_URL = process.env.AVIARY_DEMO_TOKEN_URL;
const PREFIX = process.env.AVIARY_TEST_CHANNEL_PREFIX ?? 'chat:';
const ROUNDS = Number(process.env.AVIARY_TEST_ROUNDS ?? 10);
const configured = Boolean(AVIARY_URL && TOKEN_URL);
const skipAsked = process.env.AVIARY_SKIP_INTEGRATION === '1';
const skip = configured
  ? false
  : skipAsked
    ? 'skipped on request (AVIARY_SKIP_INTEGRATION=1)'
    : 'AVIARY_URL and AVIARY_DEMO_TOKEN_URL are not set';
if (skip) console.log(`integration tests skipped: ${skip}`);

test('the suite is pointed at a real server (or told to skip)', { skip: configured || skipAsked }, () => {
  assert.fail(
    'set AVIARY_URL and AVIARY_DEMO_TOKEN_URL to run against a real `aviary dev` (see the header of this file), ' +
      'or AVIARY_SKIP_INTEGRATION=1 to skip these tests on purpose',
  );
});

const channelName = (what) => `${PREFIX}it-${what}-${randomBytes(4).toString('hex')}`;

async function mintToken(clientId, extra = {}) {
  const res = await fetch(TOKEN_URL, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_id: clientId, ...extra }),
  });
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}: ${await res.text()}`);
  return res.json();
}

function connect(name, options = {}) {
  const c = new Aviary({
    url: AVIARY_URL,
    WebSocket,
    getToken: async () => (await mintToken(name)).token,
    backoff: { initialDelayMs: 50, maxDelayMs: 500 },
    ...options,
  });
  return c;
}

function next(emitter, event, pred = () => true, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`timed out waiting for '${event}'`))), timeoutMs);
    const off = emitter.on(event, (p) => {
      if (!pred(p)) return;
      clearTimeout(timer);
      off();
      resolve(p);
    });
  });
}

function collector() {
  const items = [];
  let waiter = null;
  const fn = (m) => {
    items.push(m);
    if (waiter && items.length >= waiter.n) waiter.resolve();
  };
  fn.items = items;
  fn.until = (n, timeoutMs = 20_000) =>
    items.length >= n
      ? Promise.resolve()
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`received ${items.length} of ${n}`)), timeoutMs);
          waiter = { n, resolve: () => (clearTimeout(timer), resolve()) };
        });
  return fn;
}

/** A TCP proxy in front of the server that can cut every connection or refuse new ones. */
class CuttingProxy {
  constructor(target) {
    this.target = new URL(target);
    this.pairs = new Set();
    this.offline = false;
  }
  async start() {
    this.server = createServer((client) => {
      if (this.offline) return client.destroy();
      const port = Number(this.target.port || (this.target.protocol === 'https:' ? 443 : 80));
      const upstream = createConnection({ host: this.target.hostname, port });
      const pair = { client, upstream };
      this.pairs.add(pair);
      const drop = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream).pipe(client);
    });
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }
  stop() {
    this.cut();
    this.server.close();
  }
}

let proxy;
before(async () => {
  if (!skip) proxy = await new CuttingProxy(AVIARY_URL).start();
});
after(() => proxy?.stop());

test('publish and receive over WebSocket, with presence both ways', { skip }, async (t) => {
  const channel = channelName('basic');
  const a = connect('it-alice');
  const b = connect('it-bob');
  t.after(() => (a.close(), b.close()));
  const got = collector();
  const joined = next(b.channel(channel).presence, 'join', (m) => m.clientId === 'it-alice');
  await b.channel(channel).subscribe(got);
  await a.channel(channel).presence.enter({ name: 'alice' });
  assert.deepEqual((await joined).data, { name: 'alice' });
  const position = await a.channel(channel).publish({ text: 'hello' });
  assert.equal(typeof position.offset, 'number');
  await got.until(1);
  assert.deepEqual(got.items[0].data, { text: 'hello' });
  const members = await b.channel(channel).presence.get();
  assert.ok(members.some((m) => m.clientId === 'it-alice'), JSON.stringify(members));
  const left = next(b.channel(channel).presence, 'leave');
  await a.channel(channel).presence.leave();
  assert.equal((await left).clientId, 'it-alice');
});

test('forced disconnects mid-stream lose and duplicate nothing', { skip }, async (t) => {
  const channel = channelName('storm');
  const subscriber = connect('it-subscriber', { url: proxy.url });
  const publisher = connect('it-publisher');
  t.after(() => (subscriber.close(), publisher.close()));
  const got = collector();
  await subscriber.channel(channel).subscribe(got);
  await publisher.whenConnected();
  let sent = 0;
  let disconnects = 0;
  let discontinuities = 0;
  subscriber.channel(channel).on('discontinuity', () => discontinuities++);
  subscriber.on('disconnected', ({ reason }) => {
    disconnects++;
    if (process.env.AVIARY_TEST_DEBUG) console.log('disconnected', reason.code, reason.closeCode, reason.message);
  });
  if (process.env.AVIARY_TEST_DEBUG) {
    subscriber.on('statechange', ({ current }) => console.log('state', current));
    subscriber.channel(channel).on('subscribed', (e) => console.log('subscribed', JSON.stringify(e)));
    subscriber.on('discontinuity', (e) => console.log('discontinuity', JSON.stringify(e)));
  }
  for (let round = 0; round < ROUNDS; round++) {
    const batch = [];
    for (let i = 0; i < 20; i++) batch.push(publisher.channel(channel).publish({ n: ++sent }));
    const resubscribed = next(subscriber.channel(channel), 'subscribed');
    proxy.cut();
    for (let i = 0; i < 10; i++) batch.push(publisher.channel(channel).publish({ n: ++sent }));
    await Promise.all(batch);
    await resubscribed;
    // Let the replay finish before the next cut: cutting again mid-replay is fine for
    // correctness (the next resume asks again) but after enough rounds the channel's history no
    // longer reaches back, which the client reports as a discontinuity, not as loss.
    await got.until(sent);
  }
  await got.until(sent);
  const received = got.items.map((m) => m.data.n);
  const duplicates = received.length - new Set(received).size;
  t.diagnostic(
    `loss/duplication: sent ${sent}, received ${received.length}, duplicates ${duplicates}, ` +
      `forced disconnects ${disconnects}, discontinuities ${discontinuities}`,
  );
  assert.equal(discontinuities, 0);
  assert.equal(duplicates, 0);
  assert.deepEqual(
    received,
    Array.from({ length: sent }, (_, i) => i + 1),
  );
});

test('offline queue: publishes made while cut off arrive once after reconnecting', { skip }, async (t) => {
  const channel = channelName('queue');
  const publisher = connect('it-offline-publisher', { url: proxy.url });
  const subscriber = connect('it-offline-subscriber');
  t.after(() => {
    proxy.offline = false;
    publisher.close();
    subscriber.close();
  });
  const got = collector();
  await subscriber.channel(channel).subscribe(got);
  await publisher.whenConnected();
  proxy.offline = true;
  proxy.cut();
  await next(publisher, 'disconnected');
  const pending = [1, 2, 3, 4, 5].map((n) => publisher.channel(channel).publish({ n }));
  assert.ok(publisher.queuedPublishes >= 5);
  proxy.offline = false;
  await Promise.all(pending);
  await got.until(5);
  assert.deepEqual(
    got.items.map((m) => m.data.n),
    [1, 2, 3, 4, 5],
  );
});

test('the token is refreshed across exp without reconnecting', { skip }, async (t) => {
  // Needs short-lived tokens: the demo endpoint must accept {"ttl_s"} (it may refuse unknown fields).
  let probe;
  try {
    probe = await mintToken('it-refresh', { ttl_s: 6 });
  } catch (err) {
    t.skip(`the token endpoint does not accept {"ttl_s"} (${err.message.slice(0, 80)}); refresh is unit-tested`);
    return;
  }
  const ttl = (typeof probe.expires_at === 'number' ? probe.expires_at * 1000 : Date.parse(probe.expires_at)) - Date.now();
  if (!(ttl < 120_000)) {
    t.skip(`demo tokens live ${Math.round(ttl / 1000)} s; the token endpoint must honour {"ttl_s"} for this test`);
    return;
  }
  const c = connect('it-refresh', {
    getToken: async () => (await mintToken('it-refresh', { ttl_s: 6 })).token,
    refreshMarginMs: 3_000,
  });
  t.after(() => c.close());
  const disconnects = [];
  c.on('disconnected', (d) => disconnects.push(d));
  await c.whenConnected();
  const first = c.expiresAt;
  await next(c, 'refreshed', () => true, 15_000);
  await next(c, 'refreshed', () => true, 15_000);
  assert.ok(Date.now() > first, 'outlived the first token');
  assert.deepEqual(disconnects, []);
});

test('refresh round-trips with the real server (clock skewed to just before exp)', { skip }, async (t) => {
  // Demo tokens live minutes; a clock running ahead makes the client refresh within seconds, so
  // the refresh frame and its answer are checked against the real server without waiting.
  const probe = await mintToken('it-skew');
  const exp = typeof probe.expires_at === 'number' ? probe.expires_at * 1000 : Date.parse(probe.expires_at);
  const skew = exp - Date.now() - 8_000;
  const clock = {
    now: () => Date.now() + skew,
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (h) => clearTimeout(h),
  };
  const c = connect('it-skew', { clock });
  t.after(() => c.close());
  const disconnects = [];
  c.on('disconnected', (d) => disconnects.push(d));
  await c.whenConnected();
  const first = await next(c, 'refreshed', () => true, 15_000);
  // The refresh token was minted after the probe with the same lifetime: the expiry the server
  // answered cannot be earlier than the probe's.
  assert.equal(typeof first.expiresAt, 'number');
  assert.ok(first.expiresAt >= exp, `the server answered with the new token's expiry: ${first.expiresAt} < ${exp}`);
  await next(c, 'refreshed', () => true, 15_000);
  assert.deepEqual(disconnects, []);
  assert.equal(c.state, 'connected');
});

test('SSE transport receives and resumes', { skip }, async (t) => {
  const channel = channelName('sse');
  const reader = connect('it-sse', { url: proxy.url, transports: ['sse'] });
  const publisher = connect('it-sse-publisher');
  t.after(() => (reader.close(), publisher.close()));
  const got = collector();
  await reader.channel(channel).subscribe(got);
  await publisher.channel(channel).publish({ n: 1 });
  await got.until(1);
  proxy.cut();
  await publisher.channel(channel).publish({ n: 2 });
  await got.until(2);
  assert.deepEqual(
    got.items.map((m) => m.data.n),
    [1, 2],
  );
});
