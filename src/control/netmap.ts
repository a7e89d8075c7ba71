// Network maps: what each node is told about its tenant's network, and the hub
// that keeps every connected node's map current. A change anywhere (this server,
// or another replica via LISTEN/NOTIFY) marks the tenant dirty; the hub reloads
// the tenant once per burst of changes, has the compile pool (compile/) bring
// the tenant's compiled state up to date in a worker thread, and pushes only
// to nodes whose map changed: a full "map" when its peers changed, a "patch"
// with just the changed top-level sections otherwise, and a tiny "peers" event
// when only peers' presence changed. The event loop keeps the last compiled
// views of the nodes it serves (streams and recent one-shot requests) and
// answers GET /node/v1/map from them: a request never compiles.
import { createHash } from 'node:crypto';
import type { NodeRow, RelayLinkRow, RelayRow, TenantRow, UserRow } from './store/schema.js';
import type { Store } from './store/repo.js';
import { PeerList, rememberFacts, type AclNetwork, type AclNode, type NodeView } from './policy-engine.js';
import type { ControlMetrics } from './metrics.js';
import { BudgetError, decodeViews, type CompilePool } from './compile/index.js';

export interface MapPeer {
  id: number;
  name: string;
  node_key: string;
  addresses: string[];
  /** Addresses plus the routes this node sends through the peer. */
  allowed_ips: string[];
  endpoints: string[];
  tags: string[];
  user: string | null;
  exit_node: boolean;
}

export interface NetworkMap {
  version: number;
  /** Hash of everything but `version`: equal hash, equal map. */
  hash: string;
  tenant: string;
  self: {
    id: number;
    name: string;
    dns_name: string;
    addresses: string[];
    tags: string[];
    user: string | null;
    approved_routes: string[];
    primary_routes: string[];
  };
  peers: MapPeer[];
  /** Ids of the peers that are online (updated between maps by "peers" events). */
  online: number[];
  packet_filter: unknown;
  ssh_policy: unknown;
  /** Id of the exit node this node uses, when it asked for one it may use. */
  exit_node: number | null;
  relays: MapRelay[];
  dns: { base: string };
}

export const jsonList = (s: string): string[] => {
  try {
    const v: unknown = JSON.parse(s);
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  } catch {
    return [];
  }
};

