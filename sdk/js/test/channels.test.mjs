// Channels: subscribe/publish, lossless resume with `since`, client-side dedupe, discontinuity,
// presence (events, sync, re-enter after reconnect), history, and typed errors from the server.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { FakeServer } from './fake-server.mjs';
import { client, collector, next } from './helpers.mjs';

let server;
before(async () => {
  server = await new FakeServer({ historySize: 5 }).start();
});
after(() => server.stop());

let seq = 0;
const unique = (prefix) => `${prefix}-${++seq}`;

// A client subscribed to a fresh channel named after `prefix`, closed when the test ends.
async function subscribed(t, prefix) {
  const name = unique(prefix);
  const c = client(server);
  t.after(() => c.close());
  const got = collector();
  await c.channel(name).subscribe(got);
  return { name, c, got };
}

test('publish resolves with the position and subscribers receive the message', async (t) => {
  const name = unique('room');
  const a = client(server);
  const b = client(server);
  t.after(() => (a.close(), b.close()));
  const got = collector();
  await b.channel(name).subscribe(got);
  const position = await a.channel(name).publish({ text: 'hi' });
  assert.deepEqual(position, { epoch: server.channel(name).epoch, offset: 1 });
  const [message] = await got.until(1);
  assert.equal(message.channel, name);
  assert.deepEqual(message.data, { text: 'hi' });
  assert.equal(message.offset, 1);
  assert.equal(message.clientId, `client-${a.tokenCalls[0]}`);
  const publish = await server.waitFrame((f) => f.type === 'publish' && f.channel === name);
  assert.match(publish.idempotency_key, /^[0-9a-f]{32}$/);
});

test('subscribe before connecting waits for the connection, and the channel object is shared', async (t) => {
  const name = unique('early');
  const c = client(server);
  t.after(() => c.close());
  assert.equal(c.channel(name), c.channel(name));
  const got = collector();
  await c.channel(name).subscribe(got);
  assert.ok(c.channel(name).subscribed);
  server.publish(name, 'x');
  await got.until(1);
});

test('after a drop, resubscribe with since delivers every missed message once, in order', async (t) => {
  const { name, c, got } = await subscribed(t, 'resume');
  server.publish(name, 1);
  server.publish(name, 2);
  await got.until(2);
  server.dropAll();
  await next(c, 'disconnected');
  // Published while the client is away.
  server.publish(name, 3);
  server.publish(name, 4);
  const resumed = await next(c.channel(name), 'subscribed');
  assert.equal(resumed.resumed, true);
  assert.equal(resumed.recovered, true);
  const sub = await server.waitFrame((f) => f.type === 'subscribe' && f.channel === name && f.since);
  assert.deepEqual(sub.since, { epoch: server.channel(name).epoch, offset: 2 });
  server.publish(name, 5);
  await got.until(5);
  assert.deepEqual(
    got.items.map((m) => m.data),
    [1, 2, 3, 4, 5],
  );
  assert.deepEqual(
    got.items.map((m) => m.offset),
    [1, 2, 3, 4, 5],
  );
});

test('many forced disconnects mid-stream lose and duplicate nothing', async (t) => {
  const name = unique('storm');
  const big = await new FakeServer({ historySize: 10_000 }).start();
  t.after(() => big.stop());
  const c = client(big, { backoff: { initialDelayMs: 2, maxDelayMs: 5 } });
  t.after(() => c.close());
  const got = collector();
  await c.channel(name).subscribe(got);
  let sent = 0;
  for (let round = 0; round < 10; round++) {
    for (let i = 0; i < 20; i++) big.publish(name, ++sent);
    const resubscribed = next(c.channel(name), 'subscribed');
    big.dropAll();
    for (let i = 0; i < 5; i++) big.publish(name, ++sent);
    await resubscribed;
    await got.until(sent);
  }
  await got.until(sent);
  assert.equal(got.items.length, sent);
  assert.deepEqual(
    got.items.map((m) => m.data),
    Array.from({ length: sent }, (_, i) => i + 1),
  );
});

