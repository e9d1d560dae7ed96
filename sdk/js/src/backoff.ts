/**
 * Reconnect delays: capped exponential backoff with full jitter (delay drawn uniformly from
 * `[0, min(max, initial * multiplier^attempt))`). Full jitter spreads a fleet of clients that lost
 * the same node over the whole window instead of having them all return at the same instants.
 */

export interface BackoffOptions {
  /** Upper bound of the first delay window, in ms. Default 500. */
  initialDelayMs?: number;
  /** Cap of the delay window, in ms. Default 30 000. */
  maxDelayMs?: number;
  /** Growth of the window per failed attempt. Default 2. */
  multiplier?: number;
  /**
   * A connection that stays up this long (ms) resets the attempt count, so a flapping connection
   * keeps backing off while a healthy one that drops once reconnects quickly. Default 15 000.
   */
  stableAfterMs?: number;
}

export class Backoff {
  private attempt = 0;
  private readonly initial: number;
  private readonly max: number;
  private readonly multiplier: number;

  constructor(
    options: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {
    this.initial = Math.max(1, options.initialDelayMs ?? 500);
    this.max = Math.max(this.initial, options.maxDelayMs ?? 30_000);
    this.multiplier = Math.max(1, options.multiplier ?? 2);
  }

  /** Failed attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The next delay in ms; counts one more attempt. */
  next(): number {
    // Exponent capped so the window computation never overflows to Infinity.
    const window = Math.min(this.max, this.initial * this.multiplier ** Math.min(this.attempt, 64));
    this.attempt += 1;
    const r = this.random();
    const unit = r >= 0 && r < 1 ? r : 0;
    return Math.floor(unit * window);
  }

  reset(): void {
    this.attempt = 0;
  }
}
