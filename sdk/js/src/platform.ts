/**
 * The environment the client runs in: clock, randomness and the browser's network/visibility
 * signals. Everything is injectable so tests control time and events; the defaults use the
 * globals that browsers and Node 20 have, and are no-ops where a signal does not exist (Node).
 */

/** Time source and timers. Injected in tests to control refresh and backoff timing. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** Network and page-visibility signals. Each `on*` returns a function removing the listener. */
export interface Platform {
  /** False when the device knows it has no network (`navigator.onLine`). */
  isOnline(): boolean;
  onOnline(fn: () => void): () => void;
  onOffline(fn: () => void): () => void;
  /** Called when the page becomes visible again (tab focus, phone unlocked). */
  onVisible(fn: () => void): () => void;
}

interface EventTargetLike {
  addEventListener(type: string, fn: () => void): void;
  removeEventListener(type: string, fn: () => void): void;
}

function listen(target: EventTargetLike | undefined, type: string, fn: () => void): () => void {
  if (!target || typeof target.addEventListener !== 'function') return () => {};
  target.addEventListener(type, fn);
  return () => target.removeEventListener(type, fn);
}

/** The browser's signals when present; inert in Node. */
export function defaultPlatform(): Platform {
  const g = globalThis as {
    window?: EventTargetLike;
    document?: EventTargetLike & { visibilityState?: string };
    navigator?: { onLine?: boolean };
  };
  const win = g.window;
  const doc = g.document;
  return {
    isOnline: () => g.navigator?.onLine !== false,
    onOnline: (fn) => listen(win, 'online', fn),
    onOffline: (fn) => listen(win, 'offline', fn),
    onVisible: (fn) =>
      listen(doc, 'visibilitychange', () => {
        if (doc?.visibilityState === 'visible') fn();
      }),
  };
}

/** A 128-bit random idempotency key. Uses `crypto.getRandomValues`, which unlike `randomUUID`
 * also exists on plain-http pages (e.g. the demo opened over a LAN address). */
export function randomKey(): string {
  const bytes = new Uint8Array(16);
  const c = (globalThis as { crypto?: { getRandomValues?(a: Uint8Array): Uint8Array } }).crypto;
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let out = '';
  for (const b of bytes) out += (b < 16 ? '0' : '') + b.toString(16);
  return out;
}

/** Reads `exp` (seconds) from a JWT without verifying it; the server verifies. Null if absent. */
export function jwtExpiryMs(token: string): number | null {
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))) as { exp?: unknown };
    return typeof json.exp === 'number' ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** Parses the server's `expires_at`: RFC 3339 string, or Unix seconds/milliseconds. */
export function parseExpiry(value: unknown): number | null {
  if (typeof value === 'number' && Number.isFinite(value)) return value < 1e12 ? value * 1000 : value;
  if (typeof value === 'string') {
    const ms = Date.parse(value);
    if (Number.isFinite(ms)) return ms;
    const n = Number(value);
    if (Number.isFinite(n)) return n < 1e12 ? n * 1000 : n;
  }
  return null;
}
