// The tenant as the compiler sees it: nodes with parsed addresses and served
// routes, and the indexes that answer "which nodes are in this set / own this
// identity" without scanning the whole tenant.
import { type Prefix, formatIP, parseIP, tryParsePrefix } from '../net/addr.js';
import { IPSet } from '../net/ipset.js';
import { EXIT_V4, EXIT_V6, comparePrefix, electPrimaries, sortRoutes } from './routes.js';
import type { AclNetwork, AclNode, AclUser } from './types.js';

export const DEFAULT_POOL = ['100.64.0.0/10', 'fd7a:115c:a1e0::/48'];
export const DEFAULT_POOL_EXCLUDE = ['100.115.92.0/23'];

const setOf = (prefixes: string[]): IPSet =>
  IPSet.unionAll(
    prefixes.map((s) => {
      const p = tryParsePrefix(s);
      if (!p) throw new Error(`invalid prefix in address pool: ${JSON.stringify(s)}`);
      return IPSet.fromPrefix(p);
    }),
  );

/** Tailscale's autogroup:internet: every public address (IPv4 minus private/CGNAT/link-local; IPv6 2000::/3). */
export const INTERNET: IPSet = IPSet.ALL.intersect(setOf(['0.0.0.0/0', '2000::/3'])).subtract(
  setOf(['10.0.0.0/8', '100.64.0.0/10', '169.254.0.0/16', '172.16.0.0/12', '192.168.0.0/16']),
);

export interface NodeInfo {
  readonly raw: AclNode;
  readonly id: number;
  readonly name: string;
  readonly userId: number | null;
  readonly tagged: boolean;
  readonly tags: readonly string[];
  readonly v4: bigint | null;
  readonly v6: bigint | null;
  /** Own addresses as bare strings (IPv4 first). */
  readonly ips: readonly string[];
  /** One single-address set per entry of `ips`. */
  readonly ipSets: readonly IPSet[];
  readonly ipSet: IPSet;
  /** Served (announced and approved) non-exit routes. */
  readonly routes: readonly Prefix[];
  readonly routeStrs: readonly string[];
  readonly routeSet: IPSet;
  /** Served exit routes (0.0.0.0/0, ::/0). */
  readonly exitRoutes: readonly string[];
  online: boolean;
  healthy: boolean;
}

/** Sorted (value, id) index over one address family. */
class AddrIndex {
  vals: bigint[] = [];
  ids: number[] = [];
  private lower(v: bigint): number {
    let lo = 0;
    let hi = this.vals.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.vals[mid]! < v) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
  add(v: bigint, id: number): void {
    const i = this.lower(v);
    this.vals.splice(i, 0, v);
    this.ids.splice(i, 0, id);
  }
  remove(v: bigint, id: number): void {
    let i = this.lower(v);
    while (i < this.vals.length && this.vals[i] === v) {
      if (this.ids[i] === id) {
        this.vals.splice(i, 1);
        this.ids.splice(i, 1);
        return;
      }
      i++;
    }
  }
  /** Bulk load (unsorted input). */
  load(pairs: Array<[bigint, number]>): void {
    pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]));
    this.vals = pairs.map((p) => p[0]);
    this.ids = pairs.map((p) => p[1]);
  }
  collect(spans: readonly (readonly [bigint, bigint])[], out: number[]): void {
    for (const [lo, hi] of spans) {
      for (let i = this.lower(lo); i < this.vals.length && this.vals[i]! <= hi; i++) out.push(this.ids[i]!);
    }
  }
}

export class Model {
  readonly users = new Map<number, AclUser>();
  private readonly userByEmail = new Map<string, number>();
  private readonly userByName = new Map<string, number>();
  readonly nodes = new Map<number, NodeInfo>();
  readonly byTag = new Map<string, Set<number>>();
  /** user id → that user's untagged nodes. */
  readonly byUser = new Map<number, Set<number>>();
  readonly members = new Set<number>();
  readonly taggedNodes = new Set<number>();
  readonly routers = new Set<number>();
  readonly exits = new Set<number>();
  private readonly v4 = new AddrIndex();
  private readonly v6 = new AddrIndex();
  readonly pool: IPSet;
  readonly poolStrings: string[];
  /** prefix → primary node id. */
  primaries = new Map<string, number>();