export const jsonObject = (s: string): Record<string, unknown> => {
  try {
    const v: unknown = JSON.parse(s);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
};

/** Online: its stream is open and no relay reports it unseen. */
export const isOnline = (n: Pick<NodeRow, 'online' | 'unseen'>): boolean => n.online === 1 && n.unseen !== 1;

export function aclNode(n: NodeRow, usersById: Map<number, UserRow>): AclNode {
  const tags = jsonList(n.tags);
  const owner = tags.length === 0 && n.user_id !== null ? usersById.get(n.user_id) : undefined;
  return {
    id: n.id,
    name: n.name,
    user: owner ? (owner.email ?? owner.name) : null,
    tags,
    ipv4: n.ipv4,
    ipv6: n.ipv6,
    announced_routes: jsonList(n.announced_routes),
    approved_routes: jsonList(n.approved_routes),
    online: isOnline(n),
  };
}

const isExpired = (n: NodeRow, now: string): boolean => n.expires_at !== null && n.expires_at <= now;

/** The tenant as the ACL engine sees it: expired nodes take no part. */
export function aclNetwork(tenant: TenantRow, users: UserRow[], nodes: NodeRow[]): AclNetwork {
  const byId = new Map(users.map((u) => [u.id, u]));
  const now = new Date().toISOString();
  return {
    users: users.map((u) => ({ id: u.id, name: u.name, email: u.email })),
    nodes: nodes.filter((n) => !isExpired(n, now)).map((n) => aclNode(n, byId)),
    pool: [tenant.pool4, ...(tenant.pool6 ? [tenant.pool6] : [])],
  };
}

const addrsOf = (n: { ipv4: string | null; ipv6: string | null }): string[] => [
  ...(n.ipv4 ? [`${n.ipv4}/32`] : []),
  ...(n.ipv6 ? [`${n.ipv6}/128`] : []),
];

export interface TenantSnapshot {
  tenant: TenantRow;
  users: UserRow[];
  nodes: NodeRow[];
  policy: string;
  net: AclNetwork;
  byId: Map<number, NodeRow>;
  usersById: Map<number, UserRow>;
  /** This tenant's links on every relay, and the relays serving it. */
  links: RelayLinkRow[];
  relays: RelayRow[];
  /** Per node: the JSON text of its map's relays section. */
  relaysByNode: Map<number, string>;
  /** The tenant's HA primaries as stored (prefix → node id). */
  primaries: Map<string, number>;
}

/** One entry of a node's relays section. */
export interface MapRelay {
  id: number;
  name: string;
  endpoints: string[];
  /** The node's id on the link (its key_id towards the relay). */
  link_id: number;
  /** The relay's own id on the link. */
  relay_link_id: number;
  /** 32-byte pre-shared key, hex. */
  psk: string;
  obfuscate: true;
  /** The relay reports to the server (within the health TTL). Nodes home on a live relay. */
  live: boolean;
  /** The tenant's own relay (not shared with other tenants); preferred over shared ones. */
  dedicated: boolean;
}

function relaysSections(relays: RelayRow[], links: RelayLinkRow[]): Map<number, string> {
  const byId = new Map(relays.map((r) => [r.id, r]));
  const per = new Map<number, MapRelay[]>();
  for (const l of links) {
    const r = byId.get(l.relay_id);
    if (!r) continue;
    const list = per.get(l.node_id) ?? [];
    list.push({
      id: r.id, name: r.name, endpoints: jsonList(r.endpoints), link_id: l.link_id, relay_link_id: r.self_id, psk: l.psk, obfuscate: true,
      live: r.live === 1, dedicated: r.tenant_id !== null,
    });
    per.set(l.node_id, list);
  }
  const out = new Map<number, string>();
  for (const [id, list] of per) out.set(id, JSON.stringify(list.sort((a, b) => a.id - b.id)));
  return out;
}

export async function loadSnapshot(store: Store, tenantId: number): Promise<TenantSnapshot | null> {
  const tenant = await store.getTenant(tenantId);
  if (!tenant) return null;
  const repo = store.tenant(tenantId);
  const [users, nodes, pol, links, relays, primaries] = await Promise.all([
    repo.listUsers(), repo.listNodes(), repo.currentPolicy(), repo.listRelayLinks(), repo.relaysServing(), repo.listPrimaries(),
  ]);
  return {
    primaries,
    links,
    relays,
    relaysByNode: relaysSections(relays, links),
    tenant,
    users,
    nodes,
    policy: pol?.text ?? '{}',
    net: aclNetwork(tenant, users, nodes),
    byId: new Map(nodes.map((n) => [n.id, n])),
    usersById: new Map(users.map((u) => [u.id, u])),
  };
}

const EMPTY_VIEW: NodeView = { peers: PeerList.EMPTY, peerRoutes: new Map(), packetFilter: [], sshPolicy: null, primaryRoutes: [] };

/** A built map: its version, content hash and JSON text (shape: NetworkMap). */
export interface BuiltMap {
  version: number;
  hash: string;
  json: string;
}

interface PeerEntry {
  key: string;
  /** `{"id":…,"addresses":[…],"allowed_ips":[` plus the addresses */
  head: string;
  addresses: string[];
  /** `],"endpoints":…,"user":…,"exit_node":` */
  tail: string;
  name: string;
}

/**
 * Peer JSON fragments, built once per node version and shared by every map the
 * node appears in: maps are assembled from text, not re-serialised objects
 * (a tenant of 10 000 nodes has millions of peer entries).
 */
export class PeerCache {
  private readonly entries = new Map<number, PeerEntry>();

  get(n: NodeRow, usersById: Map<number, UserRow>, sig?: string): PeerEntry {
    const key = sig ?? peerSignature(n);
    const hit = this.entries.get(n.id);
    if (hit && hit.key === key) return hit;
    const acl = aclNode(n, usersById);
    const addresses = addrsOf(n);
    const addrJson = JSON.stringify(addresses);
    const e: PeerEntry = {
      key,
      head: `{"id":${n.id},"name":${JSON.stringify(n.name)},"node_key":${JSON.stringify(n.node_key)},"addresses":${addrJson},"allowed_ips":[${addrJson.slice(1, -1)}`,
      addresses,
      tail: `],"endpoints":${JSON.stringify(jsonList(n.endpoints))},"tags":${JSON.stringify(acl.tags)},"user":${JSON.stringify(acl.user)},"exit_node":`,
      name: n.name,
    };
    this.entries.set(n.id, e);
    return e;
  }

  retain(ids: Set<number>): void {
    for (const id of this.entries.keys()) if (!ids.has(id)) this.entries.delete(id);
  }
}

/** Top-level map sections, in the order they appear in a map's JSON. */
export const SECTIONS = ['tenant', 'self', 'peers', 'online', 'packet_filter', 'ssh_policy', 'exit_node', 'relays', 'dns'] as const;
export type SectionName = (typeof SECTIONS)[number];
export type Sections = Record<SectionName, string>;

const sha1 = (s: string): string => createHash('sha1').update(s).digest('hex').slice(0, 24);

/** The peers section of one node's map, kept while its inputs stay the same. */
interface PeersMemo {
  peers: PeerList;
  routes: Map<number, string[]>;
  /** Dropped after use to keep memory flat; rebuilt when a full map is needed. */
  json: string | null;
  hash: string;
  exitPeers: Map<number, string>;
}

function sameRoutes(a: Map<number, string[]>, b: Map<number, string[]>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || w.length !== v.length || w.some((x, i) => x !== v[i])) return false;
  }
  return true;
}

