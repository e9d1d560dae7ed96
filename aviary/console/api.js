// The console's side of the REST API: where credentials are kept (sessionStorage only), calls
// with problem+json errors turned into ApiError, and what happens when the signed-in credential
// is refused (the session ends with an explanation).
import { flash, setFieldError } from './dom.js';

const SESSION_KEY = 'aviary-console:session';
const APP_KEY_PREFIX = 'aviary-console:app-key:';
/** Operations of a capability, in the order the API documents them. */
export const OPERATIONS = ['subscribe', 'publish', 'presence', 'history'];

// ---- session ------------------------------------------------------------------------------------

/** The signed-in credential `{ kind: 'tenant' | 'operator', token, tenantId?, tenantName? }`, or null. */
export function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? 'null');
    return session && typeof session.token === 'string' ? session : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

/** The console's own API key `{ id, secret }` for `appId` (made by the Live tab), or null. */
export function appKey(appId) {
  try {
    return JSON.parse(sessionStorage.getItem(APP_KEY_PREFIX + appId) ?? 'null');
  } catch {
    return null;
  }
}

export function setAppKey(appId, key) {
  if (key) sessionStorage.setItem(APP_KEY_PREFIX + appId, JSON.stringify(key));
  else sessionStorage.removeItem(APP_KEY_PREFIX + appId);
}

/** Every `[appId, key]` the console made in this tab: revoked on sign-out. */
export function consoleKeys() {
  const keys = [];
  for (let i = 0; i < sessionStorage.length; i += 1) {
    const name = sessionStorage.key(i);
    if (name?.startsWith(APP_KEY_PREFIX)) keys.push([name.slice(APP_KEY_PREFIX.length), appKey(name.slice(APP_KEY_PREFIX.length))]);
  }
  return keys;
}

// ---- API ----------------------------------------------------------------------------------------

/** An API answer that was not 2xx, with the problem document's fields. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.type = problem.type ?? '';
    this.title = problem.title ?? '';
    this.detail = problem.detail ?? '';
  }
}

/** Raised after the admin credential was refused: the console has already signed out. */
export class SessionEnded extends Error {}

/** One sentence for the user about `err` (the problem's detail, with context for 429 and 5xx). */
export function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 0) return err.detail;
    if (err.status === 429) return `Too many requests: ${err.detail || 'slow down and try again in a moment'}.`;
    if (err.status >= 500) return `The server failed (${err.status} ${err.title}): ${err.detail}`;
    return err.detail || err.title || `HTTP ${err.status}`;
  }
  return err?.message ?? String(err);
}

/**
 * Calls the API. `auth` is 'admin' (the signed-in credential: refusal ends the session),
 * an app key object `{ secret }`, or null.
 */
export async function api(method, path, { body, auth = 'admin' } = {}) {
  const headers = { accept: 'application/json' };
  const session = loadSession();
  if (auth === 'admin') {
    if (!session) throw signOutExpired();
    headers.authorization = `Bearer ${session.token}`;
  } else if (auth) {
    headers.authorization = `Bearer ${auth.secret}`;
  }
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, {
      title: 'Network error',
      detail: 'Could not reach the Aviary server. Check that it is running and that you are online, then try again.',
    });
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const problem = data && typeof data === 'object' ? data : { title: res.statusText, detail: text.slice(0, 200) };
    if (res.status === 401 && auth === 'admin') throw signOutExpired();
    throw new ApiError(res.status, problem);
  }
  return data;
}

/** Lists every page of a `{items, next_cursor}` listing (bounded: 20 pages). */
export async function listAll(path) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < 20; page += 1) {
    const sep = path.includes('?') ? '&' : '?';
    const data = await api('GET', `${path}${sep}limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...(data.items ?? []));
    cursor = data.next_cursor;
    if (!cursor) break;
  }
  return items;
}

/** The tenant id of a session that just ended (not a secret), to prefill the sign-in form. */
export let lastTenantId = '';

/** Forgets the refused credential and shows the sign-in view with an explanation. */
export function signOutExpired() {
  lastTenantId = loadSession()?.tenantId ?? '';
  sessionStorage.clear();
  flash(
    'Your session has ended: the server no longer accepts your key (it was revoked, the tenant was deleted, ' +
      'or the key is wrong). Sign in again.',
  );
  // The router listens: it shows the sign-in view with this message.
  if (location.hash !== '#/sign-in') location.hash = '#/sign-in';
  else window.dispatchEvent(new Event('aviary:session-ended'));
  return new SessionEnded('session ended');
}

/** Shows an API error next to the field it is about (first matching rule), else in `fallback`. */
export function showProblem(err, rules, fallback) {
  if (err instanceof SessionEnded) return;
  const message = describe(err);
  for (const [pattern, control] of rules) {
    if (control && pattern.test(err.detail ?? '')) {
      setFieldError(control, message);
      control.focus();
      return;
    }
  }
  fallback.textContent = message;
}
