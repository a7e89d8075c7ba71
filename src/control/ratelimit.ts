// Per-key token buckets (POST …/policy/check per tenant). Bounded: a bucket
// that has refilled completely is the same as no bucket, so full ones are
// dropped when the map grows.
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  constructor(
    /** Tokens added per second. */
    readonly perSecond: number,
    /** Bucket size (the burst). */
    readonly burst: number,
    private readonly maxKeys = 10_000,
  ) {}

  /** Takes a token: 0 when allowed, else the seconds until one is available. */
  take(key: string, now = performance.now()): number {
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size >= this.maxKeys) this.prune(now);
      b = { tokens: this.burst, at: now };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond);
    b.at = now;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / this.perSecond;
  }

  private prune(now: number): void {
    for (const [k, b] of this.buckets) if (b.tokens + ((now - b.at) / 1000) * this.perSecond >= this.burst) this.buckets.delete(k);
    // every bucket still refilling: forget the oldest
    while (this.buckets.size >= this.maxKeys) this.buckets.delete(this.buckets.keys().next().value as string);
  }
}