function samePeers(a: PeerList, b: PeerList): boolean {
  return a.equals(b);
}

function buildPeers(snap: TenantSnapshot, v: NodeView, cache: PeerCache, sigs?: Map<number, string>): PeersMemo & { json: string } {
  const parts: string[] = [];
  const exitPeers = new Map<number, string>();
  for (const pid of v.peers) {
    const p = snap.byId.get(pid);
    if (!p) continue;
    const e = cache.get(p, snap.usersById, sigs?.get(pid));
    const routes = v.peerRoutes.get(pid);
    let extra = '';
    let isExit = false;
    if (routes && routes.length) {
      for (const r of routes) {
        if (e.addresses.includes(r)) continue;
        extra += `${extra || e.addresses.length ? ',' : ''}${JSON.stringify(r)}`;
        if (r === '0.0.0.0/0' || r === '::/0') isExit = true;
      }
    }
    if (isExit) exitPeers.set(pid, e.name);
    parts.push(`${e.head}${extra}${e.tail}${isExit}}`);
  }
  const json = `[${parts.join(',')}]`;
  return { peers: v.peers, routes: v.peerRoutes, json, hash: sha1(json), exitPeers };
}

export interface BuiltSections {
  /** Every section but peers, whose text is made on demand by peersJson(). */
  sections: Omit<Sections, 'peers'>;
  peersJson(): string;
  /** Frees the peers text (the memo keeps its hash). */
  release(): void;
  hashes: Record<SectionName, string>;
  /** Hash of the whole map (of its section hashes). */
  hash: string;
  version: number;
}

/**
 * Builds one node's map as JSON sections. `memo` (per node) lets an unchanged
 * peers section be reused without rebuilding it; `dirtyPeers` are peers whose
 * entries changed since the memo was made.
 */
