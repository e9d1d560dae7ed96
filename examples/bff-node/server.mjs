// A backend-for-frontend in plain Node (no dependencies): it logs its own users in with a session
// cookie, and mints Aviary connection tokens for them with the app's API key, which never leaves
// the server. It serves the example page (../web) and the @aviary/client browser bundle.
//
//   AVIARY_URL=http://127.0.0.1:8080 AVIARY_APP_ID=app_... AVIARY_API_KEY=avk_... node server.mjs
//
// Run `node server.mjs` or import { startServer } (used by test.mjs).
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));

/** Users may pick any name matching this (it becomes the Aviary client_id). */
const USER_NAME = /^[A-Za-z0-9_.-]{1,40}$/;
const TOKEN_TTL_S = 600;

const LOGIN_PAGE = `<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Log in</title>
<body style="font:16px system-ui;max-width:30rem;margin:2rem auto">
<h1>Log in</h1><p>Demo login: any name (letters, digits, <code>_.-</code>). Replace with your real auth.</p>
<form method="post" action="/login"><label>Name <input name="name" required pattern="[A-Za-z0-9_.\\-]{1,40}" autofocus></label>
<button>Log in</button></form></body></html>`;

/**
 * Starts the BFF. Options: aviaryUrl, appId, apiKey, port (0 for any), host.
 * Resolves with { server, url } once listening.
 */
export async function startServer({ aviaryUrl, appId, apiKey, port = 3000, host = '127.0.0.1' }) {
  if (!aviaryUrl || !appId || !apiKey) throw new Error('AVIARY_URL, AVIARY_APP_ID and AVIARY_API_KEY are required');
  const assets = {
    '/': ['text/html; charset=utf-8', await readFile(here('../web/index.html'))],
    '/app.js': ['text/javascript; charset=utf-8', await readFile(here('../web/app.js'))],
    // The browser bundle of sdk/js, as `aviary dev` serves it (built by sdk/js's build script).
    '/aviary-client.js': [
      'text/javascript; charset=utf-8',
      await readFile(process.env.AVIARY_CLIENT_JS ?? here('../../aviary/assets/aviary-client.js')),
    ],
  };
  /** session id -> user name. In memory: a real app keeps sessions in its own store. */
  const sessions = new Map();

  const userOf = (req) => {
    const cookie = req.headers.cookie ?? '';
    const sid = /(?:^|;\s*)sid=([A-Za-z0-9_-]+)/.exec(cookie)?.[1];
    return sid ? sessions.get(sid) : undefined;
  };

  async function mintToken(user) {
    // The one call to Aviary: the API key stays here; the token carries only what this user may do.
    const res = await fetch(new URL(`/v1/apps/${encodeURIComponent(appId)}/tokens`, aviaryUrl), {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        client_id: user,
        ttl_s: TOKEN_TTL_S,
        capabilities: {
          'chat:*': ['subscribe', 'publish', 'presence', 'history'],
          'cursors:*': ['subscribe', 'publish'],
        },
        info: { name: user },
      }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(`aviary answered ${res.status}: ${body.detail ?? ''}`), { status: res.status });
    return body;
  }

  const server = createServer(async (req, res) => {
    const send = (status, type, body, headers = {}) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
      res.end(body);
    };
    const json = (status, value, headers) => send(status, 'application/json', JSON.stringify(value), headers);
    try {
      const { pathname } = new URL(req.url, 'http://bff');
      const user = userOf(req);
      if (req.method === 'GET' && pathname === '/login') return send(200, 'text/html; charset=utf-8', LOGIN_PAGE);
      if (req.method === 'POST' && pathname === '/login') {
        const form = new URLSearchParams(await readBody(req));
        const name = form.get('name') ?? '';
        if (!USER_NAME.test(name)) return send(400, 'text/plain', 'invalid name');
        const sid = randomBytes(24).toString('base64url');
        sessions.set(sid, name);
        return send(303, 'text/plain', '', {
          location: '/',
          'set-cookie': `sid=${sid}; HttpOnly; SameSite=Lax; Path=/`,
        });
      }
      if (req.method === 'POST' && pathname === '/logout') {
        const sid = /(?:^|;\s*)sid=([A-Za-z0-9_-]+)/.exec(req.headers.cookie ?? '')?.[1];
        if (sid) sessions.delete(sid);
        return send(303, 'text/plain', '', { location: '/login', 'set-cookie': 'sid=; Max-Age=0; Path=/' });
      }
      if (req.method === 'GET' && pathname === '/api/me') {
        if (!user) return json(401, { error: 'not logged in' });
        return json(200, { user, aviaryUrl });
      }
      if (req.method === 'POST' && pathname === '/api/aviary-token') {
        if (!user) return json(401, { error: 'not logged in' });
        const { token, expires_at } = await mintToken(user);
        return json(200, { token, expires_at });
      }
      if (req.method === 'GET' && pathname === '/' && !user) return send(303, 'text/plain', '', { location: '/login' });
      const asset = req.method === 'GET' ? assets[pathname] : undefined;
      if (asset) return send(200, asset[0], asset[1]);
      return send(404, 'text/plain', 'not found');
    } catch (err) {
      console.error('bff:', err.message);
      return json(502, { error: 'aviary unavailable' });
    }
  });

  await new Promise((resolve) => server.listen(port, host, resolve));
  const { port: bound } = server.address();
  return { server, url: `http://${host}:${bound}` };
}

async function readBody(req, limit = 16 * 1024) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > limit) throw new Error('body too large');
  }
  return body;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { url } = await startServer({
    aviaryUrl: process.env.AVIARY_URL ?? 'http://127.0.0.1:8080',
    appId: process.env.AVIARY_APP_ID,
    apiKey: process.env.AVIARY_API_KEY,
    port: Number(process.env.PORT ?? 3000),
    host: process.env.HOST ?? '127.0.0.1',
  });
  console.log(`BFF listening on ${url}`);
}
