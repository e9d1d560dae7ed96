/**
 * Typed errors. Every failure the SDK reports is an {@link AviaryError} whose `code` is either a
 * code the server sent in an `error` frame, a code derived from a WebSocket close code, or one of
 * the few codes the client raises itself. Switch on `code`; never parse `message`.
 */

/** Codes the server sends in `{"type":"error","code":...}` frames (see docs/protocol.md). */
export type ServerErrorCode =
  | 'forbidden'
  | 'bad_request'
  | 'not_found'
  | 'rate_limited'
  | 'quota_exceeded'
  | 'payload_too_large'
  | 'token_expired'
  | 'unauthorized'
  | 'conflict'
  | 'internal';

/** Codes derived from the server's WebSocket close codes. */
export type CloseErrorCode =
  | 'protocol_error'
  | 'invalid_token'
  | 'token_expired'
  | 'forbidden'
  | 'app_disabled'
  | 'slow_consumer'
  | 'quota_exceeded'
  | 'credentials_revoked'
  | 'going_away'
  | 'frame_too_big'
  | 'websocket_protocol_error'
  | 'invalid_payload'
  | 'try_again_later'
  | 'connection_lost';

/** Codes the client raises without the server saying so. */
export type ClientErrorCode =
  | 'timeout'
  | 'disconnected'
  | 'closed'
  | 'queue_full'
  | 'unsupported'
  | 'token_error'
  | 'transport_error';

export type ErrorCode = ServerErrorCode | CloseErrorCode | ClientErrorCode;

/** The server's close codes (docs/protocol.md, "Close codes"). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  Abnormal: 1006,
  WebSocketProtocolError: 1002,
  InvalidPayload: 1007,
  FrameTooBig: 1009,
  TryAgainLater: 1013,
  ProtocolError: 4000,
  InvalidToken: 4001,
  TokenExpired: 4002,
  Forbidden: 4003,
  AppDisabled: 4004,
  SlowConsumer: 4008,
  QuotaExceeded: 4009,
  CredentialsRevoked: 4010,
} as const;

const CLOSE_CODES: Record<number, CloseErrorCode> = {
  1001: 'going_away',
  1002: 'websocket_protocol_error',
  1007: 'invalid_payload',
  1009: 'frame_too_big',
  1013: 'try_again_later',
  4000: 'protocol_error',
  4001: 'invalid_token',
  4002: 'token_expired',
  4003: 'forbidden',
  4004: 'app_disabled',
  4008: 'slow_consumer',
  4009: 'quota_exceeded',
  4010: 'credentials_revoked',
};

/** Error raised or emitted by the SDK. */
export class AviaryError extends Error {
  /** Stable, machine-readable code: switch on this. */
  readonly code: ErrorCode;
  /** The WebSocket close code when the error comes from a close. */
  readonly closeCode: number | undefined;
  /** Whether retrying the same operation later can succeed. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: { closeCode?: number; cause?: unknown } = {}) {
    super(message);
    this.name = 'AviaryError';
    this.code = code;
    this.closeCode = options.closeCode;
    this.retryable = RETRYABLE.has(code);
    if (options.cause !== undefined) (this as { cause?: unknown }).cause = options.cause;
  }
}

const RETRYABLE = new Set<ErrorCode>([
  'rate_limited',
  'internal',
  'timeout',
  'disconnected',
  'slow_consumer',
  'going_away',
  'try_again_later',
  'connection_lost',
  'token_expired',
  'transport_error',
  'token_error',
  'quota_exceeded',
]);

/** True when `err` is an {@link AviaryError}, optionally with the given code. */
export function isAviaryError(err: unknown, code?: ErrorCode): err is AviaryError {
  return err instanceof AviaryError && (code === undefined || err.code === code);
}

/** Maps a WebSocket close code (and reason) to an error. */
export function errorFromClose(closeCode: number, reason: string): AviaryError {
  const code = CLOSE_CODES[closeCode] ?? 'connection_lost';
  return new AviaryError(code, reason || `connection closed (${closeCode})`, { closeCode });
}

/** Maps a server `error` frame to an error. Unknown codes become `internal`. */
export function errorFromFrame(frame: { [key: string]: unknown }): AviaryError {
  const code = typeof frame.code === 'string' && SERVER_CODES.has(frame.code) ? (frame.code as ServerErrorCode) : 'internal';
  const message = typeof frame.message === 'string' ? frame.message : code;
  return new AviaryError(code, message);
}

const SERVER_CODES = new Set<string>([
  'forbidden',
  'bad_request',
  'not_found',
  'rate_limited',
  'quota_exceeded',
  'payload_too_large',
  'token_expired',
  'unauthorized',
  'conflict',
  'internal',
]);

/** What the connection does after the server closes it with `closeCode`. */
export type ClosePolicy = 'reconnect' | 'reconnect_now' | 'new_token' | 'fatal';

/**
 * The reconnect policy per close code, when the server sent no `disconnect` frame. With one,
 * `reconnect:true` turns a `fatal` here into `reconnect`, and `reconnect:false` makes every code
 * `fatal` except the token codes 4001 and 4010, which get one more try with a fresh token (see
 * {@link effectivePolicy}).
 */
export function closePolicy(closeCode: number): ClosePolicy {
  switch (closeCode) {
    case CloseCode.GoingAway:
      // A draining node: go elsewhere straight away.
      return 'reconnect_now';
    case CloseCode.TokenExpired:
      return 'new_token';
    case CloseCode.InvalidToken:
    case CloseCode.CredentialsRevoked:
      // docs/protocol.md: "fetch a new token, then reconnect". A fresh token may be valid (key
      // rotation, re-login); the client gives up after two such closes in a row.
      return 'new_token';
    case CloseCode.WebSocketProtocolError:
    case CloseCode.InvalidPayload:
    case CloseCode.ProtocolError:
    case CloseCode.Forbidden:
    case CloseCode.AppDisabled:
      return 'fatal';
    default:
      return 'reconnect';
  }
}

/** The policy for a close, given the `disconnect` frame's `reconnect` flag when there was one. */
export function effectivePolicy(closeCode: number, reconnect: boolean | null): ClosePolicy {
  const policy = closePolicy(closeCode);
  if (reconnect === false) return policy === 'new_token' ? 'new_token' : 'fatal';
  if (reconnect === true && policy === 'fatal') return 'reconnect';
  return policy;
}