export function buildSections(
  snap: TenantSnapshot,
  view: NodeView | undefined,
  nodeId: number,
  cache: PeerCache,
  memo?: { get(id: number): PeersMemo | undefined; set(id: number, m: PeersMemo): void },
  dirtyPeers?: Set<number>,
  sigs?: Map<number, string>,
): BuiltSections | null {
  const self = snap.byId.get(nodeId);
  if (!self) return null;
  const selfAcl = aclNode(self, snap.usersById);
  const v = view ?? EMPTY_VIEW;
  let pm = memo?.get(nodeId);
  if (!pm || !samePeers(pm.peers, v.peers) || !sameRoutes(pm.routes, v.peerRoutes) || (dirtyPeers && dirtyPeers.size > 0 && v.peers.some((p) => dirtyPeers.has(p)))) {
    pm = buildPeers(snap, v, cache, sigs);
    memo?.set(nodeId, pm);
  }
  const wish = jsonObject(self.hostinfo)['use_exit_node'];
  let exitId: number | null = null;
  if (wish !== undefined && wish !== null) {
    for (const [pid, name] of pm.exitPeers) {
      if (name === String(wish) || String(pid) === String(wish)) {
        exitId = pid;
        break;
      }
    }
  }
  const memoFinal = pm;
  const sections: Omit<Sections, 'peers'> = {
    tenant: JSON.stringify(snap.tenant.name),
    self: JSON.stringify({
      id: self.id,
      name: self.name,
      dns_name: `${self.name}.${snap.tenant.dns_base}`,
      addresses: addrsOf(self),
      tags: selfAcl.tags,
      user: selfAcl.user,
      approved_routes: selfAcl.approved_routes,
      primary_routes: v.primaryRoutes,
    }),
    online: JSON.stringify(v.peers.filter((p) => { const q = snap.byId.get(p); return q !== undefined && isOnline(q); })),
    packet_filter: JSON.stringify(v.packetFilter ?? null),
    ssh_policy: JSON.stringify(v.sshPolicy ?? null),
    exit_node: JSON.stringify(exitId),
    relays: snap.relaysByNode.get(nodeId) ?? '[]',
    dns: JSON.stringify({ base: snap.tenant.dns_base }),
  };
  const hashes = {} as Record<SectionName, string>;
  for (const k of SECTIONS) hashes[k] = k === 'peers' ? pm.hash : sha1(sections[k]);
  return {
    sections,
    peersJson: () => (memoFinal.json ??= buildPeers(snap, v, cache, sigs).json),
    release: () => {
      memoFinal.json = null;
    },
    hashes,
    hash: sha1(SECTIONS.map((k) => hashes[k]).join('.')),
    version: snap.tenant.generation,
  };
}

/** JSON text of a full map, or of a patch holding only `only` sections. */
export function assembleMap(b: BuiltSections, only?: SectionName[]): string {
  const keys = only ?? SECTIONS;
  return `{"version":${b.version},"hash":"${b.hash}"${keys.map((k) => `,"${k}":${k === 'peers' ? b.peersJson() : b.sections[k]}`).join('')}}`;
}

export function buildMap(snap: TenantSnapshot, view: NodeView | undefined, nodeId: number, cache: PeerCache = new PeerCache()): BuiltMap | null {
  const b = buildSections(snap, view, nodeId, cache);
  return b ? { version: b.version, hash: b.hash, json: assembleMap(b) } : null;
}

/** The tenant's live policy could not be compiled and this node has no earlier compiled view. */
export class CompileFailedError extends Error {
  constructor(
    message: string,
    /** When the hub tries again (ms since the epoch). */
    readonly retryAt: number,
  ) {
    super(message);
  }
}

/** A tenant whose live policy did not compile (over the budget, or the worker failed). */
export interface CompileFailure {
  error: string;
  /** ISO time of the failure. */
  at: string;
  /** ISO time of the next attempt with this policy (a new policy is tried at once). */
  retry_at: string;
  /** Whether maps are still served from an earlier successful compile. */
  serving_last_good: boolean;
}

/** One connected node's stream. */
export interface MapStream {
  tenantId: number;
  nodeId: number;
  lastHash: string | null;
  /** Until the first push: a resumed stream whose map is unchanged gets "unchanged". */
  first: boolean;
  /** Section hashes last sent on this stream (null: nothing sent yet). */
  sent: Record<SectionName, string> | null;
  send(map: BuiltMap): void;
  /** Only some sections changed: the changed ones, same shape as a map with fewer keys. */
  patch(map: BuiltMap): void;
  unchanged(map: BuiltMap): void;
  /** Peers' presence changed (map otherwise unchanged): peer id → online. */
  peerStatus(version: number, online: Record<number, boolean>): void;
  /** The node was deleted or its tenant removed: end the stream. */
  end(reason: string): void;
}

interface TenantLive {
  streams: Map<number, Set<MapStream>>;
  running: boolean;
  dirty: boolean;
  /** Generation of the last snapshot pushed; notifications at or below it are stale. */
  seenGeneration: number;
  waiters: (() => void)[];
  /** Resolved when the refresh in flight ends (without asking for another). */
  idleWaiters: (() => void)[];
  /** The snapshot the views belong to (null until the first refresh). */
  snap: TenantSnapshot | null;
  /** Last compiled views of the nodes served here (streaming, or asked for by GET /map). */
  views: Map<number, NodeView>;
  /** A compile succeeded at least once in this process. */
  good: boolean;
  /** Nodes that asked for a one-shot map recently: node id → when (their views are kept). */
  oneShot: Map<number, number>;
  /** Ids of the nodes in the compiled network (expired nodes are not). */
  inNet: Set<number>;
  sigs: Map<number, string>;
  /** Per node: its relays section as last pushed. */
  relaySigs: Map<number, string>;
  online: Map<number, boolean>;
  tenantSig: string;
  lastRun: number;
  lastCost: number;
  peers: PeerCache;
  peersMemo: Map<number, PeersMemo>;
}

