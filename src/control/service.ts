// Domain operations shared by the Admin API and the node API: address
// allocation, node registration, route approval, auto-approval and the public
// representations of rows. All database access goes through TenantRepo/TenantTx.
import {
  formatIP, formatPrefix, parsePrefix, prefixLast, AddrError, type Prefix,
} from '../net/addr.js';
import type { AuthKeyRow, NodeRow, TenantRow, UserRow, ApiKeyRow } from './store/schema.js';
import type { LinkHealth, Store, TenantRepo, TenantTx } from './store/repo.js';
import type { NodeStats, RouteStats } from './metrics.js';
import { nowIso } from './store/repo.js';
import { ApiError, badRequest } from './errors.js';
import { aclNetwork, isOnline, jsonList, jsonObject } from './netmap.js';
import { autoApproveRoutes, currentPrimaries } from './policy-engine.js';

// ---- representations -----------------------------------------------------------

export function tenantView(t: TenantRow) {
  return {
    name: t.name,
    pool4: t.pool4,
    pool6: t.pool6,
    dns_base: t.dns_base,
    max_nodes: t.max_nodes,
    created_at: t.created_at,
    updated_at: t.updated_at,
  };
}

export function apiKeyView(k: ApiKeyRow) {
  return {
    id: k.id,
    prefix: k.prefix,
    role: k.role,
    description: k.description,
    expires_at: k.expires_at,
    created_at: k.created_at,
    last_used_at: k.last_used_at,
  };
}

export function userView(u: UserRow) {
  return { id: u.id, name: u.name, email: u.email, display_name: u.display_name, created_at: u.created_at };
}

export function authKeyView(k: AuthKeyRow, users: Map<number, UserRow>) {
  const expired = k.expires_at !== null && k.expires_at <= nowIso();
  return {
    id: k.id,
    prefix: k.prefix,
    user: k.user_id !== null ? (users.get(k.user_id)?.name ?? null) : null,
    tags: jsonList(k.tags),
    reusable: k.reusable === 1,
    ephemeral: k.ephemeral === 1,
    expires_at: k.expires_at,
    used_count: k.used_count,
    usable: !expired && (k.reusable === 1 || k.used_count === 0),
    description: k.description,
    created_at: k.created_at,
  };
}

/** Per node: what its relays last reported (the most recently seen link), as stored (coarsely, see applyRelayHealth). */
export type RelayHealthByNode = Map<number, LinkHealth>;

export function nodeView(n: NodeRow, users: Map<number, UserRow>, primaries: Map<string, number>, health?: RelayHealthByNode) {
  const tags = jsonList(n.tags);
  const approved = jsonList(n.approved_routes);
  const announced = jsonList(n.announced_routes);
  const primary = [...primaries].filter(([, id]) => id === n.id).map(([r]) => r).sort();
  const h = health?.get(n.id);
  return {
    id: n.id,
    name: n.name,
    hostname: n.hostname,
    node_key: n.node_key,
    /** false: registered before node keys were proven (0007); its next registration proves a key with its token. */
    key_proven: n.key_proven_at !== null,
    user: n.user_id !== null ? (users.get(n.user_id)?.name ?? null) : null,
    tags,
    ipv4: n.ipv4,
    ipv6: n.ipv6,
    online: isOnline(n),
    /** Its stream is open, but its relays report it unseen (so it counts as offline). */
    unseen_by_relays: n.unseen === 1,
    /** The latest sign of life: its stream (connect/disconnect) or a relay seeing it. */
    last_seen: latest(n.last_seen, h?.lastSeenAt ?? null),
    /** When a relay last saw it, and the round-trip time then (stored at most every ~15 s). */
    relay_last_seen: h?.lastSeenAt ?? null,
    relay_rtt_ms: h?.rttMs ?? null,
    announced_routes: announced,
    approved_routes: approved,
    primary_routes: primary,
    exit_node: approved.includes('0.0.0.0/0') && announced.includes('0.0.0.0/0'),
    endpoints: jsonList(n.endpoints),
    hostinfo: jsonObject(n.hostinfo),
    ephemeral: n.ephemeral === 1,
    expires_at: n.expires_at,
    expired: n.expires_at !== null && n.expires_at <= nowIso(),
    created_at: n.created_at,
  };
}

