import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AviaryError, CloseCode, closePolicy, effectivePolicy, errorFromClose, errorFromFrame, isAviaryError } from '../dist/esm/index.js';

test('every documented close code maps to a stable error code', () => {
  const expected = {
    1001: 'going_away',
    1009: 'frame_too_big',
    4000: 'protocol_error',
    4001: 'invalid_token',
    4002: 'token_expired',
    4003: 'forbidden',
    4004: 'app_disabled',
    4008: 'slow_consumer',
    4009: 'quota_exceeded',
    4010: 'credentials_revoked',
  };
  for (const [code, name] of Object.entries(expected)) {
    const err = errorFromClose(Number(code), '');
    assert.equal(err.code, name);
    assert.equal(err.closeCode, Number(code));
    assert.ok(err instanceof AviaryError && err instanceof Error);
  }
  assert.equal(errorFromClose(1006, '').code, 'connection_lost');
});

test('close policy: fatal codes stop, 4002 fetches a new token, 1001 reconnects at once', () => {
  assert.equal(closePolicy(CloseCode.Forbidden), 'fatal');
  assert.equal(closePolicy(CloseCode.AppDisabled), 'fatal');
  assert.equal(closePolicy(CloseCode.CredentialsRevoked), 'new_token');
  assert.equal(closePolicy(CloseCode.ProtocolError), 'fatal');
  assert.equal(closePolicy(CloseCode.TokenExpired), 'new_token');
  assert.equal(closePolicy(CloseCode.InvalidToken), 'new_token');
  assert.equal(closePolicy(CloseCode.GoingAway), 'reconnect_now');
  assert.equal(closePolicy(CloseCode.SlowConsumer), 'reconnect');
  assert.equal(closePolicy(CloseCode.QuotaExceeded), 'reconnect');
  assert.equal(closePolicy(1006), 'reconnect');
});

test('server error frames keep their code; unknown codes become internal', () => {
  for (const code of ['forbidden', 'bad_request', 'not_found', 'rate_limited', 'quota_exceeded', 'payload_too_large', 'token_expired', 'unauthorized', 'internal']) {
    const err = errorFromFrame({ type: 'error', code, message: 'm' });
    assert.equal(err.code, code);
    assert.equal(err.message, 'm');
  }
  assert.equal(errorFromFrame({ code: 'something_new' }).code, 'internal');
  assert.equal(errorFromFrame({ code: 'rate_limited' }).retryable, true);
  assert.equal(errorFromFrame({ code: 'forbidden' }).retryable, false);
});

test('isAviaryError narrows by code', () => {
  const err = new AviaryError('queue_full', 'full');
  assert.ok(isAviaryError(err));
  assert.ok(isAviaryError(err, 'queue_full'));
  assert.ok(!isAviaryError(err, 'timeout'));
  assert.ok(!isAviaryError(new Error('x')));
});

test('reconnect:false is final except for token refusals, which get a fresh token', () => {
  assert.equal(effectivePolicy(4009, false), 'fatal');
  assert.equal(effectivePolicy(4000, false), 'fatal');
  assert.equal(effectivePolicy(1009, false), 'fatal');
  assert.equal(effectivePolicy(4001, false), 'new_token');
  assert.equal(effectivePolicy(4010, false), 'new_token');
  assert.equal(effectivePolicy(4003, true), 'reconnect');
  assert.equal(effectivePolicy(4008, true), 'reconnect');
  assert.equal(effectivePolicy(1001, true), 'reconnect_now');
  assert.equal(effectivePolicy(4002, true), 'new_token');
  assert.equal(effectivePolicy(1006, null), 'reconnect');
});
