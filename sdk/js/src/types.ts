/**
 * Public data types and the wire frames they are decoded from. Wire frames use the protocol's
 * snake_case (docs/protocol.md); the public types use camelCase.
 */

/** Where a channel's stream is: `offset` of the latest publication within `epoch`. Offsets are
 * strictly increasing and gap-free within an epoch; a new epoch means the old stream was lost. */
export interface StreamPosition {
  epoch: string;
  offset: number;
}

/** A publication delivered to subscribers. */
export interface Message<T = unknown> {
  channel: string;
  epoch: string;
  offset: number;
  data: T;
  /** The publishing client, `null` for backend (REST) publishes. */
  clientId: string | null;
  /** Milliseconds since the Unix epoch when the server accepted it. */
  ts: number;
}

export interface PresenceMember<T = unknown> {
  clientId: string;
  connectionId: string;
  data: T | null;
}

export interface HistoryPage<T = unknown> {
  /** Oldest first. */
  messages: Message<T>[];
  /** The stream's position when the history was read. */
  position: StreamPosition | null;
  /** With `since`: false when history no longer reaches back to it (there is a gap). */
  recovered: boolean;
}

export interface HistoryOptions {
  /** Only publications after this position. */
  since?: StreamPosition;
  limit?: number;
}

export interface PublishOptions {
  /** Defaults to a random 128-bit key. Pass your own to make an application-level retry safe. */
  idempotencyKey?: string;
  /** Queue while disconnected (default true). With false, rejects with `disconnected` instead. */
  queue?: boolean;
}

/** Any JSON frame received from the server. */
export interface Frame {
  type: string;
  id?: number | string;
  [key: string]: unknown;
}

export function decodePosition(value: unknown): StreamPosition | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as { epoch?: unknown; offset?: unknown };
  if (v.epoch === undefined || typeof v.offset !== 'number') return null;
  return { epoch: String(v.epoch), offset: v.offset };
}

export function decodeMessage(channel: string, raw: Record<string, unknown>): Message | null {
  const position = decodePosition(raw);
  if (!position) return null;
  return {
    channel,
    epoch: position.epoch,
    offset: position.offset,
    data: raw.data,
    clientId: typeof raw.client_id === 'string' ? raw.client_id : null,
    ts: typeof raw.ts === 'number' ? raw.ts : 0,
  };
}

export function decodeMember(raw: unknown): PresenceMember | null {
  if (!raw || typeof raw !== 'object') return null;
  const m = raw as Record<string, unknown>;
  if (typeof m.client_id !== 'string') return null;
  return {
    clientId: m.client_id,
    connectionId: typeof m.connection_id === 'string' ? m.connection_id : '',
    data: m.data === undefined ? null : m.data,
  };
}