const latest = (a: string | null, b: string | null): string | null => (a === null ? b : b === null ? a : a > b ? a : b);

/** The audited form of a node (no secrets). */
export function nodeAuditView(n: NodeRow) {
  return {
    name: n.name,
    node_key: n.node_key,
    user_id: n.user_id,
    tags: jsonList(n.tags),
    ipv4: n.ipv4,
    ipv6: n.ipv6,
    announced_routes: jsonList(n.announced_routes),
    approved_routes: jsonList(n.approved_routes),
    expires_at: n.expires_at,
  };
}

// ---- route metrics ---------------------------------------------------------------

/** The per-node gauges' values (larktun_node_online, _last_seen_timestamp_seconds, _relay_rtt_seconds). */
export async function nodeStats(store: Store, limit: number): Promise<NodeStats> {
  const { total, nodes } = await store.nodeSummary(limit);
  return {
    nodes: nodes.map((n) => ({ tenant: n.tenant, node: n.name, online: n.online, lastSeen: latest(n.last_seen, n.relay_last_seen), relayRttMs: n.rtt_ms })),
    omitted: Math.max(0, total - nodes.length),
  };
}

/** The route gauges' values (larktun_routes, larktun_route_primary, larktun_routes_unserved). */
export async function routeStats(store: Store): Promise<RouteStats> {
  const { routers, primaries } = await store.routeSummary();
  const counts = new Map<string, { approved: number; announced: number; prefixes: Set<string> }>();
  for (const n of routers) {
    const c = counts.get(n.tenant) ?? { approved: 0, announced: 0, prefixes: new Set<string>() };
    const approved = new Set(jsonList(n.approved_routes));
    c.approved += approved.size;
    for (const r of jsonList(n.announced_routes)) if (!approved.has(r)) c.announced++;
    for (const r of approved) if (r !== '0.0.0.0/0' && r !== '::/0') c.prefixes.add(r);
    counts.set(n.tenant, c);
  }
  const served = new Set(primaries.map((p) => `${p.tenant}|${p.prefix}`));
  const out: RouteStats = { routes: [], primaries, unserved: [] };
  for (const [tenant, c] of counts) {
    out.routes.push({ tenant, state: 'approved', n: c.approved }, { tenant, state: 'announced', n: c.announced });
    out.unserved.push({ tenant, n: [...c.prefixes].filter((p) => !served.has(`${tenant}|${p}`)).length });
  }
  return out;
}

// ---- primaries ------------------------------------------------------------------

/** Route → primary node id, as elected over the stored nodes (lowest id among online candidates). */
export function electPrimaries(tenant: TenantRow, users: UserRow[], nodes: NodeRow[]): Map<string, number> {
  return currentPrimaries(aclNetwork(tenant, users, nodes).nodes);
}

// ---- routes ------------------------------------------------------------------

/** Canonical prefixes; throws a 400 listing every bad one. Exit routes come in pairs. */
export function canonicalRoutes(routes: string[], field: string): string[] {
  const out = new Set<string>();
  const errors: string[] = [];
  for (const r of routes) {
    try {
      out.add(formatPrefix(parsePrefix(r, { requireMasked: true, allowBare: false })));
    } catch (err) {
      errors.push(err instanceof AddrError ? err.message : `"${r}" is not a prefix`);
    }
  }
  if (errors.length) throw badRequest(`${field}: ${errors[0]}`, { errors });
  if (out.has('0.0.0.0/0') || out.has('::/0')) {
    out.add('0.0.0.0/0');
    out.add('::/0');
  }
  return [...out].sort();
}

// ---- tags --------------------------------------------------------------------

export function validateTagSyntax(tags: string[]): void {
  const bad = tags.filter((t) => !/^tag:[A-Za-z0-9][A-Za-z0-9-]*$/.test(t));
  if (bad.length) throw badRequest(`invalid tag "${bad[0]}": tags look like tag:name`, { tags: bad });
}

// ---- addresses -------------------------------------------------------------------