interface Changes {
  /** Rebuild every map (policy or tenant settings changed, first compile). */
  all: boolean;
  /** Nodes whose ACL results changed. */
  acl: Set<number>;
  /** Nodes whose map-visible fields (other than presence) changed, joined or left. */
  sig: Set<number>;
  /** Nodes whose presence alone changed, with the new state. */
  online: Map<number, boolean>;
  /** Nodes whose relay links changed (new link, rotated key, relay moved). */
  relay: Set<number>;
}

const REFRESH_GAP_MS = 50;
/** One-shot views are kept this long after the last request, for at most this many nodes per tenant. */
const ONE_SHOT_TTL_MS = 60_000;
const ONE_SHOT_MAX = 256;
/** A tenant whose policy failed to compile is retried after this (doubling up to the max), or at once for a new policy. */
const RETRY_MIN_MS = 30_000;
const RETRY_MAX_MS = 15 * 60_000;

interface FailState {
  policy: string;
  error: string;
  at: number;
  retryAt: number;
  backoff: number;
}

export class MapHub {
  private readonly tenants = new Map<number, TenantLive>();
  /** Tenants whose live policy did not compile (kept while the tenant has no live entry too). */
  private readonly failed = new Map<number, FailState>();
  /** Set by close(): no refresh starts any more (a closed store would fail every retry). */
  private closed = false;
  constructor(
    private readonly store: Store,
    private readonly metrics: ControlMetrics,
    private readonly pool: CompilePool,
    /** Debug log of each refresh (pino's logger.debug bound), when wanted. */
    private readonly debug?: (fields: Record<string, unknown>, msg: string) => void,
    /** Warnings (compile failures), when wanted. */
    private readonly warn?: (fields: Record<string, unknown>, msg: string) => void,
  ) {}

  /** The tenant's compile failure, when its live policy did not compile. */
  compileFailure(tenantId: number): CompileFailure | null {
    const f = this.failed.get(tenantId);
    if (!f) return null;
    return {
      error: f.error, at: new Date(f.at).toISOString(), retry_at: new Date(f.retryAt).toISOString(),
      serving_last_good: this.tenants.get(tenantId)?.good ?? false,
    };
  }

  /** Open streams of one node on this server. */
  nodeStreams(tenantId: number, nodeId: number): number {
    return this.tenants.get(tenantId)?.streams.get(nodeId)?.size ?? 0;
  }

  private live(tenantId: number): TenantLive {
    let t = this.tenants.get(tenantId);
    if (!t) {
      t = {
        streams: new Map(), running: false, dirty: false, seenGeneration: 0, waiters: [], idleWaiters: [], snap: null, views: new Map(), good: false,
        oneShot: new Map(), inNet: new Set(), sigs: new Map(), relaySigs: new Map(), online: new Map(), tenantSig: '', lastRun: 0, lastCost: 0,
        peers: new PeerCache(), peersMemo: new Map(),
      };
      this.tenants.set(tenantId, t);
    }
    return t;
  }

  private idle(t: TenantLive): boolean {
    const now = performance.now();
    for (const [id, at] of t.oneShot) if (now - at > ONE_SHOT_TTL_MS) t.oneShot.delete(id);
    return t.streams.size === 0 && t.oneShot.size === 0 && !t.running;
  }

