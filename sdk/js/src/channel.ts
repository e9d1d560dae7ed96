/**
 * One channel as the application sees it: message handlers, presence, history, publish, and the
 * client-side half of lossless resume. The channel remembers the position of the last message it
 * delivered; every (re)subscribe sends it as `since`, and messages at or below it are dropped, so
 * the application sees each publication exactly once and in order across reconnects.
 */

import { Emitter } from './emitter.js';
import { AviaryError, isAviaryError } from './errors.js';
import {
  decodeMember,
  decodeMessage,
  decodePosition,
  type Frame,
  type HistoryOptions,
  type HistoryPage,
  type Message,
  type PresenceMember,
  type PublishOptions,
  type StreamPosition,
} from './types.js';

/** What a channel needs from the connection. Implemented by `Aviary`. */
export interface ChannelHost {
  /** The transport can carry requests right now (a connected WebSocket). */
  readonly canRequest: boolean;
  readonly transport: 'websocket' | 'sse' | null;
  request(frame: Record<string, unknown>, options?: { wait?: boolean }): Promise<Frame>;
  publish(channel: string, data: unknown, options?: PublishOptions): Promise<StreamPosition>;
  /** The set of channels wanting a subscription changed (the SSE transport reconnects). */
  subscriptionsChanged(): void;
  discontinuity(event: DiscontinuityEvent): void;
}

/** Raised when a resubscribe could not recover every missed message (`recovered:false`): the
 * application must reload its state for the channel (e.g. fetch history again). */
export interface DiscontinuityEvent {
  channel: string;
  /** Where the client was. */
  previous: StreamPosition | null;
  /** Where the stream is now; live messages continue from here. */
  position: StreamPosition | null;
}

export interface ChannelEvents {
  /** Each successful (re)subscribe. `recovered` is false after a discontinuity. */
  subscribed: { position: StreamPosition | null; recovered: boolean; resumed: boolean };
  /** See {@link DiscontinuityEvent}. */
  discontinuity: DiscontinuityEvent;
  /** The server refused the subscription (e.g. `forbidden`); the channel stops retrying. */
  error: AviaryError;
}

export type MessageHandler<T = unknown> = (message: Message<T>) => void;

type AttachState = 'detached' | 'attaching' | 'attached';

interface Waiter {
  resolve(): void;
  reject(err: unknown): void;
}

/** Compares positions; a different epoch counts as newer (the stream was replaced). */
function later(current: StreamPosition | null, candidate: StreamPosition | null): StreamPosition | null {
  if (!candidate) return current;
  if (!current || current.epoch !== candidate.epoch || candidate.offset > current.offset) return candidate;
  return current;
}

export interface PresenceEvents {
  join: PresenceMember;
  leave: PresenceMember;
  update: PresenceMember;
  /** The full member list, after every (re)subscribe: events missed while disconnected are not
   * replayed, so rebuild your list from this. */
  sync: PresenceMember[];
}

/** A channel's presence set. Listening (`on`) subscribes the channel with presence events. */
export class Presence<T = unknown> extends Emitter<PresenceEvents> {
  /** The data this client entered with, re-entered automatically after each reconnect. */
  private entered: { data: unknown } | null = null;
  private waiters: Waiter[] = [];

  /** @internal */
  constructor(private readonly channel: Channel<any>) {
    super();
  }

  override on<K extends keyof PresenceEvents>(event: K, listener: (payload: PresenceEvents[K]) => void): () => void {
    const off = super.on(event, listener);
    this.channel.sync();
    return () => {
      off();
      this.channel.sync();
    };
  }

  /** @internal */
  get hasListeners(): boolean {
    return (
      this.listenerCount('join') + this.listenerCount('leave') + this.listenerCount('update') + this.listenerCount('sync') >
      0
    );
  }

  /** Enters the presence set with `data`. Kept across reconnects until `leave()`. */
  enter(data?: T): Promise<void> {
    this.entered = { data: data ?? null };
    return this.send('presence.enter', this.entered.data);
  }