  /** `previousPrimaries`: the current HA primaries, kept while still healthy candidates (anti-flap). */
  constructor(net: AclNetwork, previousPrimaries?: ReadonlyMap<string, number>) {
    for (const u of net.users) this.addUser(u);
    let pool = setOf(net.pool && net.pool.length > 0 ? net.pool : DEFAULT_POOL);
    if (!net.pool || net.pool.length === 0) pool = pool.subtract(setOf(DEFAULT_POOL_EXCLUDE));
    this.pool = pool;
    this.poolStrings = pool.toStrings();
    const p4: Array<[bigint, number]> = [];
    const p6: Array<[bigint, number]> = [];
    for (const raw of net.nodes) {
      const n = this.insert(raw);
      if (n.v4 !== null) p4.push([n.v4, n.id]);
      if (n.v6 !== null) p6.push([n.v6, n.id]);
    }
    this.v4.load(p4);
    this.v6.load(p6);
    this.primaries = electPrimaries(this.electionNodes(), previousPrimaries);
  }

  addUser(u: AclUser): void {
    this.users.set(u.id, u);
    if (u.email) this.userByEmail.set(u.email.toLowerCase(), u.id);
    this.userByName.set(u.name.toLowerCase(), u.id);
  }

  /** Resolves a policy user token ("alice@", "alice@example.com") to a user id. */
  userIdOf(token: string): number | null {
    const t = token.toLowerCase();
    if (t.endsWith('@')) {
      const name = t.slice(0, -1);
      return this.userByName.get(name) ?? this.userByEmail.get(t) ?? null;
    }
    return this.userByEmail.get(t) ?? this.userByName.get(t) ?? null;
  }

  /** Owner of a node record (email, name or "name@"). */
  private ownerId(owner: string | null): number | null {
    if (!owner) return null;
    return this.userIdOf(owner) ?? this.userByName.get(owner.toLowerCase().replace(/@$/, '')) ?? null;
  }

  private build(raw: AclNode): NodeInfo {
    const a4 = raw.ipv4 ? parseIP(raw.ipv4) : null;
    const a6 = raw.ipv6 ? parseIP(raw.ipv6) : null;
    const ips: string[] = [];
    const ipSets: IPSet[] = [];
    let ipSet = IPSet.EMPTY;
    for (const a of [a4, a6]) {
      if (!a) continue;
      const one = IPSet.fromAddr(a);
      ips.push(formatIP(a));
      ipSets.push(one);
      ipSet = ipSet.union(one);
    }
    const ann = new Set(sortRoutes(raw.announced_routes));
    const serving = sortRoutes(raw.approved_routes).filter((r) => ann.has(r));
    const routes: Prefix[] = [];
    const exitRoutes: string[] = [];
    for (const r of serving) {
      if (r === EXIT_V4 || r === EXIT_V6) exitRoutes.push(r);
      else routes.push(tryParsePrefix(r)!);
    }
    routes.sort(comparePrefix);
    const tagged = raw.tags.length > 0;
    return {
      raw,
      id: raw.id,
      name: raw.name,
      userId: tagged ? null : this.ownerId(raw.user),
      tagged,
      tags: raw.tags.slice(),
      v4: a4 && a4.family === 4 ? a4.value : null,
      v6: a6 && a6.family === 6 ? a6.value : null,
      ips,
      ipSets,
      ipSet,
      routes,
      routeStrs: serving.filter((r) => r !== EXIT_V4 && r !== EXIT_V6),
      routeSet: IPSet.unionAll(routes.map((p) => IPSet.fromPrefix(p))),
      exitRoutes,
      online: raw.online,
      healthy: raw.healthy !== false,
    };
  }