  /**
   * A node's map from the tenant's last compiled state (GET /node/v1/map):
   * refreshed first only when the tenant changed since (or the node's view is
   * not kept yet); a refresh is an incremental update in the tenant's worker,
   * shared with every stream and concurrent request. Never a compile per call.
   */
  async oneShot(tenantId: number, nodeId: number): Promise<BuiltMap | null> {
    const t = this.live(tenantId);
    t.oneShot.delete(nodeId);
    t.oneShot.set(nodeId, performance.now());
    while (t.oneShot.size > ONE_SHOT_MAX) t.oneShot.delete(t.oneShot.keys().next().value as number);
    const tenant = await this.store.getTenant(tenantId);
    if (!tenant) return null;
    const current = () => t.snap !== null && t.snap.tenant.generation >= tenant.generation && !t.dirty && (t.views.has(nodeId) || !t.inNet.has(nodeId));
    if (!current() && t.running) {
      // A refresh is under way: it may answer this request too (concurrent polls share it).
      await new Promise<void>((resolve) => t.idleWaiters.push(resolve));
    }
    if (!current()) await this.refreshNow(tenantId);
    const snap = t.snap;
    if (!snap) return null;
    const f = this.failed.get(tenantId);
    if (f && !t.views.has(nodeId) && t.inNet.has(nodeId)) throw new CompileFailedError(`this tenant's policy could not be compiled: ${f.error}`, f.retryAt);
    return buildMap(snap, t.views.get(nodeId), nodeId, t.peers);
  }

  private open = 0;

  /** Nodes with a stream open on this server, as [tenant id, node id]. */
  connectedNodes(): [number, number][] {
    const out: [number, number][] = [];
    for (const [tid, t] of this.tenants) for (const nid of t.streams.keys()) out.push([tid, nid]);
    return out;
  }

  streamCount(): number {
    return this.open;
  }

  /** Number of this node's open streams on this server. */
  attach(s: MapStream): number {
    const t = this.live(s.tenantId);
    let set = t.streams.get(s.nodeId);
    if (!set) {
      set = new Set();
      t.streams.set(s.nodeId, set);
    }
    if (!set.has(s)) this.open++;
    set.add(s);
    this.metrics.streams.set(this.open);
    this.schedule(s.tenantId, t);
    return set.size;
  }

  /** Returns how many streams the node still has open here. */
  detach(s: MapStream): number {
    const t = this.tenants.get(s.tenantId);
    const set = t?.streams.get(s.nodeId);
    if (!t || !set) return 0;
    if (set.delete(s)) this.open--;
    if (set.size === 0) {
      t.streams.delete(s.nodeId);
      if (!t.oneShot.has(s.nodeId)) {
        t.views.delete(s.nodeId);
        t.peersMemo.delete(s.nodeId);
      }
    }
    if (this.idle(t)) this.tenants.delete(s.tenantId);
    this.metrics.streams.set(this.open);
    return set.size;
  }

  /** A committed change (local or from another replica). True when it schedules a refresh (the hub is behind). */
  changed(tenantId: number, generation: number): boolean {
    const t = this.tenants.get(tenantId);
    if (!t) return false;
    if (generation >= 0 && generation <= t.seenGeneration) return false;
    this.schedule(tenantId, t);
    return true;
  }

  /** Refreshes now and resolves when every current stream has its map. */
  refreshNow(tenantId: number): Promise<void> {
    const t = this.tenants.get(tenantId);
    if (!t) return Promise.resolve();
    return new Promise((resolve) => {
      t.waiters.push(resolve);
      this.schedule(tenantId, t);
    });
  }

  /**
   * Stops refreshing: called when the server shuts down, before its store
   * closes. Without it, a refresh whose database read fails retries every
   * 500 ms for as long as the process lives (it kept test processes alive).
   */
  close(): void {
    this.closed = true;
    for (const t of this.tenants.values()) for (const w of t.waiters.splice(0)) w();
  }

  private schedule(tenantId: number, t: TenantLive): void {
    t.dirty = true;
    if (t.running || this.closed) return;
    t.running = true;
    // Bursts (many nodes connecting at once) are batched: a refresh starts at
    // least REFRESH_GAP_MS after the previous one ended, so the writes queued
    // meanwhile land in one refresh; a quiet tenant's first change goes at once.
    // The gap grows with the cost of the last refresh so that request handling
    // (new streams, writes) keeps at least half of the event loop under load.
    const gap = Math.max(REFRESH_GAP_MS, Math.min(1000, t.lastCost));
    const wait = Math.max(0, t.lastRun + gap - performance.now());
    if (wait > 0) setTimeout(() => void this.run(tenantId, t), wait);
    else setImmediate(() => void this.run(tenantId, t));
  }

