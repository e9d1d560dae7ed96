/**
 * The connection: one `Aviary` instance owns one transport (a WebSocket, or the SSE fallback), its
 * state machine, reconnection with backoff, heartbeats, token refresh, request/answer correlation
 * and the offline publish queue. Channels (channel.ts) own subscriptions and deduplication.
 *
 * State machine:
 *
 *   idle → connecting → connected → disconnected → reconnecting → connecting → …
 *                                 ↘ failed (the server said not to come back)
 *   any → closed (close() was called)
 *
 * Every connection attempt gets a new `generation`; callbacks from an older attempt (a late close
 * event, a token arriving after close()) compare generations and do nothing.
 */

import { Backoff, type BackoffOptions } from './backoff.js';
import { Channel, type DiscontinuityEvent } from './channel.js';
import { Emitter } from './emitter.js';
import {
  AviaryError,
  CloseCode,
  effectivePolicy,
  errorFromClose,
  errorFromFrame,
  isAviaryError,
  type ClosePolicy,
} from './errors.js';
import {
  defaultPlatform,
  jwtExpiryMs,
  parseExpiry,
  randomKey,
  systemClock,
  type Clock,
  type Platform,
} from './platform.js';
import { SseParser, type SseEvent } from './sse.js';
import { decodePosition, type Frame, type PublishOptions, type StreamPosition } from './types.js';

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'reconnecting' | 'closed' | 'failed';

export type TransportKind = 'websocket' | 'sse';

/* eslint-disable @typescript-eslint/no-explicit-any */
/** The part of the WebSocket API the client uses: browsers' `WebSocket` and the `ws` package fit.
 * Handler events are `any` so both implementations' own event types are assignable. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/* eslint-enable @typescript-eslint/no-explicit-any */

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The part of `fetch` the SSE transport uses. `signal` is an `AbortSignal`; it is typed loosely
 * so these declarations compile without the DOM or Node type libraries. */
export type FetchLike = (
  url: string,
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  init: { headers: Record<string, string>; signal: any; cache?: any },
) => Promise<{
  ok: boolean;
  status: number;
  body: { getReader(): { read(): Promise<{ done: boolean; value?: Uint8Array }>; cancel(): Promise<void> } } | null;
}>;

/** A publish made while on the SSE transport, to be sent by your backend (see README). */
export interface FallbackPublish {
  channel: string;
  data: unknown;
  /** Forward it as `idempotency_key` so a retried request publishes once. */
  idempotencyKey: string;
}

export interface AviaryOptions {
  /** `wss://host` (the path defaults to `/v1/connect`), `https://host`, or a full URL. */
  url: string;
  /** Returns a connection token minted by your backend. Called on every connect, before the
   * token expires (the connection is refreshed in place) and after a 4002 close. */
  getToken: () => Promise<string>;
  /** Connect in the constructor (after the current task, so listeners can be added). Default true. */
  autoConnect?: boolean;
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. In Node 20 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /** fetch implementation for the SSE fallback; defaults to `globalThis.fetch`. */
  fetch?: FetchLike;
  /** Transports to try, in order. Default `['websocket', 'sse']`. */
  transports?: TransportKind[];
  /** WebSocket attempts that fail before the socket even opens before falling back to SSE. Default 2. */
  fallbackAfterFailures?: number;
  /** SSE endpoint; defaults to the `url`'s host with path `/v1/sse`. */
  sseUrl?: string;
  /** Sends publishes made on the SSE transport (which is receive-only) through your backend. */
  publishFallback?: (publish: FallbackPublish) => Promise<StreamPosition>;
  /** Reconnect backoff. */
  backoff?: BackoffOptions;
  /** Milliseconds without inbound traffic before a `ping` is sent. Default: the server's `heartbeat_s`. */
  heartbeatIntervalMs?: number;
  /** Milliseconds to wait for any traffic after a ping before the connection is declared dead. Default 10 000. */
  heartbeatTimeoutMs?: number;
  /** Time from opening the socket to the `connected` frame. Default 15 000. */
  connectTimeoutMs?: number;
  /** Time for a request (history, presence.get) including waiting for a connection. Default 15 000. */
  requestTimeoutMs?: number;
  /** Refresh the token this long before it expires (at most half its remaining life). Default 30 000. */
  refreshMarginMs?: number;
  /** Publishes kept while disconnected; more reject with `queue_full`. Default 1 000. */
  offlineQueueSize?: number;
  /** Injected for tests. */
  clock?: Clock;
  random?: () => number;
  platform?: Platform;
}

