// Relays and their links. A relay (a larktund hub) serves every tenant (shared)
// or one (dedicated). Every (node, relay) pair has a link: a relay-local link id
// (1..65534, unique per relay, so one relay port serves many tenants and the
// link alone tells the relay the node's tenant) and a 32-byte PSK that the
// server generates and rotates, keeping the previous key valid for a grace
// period. Links are written only inside a tenant's write transaction (tenant
// lock first, then the relay row), so maps and audit move with them.
import { createHash } from 'node:crypto';
import type { RelayLinkRow, RelayRow, TenantRow } from './store/schema.js';
import { nowIso, type Store, type TenantTx } from './store/repo.js';
import { conflict } from './errors.js';
import { newLinkPsk } from './secrets.js';
import { isOnline, jsonList, jsonObject, loadSnapshot } from './netmap.js';
import { compileForRelay } from './compile/index.js';

/** The relay's own id on every one of its links; nodes get 1..RELAY_SELF_ID-1. */
export const RELAY_SELF_ID = 65535;

export interface RelayPublic {
  id: number;
  name: string;
  endpoints: string[];
  /** Tenant name for a dedicated relay, null for a shared one. */
  tenant: string | null;
  relay_link_id: number;
  /** Reporting health within the TTL; nodes home on a live relay. */
  live: boolean;
  /** When it last reported health (null: never). */
  last_report: string | null;
  created_at: string;
  updated_at: string;
}

export function relayView(r: RelayRow, tenantName: string | null): RelayPublic {
  return {
    id: r.id, name: r.name, endpoints: jsonList(r.endpoints), tenant: tenantName, relay_link_id: r.self_id,
    live: r.live === 1, last_report: r.reported_at, created_at: r.created_at, updated_at: r.updated_at,
  };
}

/**
 * Gives each of `nodeIds` (default: every node of the tenant) a link on each
 * relay in `relays` that it lacks. Returns the number of links made.
 */
export async function ensureLinks(tx: TenantTx, relays: RelayRow[], nodeIds?: number[]): Promise<number> {
  if (relays.length === 0) return 0;
  const ids = nodeIds ?? (await tx.listNodes()).map((n) => n.id);
  if (ids.length === 0) return 0;
  const have = new Set((await tx.listRelayLinks()).map((l) => `${l.relay_id}:${l.node_id}`));
  let made = 0;
  const now = nowIso();
  for (const r of relays) {
    const missing = ids.filter((id) => !have.has(`${r.id}:${id}`));
    if (missing.length === 0) continue;
    const locked = await tx.lockRelay(r.id);
    if (!locked) continue; // deleted meanwhile
    const used = await tx.usedLinkIds(r.id);
    let next = 1;
    for (const nodeId of missing) {
      while (next < RELAY_SELF_ID && (used.has(next) || next === locked.self_id)) next++;
      if (next >= RELAY_SELF_ID) throw conflict(`relay "${locked.name}" has no free link id left (at most ${RELAY_SELF_ID - 1} links per relay)`);
      used.add(next);
      await tx.insertRelayLink({ relay_id: r.id, node_id: nodeId, link_id: next, psk: newLinkPsk(), prev_psk: null, prev_psk_until: null, rotated_at: now, created_at: now, last_seen_at: null, rtt_ms: null });
      made++;
    }
  }
  return made;
}

/** New PSKs for `links`; each old key stays valid for `graceMs`. Returns the count. */
export async function rotateLinks(tx: TenantTx, links: RelayLinkRow[], graceMs: number): Promise<number> {
  const now = new Date();
  const until = new Date(now.getTime() + graceMs).toISOString();
  const locked = new Set<number>();
  let n = 0;
  for (const l of links) {
    if (!locked.has(l.relay_id)) {
      if (!(await tx.lockRelay(l.relay_id))) continue;
      locked.add(l.relay_id);
    }
    await tx.rotateRelayLink(l.id, newLinkPsk(), l.psk, until, now.toISOString());
    n++;
  }
  return n;
}

