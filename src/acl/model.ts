// The tenant as the compiler sees it: nodes with parsed addresses and served
// routes, and the indexes that answer "which nodes are in this set / own this
// identity" without scanning the whole tenant.
import { type IPAddr, type Prefix, formatIP, parseIP, tryParsePrefix } from '../net/addr.js';
import { IPSet } from '../net/ipset.js';
import { EXIT_V4, EXIT_V6, comparePrefix, pickPrimary, prefixSet, sortRoutes } from './routes.js';
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
    this.primaries = this.elect(previousPrimaries ?? new Map());
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
    const p4 = raw.ipv4 ? parseAddr(raw.ipv4) : null;
    const p6 = raw.ipv6 ? parseAddr(raw.ipv6) : null;
    const a4 = p4 ? p4.addr : null;
    const a6 = p6 ? p6.addr : null;
    const ips: string[] = [];
    const ipSets: IPSet[] = [];
    let ipSet = IPSet.EMPTY;
    if (p4) {
      ipSet = IPSet.fromAddr(p4.addr);
      ips.push(p4.text);
      ipSets.push(ipSet);
    }
    if (p6) {
      const one = IPSet.fromAddr(p6.addr);
      ips.push(p6.text);
      ipSets.push(one);
      ipSet = ipSet.union(one);
    }
    let serving: string[] = [];
    if (raw.announced_routes.length > 0 && raw.approved_routes.length > 0) {
      const ann = new Set(sortRoutes(raw.announced_routes));
      serving = sortRoutes(raw.approved_routes).filter((r) => ann.has(r));
    }
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
      routeSet: routes.length === 0 ? IPSet.EMPTY : IPSet.unionAll(routes.map((p) => IPSet.fromPrefix(p))),
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

  /**
   * HA primaries from the served routes (same rules as electPrimaries, on
   * routes already canonical). The map object is kept when nothing changes.
   */
  reelect(): void {
    const next = this.elect(this.primaries);
    const cur = this.primaries;
    if (next.size === cur.size) {
      let same = true;
      for (const [p, id] of next) {
        if (cur.get(p) !== id) {
          same = false;
          break;
        }
      }
      if (same) return;
    }
    this.primaries = next;
  }

  private elect(previous: ReadonlyMap<string, number>): Map<string, number> {
    const cands = new Map<string, NodeInfo[]>();
    for (const id of this.routers) {
      const n = this.nodes.get(id)!;
      if (!n.online) continue;
      for (const r of n.routeStrs) {
        const l = cands.get(r);
        if (l) l.push(n);
        else cands.set(r, [n]);
      }
    }
    const out = new Map<string, number>();
    for (const [prefix, list] of cands) out.set(prefix, pickPrimary(list, previous.get(prefix)));
    return out;
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
    if (this.byOwnerOf !== this.primaries) {
      const acc = new Map<number, string[]>();
      for (const [p, owner] of this.primaries) {
        const l = acc.get(owner);
        if (l) l.push(p);
        else acc.set(owner, [p]);
      }
      this.byOwner = new Map([...acc].map(([owner, l]) => [owner, sortRoutes(l)]));
      this.byOwnerOf = this.primaries;
    }
    return this.byOwner.get(id)?.slice() ?? [];
  }

  /** The primaries as a list with each prefix's address set (rebuilt when the primaries change). */
  primaryList(): ReadonlyArray<{ readonly prefix: string; readonly owner: number; readonly set: IPSet }> {
    if (this.listOf !== this.primaries) {
      const out: Array<{ prefix: string; owner: number; set: IPSet }> = [];
      this.primaries.forEach((owner, prefix) => out.push({ prefix, owner, set: prefixSet(prefix) }));
      this.list = out;
      this.listOf = this.primaries;
    }
    return this.list;
  }

  /**
   * Positions in primaryList() of the primaries whose prefix overlaps `set`,
   * ascending. Output-sensitive (per span of `set`: two binary searches, the
   * prefixes starting inside the span, and the chain of prefixes enclosing its
   * start), not a scan of every primary per call: a rule with thousands of
   * destinations in a tenant with thousands of routes stays linear.
   */
  primariesOverlapping(set: IPSet): number[] {
    const list = this.primaryList();
    if (list.length === 0 || set.isEmpty()) return [];
    if (this.idxOf !== this.primaries) {
      this.idx4 = buildPrimIndex(list, 4);
      this.idx6 = buildPrimIndex(list, 6);
      this.idxOf = this.primaries;
    }
    const out: number[] = [];
    if (set.v4.length > 0 && this.idx4.pos.length > 0) collectPrim(this.idx4, set.v4, out);
    if (set.v6.length > 0 && this.idx6.pos.length > 0) collectPrim(this.idx6, set.v6, out);
    return out.length <= 1 ? out : sortUnique(out);
  }

  private idx4: PrimIndex = EMPTY_PRIM_INDEX;
  private idx6: PrimIndex = EMPTY_PRIM_INDEX;
  private idxOf: Map<string, number> | null = null;
  private list: ReadonlyArray<{ readonly prefix: string; readonly owner: number; readonly set: IPSet }> = [];
  private listOf: Map<string, number> | null = null;
  private byOwner = new Map<number, string[]>();
  private byOwnerOf: Map<string, number> | null = null;
}