  /** Replaces this client's presence data (enters if not entered). */
  update(data: T): Promise<void> {
    const first = this.entered === null;
    this.entered = { data };
    return this.send(first ? 'presence.enter' : 'presence.update', data);
  }

  /** Leaves the presence set. */
  async leave(): Promise<void> {
    this.entered = null;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
    // Not connected: the server removed us with the connection and we won't re-enter.
    if (!this.channel.host.canRequest) return;
    try {
      await this.channel.host.request({ type: 'presence.leave', channel: this.channel.name }, { wait: false });
    } catch (err) {
      // Not entered on this connection (yet): leaving is already true.
      if (!isAviaryError(err, 'not_found') && !isAviaryError(err, 'disconnected')) throw err;
    }
  }

  /** The current members, from the server. */
  async get(): Promise<PresenceMember<T>[]> {
    const ok = await this.channel.host.request({ type: 'presence.get', channel: this.channel.name });
    const raw = Array.isArray(ok.members) ? ok.members : [];
    return raw.map(decodeMember).filter((m): m is PresenceMember => m !== null) as PresenceMember<T>[];
  }

  private send(type: string, data: unknown): Promise<void> {
    if (this.channel.host.transport === 'sse') {
      return Promise.reject(new AviaryError('unsupported', 'presence needs the WebSocket transport'));
    }
    if (!this.channel.host.canRequest) return this.waitForReenter();
    return this.channel.host.request({ type, channel: this.channel.name, data }, { wait: false }).then(
      () => undefined,
      (err: unknown) => {
        // Lost mid-flight: the desired state is kept and re-applied on reconnect.
        if (isAviaryError(err, 'disconnected')) return this.waitForReenter();
        throw err;
      },
    );
  }

  private waitForReenter(): Promise<void> {
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** @internal Called once per connection after the channel's subscribe (if any) was sent. */
  reenter(): void {
    if (!this.entered) return;
    const waiters = this.waiters;
    this.waiters = [];
    this.channel.host
      .request({ type: 'presence.enter', channel: this.channel.name, data: this.entered.data }, { wait: false })
      .then(
        () => waiters.forEach((w) => w.resolve()),
        (err: unknown) => {
          if (isAviaryError(err, 'disconnected')) this.waiters.push(...waiters);
          else waiters.forEach((w) => w.reject(err));
        },
      );
  }

  /** @internal */
  dispatch(frame: Frame): void {
    const member = decodeMember(frame.member);
    if (!member) return;
    if (frame.action === 'join' || frame.action === 'leave' || frame.action === 'update') this.emit(frame.action, member);
  }

  /** @internal */
  emitSync(members: PresenceMember[]): void {
    this.emit('sync', members);
  }

  /** @internal */
  rejectAll(err: unknown): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(err);
  }
}

export class Channel<T = unknown> extends Emitter<ChannelEvents> {
  readonly presence: Presence<T>;
  private readonly handlers = new Set<MessageHandler<any>>();
  private state: AttachState = 'detached';
  private attachedWithPresence = false;
  /** Bumped on every attach and detach so late answers to an old attempt are ignored. */
  private attachGeneration = 0;
  /** Where to resume from: the latest of the last delivered message and the subscribe answer. */
  private cursor: StreamPosition | null = null;
  /** The last message handed to the application; anything at or below it is a duplicate. */
  private delivered: StreamPosition | null = null;
  private waiters: Waiter[] = [];
  /** Set when the server refused the subscription; cleared by the next `subscribe()`. */
  private refused: AviaryError | null = null;

  /** @internal Use `client.channel(name)`. */
  constructor(
    readonly name: string,
    /** @internal */
    readonly host: ChannelHost,
  ) {
    super();
    this.presence = new Presence<T>(this);
  }

  /** The position the channel would resume from; null before the first subscribe answer. */
  get position(): StreamPosition | null {
    return this.cursor;
  }

