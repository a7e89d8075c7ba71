// Alias resolution against the tenant (which nodes, addresses and targets an
// alias stands for), memoised per alias with dependency tracking, and what a
// change touched so that only the affected memos are patched.
import { IPSet, formatRangeAsRange } from '../net/ipset.js';
import { type Delta, NONE, diffSorted, lowerBound, mergeSorted, withMember } from './idlists.js';
import { INTERNET, type Model, sortUnique } from './model.js';
import type { Alias, Policy } from './types.js';

/** A user's untagged nodes; a new object whenever they (or their addresses) change. */
export interface OwnNodes {
  readonly ids: readonly number[];
  /** Built on first use: the nodes' addresses, and one identity target per address. */
  strings?: readonly string[];
  targets?: readonly DstTarget[];
}

export interface SrcRes {
  readonly strings: readonly string[];
  readonly nodes: readonly number[];
  readonly set: IPSet;
  readonly identity: readonly number[];
  /** Identity sources: the node each string belongs to (parallel to strings), for patching. */
  readonly owners?: readonly number[];
}

export interface DstTarget {
  readonly ip: string;
  readonly set: IPSet;
  readonly receivers: readonly number[];
  readonly identity: boolean;
}

/** What one tenant change touched; memoised resolutions and units it can affect are recomputed. */
export interface Change {
  /** Ids of the changed nodes (joined, removed or updated). */
  readonly nodes: readonly number[];
  /** Identity keys of the changed node(s): tags, "member"/"tagged", "user:<id>". */
  readonly keys: ReadonlySet<string>;
  /** Addresses and routes of the changed node(s) (before and after), and changed primary prefixes. */
  readonly addr: IPSet;
  /** Served routes changed somewhere (the wildcard's address space may differ). */
  readonly routesChanged: boolean;
  /** An exit node's served exit routes are involved. */
  readonly exitChange: boolean;
  /** The difference of two ascending id lists (memoised per update). */
  readonly delta?: (a: readonly number[], b: readonly number[]) => Delta;
}

interface Meta {
  readonly deps: readonly string[];
  readonly sets: readonly IPSet[];
  readonly wildcard: boolean;
}

function isStale(m: Meta, ch: Change): boolean {
  for (const d of m.deps) if (ch.keys.has(d)) return true;
  if (m.wildcard && ch.routesChanged) return true;
  for (const s of m.sets) {
    if (s.overlaps(ch.addr)) return true;
    if (ch.exitChange && s.overlaps(INTERNET)) return true;
  }
  return false;
}

/** A memoised resolution; `pending` holds changed node ids not yet patched in. */
interface Memo<T> extends Meta {
  readonly alias: Alias;
  res: T;
  pending: Set<number> | null;
}

const WILDCARD_ALL = IPSet.ALL;

function aliasKey(a: Alias): string {
  switch (a.kind) {
    case 'wildcard':
      return '*';
    case 'prefix':
      return `p:${a.text}`;
    case 'autogroup':
      return `autogroup:${a.name}`;
    default:
      return `${a.kind}:${a.name}`;
  }
}

/**
 * Resolution of aliases against the tenant, memoised with dependency
 * tracking. A change marks the memos it can affect; they are patched for the
 * changed nodes on next use (a result that does not change stays the same
 * object), except the wildcard's, which is recomputed when routes change.
 */
export class Resolver {
  private memo = new Map<string, Memo<number[] | null>>();
  private srcMemo = new Map<string, Memo<SrcRes>>();
  private dstMemo = new Map<string, Memo<DstTarget[]>>();
  private ownCache = new Map<number, OwnNodes>();
  private wildcard: IPSet | null = null;

  constructor(
    readonly policy: Policy,
    readonly model: Model,
  ) {}

  /** Marks the memoised resolutions a change can affect. */
  invalidate(ch: Change): void {
    const mark = <T>(memo: Map<string, Memo<T>>): void => {
      for (const [k, m] of memo) {
        if (!isStale(m, ch)) continue;
        if (m.wildcard && ch.routesChanged) {
          memo.delete(k);
          continue;
        }
        m.pending ??= new Set();
        for (const id of ch.nodes) m.pending.add(id);
      }
    };
    mark(this.memo);
    mark(this.srcMemo);
    mark(this.dstMemo);
    for (const k of ch.keys) if (k.startsWith('user:')) this.ownCache.delete(Number(k.slice(5)));
    if (ch.routesChanged) this.wildcard = null;
  }

