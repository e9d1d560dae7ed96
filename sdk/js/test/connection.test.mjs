// The connection state machine against a real socket: connect, reconnect policy per close code,
// heartbeat timeout, token refresh, browser online/offline and visibility signals.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Aviary, AviaryError } from '../dist/esm/index.js';
import { FakeServer } from './fake-server.mjs';
import { client, next, states } from './helpers.mjs';

let server;
before(async () => {
  server = await new FakeServer().start();
});
after(() => server.stop());

test('connects with a token from getToken and reports connecting then connected', async (t) => {
  const c = client(server);
  t.after(() => c.close());
  const seen = states(c);
  const connected = await next(c, 'connected');
  assert.deepEqual(seen, ['connecting', 'connected']);
  assert.equal(c.state, 'connected');
  assert.equal(connected.transport, 'websocket');
  assert.equal(connected.clientId, `client-${c.tokenCalls[0]}`);
  assert.equal(c.tokenCalls.length, 1);
  const frame = await server.waitFrame((f) => f.type === 'connect' && f.token === c.tokenCalls[0]);
  assert.equal(frame.token, c.tokenCalls[0]);
});

test('url without a path connects to /v1/connect; http(s) urls become ws(s)', async (t) => {
  const c = client(server, { url: server.httpUrl + '/' });
  t.after(() => c.close());
  await next(c, 'connected');
});

test('a dropped socket goes disconnected, reconnecting, connecting, connected with a fresh token', async (t) => {
  const c = client(server);
  t.after(() => c.close());
  await next(c, 'connected');
  const seen = states(c);
  const disconnected = next(c, 'disconnected');
  const reconnecting = next(c, 'reconnecting');
  server.dropAll();
  const d = await disconnected;
  assert.equal(d.willReconnect, true);
  assert.equal(d.reason.code, 'connection_lost');
  const r = await reconnecting;
  assert.equal(r.attempt, 1);
  assert.ok(r.delayMs >= 0 && r.delayMs < 20);
  await next(c, 'connected');
  assert.deepEqual(seen, ['disconnected', 'reconnecting', 'connecting', 'connected']);
  assert.equal(c.tokenCalls.length, 2, 'getToken is called on every connect');
});

test('backoff grows while connections keep failing, and resets after a stable period', async (t) => {
  const refusing = await new FakeServer({ auth: () => ({ closeCode: 1011, reason: 'overloaded', reconnect: true }) }).start();
  t.after(() => refusing.stop());
  const c = client(refusing, { random: () => 0.999, backoff: { initialDelayMs: 4, maxDelayMs: 40 } });
  t.after(() => c.close());
  const delays = [];
  await next(c, 'reconnecting', ({ delayMs }) => delays.push(delayMs) === 6);
  assert.deepEqual(delays, [3, 7, 15, 31, 39, 39]);

  // Against a server that accepts: a quick second drop keeps counting attempts…
  const c2 = client(server, { heartbeatIntervalMs: 50, backoff: { initialDelayMs: 20, maxDelayMs: 200, stableAfterMs: 10 } });
  t.after(() => c2.close());
  await next(c2, 'connected');
  server.dropAll();
  assert.equal((await next(c2, 'reconnecting')).attempt, 1);
  await next(c2, 'connected');
  server.dropAll();
  assert.equal((await next(c2, 'reconnecting')).attempt, 2);
  await next(c2, 'connected');
  // …while a connection that lived past stableAfterMs (a heartbeat ping comes 50 ms after
  // connecting) starts over from the first window.
  const conn = [...server.conns].at(-1);
  await server.waitNextFrame((f, from) => f.type === 'ping' && from === conn);
  server.dropAll();
  assert.equal((await next(c2, 'reconnecting')).attempt, 1);
});

test('disconnect with reconnect:false fails the client for good', async (t) => {
  const c = client(server);
  t.after(() => c.close());
  await next(c, 'connected');
  const failed = next(c, 'failed');
  server.closeAll(4009, 'connection quota exceeded', { reconnect: false });
  const { reason } = await failed;
  assert.ok(reason instanceof AviaryError);
  assert.equal(reason.code, 'quota_exceeded');
  assert.equal(reason.closeCode, 4009);
  assert.equal(c.state, 'failed');
  await assert.rejects(c.channel('x').publish(1), (e) => e.code === 'quota_exceeded');
});

