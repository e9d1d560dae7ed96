// Shared test helpers: build a client against a FakeServer, and await events with a timeout
// (never sleep-and-hope).
import WebSocket from 'ws';
import { Aviary } from '../dist/esm/index.js';

let tokens = 0;

/** A client on `server` with fast, deterministic backoff; `getToken` returns tok-1, tok-2, … */
export function client(server, options = {}) {
  const calls = [];
  const c = new Aviary({
    url: server.url,
    WebSocket,
    getToken: async () => {
      const t = `tok-${++tokens}`;
      calls.push(t);
      return t;
    },
    backoff: { initialDelayMs: 20, maxDelayMs: 200 },
    random: () => 0.5,
    ...options,
  });
  c.tokenCalls = calls;
  return c;
}

/** Resolves with the payload of the next `event` on `emitter` matching `pred`. */
export function next(emitter, event, pred = () => true, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for '${String(event)}'`));
    }, timeoutMs);
    const off = emitter.on(event, (payload) => {
      if (!pred(payload)) return;
      clearTimeout(timer);
      off();
      resolve(payload);
    });
  });
}

/** Collects messages into an array; `until(n)` resolves when n have arrived. */
export function collector() {
  const items = [];
  const waiters = [];
  const handler = (m) => {
    items.push(m);
    for (const w of [...waiters]) {
      if (items.length >= w.n) {
        clearTimeout(w.timer);
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(items);
      }
    }
  };
  handler.items = items;
  handler.until = (n, timeoutMs = 5000) =>
    items.length >= n
      ? Promise.resolve(items)
      : new Promise((resolve, reject) => {
          const w = { n, resolve };
          w.timer = setTimeout(() => reject(new Error(`got ${items.length} of ${n} messages`)), timeoutMs);
          waiters.push(w);
        });
  return handler;
}

/** Records every state transition. */
export function states(c) {
  const seen = [];
  c.on('statechange', ({ current }) => seen.push(current));
  return seen;
}