  identityNodes(a: Alias, deps: Set<string>): number[] | null {
    const key = aliasKey(a);
    let m = this.memo.get(key);
    if (!m) {
      const d = new Set<string>();
      m = { alias: a, res: this.identityNodesUncached(a, d), deps: [...d], sets: [], wildcard: false, pending: null };
      this.memo.set(key, m);
    } else if (m.pending) {
      let ids: readonly number[] | null = m.res;
      if (ids) for (const id of m.pending) ids = withMember(ids, id, this.identityHas(a, id));
      m.res = ids as number[] | null;
      m.pending = null;
    }
    for (const d of m.deps) deps.add(d);
    return m.res;
  }

  src(a: Alias, deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): SrcRes {
    const key = aliasKey(a);
    let m = this.srcMemo.get(key);
    if (!m) {
      const d = new Set<string>();
      const ss: IPSet[] = [];
      const f = { wildcard: false };
      m = { alias: a, res: this.srcUncached(a, d, ss, f), deps: [...d], sets: ss, wildcard: f.wildcard, pending: null };
      this.srcMemo.set(key, m);
    } else if (m.pending) {
      m.res = this.patchSrc(m.res, a, m.pending);
      m.pending = null;
    }
    for (const d of m.deps) deps.add(d);
    for (const s of m.sets) sets.push(s);
    if (m.wildcard) flags.wildcard = true;
    return m.res;
  }

  dst(a: Alias, deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): DstTarget[] {
    const key = aliasKey(a);
    let m = this.dstMemo.get(key);
    if (!m) {
      const d = new Set<string>();
      const ss: IPSet[] = [];
      const f = { wildcard: false };
      m = { alias: a, res: this.dstUncached(a, d, ss, f), deps: [...d], sets: ss, wildcard: f.wildcard, pending: null };
      this.dstMemo.set(key, m);
    } else if (m.pending) {
      m.res = this.patchDst(m.res, a, m.pending);
      m.pending = null;
    }
    for (const d of m.deps) deps.add(d);
    for (const s of m.sets) sets.push(s);
    if (m.wildcard) flags.wildcard = true;
    return m.res;
  }

  /**
   * A user's untagged nodes, ascending (memoised). The object is replaced
   * whenever one of the user's nodes changes (the change's keys name the
   * user), so its identity stands for the nodes and their addresses.
   */
  userOwn(uid: number): OwnNodes {
    let o = this.ownCache.get(uid);
    if (!o) {
      o = { ids: [...(this.model.byUser.get(uid) ?? [])].sort((a, b) => a - b) };
      this.ownCache.set(uid, o);
    }
    return o;
  }

  /** Whether an identity alias (user, group, tag, member, tagged) covers a node now. */
  private identityHas(a: Alias, id: number): boolean {
    const m = this.model;
    const n = m.nodes.get(id);
    if (!n) return false;
    switch (a.kind) {
      case 'user': {
        const uid = m.userIdOf(a.name);
        return uid !== null && !n.tagged && n.userId === uid;
      }
      case 'group':
        if (n.tagged || n.userId === null) return false;
        for (const tok of this.policy.groups.get(a.name) ?? []) if (m.userIdOf(tok) === n.userId) return true;
        return false;
      case 'tag':
        return n.tags.includes(a.name);
      case 'autogroup':
        return a.name === 'member' ? !n.tagged : a.name === 'tagged' ? n.tagged : false;
      default:
        return false;
    }
  }

  /** Whether a node is in `nodesMatching(set, withExits)` now. */
  private addrHas(set: IPSet, id: number, withExits: boolean): boolean {
    const n = this.model.nodes.get(id);
    if (!n) return false;
    if (n.ipSet.overlaps(set)) return true;
    if (n.routes.length > 0 && n.routeSet.overlaps(set)) return true;
    return withExits && n.exitRoutes.length > 0 && set.overlaps(INTERNET);
  }

  private patchSrc(res: SrcRes, a: Alias, pending: ReadonlySet<number>): SrcRes {
    const ids = this.identityNodes(a, new Set());
    if (ids) {
      return this.patchIdentitySrc(res, ids, pending);
    }
    let nodes = res.nodes;
    for (const id of pending) nodes = withMember(nodes, id, this.addrHas(res.set, id, false));
    return nodes === res.nodes ? res : { ...res, nodes };
  }

