// With obfuscated headers a datagram names its sender only under the sender's
// key, so one from an endpoint no link was learned at is tried against every
// link's key: a cost per datagram that grows with the number of links (about
// 1 µs per key). Junk or spoofed datagrams at a few hundred per second could
// otherwise keep a core busy and crowd out real traffic. ScanLimiter bounds
// those full scans: a global budget of key trials per second, and a per-source
// address budget of scans so one sender cannot use up the global budget alone.
// Datagrams over budget are dropped without a scan (counted as
// drop_scan_limited). Endpoints already learned never need a scan, so known
// links are unaffected; a node at a new address retries with its next packet.

export interface ScanLimitOptions {
  /** Key trials per second for scans, all sources together (burst: one second's worth). */
  trialsPerSec: number;
  /** Full scans per second from one source address (burst: twice that). */
  scansPerSecPerSource: number;
  /** Source addresses tracked at once; beyond it the table starts afresh. */
  maxSources?: number;
}

/** What a peer/link lookup returns when the budget said no: the datagram was not tried. */
export const UNTRIED: unique symbol = Symbol('untried');

export const DEFAULT_SCAN_LIMITS: ScanLimitOptions = { trialsPerSec: 200_000, scansPerSecPerSource: 50, maxSources: 10_000 };

interface Bucket {
  tokens: number;
  at: number;
}

export class ScanLimiter {
  private trials: number;
  private trialsAt = 0;
  private readonly sources = new Map<string, Bucket>();
  private readonly maxSources: number;

  constructor(private readonly opts: ScanLimitOptions = DEFAULT_SCAN_LIMITS) {
    this.trials = opts.trialsPerSec;
    this.maxSources = opts.maxSources ?? 10_000;
  }

  /**
   * May a datagram from `addr` be tried against `cost` keys now (at `nowMs`)?
   * Takes the tokens when it may. A scan costing more than a second's budget
   * is still allowed when the budget is full (else large relays could never scan).
   */
  allow(addr: string, cost: number, nowMs: number): boolean {
    const o = this.opts;
    // global trials
    const t = Math.min(o.trialsPerSec, this.trials + ((nowMs - this.trialsAt) * o.trialsPerSec) / 1000);
    this.trialsAt = nowMs;
    if (t < Math.min(cost, o.trialsPerSec)) {
      this.trials = t;
      return false;
    }
    // per source
    let b = this.sources.get(addr);
    const burst = o.scansPerSecPerSource * 2;
    if (b === undefined) {
      if (this.sources.size >= this.maxSources) this.sources.clear();
      b = { tokens: burst, at: nowMs };
      this.sources.set(addr, b);
    } else {
      b.tokens = Math.min(burst, b.tokens + ((nowMs - b.at) * o.scansPerSecPerSource) / 1000);
      b.at = nowMs;
    }
    if (b.tokens < 1) {
      this.trials = t;
      return false;
    }
    b.tokens -= 1;
    this.trials = t - cost;
    return true;
  }

  get trackedSources(): number {
    return this.sources.size;
  }
}