export interface ClientEvents {
  statechange: { previous: ConnectionState; current: ConnectionState };
  connecting: { attempt: number; transport: TransportKind };
  connected: { clientId: string | null; connectionId: string | null; transport: TransportKind };
  /** The transport was lost. `willReconnect` is false when the client is about to fail. */
  disconnected: { reason: AviaryError; willReconnect: boolean };
  reconnecting: { attempt: number; delayMs: number };
  closed: { reason: AviaryError | null };
  /** Terminal: the server said not to come back (e.g. `reconnect:false`, 4003, 4004, 4010). */
  failed: { reason: AviaryError };
  /** A channel could not recover missed messages; reload its state. Also emitted on the channel. */
  discontinuity: DiscontinuityEvent;
  /** The token was refreshed in place. */
  refreshed: { expiresAt: number | null };
  /** Non-fatal problems: getToken failures, failed refreshes, server errors without a request. */
  error: AviaryError;
}

interface PendingRequest {
  resolve(frame: Frame): void;
  reject(err: unknown): void;
  timer: unknown;
}

interface QueuedPublish {
  channel: string;
  data: unknown;
  key: string;
  resolve(position: StreamPosition): void;
  reject(err: unknown): void;
}

interface DisconnectFrame {
  code: number | null;
  reason: string;
  reconnect: boolean | null;
}

interface Timers {
  reconnect?: unknown;
  connect?: unknown;
  heartbeat?: unknown;
  refresh?: unknown;
  stable?: unknown;
}

/** Derives the WebSocket and SSE endpoints from the user's URL. */
export function endpoints(url: string, sseUrl?: string): { ws: string; sse: string } {
  const base = (globalThis as { location?: { href?: string } }).location?.href;
  const ws = new URL(url, base);
  if (ws.protocol === 'http:') ws.protocol = 'ws:';
  else if (ws.protocol === 'https:') ws.protocol = 'wss:';
  if (ws.pathname === '/' || ws.pathname === '') ws.pathname = '/v1/connect';
  const sse = new URL(sseUrl ?? ws.toString(), base);
  if (!sseUrl) {
    sse.protocol = ws.protocol === 'wss:' ? 'https:' : 'http:';
    sse.pathname = sse.pathname.endsWith('/connect') ? sse.pathname.slice(0, -'/connect'.length) + '/sse' : '/v1/sse';
    sse.search = '';
  }
  return { ws: ws.toString(), sse: sse.toString() };
}

export class Aviary extends Emitter<ClientEvents> {
  private stateValue: ConnectionState = 'idle';
  private readonly channelMap = new Map<string, Channel>();
  private readonly options: AviaryOptions;
  private readonly clock: Clock;
  private readonly platform: Platform;
  private readonly backoff: Backoff;
  private readonly urls: { ws: string; sse: string };
  private generation = 0;
  private socket: WebSocketLike | null = null;
  private stream: { abort: AbortController; channels: string } | null = null;
  private kind: TransportKind | null = null;
  /** Whether the next attempt uses SSE. */
  private preferSse: boolean;
  private wsFailuresBeforeOpen = 0;
  private sseConnectedOnce = false;
  private nextId = 1;
  private readonly pending = new Map<number, PendingRequest>();
  private readonly inflight = new Map<number, QueuedPublish>();
  private outbox: QueuedPublish[] = [];
  private connectWaiters: Array<{ resolve(): void; reject(err: unknown): void }> = [];
  private timers: Timers = {};
  private lastInbound = 0;
  private pingOutstanding = false;
  private pingIntervalMs = 25_000;
  private disconnectFrame: DisconnectFrame | null = null;
  /** Consecutive 4001/4010 closes: the second in a row is final. */
  private tokenRefusals = 0;
  private platformListeners: Array<() => void> = [];
  private lastEventId: string | null = null;
  /** The channels of the stream that produced `lastEventId`: only those resume through it. */
  private lastEventIdChannels: string[] = [];
  /** Channels the current stream resumes through `Last-Event-ID`. */
  private resumedByStream = new Set<string>();
  private token: { value: string; expiresAt: number | null } | null = null;
  private restartScheduled = false;
  /** Why the client failed, while it is in the `failed` state. */
  private failure: AviaryError | null = null;
  /** Identity the server assigned on the current connection. */
  clientId: string | null = null;
  connectionId: string | null = null;
  /** When the current token expires (ms since epoch), if known. */
  expiresAt: number | null = null;

  constructor(options: AviaryOptions) {
    super();
    if (!options || typeof options.url !== 'string') throw new TypeError('Aviary: `url` is required');
    if (typeof options.getToken !== 'function') throw new TypeError('Aviary: `getToken` is required');
    this.options = options;
    this.clock = options.clock ?? systemClock;
    this.platform = options.platform ?? defaultPlatform();
    this.backoff = new Backoff(options.backoff, options.random);
    this.urls = endpoints(options.url, options.sseUrl);
    const transports = options.transports ?? ['websocket', 'sse'];
    this.preferSse = !transports.includes('websocket') || (!this.webSocketCtor() && transports.includes('sse'));
    if (options.autoConnect !== false) queueMicrotask(() => this.stateValue === 'idle' && this.connect());
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this.stateValue;
  }

