// Smoke test of the Node BFF against a real `aviary dev`: log in, fetch a token through the BFF,
// connect with the @aviary/client bundle, and see a chat message round-trip.
//
//   cargo build -p aviary && node --experimental-websocket --test examples/bff-node/test.mjs
//
// The aviary binary is taken from $AVIARY_BIN, else $CARGO_TARGET_DIR/debug/aviary, else
// <repo>/target/debug/aviary.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { startServer } from './server.mjs';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const WAIT_MS = 10_000;

function aviaryBinary() {
  const bin = process.env.AVIARY_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, 'target'), 'debug', 'aviary');
  if (!existsSync(bin)) throw new Error(`no aviary binary at ${bin}: run \`cargo build -p aviary\` first (or set AVIARY_BIN)`);
  return bin;
}

/** Starts `aviary dev` on a random port with a fresh data dir; resolves with its banner values. */
async function startDev() {
  const dataDir = mkdtempSync(join(tmpdir(), 'aviary-bff-test-'));
  const child = spawn(aviaryBinary(), ['dev', '--listen', '127.0.0.1:0', '--grpc-listen', '127.0.0.1:0', '--data-dir', dataDir], {
    env: { ...process.env, AVIARY_LOG: 'warn', AVIARY_OPERATOR_TOKEN: '' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const banner = {};
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('aviary dev did not start in time')), WAIT_MS);
    child.once('exit', (code) => reject(new Error(`aviary dev exited with ${code}`)));
    lines.on('line', (line) => {
      const m = /^\s*(app id|API key)\s+(\S+)/.exec(line);
      if (m) banner[m[1]] = m[2];
      const listening = /^listening on (\S+)/.exec(line);
      if (listening) {
        clearTimeout(timer);
        lines.removeAllListeners('line');
        child.removeAllListeners('exit');
        resolve(listening[1]);
      }
    });
  });
  return {
    url,
    appId: banner['app id'],
    apiKey: banner['API key'],
    stop() {
      child.kill();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

async function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), WAIT_MS)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

test('a logged-in user gets a token from the BFF and chats over Aviary', async () => {
  assert.equal(typeof WebSocket, 'function', 'run with `node --experimental-websocket` (Node 20) or Node 22+');
  const dev = await startDev();
  after(() => dev.stop());
  assert.ok(dev.appId && dev.apiKey, 'aviary dev printed the demo app id and API key');
  const bff = await startServer({ aviaryUrl: dev.url, appId: dev.appId, apiKey: dev.apiKey, port: 0 });
  after(() => {
    bff.server.closeAllConnections();
    bff.server.close();
  });

  // Not logged in: no token, and the page sends you to the login form.
  assert.equal((await fetch(`${bff.url}/api/aviary-token`, { method: 'POST' })).status, 401);
  assert.equal((await fetch(`${bff.url}/`, { redirect: 'manual' })).headers.get('location'), '/login');

  const login = await fetch(`${bff.url}/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: 'name=alice',
    redirect: 'manual',
  });
  assert.equal(login.status, 303);
  const cookie = login.headers.get('set-cookie').split(';')[0];
  const me = await (await fetch(`${bff.url}/api/me`, { headers: { cookie } })).json();
  assert.deepEqual(me, { user: 'alice', aviaryUrl: dev.url });
  for (const path of ['/', '/app.js', '/aviary-client.js']) {
    assert.equal((await fetch(`${bff.url}${path}`, { headers: { cookie } })).status, 200, path);
  }

  // The browser SDK, fed by the BFF's token endpoint, connects and round-trips a message.
  const { Aviary } = await import(new URL('../../aviary/assets/aviary-client.js', import.meta.url).href);
  const getToken = async () => {
    const res = await fetch(`${bff.url}/api/aviary-token`, { method: 'POST', headers: { cookie } });
    assert.equal(res.status, 200);
    return (await res.json()).token;
  };
  const client = new Aviary({ url: dev.url, getToken });
  after(() => client.close());
  await withTimeout(client.whenConnected(), 'connected');
  assert.equal(client.clientId, 'alice');
  const chat = client.channel('chat:lobby');
  let deliver;
  const received = new Promise((resolve) => (deliver = resolve));
  await withTimeout(chat.subscribe((m) => deliver(m)), 'subscribed');
  await chat.publish({ text: 'hello through the BFF' });
  const message = await withTimeout(received, 'message');
  assert.deepEqual(message.data, { text: 'hello through the BFF' });
  assert.equal(message.clientId, 'alice');
});