/**
 * One family's primary prefixes sorted by start (a containing prefix before
 * the prefixes inside it); `parent` is the nearest earlier prefix containing
 * each one (-1 for none). Prefixes are nested or disjoint, so the prefixes
 * holding an address are one parent chain.
 */
interface PrimIndex {
  readonly lo: readonly bigint[];
  readonly hi: readonly bigint[];
  readonly parent: Int32Array;
  /** Position in primaryList(). */
  readonly pos: readonly number[];
}

const EMPTY_PRIM_INDEX: PrimIndex = { lo: [], hi: [], parent: new Int32Array(0), pos: [] };

function buildPrimIndex(list: ReadonlyArray<{ readonly set: IPSet }>, family: 4 | 6): PrimIndex {
  const items: Array<{ lo: bigint; hi: bigint; pos: number }> = [];
  for (let i = 0; i < list.length; i++) {
    const spans = family === 4 ? list[i]!.set.v4 : list[i]!.set.v6;
    if (spans.length > 0) items.push({ lo: spans[0]![0], hi: spans[0]![1], pos: i });
  }
  items.sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : a.hi > b.hi ? -1 : a.hi < b.hi ? 1 : 0));
  const parent = new Int32Array(items.length);
  const stack: number[] = [];
  for (let i = 0; i < items.length; i++) {
    while (stack.length > 0 && items[stack[stack.length - 1]!]!.hi < items[i]!.lo) stack.pop();
    parent[i] = stack.length > 0 ? stack[stack.length - 1]! : -1;
    stack.push(i);
  }
  return { lo: items.map((x) => x.lo), hi: items.map((x) => x.hi), parent, pos: items.map((x) => x.pos) };
}

/** Appends the positions of the indexed prefixes overlapping any of `spans` (may repeat). */
function collectPrim(ix: PrimIndex, spans: readonly (readonly [bigint, bigint])[], out: number[]): void {
  const { lo, hi, parent, pos } = ix;
  for (const [a, b] of spans) {
    // First prefix starting at or after a.
    let l = 0;
    let h = lo.length;
    while (l < h) {
      const m = (l + h) >> 1;
      if (lo[m]! < a) l = m + 1;
      else h = m;
    }
    // Prefixes starting inside [a, b] all overlap it.
    for (let k = l; k < lo.length && lo[k]! <= b; k++) out.push(pos[k]!);
    // Prefixes starting before a overlap it when they reach a: the chain enclosing the last one before a.
    for (let k = l - 1; k >= 0; k = parent[k]!) if (hi[k]! >= a) out.push(pos[k]!);
  }
}