  /** The transport in use (or last used), null before the first attempt. */
  get transport(): TransportKind | null {
    return this.kind;
  }

  /** @internal A connected WebSocket that can carry requests. */
  get canRequest(): boolean {
    return this.stateValue === 'connected' && this.kind === 'websocket';
  }

  /** Publishes waiting for a connection (including any sent but not yet acknowledged). */
  get queuedPublishes(): number {
    return this.outbox.length + this.inflight.size;
  }

  /** The channel named `name` (the same object on every call). */
  channel<T = unknown>(name: string): Channel<T> {
    if (typeof name !== 'string' || name === '') throw new TypeError('Aviary: channel name must be a non-empty string');
    let channel = this.channelMap.get(name);
    if (!channel) {
      channel = new Channel(name, this);
      this.channelMap.set(name, channel);
    }
    return channel as Channel<T>;
  }

  /** Starts connecting (no-op when already connecting or connected). Also restarts after close/failed. */
  connect(): void {
    if (this.stateValue === 'connecting' || this.stateValue === 'connected') return;
    if (this.platformListeners.length === 0) this.listenToPlatform();
    this.clock.clearTimeout(this.timers.reconnect);
    this.backoff.reset();
    this.tokenRefusals = 0;
    this.failure = null;
    this.start();
  }

  /** Resolves when connected (immediately if already); rejects if the client closes or fails first. */
  whenConnected(): Promise<void> {
    if (this.stateValue === 'connected') return Promise.resolve();
    if (this.stateValue === 'closed' || this.stateValue === 'failed') {
      return Promise.reject(this.terminalError());
    }
    return new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
  }

  /** Closes the connection for good: pending requests and queued publishes reject with `closed`. */
  close(): void {
    if (this.stateValue === 'closed') return;
    this.generation++;
    this.teardown();
    this.clock.clearTimeout(this.timers.reconnect);
    this.unlistenPlatform();
    this.failure = null;
    this.setState('closed');
    this.rejectEverything(new AviaryError('closed', 'client closed'));
    this.emit('closed', { reason: null });
  }

  // ---- connection lifecycle -------------------------------------------------------------------