  /** True while the server confirms the subscription on the current connection. */
  get subscribed(): boolean {
    return this.state === 'attached';
  }

  /**
   * Adds a message handler and subscribes the channel if needed. Resolves once the server confirms
   * the subscription (waiting for the connection if it is down); rejects if the server refuses it.
   */
  subscribe(handler: MessageHandler<T>): Promise<void> {
    this.handlers.add(handler);
    this.refused = null;
    if (this.state === 'attached') return Promise.resolve();
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.sync();
    return done;
  }

  /**
   * Removes `handler` (or every handler). When none is left and nobody listens to presence, the
   * channel unsubscribes and forgets its position: a later subscribe starts live.
   */
  unsubscribe(handler?: MessageHandler<T>): void {
    if (handler) this.handlers.delete(handler);
    else this.handlers.clear();
    this.sync();
  }

  /** Publishes `data`. Resolves with the publication's position once the server stored it. */
  publish(data: T, options?: PublishOptions): Promise<StreamPosition> {
    return this.host.publish(this.name, data, options);
  }

  /** Reads the channel's history (oldest first). */
  async history(options: HistoryOptions = {}): Promise<HistoryPage<T>> {
    if (this.host.transport === 'sse') throw new AviaryError('unsupported', 'history needs the WebSocket transport');
    const frame: Record<string, unknown> = { type: 'history', channel: this.name };
    if (options.since) frame.since = options.since;
    if (options.limit !== undefined) frame.limit = options.limit;
    const ok = await this.host.request(frame);
    const raw = Array.isArray(ok.publications) ? ok.publications : Array.isArray(ok.messages) ? ok.messages : [];
    const messages = raw
      .map((m) => (m && typeof m === 'object' ? decodeMessage(this.name, m as Record<string, unknown>) : null))
      .filter((m): m is Message => m !== null) as Message<T>[];
    return { messages, position: decodePosition(ok.position), recovered: ok.recovered !== false };
  }

  /** @internal Whether the channel needs a subscription at all. */
  get wanted(): boolean {
    return this.refused === null && (this.handlers.size > 0 || this.presence.hasListeners);
  }

  /** @internal Brings the server-side subscription in line with what the application wants. */
  sync(): void {
    const wanted = this.wanted;
    if (!wanted && this.state === 'detached' && this.handlers.size === 0 && !this.presence.hasListeners) {
      this.cursor = null;
      this.delivered = null;
    }
    if (this.host.transport === 'sse') {
      this.host.subscriptionsChanged();
      return;
    }
    if (!this.host.canRequest || this.state === 'attaching') return;
    if (wanted && this.state === 'detached') {
      this.attach();
    } else if (!wanted && this.state === 'attached') {
      this.detach(true);
      this.host.request({ type: 'unsubscribe', channel: this.name }, { wait: false }).catch(() => {});
      this.cursor = null;
      this.delivered = null;
    } else if (wanted && this.state === 'attached' && this.attachedWithPresence !== this.presence.hasListeners) {
      // Presence events are chosen at subscribe time: subscribe again, resuming where we are.
      this.detach(true);
      this.host.request({ type: 'unsubscribe', channel: this.name }, { wait: false }).catch(() => {});
      this.attach();
    }
  }