test('a message at or below the last delivered offset is dropped', async (t) => {
  const { name, c, got } = await subscribed(t, 'dupes');
  server.publish(name, 'a');
  server.publish(name, 'b');
  await got.until(2);
  // The server (or a replay racing a live message) sends offset 2 and 1 again, on this
  // client's connection (the server holds other tests' connections too).
  const conn = [...server.conns].find((candidate) => candidate.subs.has(name));
  assert.ok(conn, 'the connection subscribed to this channel');
  const ch = server.channel(name);
  conn.send({ type: 'message', channel: name, epoch: ch.epoch, offset: 2, data: 'b', client_id: null, ts: 0 });
  conn.send({ type: 'message', channel: name, epoch: ch.epoch, offset: 1, data: 'a', client_id: null, ts: 0 });
  server.publish(name, 'c');
  await got.until(3);
  assert.deepEqual(
    got.items.map((m) => m.data),
    ['a', 'b', 'c'],
  );
});

test('recovered:false raises discontinuity on the channel and the client, then goes live', async (t) => {
  const { name, c, got } = await subscribed(t, 'lost');
  server.publish(name, 1);
  await got.until(1);
  const before = c.channel(name).position;
  server.dropAll();
  await next(c, 'disconnected');
  server.loseStream(name);
  const onChannel = next(c.channel(name), 'discontinuity');
  const onClient = next(c, 'discontinuity');
  const event = await onChannel;
  assert.deepEqual(await onClient, event);
  assert.equal(event.channel, name);
  assert.deepEqual(event.previous, before);
  assert.deepEqual(event.position, { epoch: server.channel(name).epoch, offset: 0 });
  // The new stream starts at offset 1 again and is delivered (not mistaken for duplicates).
  server.publish(name, 'fresh');
  await got.until(2);
  assert.equal(got.items[1].data, 'fresh');
  assert.equal(got.items[1].offset, 1);
});

test('a discontinuity pushed on a live subscription raises the event and restarts dedupe', async (t) => {
  const { name, c, got } = await subscribed(t, 'live-lost');
  server.publish(name, 'a');
  server.publish(name, 'b');
  await got.until(2);
  const before = c.channel(name).position;
  const onEvent = next(c.channel(name), 'discontinuity');
  server.loseStreamLive(name, before);
  const event = await onEvent;
  assert.deepEqual(event.previous, before);
  assert.deepEqual(event.position, { epoch: server.channel(name).epoch, offset: 0 });
  assert.equal(c.state, 'connected', 'the connection stays up');
  // Offset 1 of the new epoch is delivered, not mistaken for a duplicate of the old offset 1.
  server.publish(name, 'fresh');
  await got.until(3);
  assert.deepEqual([got.items[2].data, got.items[2].offset], ['fresh', 1]);
  assert.deepEqual(c.channel(name).position, { epoch: server.channel(name).epoch, offset: 1 });
});

test('history older than the server keeps also raises discontinuity', async (t) => {
  const { name, c, got } = await subscribed(t, 'gap');
  server.publish(name, 0);
  await got.until(1);
  server.dropAll();
  await next(c, 'disconnected');
  for (let i = 1; i <= 10; i++) server.publish(name, i); // history keeps 5
  const event = await next(c.channel(name), 'discontinuity');
  assert.equal(event.position.offset, 11);
});

test('unsubscribe stops delivery and a later subscribe starts live', async (t) => {
  const { name, c, got } = await subscribed(t, 'unsub');
  c.channel(name).unsubscribe(got);
  await server.waitFrame((f) => f.type === 'unsubscribe' && f.channel === name);
  assert.equal(c.channel(name).position, null);
  server.publish(name, 'missed');
  const again = collector();
  await c.channel(name).subscribe(again);
  const frames = server.frames.filter((f) => f.frame.type === 'subscribe' && f.frame.channel === name);
  assert.equal(frames.at(-1).frame.since, undefined);
  server.publish(name, 'live');
  await again.until(1);
  assert.deepEqual(
    again.items.map((m) => m.data),
    ['live'],
  );
  assert.equal(got.items.length, 0);
});

test('history returns publications oldest first', async (t) => {
  const name = unique('hist');
  const c = client(server);
  t.after(() => c.close());
  for (let i = 1; i <= 3; i++) server.publish(name, i);
  const page = await c.channel(name).history({ limit: 2 });
  assert.deepEqual(
    page.messages.map((m) => m.data),
    [2, 3],
  );
  assert.equal(page.recovered, true);
  assert.equal(page.position.offset, 3);
  const since = await c.channel(name).history({ since: { epoch: page.position.epoch, offset: 1 } });
  assert.deepEqual(
    since.messages.map((m) => m.offset),
    [2, 3],
  );
});