  private webSocketCtor(): WebSocketConstructor | undefined {
    return this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  private setState(next: ConnectionState): void {
    const previous = this.stateValue;
    if (previous === next) return;
    this.stateValue = next;
    this.emit('statechange', { previous, current: next });
  }

  private start(): void {
    const generation = ++this.generation;
    this.clock.clearTimeout(this.timers.reconnect);
    if (!this.platform.isOnline()) {
      // Nothing to try until the browser says the network is back.
      this.setState('disconnected');
      return;
    }
    const kind: TransportKind = this.preferSse ? 'sse' : 'websocket';
    this.kind = kind;
    this.setState('connecting');
    this.emit('connecting', { attempt: this.backoff.attempts, transport: kind });
    this.freshToken(kind === 'sse').then(
      (token) => {
        if (generation !== this.generation) return;
        if (kind === 'sse') void this.openStream(generation, token);
        else this.openSocket(generation, token);
      },
      (err: unknown) => {
        if (generation !== this.generation) return;
        const error = isAviaryError(err) ? err : new AviaryError('token_error', 'getToken failed', { cause: err });
        this.emit('error', error);
        this.lost(generation, error, 'reconnect');
      },
    );
  }

  /** Calls getToken; with `reuse`, returns the current token while it has time left. */
  private async freshToken(reuse: boolean): Promise<string> {
    const margin = this.options.refreshMarginMs ?? 30_000;
    if (reuse && this.token && (this.token.expiresAt === null || this.token.expiresAt - this.clock.now() > margin)) {
      return this.token.value;
    }
    let value: unknown;
    try {
      value = await this.options.getToken();
    } catch (err) {
      throw new AviaryError('token_error', `getToken failed: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
      });
    }
    if (typeof value !== 'string' || value === '') throw new AviaryError('token_error', 'getToken returned no token');
    this.token = { value, expiresAt: jwtExpiryMs(value) };
    return value;
  }

  /** The transport is gone: decide between reconnecting and failing. */
  private lost(generation: number, error: AviaryError, policy: ClosePolicy): void {
    if (generation !== this.generation) return;
    this.generation++;
    this.teardown();
    this.requeueInflight();
    this.rejectPending(new AviaryError('disconnected', `connection lost: ${error.message}`, { cause: error }));
    for (const channel of this.channelMap.values()) channel.onDisconnected();
    if (policy === 'fatal') {
      this.emit('disconnected', { reason: error, willReconnect: false });
      this.fail(error);
      return;
    }
    this.setState('disconnected');
    this.emit('disconnected', { reason: error, willReconnect: true });
    if (policy === 'reconnect_now') this.backoff.reset();
    // The server refused or expired the token: never reuse it (the SSE transport reuses tokens).
    if (policy === 'new_token') this.token = null;
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (!this.platform.isOnline()) return; // the `online` listener reconnects
    const delayMs = this.backoff.next();
    this.setState('reconnecting');
    this.emit('reconnecting', { attempt: this.backoff.attempts, delayMs });
    this.timers.reconnect = this.clock.setTimeout(() => this.start(), delayMs);
  }

  private fail(error: AviaryError): void {
    this.generation++;
    this.teardown();
    this.unlistenPlatform();
    this.failure = error;
    this.setState('failed');
    this.rejectEverything(error);
    this.emit('failed', { reason: error });
  }

  /** Stops the current transport and its timers; never emits. */
  private teardown(): void {
    const t = this.timers;
    for (const key of ['connect', 'heartbeat', 'refresh', 'stable'] as const) this.clock.clearTimeout(t[key]);
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      // Keep no-op handlers: the `ws` package throws on an 'error' event nobody listens to.
      const noop = () => {};
      socket.onopen = noop;
      socket.onmessage = noop;
      socket.onclose = noop;
      socket.onerror = noop;
      try {
        if (socket.readyState < 2) socket.close(CloseCode.Normal, 'client closing');
      } catch {
        // Already closing.
      }
    }
    if (this.stream) {
      this.stream.abort.abort();
      this.stream = null;
    }
    this.disconnectFrame = null;
    this.pingOutstanding = false;
  }

  /** Forcibly drops a transport that looks dead. */
  private abandon(generation: number, error: AviaryError): void {
    this.lost(generation, error, 'reconnect');
  }

  private onConnected(generation: number, frame: Frame, kind: TransportKind, heartbeatMs: number): void {
    this.clock.clearTimeout(this.timers.connect);
    this.clientId = typeof frame.client_id === 'string' ? frame.client_id : null;
    this.connectionId = typeof frame.connection_id === 'string' ? frame.connection_id : null;
    this.tokenRefusals = 0;
    // SSE's heartbeat is the server's comment interval, not ours to choose; 0 disables.
    this.pingIntervalMs = kind === 'sse' || heartbeatMs <= 0 ? heartbeatMs : (this.options.heartbeatIntervalMs ?? heartbeatMs);
    this.lastInbound = this.clock.now();
    this.setState('connected');
    const stableAfter = this.options.backoff?.stableAfterMs ?? 15_000;
    this.timers.stable = this.clock.setTimeout(() => this.backoff.reset(), stableAfter);
    this.expiresAt = parseExpiry(frame.expires_at) ?? this.token?.expiresAt ?? null;
    this.scheduleRefresh(generation, this.expiresAt);
    this.heartbeat(generation);
    if (kind === 'websocket') {
      for (const channel of this.channelMap.values()) channel.onConnected();
      this.flushOutbox();
    } else {
      // Channels subscribed while the stream was opening are not in it yet.
      this.subscriptionsChanged();
    }
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
    this.emit('connected', { clientId: this.clientId, connectionId: this.connectionId, transport: kind });
  }

  // ---- WebSocket transport -------------------------------------------------------------------

  private openSocket(generation: number, token: string): void {
    const Ctor = this.webSocketCtor();
    if (!Ctor) {
      this.lost(generation, new AviaryError('unsupported', 'no WebSocket implementation'), 'fatal');
      return;
    }
    let socket: WebSocketLike;
    try {
      socket = new Ctor(this.urls.ws);
    } catch (err) {
      this.lost(generation, new AviaryError('transport_error', 'WebSocket constructor failed', { cause: err }), 'reconnect');
      return;
    }
    let opened = false;
    this.socket = socket;
    this.timers.connect = this.clock.setTimeout(
      () => this.abandon(generation, new AviaryError('timeout', 'timed out waiting for the connected frame')),
      this.options.connectTimeoutMs ?? 15_000,
    );
    socket.onopen = () => {
      if (generation !== this.generation) return;
      opened = true;
      this.wsFailuresBeforeOpen = 0;
      this.rawSend({ type: 'connect', token });
    };
    socket.onmessage = (event: { data: unknown }) => {
      if (generation !== this.generation) return;
      this.onSocketData(generation, event.data);
    };
    socket.onerror = () => {
      // The close event that follows carries the information.
    };
    socket.onclose = (event: { code: number; reason: string }) => {
      if (generation !== this.generation) return;
      if (!opened) this.noteWebSocketFailure();
      this.onSocketClose(generation, event.code, event.reason);
    };
  }

  /** Too many attempts that never opened: the network probably blocks WebSockets. */
  private noteWebSocketFailure(): void {
    this.wsFailuresBeforeOpen++;
    const transports = this.options.transports ?? ['websocket', 'sse'];
    const fetchImpl = this.options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (transports.includes('sse') && fetchImpl && this.wsFailuresBeforeOpen >= (this.options.fallbackAfterFailures ?? 2)) {
      this.preferSse = true;
    }
  }

  private onSocketClose(generation: number, code: number, reason: string): void {
    const d = this.disconnectFrame;
    const closeCode = d?.code ?? code;
    const error = errorFromClose(closeCode, d?.reason || reason);
    let policy = effectivePolicy(closeCode, d?.reconnect ?? null);
    if (policy === 'new_token' && closeCode !== CloseCode.TokenExpired && ++this.tokenRefusals >= 2) policy = 'fatal';
    this.lost(generation, error, policy);
  }

  private onSocketData(generation: number, data: unknown): void {
    this.lastInbound = this.clock.now();
    this.pingOutstanding = false;
    if (typeof data !== 'string') return;
    let frame: Frame;
    try {
      frame = JSON.parse(data) as Frame;
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== 'string') return;
    this.onFrame(generation, frame);
  }

  private onFrame(generation: number, frame: Frame): void {
    switch (frame.type) {
      case 'connected':
        if (this.stateValue === 'connecting') this.onConnected(generation, frame, 'websocket', heartbeatMs(frame));
        return;
      case 'ok':
      case 'pong':
        this.settle(frame, null);
        return;
      case 'error': {
        const error = errorFromFrame(frame);
        if (!this.settle(frame, error)) this.emit('error', error);
        return;
      }
      case 'message':
        if (typeof frame.channel === 'string') this.channelMap.get(frame.channel)?.dispatch(frame);
        return;
      case 'presence':
        if (typeof frame.channel === 'string') this.channelMap.get(frame.channel)?.dispatchPresence(frame);
        return;
      case 'discontinuity':
        if (typeof frame.channel === 'string') this.channelMap.get(frame.channel)?.onDiscontinuity(frame);
        return;
      case 'disconnect':
        this.disconnectFrame = {
          code: typeof frame.code === 'number' ? frame.code : null,
          reason: typeof frame.reason === 'string' ? frame.reason : '',
          reconnect: typeof frame.reconnect === 'boolean' ? frame.reconnect : null,
        };
        return;
      case 'ping':
        if (this.kind === 'websocket') this.rawSend({ type: 'pong', ...(frame.id !== undefined ? { id: frame.id } : {}) });
        return;
      default:
        return;
    }
  }

  /** Resolves or rejects the request or publish answered by `frame`; false if none matches. */
  private settle(frame: Frame, error: AviaryError | null): boolean {
    if (typeof frame.id !== 'number') return false;
    const publish = this.inflight.get(frame.id);
    if (publish) {
      this.inflight.delete(frame.id);
      if (error) publish.reject(error);
      else {
        const position = decodePosition(frame) ?? decodePosition(frame.position);
        if (position) publish.resolve(position);
        else publish.reject(new AviaryError('internal', 'publish answer without a position'));
      }
      return true;
    }
    const request = this.pending.get(frame.id);
    if (!request) return false;
    this.pending.delete(frame.id);
    this.clock.clearTimeout(request.timer);
    if (error) request.reject(error);
    else request.resolve(frame);
    return true;
  }

  private rawSend(frame: Record<string, unknown>): void {
    const socket = this.socket;
    if (!socket) return;
    try {
      socket.send(JSON.stringify(frame));
    } catch {
      // The close event follows and handles the loss.
    }
  }

  // ---- heartbeats and token refresh ----------------------------------------------------------

  /**
   * Browsers answer the server's WebSocket pings without telling scripts, so a dead connection
   * (laptop asleep, NAT dropped) is only visible as silence. After `pingIntervalMs` of silence the
   * client sends a protocol `ping`; if nothing at all arrives within `heartbeatTimeoutMs` more,
   * the connection is dropped and re-established. The timer reschedules itself from
   * `lastInbound` instead of being reset per frame, so busy channels cost nothing.
   */
  private heartbeat(generation: number): void {
    if (generation !== this.generation || this.pingIntervalMs <= 0) return;
    const now = this.clock.now();
    const idle = now - this.lastInbound;
    const interval = this.pingIntervalMs;
    const timeout = this.kind === 'sse' ? interval : (this.options.heartbeatTimeoutMs ?? 10_000);
    if (idle >= interval + timeout) {
      this.abandon(generation, new AviaryError('connection_lost', 'heartbeat timeout: no traffic from the server'));
      return;
    }
    if (idle >= interval && !this.pingOutstanding && this.kind === 'websocket') {
      this.pingOutstanding = true;
      this.rawSend({ type: 'ping', id: this.nextId++ });
    }
    const due = idle >= interval ? this.lastInbound + interval + timeout : this.lastInbound + interval;
    this.clock.clearTimeout(this.timers.heartbeat);
    this.timers.heartbeat = this.clock.setTimeout(() => this.heartbeat(generation), Math.max(1, due - now));
  }

  /** Checks the connection right now (page visible again): ping and expect an answer soon. */
  private probe(): void {
    if (this.stateValue !== 'connected' || this.kind !== 'websocket') return;
    this.lastInbound = this.clock.now() - this.pingIntervalMs;
    this.pingOutstanding = false;
    this.heartbeat(this.generation);
  }

  private scheduleRefresh(generation: number, expiresAt: number | null): void {
    this.clock.clearTimeout(this.timers.refresh);
    if (expiresAt === null) return;
    const remaining = expiresAt - this.clock.now();
    const margin = Math.min(this.options.refreshMarginMs ?? 30_000, Math.max(0, remaining / 2));
    this.timers.refresh = this.clock.setTimeout(
      () => void this.refresh(generation, expiresAt),
      Math.max(0, remaining - margin),
    );
  }

  /** Gets a new token and hands it to the live connection, without reconnecting. */
  private async refresh(generation: number, expiresAt: number): Promise<void> {
    try {
      const token = await this.freshToken(false);
      if (generation !== this.generation) return;
      if (this.kind === 'sse') {
        // The stream carries its token in the request: reopen it, resuming via Last-Event-ID.
        this.restartStream();
        return;
      }
      const ok = await this.request({ type: 'refresh', token }, { wait: false });
      if (generation !== this.generation) return;
      this.expiresAt = parseExpiry(ok.expires_at) ?? jwtExpiryMs(token);
      this.scheduleRefresh(generation, this.expiresAt);
      this.emit('refreshed', { expiresAt: this.expiresAt });
    } catch (err) {
      if (generation !== this.generation) return;
      this.emit('error', isAviaryError(err) ? err : new AviaryError('token_error', String(err), { cause: err }));
      // Try again while there is time; past `exp` the server closes with 4002 and we reconnect.
      const remaining = expiresAt - this.clock.now();
      if (remaining > 1_000) {
        this.timers.refresh = this.clock.setTimeout(
          () => void this.refresh(generation, expiresAt),
          Math.min(5_000, remaining / 2),
        );
      }
    }
  }

  // ---- requests and publishes ------------------------------------------------------------------

  /**
   * @internal Sends a request frame and resolves with the server's `ok`. With `wait` (default) it
   * waits for a connection and the whole thing is bounded by `requestTimeoutMs`; without, it
   * fails fast with `disconnected` and lives as long as the connection (subscribe, presence).
   */
  request(frame: Record<string, unknown>, options: { wait?: boolean } = {}): Promise<Frame> {
    const wait = options.wait ?? true;
    if (this.stateValue === 'closed' || this.stateValue === 'failed') {
      return Promise.reject(this.terminalError());
    }
    if (this.canRequest) return this.send(frame, wait ? (this.options.requestTimeoutMs ?? 15_000) : 0);
    if (!wait) return Promise.reject(new AviaryError('disconnected', 'not connected'));
    if (this.kind === 'sse') return Promise.reject(new AviaryError('unsupported', `${String(frame.type)} needs the WebSocket transport`));
    const timeoutMs = this.options.requestTimeoutMs ?? 15_000;
    const started = this.clock.now();
    return new Promise<void>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.connectWaiters = this.connectWaiters.filter((w) => w !== waiter);
        reject(new AviaryError('timeout', 'timed out waiting for a connection'));
      }, timeoutMs);
      const waiter = {
        resolve: () => {
          this.clock.clearTimeout(timer);
          resolve();
        },
        reject: (err: unknown) => {
          this.clock.clearTimeout(timer);
          reject(err);
        },
      };
      this.connectWaiters.push(waiter);
    }).then(() =>
      this.canRequest
        ? this.send(frame, Math.max(1, timeoutMs - (this.clock.now() - started)))
        : Promise.reject(new AviaryError('unsupported', `${String(frame.type)} needs the WebSocket transport`)),
    );
  }

  private send(frame: Record<string, unknown>, timeoutMs: number): Promise<Frame> {
    const id = this.nextId++;
    return new Promise<Frame>((resolve, reject) => {
      const timer =
        timeoutMs > 0
          ? this.clock.setTimeout(() => {
              this.pending.delete(id);
              reject(new AviaryError('timeout', `no answer to ${String(frame.type)}`));
            }, timeoutMs)
          : undefined;
      this.pending.set(id, { resolve, reject, timer });
      this.rawSend({ ...frame, id });
    });
  }

  /**
   * @internal Publishes with an idempotency key. While disconnected the publish waits in a bounded
   * queue; a publish sent but unanswered when the connection drops goes back to the front of the
   * queue and is resent with the same key, so the server stores it exactly once.
   */
  publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<StreamPosition> {
    if (this.stateValue === 'closed' || this.stateValue === 'failed') {
      return Promise.reject(this.terminalError());
    }
    const key = options.idempotencyKey ?? randomKey();
    if (this.kind === 'sse' && this.preferSse) {
      const fallback = this.options.publishFallback;
      if (!fallback) {
        return Promise.reject(new AviaryError('unsupported', 'publishing on the SSE transport needs `publishFallback`'));
      }
      return fallback({ channel, data, idempotencyKey: key });
    }
    return new Promise<StreamPosition>((resolve, reject) => {
      const entry: QueuedPublish = { channel, data, key, resolve, reject };
      if (this.canRequest && this.outbox.length === 0) this.sendPublish(entry);
      else if (options.queue === false && !this.canRequest) reject(new AviaryError('disconnected', 'not connected'));
      else if (this.outbox.length >= (this.options.offlineQueueSize ?? 1_000)) {
        reject(new AviaryError('queue_full', 'offline publish queue is full'));
      } else this.outbox.push(entry);
    });
  }

  private sendPublish(entry: QueuedPublish): void {
    const id = this.nextId++;
    this.inflight.set(id, entry);
    this.rawSend({ type: 'publish', id, channel: entry.channel, data: entry.data, idempotency_key: entry.key });
  }

  private flushOutbox(): void {
    while (this.canRequest && this.outbox.length > 0) {
      const entry = this.outbox.shift();
      if (entry) this.sendPublish(entry);
    }
  }

  /** Unanswered publishes go back to the front of the queue, oldest first. */
  private requeueInflight(): void {
    if (this.inflight.size === 0) return;
    const entries = [...this.inflight.entries()].sort((a, b) => a[0] - b[0]).map(([, entry]) => entry);
    this.inflight.clear();
    this.outbox = entries.concat(this.outbox);
  }

  private rejectPending(error: AviaryError): void {
    for (const [id, request] of this.pending) {
      this.pending.delete(id);
      this.clock.clearTimeout(request.timer);
      request.reject(error);
    }
  }

  private rejectEverything(error: AviaryError): void {
    this.rejectPending(error);
    this.requeueInflight();
    const outbox = this.outbox;
    this.outbox = [];
    for (const entry of outbox) entry.reject(error);
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(error);
    for (const channel of this.channelMap.values()) channel.fail(error);
  }

  private terminalError(): AviaryError {
    return this.failure ?? new AviaryError('closed', 'client closed');
  }

  /** @internal */
  discontinuity(event: DiscontinuityEvent): void {
    this.emit('discontinuity', event);
  }

  // ---- SSE transport -------------------------------------------------------------------------

  /** @internal The SSE stream names its channels in the URL: reopen it when they change. */
  subscriptionsChanged(): void {
    if (this.kind !== 'sse' || this.restartScheduled) return;
    this.restartScheduled = true;
    // Coalesce several subscribe/unsubscribe calls made in the same task into one reconnect.
    queueMicrotask(() => {
      this.restartScheduled = false;
      if (this.kind !== 'sse' || this.stateValue !== 'connected') return;
      if (this.stream?.channels === this.wantedChannels().join(',')) return;
      this.restartStream();
    });
  }

  private restartStream(): void {
    this.generation++;
    this.teardown();
    this.start();
  }

  private wantedChannels(): string[] {
    return [...this.channelMap.values()].filter((c) => c.wanted).map((c) => c.name);
  }

  private async openStream(generation: number, token: string): Promise<void> {
    const fetchImpl = this.options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (!fetchImpl) {
      this.lost(generation, new AviaryError('unsupported', 'neither WebSocket nor fetch is available'), 'fatal');
      return;
    }
    const names = this.wantedChannels();
    const abort = new AbortController();
    this.stream = { abort, channels: names.join(',') };
    if (names.length === 0) {
      // Nothing to receive yet: "connected" without a stream (and without heartbeats, as
      // nothing can arrive); subscribing opens one.
      this.onConnected(generation, { type: 'connected' }, 'sse', 0);
      return;
    }
    const url = new URL(this.urls.sse);
    url.searchParams.set('channels', names.join(','));
    const headers: Record<string, string> = { Accept: 'text/event-stream', Authorization: `Bearer ${token}` };
    if (this.lastEventId !== null) headers['Last-Event-ID'] = this.lastEventId;
    this.resumedByStream = new Set(this.lastEventId !== null ? this.lastEventIdChannels : []);
    this.timers.connect = this.clock.setTimeout(
      () => this.abandon(generation, new AviaryError('timeout', 'timed out opening the event stream')),
      this.options.connectTimeoutMs ?? 15_000,
    );
    let response: Awaited<ReturnType<FetchLike>>;
    try {
      response = await fetchImpl(url.toString(), { headers, signal: abort.signal, cache: 'no-store' });
    } catch (err) {
      if (generation !== this.generation) return;
      this.noteStreamFailure();
      this.lost(generation, new AviaryError('transport_error', 'event stream request failed', { cause: err }), 'reconnect');
      return;
    }
    if (generation !== this.generation) {
      abort.abort();
      return;
    }
    if (!response.ok || !response.body) {
      this.noteStreamFailure();
      const [error, policy] = streamStatusError(response.status);
      if (error.code === 'invalid_token') this.token = null;
      this.lost(generation, error, policy);
      return;
    }
    // Channels count as subscribed when their `subscribed` event arrives (see onStreamEvent).
    this.sseConnected(generation);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser((event) => this.onStreamEvent(generation, event));
    for (;;) {
      let chunk: { done: boolean; value?: Uint8Array };
      try {
        chunk = await reader.read();
      } catch (err) {
        if (generation === this.generation) {
          this.lost(generation, new AviaryError('connection_lost', 'event stream broke', { cause: err }), 'reconnect');
        }
        return;
      }
      if (generation !== this.generation) {
        reader.cancel().catch(() => {});
        return;
      }
      if (chunk.done) {
        const d = this.disconnectFrame;
        const error = d?.code ? errorFromClose(d.code, d.reason) : new AviaryError('connection_lost', 'event stream ended');
        this.lost(generation, error, d?.code ? effectivePolicy(d.code, d.reconnect) : 'reconnect');
        return;
      }
      this.lastInbound = this.clock.now();
      if (chunk.value) parser.feed(decoder.decode(chunk.value, { stream: true }));
    }
  }

  private sseConnected(generation: number): void {
    this.sseConnectedOnce = true;
    // SSE servers send a comment every 15 s; twice that without a byte means the stream is dead.
    this.onConnected(generation, { type: 'connected' }, 'sse', 15_000);
  }

  /** SSE never worked either: the server may just be down, so go back to trying WebSockets. */
  private noteStreamFailure(): void {
    const transports = this.options.transports ?? ['websocket', 'sse'];
    if (!this.sseConnectedOnce && transports.includes('websocket') && this.webSocketCtor()) {
      this.preferSse = false;
      this.wsFailuresBeforeOpen = 0;
    }
  }

  private onStreamEvent(generation: number, event: SseEvent): void {
    if (event.id !== null) {
      this.lastEventId = event.id;
      this.lastEventIdChannels = this.stream ? this.stream.channels.split(',') : [];
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!parsed || typeof parsed !== 'object') return;
    const frame = parsed as Frame;
    if (typeof frame.type !== 'string') frame.type = event.event;
    if (frame.type === 'subscribed') {
      if (typeof frame.channel === 'string') this.channelMap.get(frame.channel)?.onStreamSubscribed(frame, this.resumedByStream.has(frame.channel));
    } else if (frame.type === 'message' || frame.type === 'presence' || frame.type === 'discontinuity' || frame.type === 'disconnect') {
      this.onFrame(generation, frame);
    }
  }

  // ---- browser signals -----------------------------------------------------------------------

  private listenToPlatform(): void {
    this.platformListeners.push(
      this.platform.onOnline(() => {
        if (this.stateValue === 'disconnected' || this.stateValue === 'reconnecting') {
          this.backoff.reset();
          this.start();
        }
      }),
      this.platform.onOffline(() => {
        if (this.stateValue === 'connected' || this.stateValue === 'connecting') {
          this.abandon(this.generation, new AviaryError('connection_lost', 'the device went offline'));
        } else if (this.stateValue === 'reconnecting') {
          this.clock.clearTimeout(this.timers.reconnect);
          this.setState('disconnected');
        }
      }),
      this.platform.onVisible(() => {
        if (this.stateValue === 'reconnecting') this.start();
        else this.probe();
      }),
    );
  }

  private unlistenPlatform(): void {
    for (const off of this.platformListeners) off();
    this.platformListeners = [];
  }
}

function heartbeatMs(frame: Frame): number {
  const s = frame.heartbeat_s;
  return typeof s === 'number' && s > 0 ? s * 1000 : 25_000;
}

function streamStatusError(status: number): [AviaryError, ClosePolicy] {
  switch (status) {
    case 401:
      return [new AviaryError('invalid_token', 'event stream refused the token'), 'new_token'];
    case 400:
      return [new AviaryError('bad_request', 'event stream request refused (too many channels?)'), 'fatal'];
    case 403:
      return [new AviaryError('forbidden', 'event stream forbidden'), 'fatal'];
    case 404:
      return [new AviaryError('not_found', 'event stream: unknown channel namespace'), 'fatal'];
    case 429:
      return [new AviaryError('quota_exceeded', 'event stream quota exceeded'), 'reconnect'];
    default:
      return [new AviaryError('transport_error', `event stream answered HTTP ${status}`), 'reconnect'];
  }
}
