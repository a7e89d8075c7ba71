// Failed API-key attempts: counted, and slowed per client address and per key
// prefix. Memory is bounded: at most `maxEntries` subjects are remembered
// (least recently touched forgotten first).
//
// A client address that fails `maxFailures` times within `windowMs` is blocked
// (429 with Retry-After) for `baseBlockMs`, doubling with each further block
// (at most `maxBlockMs`). Blocked addresses are refused before any key check.
// A key prefix under attack is blocked the same way, but only for wrong
// secrets: the valid key of another client is never slowed by it.

export interface LimiterOptions {
  maxEntries?: number;
  windowMs?: number;
  maxFailures?: number;
  baseBlockMs?: number;
  maxBlockMs?: number;
}

interface Entry {
  failures: number;
  windowStart: number;
  blockedUntil: number;
  /** Blocks so far: each one lasts twice the previous. */
  strikes: number;
}

export const DEFAULT_LIMITER: Required<LimiterOptions> = {
  maxEntries: 10_000,
  windowMs: 60_000,
  maxFailures: 10,
  baseBlockMs: 30_000,
  maxBlockMs: 15 * 60_000,
};

export class FailureLimiter {
  private readonly o: Required<LimiterOptions>;
  private readonly entries = new Map<string, Entry>();

  constructor(opts: LimiterOptions = {}) {
    this.o = { ...DEFAULT_LIMITER, ...opts };
  }

  get size(): number {
    return this.entries.size;
  }

  /** ms until `subject` may try again (0: not blocked). */
  blockedFor(subject: string, now = Date.now()): number {
    const e = this.entries.get(subject);
    if (!e) return 0;
    return Math.max(0, e.blockedUntil - now);
  }

  /** Records a failure; returns true when this failure started a block. */
  fail(subject: string, now = Date.now()): boolean {
    let e = this.entries.get(subject);
    if (e) this.entries.delete(subject);
    else e = { failures: 0, windowStart: now, blockedUntil: 0, strikes: 0 };
    // most recently used last: eviction takes the first
    this.entries.set(subject, e);
    if (this.entries.size > this.o.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    if (now - e.windowStart > this.o.windowMs) {
      e.windowStart = now;
      e.failures = 0;
      // a quiet window forgives one earlier block
      if (e.blockedUntil < now - this.o.windowMs && e.strikes > 0) e.strikes--;
    }
    e.failures++;
    if (e.failures >= this.o.maxFailures && e.blockedUntil <= now) {
      e.blockedUntil = now + Math.min(this.o.maxBlockMs, this.o.baseBlockMs * 2 ** Math.min(e.strikes, 30));
      e.strikes++;
      e.failures = 0;
      e.windowStart = now;
      return true;
    }
    return false;
  }
}

/** At most `max` log lines per `periodMs`; the rest are counted and reported with the next line. */
export class LogBudget {
  private windowStart = 0;
  private used = 0;
  private suppressed = 0;
  constructor(private readonly max = 10, private readonly periodMs = 10_000) {}
  /** null: stay quiet; else the number of lines suppressed since the last one. */
  take(now = Date.now()): number | null {
    if (now - this.windowStart >= this.periodMs) {
      this.windowStart = now;
      this.used = 0;
    }
    if (this.used >= this.max) {
      this.suppressed++;
      return null;
    }
    this.used++;
    const s = this.suppressed;
    this.suppressed = 0;
    return s;
  }
}