test('presence: join/update/leave events, get, sync, and re-enter after a reconnect', async (t) => {
  const name = unique('presence');
  const watcher = client(server);
  const member = client(server);
  t.after(() => (watcher.close(), member.close()));
  const events = [];
  const presence = watcher.channel(name).presence;
  for (const action of ['join', 'update', 'leave']) presence.on(action, (m) => events.push([action, m.data]));
  await next(presence, 'sync');
  await member.channel(name).presence.enter({ name: 'ada' });
  await member.channel(name).presence.update({ name: 'ada', typing: true });
  const members = await presence.get();
  assert.equal(members.length, 1);
  assert.equal(members[0].clientId, `client-${member.tokenCalls[0]}`);
  assert.deepEqual(members[0].data, { name: 'ada', typing: true });

  // The member's socket dies: the server drops its presence, the SDK re-enters with the latest data.
  const rejoined = next(presence, 'join');
  for (const conn of server.conns) if (conn.clientId === `client-${member.tokenCalls[0]}`) conn.ws.terminate();
  const again = await rejoined;
  assert.deepEqual(again.data, { name: 'ada', typing: true });
  assert.deepEqual(
    events.map(([a]) => a),
    ['join', 'update', 'leave', 'join'],
  );

  const left = next(presence, 'leave');
  await member.channel(name).presence.leave();
  await left;
  assert.deepEqual(await presence.get(), []);

  // The watcher's own reconnect ends with a sync carrying the full member list.
  await member.channel(name).presence.enter('back');
  const sync = next(presence, 'sync');
  for (const conn of server.conns) if (conn.clientId === `client-${watcher.tokenCalls[0]}`) conn.ws.terminate();
  assert.deepEqual(
    (await sync).map((m) => m.data),
    ['back'],
  );
});

test('server errors reject with typed codes and the connection stays up', async (t) => {
  const refusing = await new FakeServer({
    intercept: (frame) => {
      if (frame.type === 'publish' && frame.channel === 'flood') return { code: 'rate_limited', message: 'slow down' };
      if (frame.type === 'publish' && frame.data === 'huge') return { code: 'payload_too_large', message: 'too big' };
      if (frame.type === 'subscribe' && frame.channel.startsWith('secret')) return { code: 'forbidden', message: 'no' };
      return null;
    },
  }).start();
  t.after(() => refusing.stop());
  const c = client(refusing);
  t.after(() => c.close());
  await assert.rejects(c.channel('flood').publish(1), (e) => e.code === 'rate_limited' && e.retryable);
  await assert.rejects(c.channel('room').publish('huge'), (e) => e.code === 'payload_too_large' && !e.retryable);
  const errored = next(c.channel('secret'), 'error');
  await assert.rejects(
    c.channel('secret').subscribe(() => {}),
    (e) => e.code === 'forbidden',
  );
  assert.equal((await errored).code, 'forbidden');
  assert.equal(c.state, 'connected');
  // A refused channel is not retried on reconnect. Resubscriptions go out as the connection
  // comes back, before anything sent after it: once a later publish is answered, any retry
  // would already be in the server's log.
  refusing.dropAll();
  await next(c, 'connected');
  await c.channel('room').publish('after the reconnect');
  const subscribes = refusing.frames.filter((f) => f.frame.type === 'subscribe' && f.frame.channel === 'secret');
  assert.equal(subscribes.length, 1);
});

test('listening to presence on a subscribed channel resubscribes with presence, resuming in place', async (t) => {
  const name = unique('late-presence');
  const c = client(server);
  const other = client(server);
  t.after(() => (c.close(), other.close()));
  const got = collector();
  await c.channel(name).subscribe(got);
  server.publish(name, 1);
  await got.until(1);
  const sync = next(c.channel(name).presence, 'sync');
  const joined = next(c.channel(name).presence, 'join');
  c.channel(name).presence.on('join', () => {});
  await sync;
  const resub = server.frames.filter((f) => f.frame.type === 'subscribe' && f.frame.channel === name).at(-1).frame;
  assert.equal(resub.presence, true);
  assert.deepEqual(resub.since, { epoch: server.channel(name).epoch, offset: 1 });
  await other.channel(name).presence.enter('hi');
  assert.equal((await joined).data, 'hi');
  server.publish(name, 2);
  await got.until(2);
  assert.deepEqual(
    got.items.map((m) => m.data),
    [1, 2],
  );
});
