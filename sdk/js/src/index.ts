/**
 * `@aviary/client`: the browser and Node client for Aviary realtime. See README.md.
 */

export { Aviary, endpoints } from './client.js';
export type {
  AviaryOptions,
  ClientEvents,
  ConnectionState,
  FallbackPublish,
  FetchLike,
  TransportKind,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { Channel, Presence } from './channel.js';
export type { ChannelEvents, DiscontinuityEvent, MessageHandler, PresenceEvents } from './channel.js';
export { AviaryError, CloseCode, closePolicy, effectivePolicy, errorFromClose, errorFromFrame, isAviaryError } from './errors.js';
export type { ClientErrorCode, CloseErrorCode, ClosePolicy, ErrorCode, ServerErrorCode } from './errors.js';
export { Backoff } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { SseParser } from './sse.js';
export type { SseEvent } from './sse.js';
export type { Clock, Platform } from './platform.js';
export type {
  HistoryOptions,
  HistoryPage,
  Message,
  PresenceMember,
  PublishOptions,
  StreamPosition,
} from './types.js';