test('close 4003 forbidden is fatal; 4008 slow consumer reconnects', async (t) => {
  const c = client(server);
  t.after(() => c.close());
  await next(c, 'connected');
  const reconnecting = next(c, 'reconnecting');
  server.closeAll(4008, 'slow consumer');
  await reconnecting;
  await next(c, 'connected');
  const failed = next(c, 'failed');
  server.closeAll(4003, 'forbidden');
  assert.equal((await failed).reason.code, 'forbidden');
});

test('close 4002 token expired fetches a new token and reconnects', async (t) => {
  const c = client(server);
  t.after(() => c.close());
  await next(c, 'connected');
  const d = next(c, 'disconnected');
  server.closeAll(4002, 'token expired');
  assert.equal((await d).reason.code, 'token_expired');
  await next(c, 'connected');
  assert.equal(c.tokenCalls.length, 2);
  const last = c.tokenCalls.at(-1);
  await server.waitFrame((f) => f.type === 'connect' && f.token === last);
});

test('two invalid-token closes in a row fail the client instead of looping', async (t) => {
  const c = client(server, { getToken: async () => 'not-a-valid-token' });
  t.after(() => c.close());
  const failed = await next(c, 'failed');
  assert.equal(failed.reason.code, 'invalid_token');
});

test('a token refused with 4001 (reconnect:false) gets one retry with a fresh token', async (t) => {
  let n = 0;
  const c = client(server, { getToken: async () => (++n === 1 ? 'revoked-token' : `tok-fresh-${n}`) });
  t.after(() => c.close());
  const d = await next(c, 'disconnected');
  assert.equal(d.reason.code, 'invalid_token');
  assert.equal(d.willReconnect, true);
  await next(c, 'connected');
  assert.equal(n, 2);
});

test('getToken failures are reported and retried with backoff', async (t) => {
  let calls = 0;
  const c = client(server, {
    getToken: async () => {
      calls += 1;
      if (calls < 3) throw new Error('backend down');
      return 'tok-retry';
    },
  });
  t.after(() => c.close());
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await next(c, 'connected');
  assert.equal(calls, 3);
  assert.equal(errors.length, 2);
  assert.equal(errors[0].code, 'token_error');
});

test('refreshes the token in place before it expires, without reconnecting', async (t) => {
  const short = await new FakeServer({ tokenTtlMs: 400 }).start();
  t.after(() => short.stop());
  const c = client(short, { refreshMarginMs: 200 });
  t.after(() => c.close());
  await next(c, 'connected');
  const seen = states(c);
  const refreshed = await next(c, 'refreshed');
  assert.ok(refreshed.expiresAt > Date.now());
  const frame = await short.waitFrame((f) => f.type === 'refresh');
  assert.equal(frame.token, c.tokenCalls[1]);
  // And again before the new expiry: the connection outlives several token lifetimes.
  await next(c, 'refreshed');
  assert.deepEqual(seen, [], 'no state change: the connection was never dropped');
  assert.equal(short.connections, 1);
});

test('silence past the heartbeat interval sends a ping; no answer drops and reconnects', async (t) => {
  const c = client(server, { heartbeatIntervalMs: 60, heartbeatTimeoutMs: 60 });
  t.after(() => {
    server.paused = false;
    c.close();
  });
  await next(c, 'connected');
  // An answered ping keeps the connection.
  await server.waitNextFrame((f) => f.type === 'ping');
  await server.waitNextFrame((f) => f.type === 'ping');
  assert.equal(c.state, 'connected');
  server.paused = true;
  const d = await next(c, 'disconnected');
  assert.match(d.reason.message, /heartbeat/);
  server.paused = false;
  await next(c, 'connected');
});