/** The tenants a relay serves. */
export async function tenantsOfRelay(store: Store, r: RelayRow): Promise<TenantRow[]> {
  if (r.tenant_id === null) return store.listTenants();
  const t = await store.getTenant(r.tenant_id);
  return t ? [t] : [];
}

export interface RelayTimers {
  /** Periodic rotation interval (ms). */
  rotateMs: number;
  /** How long a replaced key stays valid (ms). */
  graceMs: number;
}

/**
 * Brings every tenant's links up to date: missing links made (a relay created
 * while a server died halfway, a node registered on an old replica), links
 * older than `rotateMs` rotated. Safe to run on several replicas at once: each
 * tenant is re-checked under its lock.
 */
export async function reconcileRelays(store: Store, timers: RelayTimers): Promise<{ made: number; rotated: number }> {
  let made = 0;
  let rotated = 0;
  const relays = await store.listRelays();
  if (relays.length === 0) return { made, rotated };
  for (const t of await store.listTenants()) {
    const serving = relays.filter((r) => r.tenant_id === null || r.tenant_id === t.id);
    if (serving.length === 0) continue;
    const repo = store.tenant(t.id);
    const [nodes, links] = await Promise.all([repo.listNodes(), repo.listRelayLinks()]);
    const cutoff = new Date(Date.now() - timers.rotateMs).toISOString();
    const have = new Set(links.map((l) => `${l.relay_id}:${l.node_id}`));
    const needLinks = serving.some((r) => nodes.some((n) => !have.has(`${r.id}:${n.id}`)));
    const due = links.some((l) => l.rotated_at <= cutoff);
    if (!needLinks && !due) continue;
    await store.write(t.id, 'system', async (tx) => {
      const m = await ensureLinks(tx, await tx.relaysServing());
      const cur = (await tx.listRelayLinks()).filter((l) => l.rotated_at <= cutoff);
      const r = await rotateLinks(tx, cur, timers.graceMs);
      if (m > 0) await tx.audit('relay.links.create', 'relay_links', 'reconcile', null, { links: m });
      if (r > 0) await tx.audit('relay.rotate.periodic', 'relay_links', 'periodic', null, { links: r });
      made += m;
      rotated += r;
    }).catch(() => undefined); // tenant deleted meanwhile
  }
  return { made, rotated };
}

// ---- the relay's view (/relay/v1) ------------------------------------------------

export interface RelayLinkView {
  link_id: number;
  node_id: number;
  node: string;
  psk: string;
  /** The key before the last rotation, accepted until previous_psk_valid_until. */
  previous_psk: string | null;
  previous_psk_valid_until: string | null;
  /** The node's addresses: inner sources it may send from (besides `routes`). */
  allowed_src: string[];
  /** Approved routes the node is primary for (and approved exit routes): destinations to forward to it. */
  routes: string[];
  /**
   * The link id, on this relay, of the exit node this node uses (its
   * use_exit_node names an approved exit node the policy lets it use); null
   * otherwise (or when the exit node has no link on this relay).
   */
  exit_link_id: number | null;
}

export interface BuiltRelayView {
  hash: string;
  json: string;
  tenantId: number | null;
}

interface TenantSection {
  key: string;
  json: string;
}

/** Per relay: tenant sections kept while the tenant and relay generations stay the same. */
export type RelayViewCache = Map<number, TenantSection>;

const addrsOf = (n: { ipv4: string | null; ipv6: string | null }): string[] => [
  ...(n.ipv4 ? [`${n.ipv4}/32`] : []),
  ...(n.ipv6 ? [`${n.ipv6}/128`] : []),
];