  private attach(): void {
    const generation = ++this.attachGeneration;
    const since = this.cursor;
    const presence = this.presence.hasListeners;
    this.state = 'attaching';
    const frame: Record<string, unknown> = { type: 'subscribe', channel: this.name, presence };
    if (since) frame.since = since;
    this.host.request(frame, { wait: false }).then(
      (ok) => {
        if (generation !== this.attachGeneration) return;
        this.onAttached(ok, since, presence);
      },
      (err: unknown) => {
        if (generation !== this.attachGeneration) return;
        this.state = 'detached';
        // A lost connection is not a refusal: the client resubscribes when it is back.
        if (isAviaryError(err, 'disconnected') || isAviaryError(err, 'timeout')) return;
        const error = isAviaryError(err) ? err : new AviaryError('internal', String(err), { cause: err });
        this.refused = error;
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters) w.reject(error);
        this.emit('error', error);
      },
    );
  }

  private onAttached(ok: Frame, since: StreamPosition | null, presence: boolean): void {
    this.state = 'attached';
    this.attachedWithPresence = presence;
    const position = decodePosition(ok.position);
    const recovered = ok.recovered !== false;
    if (since && !recovered) {
      this.cursor = position;
      this.delivered = null;
      const event = { channel: this.name, previous: since, position };
      this.emit('discontinuity', event);
      this.host.discontinuity(event);
    } else if (!since) {
      this.cursor = later(this.cursor, position);
    }
    // With a recovered `since`, the cursor moves only as the replayed messages arrive: if the
    // connection drops mid-replay, the next resume starts from the last one actually delivered.
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
    this.emit('subscribed', { position, recovered, resumed: since !== null });
    if (presence) {
      this.presence.get().then(
        (members) => this.presence.emitSync(members),
        () => {},
      );
    }
    this.sync();
  }

  private detach(keepWaiters: boolean): void {
    this.attachGeneration++;
    this.state = 'detached';
    if (!keepWaiters) this.waiters = [];
  }

  /** @internal The connection is up: resubscribe and re-enter presence. */
  onConnected(): void {
    this.state = 'detached';
    this.sync();
    this.presence.reenter();
  }

  /** @internal The connection is gone: every subscription with it. */
  onDisconnected(): void {
    this.detach(true);
  }

  /**
   * @internal The SSE stream confirmed this channel (its `subscribed` event). With `resumed`, the
   * stream resumed from the `Last-Event-ID` the client sent, which tracks the same messages as the
   * cursor, so the answer reads like a WebSocket resubscribe. Without it (the channel is new to
   * the stream, e.g. after falling back from WebSocket) the server could not resume from our
   * cursor: if we had one, that is a discontinuity.
   */
  onStreamSubscribed(frame: Frame, resumed: boolean): void {
    if (!this.wanted) return;
    this.attachGeneration++;
    const cursor = this.cursor;
    if (resumed || !cursor) {
      this.onAttached(frame, resumed ? cursor : null, false);
      return;
    }
    this.onAttached({ ...frame, recovered: false }, cursor, false);
  }

  /**
   * @internal The server saw the stream change under a live subscription (a new epoch, or a gap
   * it could not fill): the same as resubscribing with `recovered:false`. The next message
   * continues from `position`, so deduplication restarts there.
   */
  onDiscontinuity(frame: Frame): void {
    const position = decodePosition(frame.position);
    const previous = decodePosition(frame.previous) ?? this.delivered ?? this.cursor;
    this.cursor = position;
    this.delivered = position;
    const event = { channel: this.name, previous, position };
    this.emit('discontinuity', event);
    this.host.discontinuity(event);
  }

  /** @internal The client was closed or failed. */
  fail(err: unknown): void {
    this.detach(false);
    this.presence.rejectAll(err);
  }

  /** @internal Delivers a `message` frame unless it is a duplicate. The position advances even
   * without handlers (a presence-only subscription) so a resume never replays what was seen. */
  dispatch(frame: Frame): void {
    if (this.state === 'detached' && this.host.transport === 'websocket') return;
    const message = decodeMessage(this.name, frame);
    if (!message) return;
    const last = this.delivered;
    if (last && last.epoch === message.epoch && message.offset <= last.offset) return;
    const position = { epoch: message.epoch, offset: message.offset };
    this.delivered = position;
    this.cursor = later(this.cursor, position);
    for (const handler of [...this.handlers]) {
      try {
        handler(message as Message<T>);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  /** @internal */
  dispatchPresence(frame: Frame): void {
    this.presence.dispatch(frame);
  }
}