  private identitySrc(ids: readonly number[]): SrcRes {
    const strings: string[] = [];
    const owners: number[] = [];
    const nodes = this.model.nodes;
    for (let i = 0; i < ids.length; i++) {
      const ips = nodes.get(ids[i]!)!.ips;
      for (let k = 0; k < ips.length; k++) {
        strings.push(ips[k]!);
        owners.push(ids[i]!);
      }
    }
    return { strings, nodes: ids, set: IPSet.EMPTY, identity: ids, owners };
  }

  /**
   * An identity source after a change: its nodes went from res.nodes to ids,
   * and `pending` nodes may have new addresses. Splices the changed nodes'
   * addresses; the same object when nothing changed.
   */
  private patchIdentitySrc(res: SrcRes, ids: readonly number[], pending: ReadonlySet<number>): SrcRes {
    const owners0 = res.owners;
    if (!owners0) return this.identitySrc(ids);
    const changed = new Set<number>();
    diffSorted(res.nodes, ids, (id) => changed.add(id));
    for (const id of pending) {
      if (changed.has(id) || ids[lowerBound(ids, id)] !== id) continue;
      // Still a member: did its addresses change?
      const lo = lowerBound(owners0, id);
      let hi = lo;
      while (hi < owners0.length && owners0[hi] === id) hi++;
      const ips = this.model.nodes.get(id)!.ips;
      if (hi - lo !== ips.length || ips.some((ip, k) => res.strings[lo + k] !== ip)) changed.add(id);
    }
    if (changed.size === 0) return ids === res.nodes ? res : { ...res, nodes: ids, identity: ids };
    if (changed.size > 64) return this.identitySrc(ids);
    const strings = res.strings.slice();
    const owners = owners0.slice();
    for (const id of changed) {
      const lo = lowerBound(owners, id);
      let hi = lo;
      while (hi < owners.length && owners[hi] === id) hi++;
      const n = this.model.nodes.get(id);
      const ips = n && ids[lowerBound(ids, id)] === id ? n.ips : [];
      strings.splice(lo, hi - lo, ...ips);
      owners.splice(lo, hi - lo, ...ips.map(() => id));
    }
    return { strings, nodes: ids, set: IPSet.EMPTY, identity: ids, owners };
  }