function poolRange(p: Prefix): { first: bigint; count: bigint } {
  const size = prefixLast(p) - p.addr + 1n;
  if (p.family === 4) {
    // skip the network address, and the broadcast address of pools larger than /31
    if (size <= 2n) return { first: p.addr, count: size };
    return { first: p.addr + 1n, count: size - 2n };
  }
  return { first: p.addr + 1n, count: size - 1n };
}

async function allocateIn(pool: string, used: (ip: string) => Promise<boolean>, hint: number): Promise<string> {
  const p = parsePrefix(pool);
  const { first, count } = poolRange(p);
  if (count <= 0n) throw new ApiError(409, 'pool_exhausted', `address pool ${pool} has no host addresses`);
  // Start near the hint (the node count) so sequential registrations probe once.
  const start = BigInt(hint) % count;
  const limit = count < 1_000_000n ? count : 1_000_000n;
  for (let i = 0n; i < limit; i++) {
    const ip = formatIP({ family: p.family, value: first + ((start + i) % count) });
    if (!(await used(ip))) return ip;
  }
  throw new ApiError(409, 'pool_exhausted', `address pool ${pool} is full`);
}

/** `count`: the tenant's node count when the caller already has it (the allocation hint). */
export async function allocateAddresses(tx: TenantRepo, tenant: TenantRow, count?: number): Promise<{ ipv4: string; ipv6: string | null }> {
  const n = count ?? (await tx.countNodes());
  const ipv4 = await allocateIn(tenant.pool4, async (ip) => (await tx.nodeByAddress('ipv4', ip)) !== undefined, n);
  const ipv6 = tenant.pool6
    ? await allocateIn(tenant.pool6, async (ip) => (await tx.nodeByAddress('ipv6', ip)) !== undefined, n)
    : null;
  return { ipv4, ipv6 };
}

// ---- node names ------------------------------------------------------------------

export function dnsLabel(hostname: string): string {
  const l = hostname.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63);
  return l || 'node';
}

export async function uniqueNodeName(tx: TenantRepo, hostname: string, selfId?: number): Promise<string> {
  const base = dnsLabel(hostname);
  for (let i = 1; i < 10_000; i++) {
    const name = i === 1 ? base : `${base.slice(0, 58)}-${i}`;
    const other = await tx.getNodeByName(name);
    if (!other || other.id === selfId) return name;
  }
  throw new ApiError(409, 'conflict', `no free node name for "${hostname}"`);
}

// ---- auto-approval -----------------------------------------------------------------

/**
 * Runs the policy's autoApprovers for `nodeIds` (all nodes when omitted) and adds
 * what they approve to each node's approved set, auditing every change.
 */
export async function runAutoApprove(tx: TenantTx, tenant: TenantRow, policyText: string, nodeIds?: number[]): Promise<number> {
  // Auto-approval looks at the node itself and the tenant's users only, so for a
  // few nodes only those rows are loaded (registration stays O(1) in tenant size).
  const nodes = nodeIds
    ? (await Promise.all(nodeIds.map((id) => tx.getNode(id)))).filter((n): n is NodeRow => n !== undefined)
    : await tx.listNodes();
  if (!nodes.some((n) => n.announced_routes !== '[]')) return 0;
  const users = await tx.listUsers();
  const net = aclNetwork(tenant, users, nodes);
  let changed = 0;
  const wanted = nodeIds ? new Set(nodeIds) : null;
  for (const n of nodes) {
    if (wanted && !wanted.has(n.id)) continue;
    const announced = jsonList(n.announced_routes);
    if (announced.length === 0) continue;
    const approved = new Set(jsonList(n.approved_routes));
    const add = autoApproveRoutes(policyText, net, n.id, announced).filter((r) => !approved.has(r));
    if (add.length === 0) continue;
    const next = canonicalRoutes([...approved, ...add], 'approved');
    await tx.updateNode(n.id, { approved_routes: JSON.stringify(next) });
    await tx.audit('node.routes.autoapprove', 'node', n.id, { approved_routes: [...approved].sort() }, { approved_routes: next });
    changed++;
  }
  return changed;
}
