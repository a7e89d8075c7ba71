// The compile pool as the rest of the server uses it: one pool per server
// (found from its Store, so module functions such as the relay view need no
// extra parameter), views decoded for the event loop, and relay compiles with
// a last-good fallback.
import { PeerList, compileForRelayNow, rememberFacts, type AclNetwork, type NodeView, type RelayCompiled } from '../policy-engine.js';
import type { Store } from '../store/repo.js';
import { BudgetError, CompilePool } from './pool.js';
import type { WireViews } from './protocol.js';

export { BudgetError, CompilePool, NoWorkerError, QueueFullError, compileLimits, DEFAULT_LIMITS, type CompileLimits } from './pool.js';

const pools = new WeakMap<Store, CompilePool>();

export function attachPool(store: Store, pool: CompilePool): void {
  pools.set(store, pool);
}

export function poolOf(store: Store): CompilePool | undefined {
  return pools.get(store);
}

/** Views as the event loop keeps them (PeerLists rebuilt over the transferred vectors). */
export function decodeViews(w: WireViews): Map<number, NodeView> {
  const lists = w.bases.map((b) => PeerList.wrap(b));
  const out = new Map<number, NodeView>();
  for (const v of w.views) {
    const base = lists[v.base] ?? PeerList.EMPTY;
    const raw = w.bases[v.base];
    const peers = raw && v.cut < raw.length ? base.without(raw[v.cut] as number) : base;
    out.set(v.id, { peers, peerRoutes: v.routes, packetFilter: v.filter, sshPolicy: v.ssh, primaryRoutes: v.primary });
  }
  return out;
}

// Per store and tenant: the last relay compile that succeeded, served when a
// later one runs past the budget (the relays keep forwarding under it).
const lastRelay = new WeakMap<Store, Map<number, RelayCompiled>>();

/**
 * The relay view's compile of a tenant: in the store's compile pool (off the
 * event loop, within the budget) when the server has one, else inline (tools,
 * tests). A compile over the budget answers the tenant's last good one (null
 * when there is none: the tenant's section then has an empty filter).
 */
export async function compileForRelay(
  store: Store,
  tenant: number,
  text: string,
  net: AclNetwork,
  previousPrimaries: ReadonlyMap<string, number>,
  useExitNode: ReadonlyMap<number, string>,
): Promise<RelayCompiled | null> {
  const pool = pools.get(store);
  if (!pool) return compileForRelayNow(text, net, previousPrimaries, useExitNode);
  let last = lastRelay.get(store);
  if (!last) lastRelay.set(store, (last = new Map()));
  try {
    const r = await pool.relay({ tenant, policy: text, net, primaries: [...previousPrimaries], wishes: [...useExitNode] });
    if (!r.ok) return null;
    const c: RelayCompiled = { primaries: new Map(r.primaries), globalFilter: r.globalFilter, exitFor: new Map(r.exitFor) };
    last.set(tenant, c);
    return c;
  } catch (err) {
    if (err instanceof BudgetError) return last.get(tenant) ?? null;
    throw err;
  }
}

/** Learns the facts (tag owners, auto-approvers) of a large policy in a worker, so the event loop never parses it. */
export async function warmFacts(pool: CompilePool, tenant: number, text: string): Promise<void> {
  const r = await pool.facts(tenant, text);
  if (r.facts !== null) rememberFacts(text, r.facts);
}