/**
 * An address and its canonical text: parseIP + formatIP, with fast paths for
 * the plain forms node records use (dotted IPv4, hex-and-colons IPv6).
 */
export function parseAddr(s: string): { addr: IPAddr; text: string } | null {
  const v4 = fastIPv4(s);
  if (v4 !== null) return { addr: { family: 4, value: BigInt(v4) }, text: s };
  const v6 = fastIPv6(s);
  if (v6 !== null) return v6;
  const a = parseIP(s);
  return a ? { addr: a, text: formatIP(a) } : null;
}

/** Dotted IPv4 without leading zeros, else null (the caller falls back to parseIP). */
function fastIPv4(s: string): number | null {
  let v = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0) return null;
      v = v * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && part === 0) return null; // leading zero
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return null;
    } else return null;
  }
  if (dots !== 3 || digits === 0) return null;
  return v * 256 + part;
}

const HEX = '0123456789abcdef';

/** IPv6 of hex groups and at most one "::" (no embedded IPv4, no zone), else null. */
function fastIPv6(s: string): { addr: IPAddr; text: string } | null {
  if (s.length < 2 || s.length > 39) return null;
  // Groups before and after the "::" (if any), as numbers.
  const g = [0, 0, 0, 0, 0, 0, 0, 0];
  let count = 0;
  let gap = -1;
  let cur = 0;
  let digits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 58) {
      if (i + 1 < s.length && s.charCodeAt(i + 1) === 58) {
        if (gap >= 0) return null;
        if (digits > 0) {
          if (count === 8) return null;
          g[count++] = cur;
        } else if (i !== 0) return null;
        gap = count;
        cur = 0;
        digits = 0;
        i++;
        if (i + 1 < s.length && s.charCodeAt(i + 1) === 58) return null;
        continue;
      }
      if (digits === 0 || count === 8) return null;
      g[count++] = cur;
      cur = 0;
      digits = 0;
      if (i + 1 === s.length) return null;
      continue;
    }
    let d: number;
    if (c >= 48 && c <= 57) d = c - 48;
    else if (c >= 97 && c <= 102) d = c - 87;
    else if (c >= 65 && c <= 70) d = c - 55;
    else return null;
    cur = cur * 16 + d;
    if (++digits > 4) return null;
  }
  if (digits > 0) {
    if (count === 8) return null;
    g[count++] = cur;
  }
  if (gap >= 0) {
    const fill = 8 - count;
    if (fill < 1) return null;
    // Move the groups after the gap to the end, zero the gap.
    for (let k = count - 1; k >= gap; k--) g[k + fill] = g[k]!;
    for (let k = gap; k < gap + fill; k++) g[k] = 0;
  } else if (count !== 8) return null;
  // Canonical text (RFC 5952): the first longest run of two or more zero groups becomes "::".
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  let text = '';
  let hex = '0x';
  for (let k = 0; k < 8; k++) {
    const x = g[k]!;
    const h = HEX[(x >> 12) & 15]! + HEX[(x >> 8) & 15]! + HEX[(x >> 4) & 15]! + HEX[x & 15]!;
    hex += h;
    if (bestStart >= 0 && k >= bestStart && k < bestStart + bestLen) {
      if (k === bestStart) text += '::';
      continue;
    }
    if (text.length > 0 && !text.endsWith(':')) text += ':';
    text += x.toString(16);
  }
  return { addr: { family: 6, value: BigInt(hex) }, text };
}

export function sortUnique(a: number[]): number[] {
  if (a.length <= 1) return a;
  a.sort((x, y) => x - y);
  let w = 1;
  for (let i = 1; i < a.length; i++) if (a[i] !== a[w - 1]) a[w++] = a[i]!;
  a.length = w;
  return a;
}
