// Keeps every relay's stream (/relay/v1/stream) current. A committed change of a
// tenant (here or on another replica) refreshes the relays serving it: the
// tenant-dedicated relay of that tenant and every shared relay. A relay whose
// view is unchanged gets nothing.
import type { Store } from './store/repo.js';
import { buildRelayView, relayServes, type BuiltRelayView, type RelayViewCache } from './relays.js';

export interface RelayStream {
  relayId: number;
  lastHash: string | null;
  first: boolean;
  send(v: BuiltRelayView): void;
  unchanged(v: BuiltRelayView): void;
  end(reason: string): void;
}

interface RelayLive {
  streams: Set<RelayStream>;
  /** The relay's tenant (null: shared); undefined until first built. */
  tenantId: number | null | undefined;
  running: boolean;
  dirty: boolean;
  cache: RelayViewCache;
}

const GAP_MS = 50;

export class RelayHub {
  private readonly relays = new Map<number, RelayLive>();
  constructor(private readonly store: Store) {}

  attach(s: RelayStream): void {
    let r = this.relays.get(s.relayId);
    if (!r) {
      r = { streams: new Set(), tenantId: undefined, running: false, dirty: false, cache: new Map() };
      this.relays.set(s.relayId, r);
    }
    r.streams.add(s);
    this.schedule(s.relayId, r);
  }

  detach(s: RelayStream): void {
    const r = this.relays.get(s.relayId);
    if (!r) return;
    r.streams.delete(s);
    if (r.streams.size === 0 && !r.running) this.relays.delete(s.relayId);
  }

  streamCount(): number {
    let n = 0;
    for (const r of this.relays.values()) n += r.streams.size;
    return n;
  }

  /** A tenant changed: refresh the relays that serve it. */
  changed(tenantId: number): void {
    for (const [id, r] of this.relays) {
      if (r.tenantId === undefined || relayServes(r.tenantId, tenantId)) this.schedule(id, r);
    }
  }

  /** Changes may have been missed (the change bus reconnected): rebuild every relay's view; unchanged ones push nothing. */
  resync(): void {
    for (const [id, r] of this.relays) this.schedule(id, r);
  }

  /** A relay itself changed (created, deleted). */
  relayChanged(relayId: number): void {
    const r = this.relays.get(relayId);
    if (r) this.schedule(relayId, r);
  }

  private schedule(id: number, r: RelayLive): void {
    r.dirty = true;
    if (r.running) return;
    r.running = true;
    setTimeout(() => void this.run(id, r), GAP_MS).unref();
  }

  private async run(id: number, r: RelayLive): Promise<void> {
    try {
      r.dirty = false;
      const v = await buildRelayView(this.store, id, r.cache).catch(() => undefined);
      if (v === undefined) {
        r.dirty = true; // database hiccup: try again
        await new Promise((res) => setTimeout(res, 500));
      } else if (v === null) {
        for (const s of [...r.streams]) s.end('relay deleted');
      } else {
        r.tenantId = v.tenantId;
        for (const s of r.streams) {
          if (s.lastHash === v.hash) {
            if (s.first) s.unchanged(v);
          } else {
            s.lastHash = v.hash;
            s.send(v);
          }
          s.first = false;
        }
      }
    } finally {
      r.running = false;
      if (r.dirty && r.streams.size > 0) this.schedule(id, r);
      else if (r.streams.size === 0) this.relays.delete(id);
    }
  }
}
