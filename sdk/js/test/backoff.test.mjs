import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../dist/esm/index.js';

test('delays use full jitter within a doubling window', () => {
  const draws = [0.999, 0.999, 0.999, 0.999];
  const b = new Backoff({ initialDelayMs: 100, maxDelayMs: 10_000 }, () => draws.shift());
  assert.deepEqual([b.next(), b.next(), b.next(), b.next()], [99, 199, 399, 799]);
});

test('window is capped at maxDelayMs', () => {
  const b = new Backoff({ initialDelayMs: 100, maxDelayMs: 1_000 }, () => 0.999);
  const delays = Array.from({ length: 100 }, () => b.next());
  assert.ok(delays.every((d) => d <= 999));
  assert.equal(delays.at(-1), 999);
});

test('zero randomness means an immediate retry', () => {
  const b = new Backoff({ initialDelayMs: 100 }, () => 0);
  assert.equal(b.next(), 0);
  assert.equal(b.next(), 0);
});

test('reset starts the window over and counts attempts', () => {
  const b = new Backoff({ initialDelayMs: 100, maxDelayMs: 10_000 }, () => 0.5);
  b.next();
  b.next();
  b.next();
  assert.equal(b.attempts, 3);
  b.reset();
  assert.equal(b.attempts, 0);
  assert.equal(b.next(), 50);
});

test('a random source out of range never yields a negative or huge delay', () => {
  for (const r of [-1, 1, NaN, 7]) {
    const b = new Backoff({ initialDelayMs: 100 }, () => r);
    const d = b.next();
    assert.ok(d >= 0 && d < 100, `random ${r} gave ${d}`);
  }
});

test('many attempts never overflow', () => {
  const b = new Backoff({ initialDelayMs: 500, maxDelayMs: 30_000 }, () => 0.5);
  for (let i = 0; i < 10_000; i++) b.next();
  assert.equal(b.next(), 15_000);
});