test('offline waits without timers; online reconnects at once; visible skips the backoff wait', async (t) => {
  const platform = fakePlatform();
  const c = client(server, { platform, backoff: { initialDelayMs: 60_000 }, random: () => 0.999 });
  t.after(() => c.close());
  await next(c, 'connected');
  const seen = states(c);
  platform.online = false;
  platform.fire('offline');
  assert.equal(c.state, 'disconnected');
  assert.deepEqual(seen, ['disconnected']);
  platform.online = true;
  platform.fire('online');
  await next(c, 'connected');
  assert.deepEqual(seen, ['disconnected', 'connecting', 'connected']);

  // With a 60 s backoff pending, the page becoming visible tries straight away.
  server.dropAll();
  const r = await next(c, 'reconnecting');
  assert.ok(r.delayMs > 1000);
  platform.fire('visible');
  await next(c, 'connected');
});

test('close() ends everything: state closed, no reconnect, pending work rejected', async (t) => {
  const c = client(server);
  await next(c, 'connected');
  server.paused = true;
  t.after(() => {
    server.paused = false;
  });
  const history = c.channel('close-me').history();
  const closed = next(c, 'closed');
  c.close();
  await closed;
  server.paused = false;
  await assert.rejects(history, (e) => e.code === 'closed');
  assert.equal(c.state, 'closed');
  await assert.rejects(c.whenConnected(), (e) => e.code === 'closed');
});

test('requests time out with a typed error when the server does not answer', async (t) => {
  const c = client(server, { requestTimeoutMs: 50, heartbeatIntervalMs: 60_000 });
  t.after(() => {
    server.paused = false;
    c.close();
  });
  await next(c, 'connected');
  server.paused = true;
  await assert.rejects(c.channel('slow').presence.get(), (e) => e.code === 'timeout');
});

test('constructor validates its options', () => {
  assert.throws(() => new Aviary({}), TypeError);
  assert.throws(() => new Aviary({ url: 'ws://x' }), TypeError);
});

function fakePlatform() {
  const listeners = { online: new Set(), offline: new Set(), visible: new Set() };
  const on = (kind) => (fn) => {
    listeners[kind].add(fn);
    return () => listeners[kind].delete(fn);
  };
  return {
    online: true,
    isOnline() {
      return this.online;
    },
    onOnline: on('online'),
    onOffline: on('offline'),
    onVisible: on('visible'),
    fire(kind) {
      for (const fn of listeners[kind]) fn();
    },
  };
}

test('a server that never answers connect is abandoned after connectTimeoutMs', async (t) => {
  const silent = await new FakeServer().start();
  t.after(() => silent.stop());
  silent.paused = true;
  const c = client(silent, { connectTimeoutMs: 80 });
  t.after(() => c.close());
  const d = await next(c, 'disconnected');
  assert.equal(d.reason.code, 'timeout');
  assert.equal(d.willReconnect, true);
  silent.paused = false;
  await next(c, 'connected');
});

test('1001 (node draining) reconnects with the first backoff window, not a grown one', async (t) => {
  const c = client(server, { random: () => 0.999, backoff: { initialDelayMs: 10, maxDelayMs: 60_000 } });
  t.after(() => c.close());
  await next(c, 'connected');
  // Grow the attempt count first with quick drops.
  for (let i = 0; i < 3; i++) {
    server.dropAll();
    await next(c, 'connected');
  }
  const r = next(c, 'reconnecting');
  server.closeAll(1001, 'node draining', { reconnect: true });
  const { attempt, delayMs } = await r;
  assert.equal(attempt, 1);
  assert.ok(delayMs < 10);
  await next(c, 'connected');
});

test('close() while getToken is pending opens no connection', async (t) => {
  let release;
  const c = client(server, { getToken: () => new Promise((resolve) => (release = resolve)) });
  await next(c, 'connecting');
  const before = server.connections;
  c.close();
  release('tok-late');
  // A later, independent connection proves the late token was not used in between.
  const other = client(server);
  t.after(() => other.close());
  await next(other, 'connected');
  assert.equal(server.connections, before + 1);
  assert.equal(c.state, 'closed');
});
