// pusher-js and Laravel Echo's Pusher connector in Chromium against a real aviary dev (issue 19):
// private channels with server events and whispers (client events), presence channels with
// here/joining/leaving. The app's backend is the npm `pusher` SDK in this process: it answers
// the pages' `/broadcasting/auth` (routed by Playwright) with authorizeChannel and triggers
// events through Aviary's Pusher HTTP API.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Pusher from 'pusher';
import { restClient, startAviary } from '../lib/aviary.js';
import { launch, watchPage } from '../lib/browser.js';

const modules = join(dirname(fileURLToPath(import.meta.url)), '..', 'node_modules');
const PUSHER_JS = join(modules, 'pusher-js/dist/web/pusher.min.js');
const ECHO = join(modules, 'laravel-echo/dist/echo.iife.js');
const WAIT = { timeout: 20_000 };

let aviary;
let browser;
let credential;
let backend;

before(async () => {
  [aviary, browser] = await Promise.all([startAviary(), launch()]);
  const call = restClient(aviary.url);
  const app = await call('POST', `/v1/tenants/${aviary.tenantId}/apps`, aviary.adminKey, {
    name: `pusher-e2e-${Date.now()}`,
    namespaces: [{ name: '' }],
  });
  credential = await call('POST', `/v1/apps/${app.id}/pusher-credentials`, aviary.adminKey, { client_events: true });
  const { hostname, port } = new URL(aviary.url);
  backend = new Pusher({
    appId: credential.app_id,
    key: credential.key,
    secret: credential.secret,
    host: hostname,
    port,
    useTLS: false,
  });
});

after(async () => {
  await browser?.close();
  await aviary?.stop();
});

/** A page on aviary's origin running Laravel Echo over pusher-js, signed in as `user`. */
async function echoPage(user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = watchPage(page);
  // The app's auth endpoint, answered by the backend SDK as a Laravel app would.
  await page.route('**/broadcasting/auth', async (route) => {
    const form = new URLSearchParams(route.request().postData() ?? '');
    const channel = form.get('channel_name');
    const socketId = form.get('socket_id');
    const answer = channel.startsWith('presence-')
      ? backend.authorizeChannel(socketId, channel, { user_id: user, user_info: { name: user.toUpperCase() } })
      : backend.authorizeChannel(socketId, channel);
    await route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(answer) });
  });
  await page.goto(`${aviary.url}/healthz`);
  await page.addScriptTag({ path: PUSHER_JS });
  await page.addScriptTag({ path: ECHO });
  const { hostname, port } = new URL(aviary.url);
  await page.evaluate(
    ({ key, host, port }) => {
      window.seen = [];
      const EchoClass = window.Echo.default ?? window.Echo;
      window.echo = new EchoClass({
        broadcaster: 'pusher',
        key,
        cluster: 'aviary',
        wsHost: host,
        wsPort: Number(port),
        forceTLS: false,
        enabledTransports: ['ws'],
        disableStats: true,
        authEndpoint: '/broadcasting/auth',
        Pusher: window.Pusher,
      });
    },
    { key: credential.key, host: hostname, port },
  );
  await page.waitForFunction(() => window.echo.connector.pusher.connection.state === 'connected', null, WAIT);
  return { context, page, problems };
}

/** Waits until the page recorded an entry matching `want` (a subset of its fields). */
async function seen(page, want) {
  await page.waitForFunction(
    (want) => window.seen.some((s) => Object.entries(want).every(([k, v]) => JSON.stringify(s[k]) === JSON.stringify(v))),
    want,
    WAIT,
  );
}

test('Laravel Echo receives server events and whispers on a private channel', async () => {
  const a = await echoPage('ada');
  const b = await echoPage('bob');
  for (const { page } of [a, b]) {
    await page.evaluate(() => {
      window.orders = window.echo
        .private('orders.1')
        .listen('.OrderShipped', (e) => window.seen.push({ kind: 'event', data: e }))
        .listenForWhisper('typing', (e) => window.seen.push({ kind: 'whisper', data: e }));
    });
    await page.waitForFunction(() => window.echo.connector.pusher.channel('private-orders.1')?.subscribed === true, null, WAIT);
  }
  await backend.trigger('private-orders.1', 'OrderShipped', { id: 7 });
  await seen(a.page, { kind: 'event', data: { id: 7 } });
  await seen(b.page, { kind: 'event', data: { id: 7 } });

  await a.page.evaluate(() => window.orders.whisper('typing', { who: 'ada' }));
  await seen(b.page, { kind: 'whisper', data: { who: 'ada' } });
  // The sender does not hear its own whisper: the next event is the first thing after the event.
  await backend.trigger('private-orders.1', 'OrderShipped', { id: 8 });
  await seen(a.page, { kind: 'event', data: { id: 8 } });
  const aSeen = await a.page.evaluate(() => window.seen.map((s) => s.kind));
  assert.deepEqual(aSeen, ['event', 'event']);
  assert.deepEqual([...a.problems, ...b.problems], []);
  await a.context.close();
  await b.context.close();
});

test('Laravel Echo presence: here, joining and leaving', async () => {
  const a = await echoPage('ada');
  await a.page.evaluate(() => {
    window.echo
      .join('room.1')
      .here((users) => window.seen.push({ kind: 'here', ids: users.map((u) => u.name).sort() }))
      .joining((u) => window.seen.push({ kind: 'joining', name: u.name }))
      .leaving((u) => window.seen.push({ kind: 'leaving', name: u.name }));
  });
  await seen(a.page, { kind: 'here', ids: ['ADA'] });
  const b = await echoPage('bob');
  await b.page.evaluate(() => {
    window.echo.join('room.1').here((users) => window.seen.push({ kind: 'here', ids: users.map((u) => u.name).sort() }));
  });
  await seen(b.page, { kind: 'here', ids: ['ADA', 'BOB'] });
  await seen(a.page, { kind: 'joining', name: 'BOB' });
  const users = await backend.get({ path: '/channels/presence-room.1/users' }).then((r) => r.json());
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['ada', 'bob']);
  await b.context.close();
  await seen(a.page, { kind: 'leaving', name: 'BOB' });
  assert.deepEqual(a.problems, []);
  await a.context.close();
});