  private async run(tenantId: number, t: TenantLive): Promise<void> {
    const started = performance.now();
    try {
      t.dirty = false;
      const waiters = t.waiters.splice(0);
      let failed = false;
      const snap = await loadSnapshot(this.store, tenantId).catch(() => {
        failed = true;
        return null;
      });
      if (failed) {
        // The database did not answer (a replica cut off from it): the streams
        // stay open with what they have; retry after a pause.
        t.dirty = true;
        t.waiters.unshift(...waiters);
        await new Promise((res) => setTimeout(res, 500));
        return;
      }
      if (!snap) {
        // tenant gone: end every stream
        for (const set of t.streams.values()) for (const s of set) s.end('tenant deleted');
      } else {
        t.seenGeneration = Math.max(t.seenGeneration, snap.tenant.generation);
        const t0 = performance.now();
        const changed = await this.sync(snap, t);
        t.snap = snap;
        // Nothing compiled yet (the first compile failed): nodes keep the map
        // they have rather than an empty one; a failure is visible in the API and metrics.
        const built = t.good ? this.push(snap, t, changed) : 0;
        this.debug?.({ tenant: tenantId, generation: snap.tenant.generation, all: changed.all, acl: changed.acl.size, changed: changed.sig.size, presence: changed.online.size, built, ms: Number((performance.now() - t0).toFixed(1)) }, 'map refresh');
      }
      for (const w of waiters) w();
    } finally {
      t.running = false;
      t.lastRun = performance.now();
      t.lastCost = t.lastRun - started;
      for (const w of t.idleWaiters.splice(0)) w();
      if (t.dirty) this.schedule(tenantId, t);
      else if (this.idle(t)) this.tenants.delete(tenantId);
    }
  }

  /**
   * Brings the tenant's compiled state (in its worker) up to the snapshot and
   * takes the views of the nodes served here. Returns the nodes whose results
   * changed. A failure (over the budget) keeps the views from before and is
   * retried only for a new policy or after a backoff, never in a loop.
   */
  private async compile(snap: TenantSnapshot, t: TenantLive, tenantId: number): Promise<{ acl: Set<number>; full: boolean }> {
    const f = this.failed.get(tenantId);
    if (f && f.policy === snap.policy && Date.now() < f.retryAt) return { acl: new Set(), full: false };
    const connected = [...new Set([...t.streams.keys(), ...t.oneShot.keys()])];
    const missing = connected.filter((id) => !t.views.has(id));
    try {
      const r = await this.pool.sync({ tenant: tenantId, policy: snap.policy, net: snap.net, primaries: [...snap.primaries], connected, missing });
      if (f) {
        this.failed.delete(tenantId);
        this.metrics.compileFailedTenants.set(this.failed.size);
      }
      if (r.facts !== null) rememberFacts(snap.policy, r.facts);
      for (const [id, v] of decodeViews(r.out)) t.views.set(id, v);
      t.good = true;
      this.metrics.compileSeconds.observe({ tenant: snap.tenant.name }, r.ms / 1000);
      return { acl: new Set(r.changed), full: r.full };
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const backoff = f && f.policy === snap.policy ? Math.min(RETRY_MAX_MS, f.backoff * 2) : RETRY_MIN_MS;
      const now = Date.now();
      this.failed.set(tenantId, { policy: snap.policy, error: message, at: now, retryAt: now + backoff, backoff });
      this.metrics.compileFailedTenants.set(this.failed.size);
      this.warn?.({ tenant: snap.tenant.name, err: message, over_budget: err instanceof BudgetError, retry_in_ms: backoff, serving_last_good: t.good }, 'tenant policy did not compile');
      return { acl: new Set(), full: false };
    }
  }

