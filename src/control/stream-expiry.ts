// Ends a node's map stream when the node expires while it streams: a timer
// per stream at the node's expires_at, re-armed from the store after every
// change of its tenant (an admin expiring it now, or moving its expiry). The
// stream gets `event: end {reason:"node expired"}`; a reconnect is then
// refused (401 node_expired) until the node registers again.
import type { Store } from './store/repo.js';

export const EXPIRED_REASON = 'node expired';

/** setTimeout's limit; a later expiry re-arms when this fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Watched {
  nodeId: number;
  end: (reason: string) => void;
  timer: NodeJS.Timeout | null;
  expiresAt: string | null;
}

export interface ExpiryWatchOptions {
  onEnded?: (tenantId: number, nodeId: number) => void;
  onError?: (err: unknown) => void;
}

export class StreamExpiry {
  /** tenant → its watched streams; an entry leaves when its stream closes, so this is bounded by open streams. */
  private readonly byTenant = new Map<number, Set<Watched>>();
  /** Tenants whose expiries are being re-read (and whether another change came meanwhile). */
  private readonly refreshing = new Map<number, boolean>();

  constructor(private readonly store: Store, private readonly opts: ExpiryWatchOptions = {}) {}

  /** Streams watched now (for tests and metrics). */
  get size(): number {
    let n = 0;
    for (const s of this.byTenant.values()) n += s.size;
    return n;
  }

  /**
   * Watches one stream of `node` until `closed` emits 'close'. `end` ends the
   * stream with a reason (the stream's own end, which writes the final event).
   */
  watch(node: { id: number; tenant_id: number; expires_at: string | null }, end: (reason: string) => void, closed: { once(ev: 'close', fn: () => void): unknown }): void {
    const w: Watched = { nodeId: node.id, end, timer: null, expiresAt: null };
    let set = this.byTenant.get(node.tenant_id);
    if (!set) this.byTenant.set(node.tenant_id, (set = new Set()));
    set.add(w);
    closed.once('close', () => this.unwatch(node.tenant_id, w));
    this.arm(node.tenant_id, w, node.expires_at);
  }

  /** A change of the tenant committed (here or on another replica): re-read its nodes' expiries. */
  tenantChanged(tenantId: number): void {
    if (!this.byTenant.has(tenantId)) return;
    if (this.refreshing.has(tenantId)) {
      this.refreshing.set(tenantId, true);
      return;
    }
    this.refreshing.set(tenantId, false);
    void this.store.nodeExpiries(tenantId).then(
      (rows) => {
        const exp = new Map(rows.map((r) => [r.id, r.expires_at]));
        for (const w of [...(this.byTenant.get(tenantId) ?? [])]) this.arm(tenantId, w, exp.get(w.nodeId) ?? null);
      },
      (err: unknown) => this.opts.onError?.(err),
    ).finally(() => {
      const again = this.refreshing.get(tenantId) === true;
      this.refreshing.delete(tenantId);
      if (again) this.tenantChanged(tenantId);
    });
  }

  /** Stops every timer (shutdown). */
  close(): void {
    for (const set of this.byTenant.values()) for (const w of set) if (w.timer) clearTimeout(w.timer);
    this.byTenant.clear();
  }

  private unwatch(tenantId: number, w: Watched): void {
    if (w.timer) clearTimeout(w.timer);
    w.timer = null;
    const set = this.byTenant.get(tenantId);
    set?.delete(w);
    if (set && set.size === 0) this.byTenant.delete(tenantId);
  }

  private arm(tenantId: number, w: Watched, expiresAt: string | null): void {
    if (w.timer && w.expiresAt === expiresAt) return;
    if (w.timer) clearTimeout(w.timer);
    w.timer = null;
    w.expiresAt = expiresAt;
    if (expiresAt === null) return;
    const left = Date.parse(expiresAt) - Date.now();
    if (left <= 0) {
      this.expire(tenantId, w);
      return;
    }
    w.timer = setTimeout(() => {
      w.timer = null;
      if (Date.parse(expiresAt) <= Date.now()) this.expire(tenantId, w);
      else this.arm(tenantId, w, expiresAt);
    }, Math.min(left + 5, MAX_TIMER_MS));
    w.timer.unref();
  }

  private expire(tenantId: number, w: Watched): void {
    this.unwatch(tenantId, w);
    this.opts.onEnded?.(tenantId, w.nodeId);
    w.end(EXPIRED_REASON);
  }
}