  private patchDst(res: DstTarget[], a: Alias, pending: ReadonlySet<number>): DstTarget[] {
    const ids = this.identityNodes(a, new Set());
    if (ids) {
      // One or two targets per node, in node order: rebuild only around the changed nodes.
      let out: DstTarget[] | null = null;
      for (const id of pending) {
        const cur: DstTarget[] = out ?? res;
        let lo = 0;
        let hi = cur.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (cur[mid]!.receivers[0]! < id) lo = mid + 1;
          else hi = mid;
        }
        let end = lo;
        while (end < cur.length && cur[end]!.receivers[0] === id) end++;
        const k = lowerBound(ids, id);
        const add = ids[k] === id ? this.nodeTargets(id) : [];
        if (end === lo && add.length === 0) continue;
        out ??= res.slice();
        out.splice(lo, end - lo, ...add);
      }
      return out ?? res;
    }
    let out: DstTarget[] | null = null;
    res.forEach((t, k) => {
      let receivers = t.receivers;
      for (const id of pending) receivers = withMember(receivers, id, this.addrHas(t.set, id, true));
      if (receivers !== t.receivers) (out ??= res.slice())[k] = { ...t, receivers };
    });
    return out ?? res;
  }

  /** Addresses of nodes, in order. */
  ipsOf(ids: readonly number[]): string[] {
    return this.nodeIps(ids);
  }

  /** Identity targets (one per address) of nodes, in order. */
  targetsOf(ids: readonly number[]): DstTarget[] {
    const out: DstTarget[] = [];
    for (const id of ids) for (const t of this.nodeTargets(id)) out.push(t);
    return out;
  }

  private nodeTargets(id: number): DstTarget[] {
    const n = this.model.nodes.get(id)!;
    const recv = [id];
    return n.ips.map((ip, k) => ({ ip, set: n.ipSets[k]!, receivers: recv, identity: true }));
  }

  private identityNodesUncached(a: Alias, deps: Set<string>): number[] | null {
    const m = this.model;
    switch (a.kind) {
      case 'user': {
        deps.add('users');
        const uid = m.userIdOf(a.name);
        if (uid === null) return [];
        deps.add(`user:${uid}`);
        return [...(m.byUser.get(uid) ?? [])].sort((x, y) => x - y);
      }
      case 'group': {
        deps.add('users');
        const lists: number[][] = [];
        for (const tok of this.policy.groups.get(a.name) ?? []) {
          const uid = m.userIdOf(tok);
          if (uid === null) continue;
          deps.add(`user:${uid}`);
          lists.push([...(m.byUser.get(uid) ?? [])]);
        }
        return lists.length === 1 ? sortUnique(lists[0]!) : mergeSorted(lists);
      }
      case 'tag':
        deps.add(a.name);
        return [...(m.byTag.get(a.name) ?? [])].sort((x, y) => x - y);
      case 'autogroup':
        if (a.name === 'member') {
          deps.add('member');
          return [...m.members].sort((x, y) => x - y);
        }
        if (a.name === 'tagged') {
          deps.add('tagged');
          return [...m.taggedNodes].sort((x, y) => x - y);
        }
        return null;
      default:
        return null;
    }
  }

  private nodeIps(ids: readonly number[]): string[] {
    const out: string[] = [];
    const nodes = this.model.nodes;
    for (let i = 0; i < ids.length; i++) {
      const ips = nodes.get(ids[i]!)!.ips;
      for (let k = 0; k < ips.length; k++) out.push(ips[k]!);
    }
    return out;
  }

  /** The tenant's address space: its pool plus every served route. */
  wildcardSet(): IPSet {
    if (!this.wildcard) {
      const sets = [this.model.pool];
      for (const id of this.model.routers) sets.push(this.model.nodes.get(id)!.routeSet);
      this.wildcard = IPSet.unionAll(sets);
    }
    return this.wildcard;
  }

  private srcUncached(a: Alias, deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): SrcRes {
    const ids = this.identityNodes(a, deps);
    if (ids) return this.identitySrc(ids);
    let set: IPSet;
    let strings: string[];
    switch (a.kind) {
      case 'wildcard':
        flags.wildcard = true;
        set = this.wildcardSet();
        strings = [...this.model.poolStrings, ...this.model.allRoutes()];
        break;
      case 'autogroup': // danger-all (self/internet/nonroot are rejected by validation)
        set = WILDCARD_ALL;
        strings = ['*'];
        break;
      case 'host': {
        const h = this.policy.hosts.get(a.name)!;
        set = h.set;
        strings = h.set.toStrings();
        break;
      }
      case 'prefix':
        set = IPSet.fromPrefix(a.prefix);
        strings = set.toStrings();
        break;
      default:
        set = IPSet.EMPTY;
        strings = [];
    }
    sets.push(set);
    return { strings, nodes: this.model.nodesMatching(set, false), set, identity: NONE };
  }

  private dstUncached(a: Alias, deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): DstTarget[] {
    const ids = this.identityNodes(a, deps);
    if (ids) {
      const out: DstTarget[] = [];
      for (const id of ids) for (const t of this.nodeTargets(id)) out.push(t);
      return out;
    }
    const targets = (set: IPSet, texts: string[]): DstTarget[] => {
      sets.push(set);
      return texts.map((ip) => {
        const s = IPSet.parse(ip)!;
        return { ip, set: s, receivers: this.model.nodesMatching(s, true), identity: false };
      });
    };
    switch (a.kind) {
      case 'wildcard':
        // One "*" target (any address: the tenant's nodes, its routes and, through exit nodes, the internet), received by every node.
        flags.wildcard = true;
        sets.push(IPSet.ALL);
        return [{ ip: '*', set: IPSet.ALL, receivers: this.model.nodesMatching(IPSet.ALL, true), identity: false }];
      case 'autogroup':
        if (a.name === 'internet') {
          sets.push(INTERNET);
          return INTERNET.ranges().map((r) => {
            const s = IPSet.fromRange(r.family, r.lo, r.hi);
            return { ip: formatRangeAsRange(r), set: s, receivers: this.model.nodesMatching(s, true), identity: false };
          });
        }
        return [];
      case 'host': {
        const h = this.policy.hosts.get(a.name)!;
        return targets(h.set, h.set.toStrings());
      }
      case 'prefix': {
        const s = IPSet.fromPrefix(a.prefix);
        return targets(s, s.toStrings());
      }
      default:
        return [];
    }
  }
}