  /** Brings the tenant's compiled state up to the snapshot; returns what changed. */
  private async sync(snap: TenantSnapshot, t: TenantLive): Promise<Changes> {
    const online = new Map<number, boolean>();
    for (const n of snap.nodes) {
      const prev = t.sigs.has(n.id) ? t.online.get(n.id) : undefined;
      if (prev !== undefined && prev !== isOnline(n)) online.set(n.id, isOnline(n));
    }
    t.online = new Map(snap.nodes.map((n) => [n.id, isOnline(n)]));
    const sigs = new Map<number, string>();
    for (const n of snap.nodes) sigs.set(n.id, peerSignature(n));
    const sig = new Set<number>();
    for (const [id, s] of sigs) if (t.sigs.get(id) !== s) sig.add(id);
    for (const id of t.sigs.keys()) if (!sigs.has(id)) sig.add(id);
    const tenantSig = `${snap.tenant.name}|${snap.tenant.dns_base}`;
    const wasGood = t.good;
    const compiled = await this.compile(snap, t, snap.tenant.id);
    // The first successful compile (also after failed ones) rebuilds every map.
    const all = tenantSig !== t.tenantSig || compiled.full || (t.good && !wasGood);
    const acl = compiled.acl;
    t.inNet = new Set(snap.net.nodes.map((n) => n.id));
    const keep = new Set([...t.streams.keys(), ...t.oneShot.keys()]);
    for (const id of t.views.keys()) if (!keep.has(id) || !t.inNet.has(id)) t.views.delete(id);
    const relay = new Set<number>();
    for (const n of snap.nodes) if ((t.relaySigs.get(n.id) ?? '[]') !== (snap.relaysByNode.get(n.id) ?? '[]')) relay.add(n.id);
    t.relaySigs = snap.relaysByNode;
    t.sigs = sigs;
    t.tenantSig = tenantSig;
    t.peers.retain(new Set(sigs.keys()));
    for (const id of t.peersMemo.keys()) if (!sigs.has(id)) t.peersMemo.delete(id);
    return { all, acl, sig, online, relay };
  }

  /** Returns how many maps were built. */
  private push(snap: TenantSnapshot, t: TenantLive, changed: Changes): number {
    let built = 0;
    const dirtyPeers = changed.sig;
    for (const [nodeId, set] of t.streams) {
      let fresh = changed.all || changed.acl.has(nodeId) || changed.sig.has(nodeId) || changed.relay.has(nodeId);
      for (const s of set) if (s.first) fresh = true;
      const view = t.inNet.has(nodeId) ? t.views.get(nodeId) : undefined;
      if (!view && t.inNet.has(nodeId)) {
        // Attached while this refresh compiled: no view yet. An empty map now
        // would be wrong; the next refresh (scheduled here) computes it, and
        // the stream, still waiting for its first map, gets one then.
        t.dirty = true;
        continue;
      }
      if (!fresh && view && changed.sig.size > 0) fresh = view.peers.some((p) => changed.sig.has(p));
      if (!fresh) {
        // Only peers' presence changed: a small delta instead of a new map.
        if (view && changed.online.size > 0) {
          const delta: Record<number, boolean> = {};
          let any = false;
          for (const p of view.peers) {
            const o = changed.online.get(p);
            if (o !== undefined) {
              delta[p] = o;
              any = true;
            }
          }
          if (any) for (const s of set) if (!s.first) s.peerStatus(snap.tenant.generation, delta);
        }
        continue;
      }
      built++;
      const b = buildSections(snap, view, nodeId, t.peers, t.peersMemo, dirtyPeers, t.sigs);
      for (const s of set) {
        if (!b) {
          s.end('node deleted');
          continue;
        }
        const map: BuiltMap = { version: b.version, hash: b.hash, json: '' };
        if (s.lastHash === b.hash) {
          if (s.first) s.unchanged(map);
          s.first = false;
          s.sent = b.hashes;
          continue;
        }
        const prev = s.sent;
        s.first = false;
        s.lastHash = b.hash;
        s.sent = b.hashes;
        if (prev && prev.peers === b.hashes.peers) {
          const only = SECTIONS.filter((k) => prev[k] !== b.hashes[k]);
          map.json = assembleMap(b, only);
          s.patch(map);
        } else {
          map.json = assembleMap(b);
          s.send(map);
        }
        this.metrics.mapPushes.inc({ tenant: snap.tenant.name });
      }
      b?.release();
    }
    return built;
  }
}

/** Everything about a node that appears in its own or its peers' maps, besides ACL results. */
function peerSignature(n: NodeRow): string {
  return `${n.name}|${n.node_key}|${n.ipv4}|${n.ipv6}|${n.endpoints}|${n.tags}|${n.user_id}|${n.approved_routes}|${n.hostinfo}|${n.expires_at}`;
}