async function tenantSection(store: Store, relay: RelayRow, t: TenantRow): Promise<string | null> {
  const snap = await loadSnapshot(store, t.id);
  if (!snap) return null;
  const wishes = new Map<number, string>();
  for (const n of snap.nodes) {
    if (n.hostinfo === '{}') continue;
    const w = jsonObject(n.hostinfo)['use_exit_node'];
    if (w !== undefined && w !== null && w !== '') wishes.set(n.id, String(w));
  }
  const compiled = await compileForRelay(store, t.id, snap.policy, snap.net, snap.primaries, wishes);
  const linkOf = new Map<number, number>();
  for (const l of snap.links) if (l.relay_id === relay.id) linkOf.set(l.node_id, l.link_id);
  const exitLinkOf = (nodeId: number): number | null => {
    const e = compiled?.exitFor.get(nodeId);
    return e !== undefined && live.has(e) ? (linkOf.get(e) ?? null) : null;
  };
  const primaryOf = new Map<number, string[]>();
  for (const [prefix, nodeId] of snap.primaries) primaryOf.set(nodeId, [...(primaryOf.get(nodeId) ?? []), prefix]);
  const live = new Set(snap.net.nodes.map((n) => n.id));
  const links: RelayLinkView[] = [];
  const now = nowIso();
  for (const l of snap.links) {
    if (l.relay_id !== relay.id || !live.has(l.node_id)) continue;
    const n = snap.byId.get(l.node_id);
    if (!n) continue;
    const approved = jsonList(n.approved_routes);
    const exits = approved.filter((r) => r === '0.0.0.0/0' || r === '::/0');
    const prevValid = l.prev_psk !== null && l.prev_psk_until !== null && l.prev_psk_until > now;
    links.push({
      link_id: l.link_id,
      node_id: n.id,
      node: n.name,
      psk: l.psk,
      previous_psk: prevValid ? l.prev_psk : null,
      previous_psk_valid_until: prevValid ? l.prev_psk_until : null,
      allowed_src: addrsOf(n),
      routes: [...(primaryOf.get(n.id) ?? []).sort(), ...exits],
      exit_link_id: exitLinkOf(n.id),
    });
  }
  links.sort((a, b) => a.link_id - b.link_id);
  return JSON.stringify({ tenant: t.name, tenant_id: t.id, online: snap.nodes.filter((n) => isOnline(n) && live.has(n.id)).map((n) => n.id), links, packet_filter: compiled?.globalFilter ?? [] });
}

/**
 * Everything a relay needs to forward inside each tenant namespace it serves:
 * per tenant its links and the tenant's compiled global packet filter. A
 * dedicated relay's view holds its own tenant only.
 */
export async function buildRelayView(store: Store, relayId: number, cache?: RelayViewCache): Promise<BuiltRelayView | null> {
  const relay = await store.getRelay(relayId);
  if (!relay) return null;
  const tenants = await tenantsOfRelay(store, relay);
  const parts: string[] = [];
  const keep = new Set<number>();
  for (const t of tenants) {
    const key = `${t.generation}|${relay.generation}|${Math.floor(Date.now() / 60000)}`;
    const hit = cache?.get(t.id);
    let json = hit && hit.key === key ? hit.json : null;
    if (json === null) {
      json = await tenantSection(store, relay, t);
      if (json === null) continue;
      cache?.set(t.id, { key, json });
    }
    keep.add(t.id);
    parts.push(json);
  }
  if (cache) for (const id of cache.keys()) if (!keep.has(id)) cache.delete(id);
  const body = `"relay":${JSON.stringify({ id: relay.id, name: relay.name, endpoints: jsonList(relay.endpoints), relay_link_id: relay.self_id, tenant_id: relay.tenant_id })},"tenants":[${parts.join(',')}]`;
  const hash = createHash('sha1').update(body).digest('hex').slice(0, 24);
  return { hash, json: `{"hash":"${hash}",${body}}`, tenantId: relay.tenant_id };
}

export function relayServes(relayTenant: number | null, tenantId: number): boolean {
  return relayTenant === null || relayTenant === tenantId;
}