  private insert(raw: AclNode): NodeInfo {
    const n = this.build(raw);
    this.nodes.set(n.id, n);
    for (const t of n.tags) {
      let s = this.byTag.get(t);
      if (!s) this.byTag.set(t, (s = new Set()));
      s.add(n.id);
    }
    if (n.tagged) this.taggedNodes.add(n.id);
    else {
      this.members.add(n.id);
      if (n.userId !== null) {
        let s = this.byUser.get(n.userId);
        if (!s) this.byUser.set(n.userId, (s = new Set()));
        s.add(n.id);
      }
    }
    if (n.routes.length > 0) this.routers.add(n.id);
    if (n.exitRoutes.length > 0) this.exits.add(n.id);
    return n;
  }

  private detach(n: NodeInfo): void {
    this.nodes.delete(n.id);
    for (const t of n.tags) this.byTag.get(t)?.delete(n.id);
    this.taggedNodes.delete(n.id);
    this.members.delete(n.id);
    if (n.userId !== null) this.byUser.get(n.userId)?.delete(n.id);
    this.routers.delete(n.id);
    this.exits.delete(n.id);
  }

  addNode(raw: AclNode): NodeInfo {
    const old = this.nodes.get(raw.id);
    if (old) this.removeNode(raw.id);
    const n = this.insert(raw);
    if (n.v4 !== null) this.v4.add(n.v4, n.id);
    if (n.v6 !== null) this.v6.add(n.v6, n.id);
    this.reelect();
    return n;
  }

  removeNode(id: number): NodeInfo | undefined {
    const n = this.nodes.get(id);
    if (!n) return undefined;
    this.detach(n);
    if (n.v4 !== null) this.v4.remove(n.v4, n.id);
    if (n.v6 !== null) this.v6.remove(n.v6, n.id);
    this.reelect();
    return n;
  }

  /** Replaces a node record in place (routes, online, health); indexes by address are unchanged. */
  replaceNode(raw: AclNode): NodeInfo {
    const old = this.nodes.get(raw.id);
    if (!old) return this.addNode(raw);
    if (old.raw.ipv4 !== raw.ipv4 || old.raw.ipv6 !== raw.ipv6) {
      this.removeNode(raw.id);
      return this.addNode(raw);
    }
    this.detach(old);
    const n = this.insert(raw);
    this.reelect();
    return n;
  }

  electionNodes(): Array<{ id: number; online: boolean; healthy: boolean; announced_routes: string[]; approved_routes: string[] }> {
    const out = [];
    for (const id of this.routers) {
      const n = this.nodes.get(id)!;
      out.push({
        id,
        online: n.online,
        healthy: n.healthy,
        announced_routes: n.routeStrs as string[],
        approved_routes: n.routeStrs as string[],
      });
    }
    return out;
  }

  reelect(): void {
    this.primaries = electPrimaries(this.electionNodes(), this.primaries);
  }

  /** Nodes whose own address is in `set`, plus routers whose served routes overlap it. Sorted ids. */
  nodesMatching(set: IPSet, withExits: boolean): number[] {
    const out: number[] = [];
    this.v4.collect(set.v4, out);
    this.v6.collect(set.v6, out);
    for (const id of this.routers) {
      if (this.nodes.get(id)!.routeSet.overlaps(set)) out.push(id);
    }
    if (withExits && this.exits.size > 0 && set.overlaps(INTERNET)) {
      for (const id of this.exits) out.push(id);
    }
    return sortUnique(out);
  }

  /** Every served non-exit route in the tenant, canonical, sorted, de-duplicated. */
  allRoutes(): string[] {
    const all: string[] = [];
    for (const id of this.routers) all.push(...this.nodes.get(id)!.routeStrs);
    return sortRoutes(all);
  }

  /** Primary routes of a node. */
  primaryRoutesOf(id: number): string[] {
    const out: string[] = [];
    for (const [p, owner] of this.primaries) if (owner === id) out.push(p);
    return sortRoutes(out);
  }
}

export function sortUnique(a: number[]): number[] {
  if (a.length <= 1) return a;
  a.sort((x, y) => x - y);
  let w = 1;
  for (let i = 1; i < a.length; i++) if (a[i] !== a[w - 1]) a[w++] = a[i]!;
  a.length = w;
  return a;
}
