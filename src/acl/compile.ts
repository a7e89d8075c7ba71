// Policy + tenant → per-node packet filters, peers, per-viewer routes, primary
// routes and SSH policies.
//
// Rules are compiled in "units" (one per grant / ACL entry; units.ts), each a
// list of unit-rules: sources (SrcIPs strings, the nodes they match) and
// destination entries (IP text, ports, the nodes that receive them).
// Unit-rules with the same SrcIPs+IPProto merge into one FilterRule at the
// first one's position. Per-node results are derived from node→unit-rule
// indexes kept here.
//
// Incremental updates are proportional to the change: alias resolutions are
// memoised and patched for the changed nodes (resolve.ts); a dirty unit is
// recompiled reusing every unit-rule whose inputs are the same objects as
// before, so unchanged rules stay identical and cost nothing to diff; the
// indexes, merge order, shared peer unions and SSH rules are patched from the
// differences; only the nodes those differences touch lose their cached
// result, and a rebuilt result reuses every part (FilterRules, peer list,
// route map) whose inputs are unchanged. settle() then reports exactly the
// nodes whose results differ.
//
// Results share structure (SrcIPs arrays, DstPorts entries and ports, peer
// vectors, route maps, SSH rules): treat every returned object as read-only.
// A node's peers is a PeerList (peerlist.ts): a view of its signature's
// shared union minus the node itself, so a join writes each touched union
// once (usually as an append in place), never one copy per node.
import { IPSet } from '../net/ipset.js';
import {
  type Delta,
  NONE,
  NO_DELTA,
  addTo,
  ascending,
  diffSorted,
  isNoDelta,
  membership,
  mergeSorted,
  sameIds,
  sameList,
  symDiff,
} from './idlists.js';
import { INTERNET, type Model, type NodeInfo, sortUnique } from './model.js';
import { PeerList } from './peerlist.js';
import { type Change, Resolver } from './resolve.js';
import { prefixSet, sortRoutes } from './routes.js';
import { getOwn, setOwn } from './hujson.js';
import { type SshUnit, compileSsh, sshDiff, sshRules } from './ssh.js';
import type { FilterRule, NetPortRange, Policy, SSHPolicy, SSHRule } from './types.js';
import {
  type Template,
  type URule,
  type Unit,
  SelfSlots,
  capDsts,
  compileUnit,
  entryHits,
  formatPrefixText,
  recvPos,
  ruleView,
  sameHits,
  templates,
} from './units.js';

export type { Entry, URule, Unit } from './units.js';

// ---- per-node results ------------------------------------------------------

/** One node's compiled view. Shares structure with other results: read-only. */
export interface NodeResult {
  packetFilter: FilterRule[];
  /** Peer node ids, ascending: a read-only view shared with other results (peerlist.ts). */
  peers: PeerList;
  /** peer id → routes (beyond its own addresses) this node puts in that peer's AllowedIPs. */
  peerAllowedRoutes: Map<number, string[]>;
  primaryRoutes: string[];
  sshPolicy: SSHPolicy;
  /** nodeAttrs capabilities (attr names and app capabilities). */
  capabilities: Record<string, unknown[]>;
}

/**
 * Peers and routes shared by every node with the same rule memberships
 * (the same unit-rule ids received and sourced). Kept across updates: a
 * change to one of its rules patches the union (additions) or drops it.
 */
interface SigData {
  readonly hash: string;
  readonly recv: readonly number[];
  readonly src: readonly number[];
  /**
   * Ascending union of the rules' peers (may include the nodes themselves).
   * Never mutated: replaced (PeerList.merged may extend the vector's buffer
   * in place, past the end of every existing view). Each node's peers is a
   * view of it without the node itself, so the union is never copied per node.
   */
  union?: PeerList;
  /** Ids to add to `union` at the end of the current update. */
  pending?: number[];
  par?: Map<number, string[]>;
  /** Nodes whose cached result was built from this. */
  users: number;
  dead?: boolean;
}

/** The FilterRule of one merge group (rules[i..j), one merge key, in seq order) for a node. */
function buildGroup(rules: readonly URule[], i: number, j: number, id: number): FilterRule {
  const first = rules[i]!;
  if (first.kind === 'net') {
    let dst: NetPortRange[];
    if (j === i + 1) dst = ruleView(first).nprs[recvPos(first, id)] ?? [];
    else {
      let size = 0;
      for (let k = i; k < j; k++) size += ruleView(rules[k]!).nprs[recvPos(rules[k]!, id)]?.length ?? 0;
      dst = new Array<NetPortRange>(size);
      let w = 0;
      for (let k = i; k < j; k++) {
        const r = rules[k]!;
        const l = ruleView(r).nprs[recvPos(r, id)];
        if (l) for (let k2 = 0; k2 < l.length; k2++) dst[w++] = l[k2]!;
      }
    }
    return first.proto
      ? { SrcIPs: first.srcIPs as string[], DstPorts: dst, IPProto: first.proto }
      : { SrcIPs: first.srcIPs as string[], DstPorts: dst };
  }
  let dsts: string[];
  if (j === i + 1) dsts = capDsts(first, id);
  else {
    const all: string[] = [];
    for (let k = i; k < j; k++) all.push(...capDsts(rules[k]!, id));
    dsts = [...new Set(all)];
  }
  return { SrcIPs: first.srcIPs as string[], CapGrant: [{ Dsts: dsts, CapMap: first.capMap! }] };
}

/** What a node's filter was built from: per slot of its received-rule list, the rule and its merge position; per group start, its FilterRule. */
interface FilterSnap {
  readonly rules: URule[];
  readonly firsts: number[];
  readonly frs: Array<FilterRule | null>;
}

/** A short hash key of two rule-id lists (verified against the stored lists on use). */
function idsHash(a: readonly number[], b: readonly number[]): string {
  let h1 = 0x811c9dc5 ^ a.length;
  let h2 = 0x5bd1e995 ^ b.length;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    h1 = Math.imul(h1 ^ x, 0x01000193);
    h2 = Math.imul(h2 ^ x, 0x5bd1e995);
    h2 ^= h2 >>> 13;
  }
  h1 = Math.imul(h1 ^ 0x2f, 0x01000193);
  h2 = Math.imul(h2 ^ 0x2f, 0x5bd1e995);
  for (let i = 0; i < b.length; i++) {
    const x = b[i]!;
    h1 = Math.imul(h1 ^ x, 0x01000193);
    h2 = Math.imul(h2 ^ x, 0x5bd1e995);
    h2 ^= h2 >>> 13;
  }
  return `${(h1 >>> 0).toString(36)}.${(h2 >>> 0).toString(36)}`;
}

export class Engine {
  resolver: Resolver;
  units: Unit[] = [];
  ssh: SshUnit[] = [];
  private tpls: Template[] = [];
  private slots = new SelfSlots();
  /** mergeKey → first sequence number, and the ids of the unit-rules using it. */
  mergeOrder = new Map<string, number>();
  private mergeIds = new Map<string, Set<number>>();
  /** Unit-rules by id, and each one's merge position (its merge key's first seq). */
  private byId: Array<URule | undefined> = [];
  private seqOf: number[] = [];
  private firstOf: number[] = [];
  /**
   * node id → ids of the unit-rules it receives (in filter order: merge
   * position, then seq) / is a source of (in seq order).
   */
  private recvIndex = new Map<number, number[]>();
  private srcIndex = new Map<number, number[]>();
  private cache = new Map<number, NodeResult>();
  private snaps = new Map<number, FilterSnap>();
  /** Nodes whose received / sourced rule lists changed since their result was last built. */
  private listsTouched = new Set<number>();
  /** node id → its result before the first change since the last settle(). */
  private prevResult = new Map<number, NodeResult>();
  /** node id → what its last result was built from (kept when the cached result is dropped). */
  private built = new Map<number, { d: SigData; union: PeerList | undefined; par: Map<number, string[]> | undefined; result: NodeResult }>();
  private byDep = new Map<string, Set<number>>();
  private addrUnits = new Set<number>();
  /** Nodes with the same rule memberships share one peer/route computation. */
  private sigCache = new Map<string, SigData[]>();
  /** rule id → sig data whose received / sourced rules include it. */
  private sigsByRecv = new Map<number, Set<SigData>>();
  private sigsBySrc = new Map<number, Set<SigData>>();
  /** node id → the sig data its cached result was built from. */
  private nodeSig = new Map<number, SigData>();
  /** Per update: sig data with pending additions, and list differences by array pair. */
  private touched = new Set<SigData>();
  private deltas = new Map<readonly number[], Map<readonly number[], Delta>>();
  private stamp = new Uint32Array(0);
  private gen = 0;

  constructor(
    public policy: Policy,
    readonly model: Model,
  ) {
    this.resolver = new Resolver(policy, model);
    this.rebuild();
  }

  rebuild(): void {
    this.resolver = new Resolver(this.policy, this.model);
    this.slots = new SelfSlots();
    this.tpls = templates(this.policy);
    this.units = this.tpls.map((t, i) => compileUnit(this.resolver, t, i, this.slots));
    this.recvIndex.clear();
    this.srcIndex.clear();
    this.byId = [];
    this.seqOf = [];
    this.firstOf = [];
    this.byDep.clear();
    this.addrUnits.clear();
    this.mergeOrder.clear();
    this.mergeIds.clear();
    const recvIndex = this.recvIndex;
    const srcIndex = this.srcIndex;
    for (let i = 0; i < this.units.length; i++) {
      const u = this.units[i]!;
      for (let k = 0; k < u.rules.length; k++) {
        const r = u.rules[k]!;
        this.byId[r.id] = r;
        this.seqOf[r.id] = r.seq;
        this.slots.interner.retain(r.srcIPs);
        const recv = r.allReceivers;
        for (let j = 0; j < recv.length; j++) {
          const l = recvIndex.get(recv[j]!);
          if (l) l.push(r.id);
          else recvIndex.set(recv[j]!, [r.id]);
        }
        const src = r.srcNodes;
        for (let j = 0; j < src.length; j++) {
          const l = srcIndex.get(src[j]!);
          if (l) l.push(r.id);
          else srcIndex.set(src[j]!, [r.id]);
        }
        this.mergeAdd(r);
      }
      this.registerDeps(u, i);
    }
    for (const u of this.units) for (const r of u.rules) this.firstOf[r.id] = this.mergeOrder.get(r.mergeKey)!;
    const sortAll = (idx: Map<number, number[]>, before: (a: number, b: number) => number): void => {
      for (const l of idx.values()) {
        for (let i = 1; i < l.length; i++) {
          if (before(l[i - 1]!, l[i]!) > 0) {
            l.sort(before);
            break;
          }
        }
      }
    };
    sortAll(this.recvIndex, this.filterOrder);
    sortAll(this.srcIndex, this.bySeq);
    this.slots.interner.sweep();
    this.ssh = compileSsh(this.resolver);
    this.cache.clear();
    this.listsTouched.clear();
    this.prevResult.clear();
    this.built.clear();
    this.snaps.clear();
    this.sigCache.clear();
    this.sigsByRecv.clear();
    this.sigsBySrc.clear();
    this.nodeSig.clear();
    this.haCache.clear();
  }

  private registerDeps(u: Unit, i: number): void {
    for (const d of u.deps) {
      let s = this.byDep.get(d);
      if (!s) this.byDep.set(d, (s = new Set()));
      s.add(i);
    }
    if (!u.sets.isEmpty() || u.usesWildcard) this.addrUnits.add(i);
  }

  private unregisterDeps(u: Unit, i: number): void {
    for (const d of u.deps) this.byDep.get(d)?.delete(i);
    this.addrUnits.delete(i);
  }

  /** Registers a unit-rule under its merge key; returns true when the key's first seq moved. */
  private mergeAdd(r: URule): boolean {
    let s = this.mergeIds.get(r.mergeKey);
    if (!s) this.mergeIds.set(r.mergeKey, (s = new Set()));
    s.add(r.id);
    const cur = this.mergeOrder.get(r.mergeKey);
    if (cur === undefined || r.seq < cur) {
      this.mergeOrder.set(r.mergeKey, r.seq);
      return cur !== undefined;
    }
    return false;
  }

  /** Unregisters a unit-rule; returns true when its key's first seq moved (and the key still exists). */
  private mergeRemove(r: URule): boolean {
    const s = this.mergeIds.get(r.mergeKey);
    if (!s) return false;
    s.delete(r.id);
    if (s.size === 0) {
      this.mergeIds.delete(r.mergeKey);
      this.mergeOrder.delete(r.mergeKey);
      return false;
    }
    if (this.mergeOrder.get(r.mergeKey) !== r.seq) return false;
    let min = Infinity;
    for (const x of s) min = Math.min(min, this.byId[x]!.seq);
    this.mergeOrder.set(r.mergeKey, min);
    return true;
  }

  /** Filter order of rule ids: merge position, then seq. */
  private readonly filterOrder = (a: number, b: number): number =>
    this.firstOf[a]! - this.firstOf[b]! || this.seqOf[a]! - this.seqOf[b]!;

  private readonly bySeq = (a: number, b: number): number => this.seqOf[a]! - this.seqOf[b]!;

  /** Inserts / removes a rule id in a node's list of received rules, keeping filter order. */
  private indexRecv(node: number, rid: number, add: boolean): void {
    this.listsTouched.add(node);
    const l = this.recvIndex.get(node);
    if (!l) {
      if (add) this.recvIndex.set(node, [rid]);
      return;
    }
    const firstOf = this.firstOf;
    const seqOf = this.seqOf;
    const f = firstOf[rid]!;
    const q = seqOf[rid]!;
    let lo = 0;
    let hi = l.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const x = l[mid]!;
      const fx = firstOf[x]!;
      if (fx < f || (fx === f && seqOf[x]! < q)) lo = mid + 1;
      else hi = mid;
    }
    if (add) {
      if (l[lo] !== rid) l.splice(lo, 0, rid);
    } else if (l[lo] === rid) {
      l.splice(lo, 1);
      if (l.length === 0) this.recvIndex.delete(node);
    }
  }

  /** Inserts / removes a rule id in a node's list of sourced rules, keeping seq order. */
  private indexSrc(node: number, rid: number, add: boolean): void {
    this.listsTouched.add(node);
    const l = this.srcIndex.get(node);
    if (!l) {
      if (add) this.srcIndex.set(node, [rid]);
      return;
    }
    const seqOf = this.seqOf;
    const q = seqOf[rid]!;
    let lo = 0;
    let hi = l.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (seqOf[l[mid]!]! < q) lo = mid + 1;
      else hi = mid;
    }
    if (add) {
      if (l[lo] !== rid) l.splice(lo, 0, rid);
    } else if (l[lo] === rid) {
      l.splice(lo, 1);
      if (l.length === 0) this.srcIndex.delete(node);
    }
  }

  /** Moves a rule to a new merge position in every receiver's list. */
  private reposition(r: URule, first: number): void {
    if (this.firstOf[r.id] === first) return;
    for (const x of r.allReceivers) this.indexRecv(x, r.id, false);
    this.firstOf[r.id] = first;
    for (const x of r.allReceivers) this.indexRecv(x, r.id, true);
  }

  /** All unit-rules in policy order (global, unreduced). */
  allRules(): URule[] {
    const out: URule[] = [];
    for (const u of this.units) for (const r of u.rules) out.push(r);
    return out;
  }

  /** The global (unreduced) filter: merged rules in order. */
  globalFilter(): FilterRule[] {
    const groups = new Map<string, URule[]>();
    for (const r of this.allRules()) {
      let g = groups.get(r.mergeKey);
      if (!g) groups.set(r.mergeKey, (g = []));
      g.push(r);
    }
    const keys = [...groups.keys()].sort((a, b) => this.mergeOrder.get(a)! - this.mergeOrder.get(b)!);
    const out: FilterRule[] = [];
    for (const k of keys) {
      const g = groups.get(k)!.sort((a, b) => a.seq - b.seq);
      const first = g[0]!;
      if (first.kind === 'net') {
        let dst: NetPortRange[];
        if (g.length === 1) dst = ruleView(first).all;
        else {
          dst = [];
          for (let gi = 0; gi < g.length; gi++) {
            const all = ruleView(g[gi]!).all;
            for (let k = 0; k < all.length; k++) dst.push(all[k]!);
          }
        }
        out.push(
          first.proto
            ? { SrcIPs: first.srcIPs as string[], DstPorts: dst, IPProto: first.proto }
            : { SrcIPs: first.srcIPs as string[], DstPorts: dst },
        );
      } else {
        const dsts: string[] = [];
        for (const r of g) for (const e of r.entries) for (const p of e.set.prefixes()) dsts.push(formatPrefixText(p));
        out.push({ SrcIPs: first.srcIPs as string[], CapGrant: [{ Dsts: [...new Set(dsts)], CapMap: first.capMap! }] });
      }
    }
    return out;
  }

  /**
   * The node's reduced filter: the merged rules it receives, in global merge
   * order. Groups whose rules and merge positions are the same as at the
   * node's previous build keep their FilterRule objects.
   */
  packetFilter(id: number): FilterRule[] {
    const ids = this.recvIndex.get(id);
    if (!ids || ids.length === 0) {
      this.snaps.delete(id);
      return [];
    }
    const n = ids.length;
    const byId = this.byId;
    const firstOf = this.firstOf;
    const old = this.snaps.get(id);
    // Same length: compare slot by slot and update the snapshot in place; otherwise start a new one.
    const aligned = old !== undefined && old.rules.length === n;
    const snap: FilterSnap = aligned ? old : { rules: new Array<URule>(n), firsts: new Array<number>(n), frs: new Array<FilterRule | null>(n) };
    if (this.match.length < n) this.match = new Uint8Array(Math.max(n, this.match.length * 2));
    const match = this.match;
    // Per slot: bit 1 = same rule object, bit 2 = same merge position as at the previous build.
    let all = aligned;
    for (let k = 0; k < n; k++) {
      const r = byId[ids[k]!]!;
      const f = firstOf[ids[k]!]!;
      const m = aligned ? (snap.rules[k] === r ? 1 : 0) | (snap.firsts[k] === f ? 2 : 0) : 0;
      match[k] = m;
      if (m !== 3) {
        all = false;
        snap.rules[k] = r;
        snap.firsts[k] = f;
      }
    }
    const out: FilterRule[] = [];
    if (this.seqScratch.length < n) this.seqScratch = new Float64Array(Math.max(n, this.seqScratch.length * 2));
    const firstSeq = this.seqScratch;
    let groups = 0;
    let unsorted = false;
    // The list is in filter order: consecutive ids with one merge position form a group.
    let i = 0;
    while (i < n) {
      const f = snap.firsts[i]!;
      let j = i + 1;
      // Reusable when the group has the same rules and the same bounds as before.
      let same = all || (match[i] === 3 && (i === 0 || (match[i - 1]! & 2) !== 0));
      while (j < n && snap.firsts[j] === f) {
        if (match[j] !== 3) same = false;
        j++;
      }
      if (j < n && (match[j]! & 2) === 0) same = false;
      let fr: FilterRule | null;
      if (same) fr = snap.frs[i]!;
      else {
        fr = buildGroup(snap.rules, i, j, id);
        if (fr.DstPorts ? fr.DstPorts.length === 0 : fr.CapGrant![0]!.Dsts.length === 0) fr = null;
        snap.frs[i] = fr;
      }
      if (fr) {
        out.push(fr);
        const q = snap.rules[i]!.seq;
        if (groups > 0 && firstSeq[groups - 1]! > q) unsorted = true;
        firstSeq[groups++] = q;
      }
      i = j;
    }
    if (!aligned) this.snaps.set(id, snap);
    // Merging is decided per node: a group stands at the first of its rules this node
    // receives, which is later than the merge key's global first rule when the node
    // does not receive that one.
    if (!unsorted) return out;
    if (groups <= 32) {
      // Usually a few groups: insertion sort in place, on the rules and their seqs together.
      for (let k = 1; k < groups; k++) {
        const q = firstSeq[k]!;
        const fr = out[k]!;
        let j = k - 1;
        while (j >= 0 && firstSeq[j]! > q) {
          firstSeq[j + 1] = firstSeq[j]!;
          out[j + 1] = out[j]!;
          j--;
        }
        firstSeq[j + 1] = q;
        out[j + 1] = fr;
      }
      return out;
    }
    const order = out.map((_, x) => x).sort((a, b) => firstSeq[a]! - firstSeq[b]!);
    return order.map((x) => out[x]!);
  }

  private match = new Uint8Array(64);
  private seqScratch = new Float64Array(64);

  private sigData(id: number): SigData {
    const recv = this.recvIndex.get(id) ?? NONE;
    const src = this.srcIndex.get(id) ?? NONE;
    const h = idsHash(recv, src);
    let bucket = this.sigCache.get(h);
    if (bucket) {
      for (const d of bucket) if (sameIds(d.recv, recv) && sameIds(d.src, src)) return d;
    } else this.sigCache.set(h, (bucket = []));
    const d: SigData = { hash: h, recv: recv.slice(), src: src.slice(), users: 0 };
    bucket.push(d);
    for (let i = 0; i < d.recv.length; i++) addTo(this.sigsByRecv, d.recv[i]!, d);
    for (let i = 0; i < d.src.length; i++) addTo(this.sigsBySrc, d.src[i]!, d);
    return d;
  }

  /** Forgets a sig data (a rule of it is gone, or no node uses it any more). */
  private dropSig(d: SigData): void {
    if (d.dead) return;
    d.dead = true;
    const bucket = this.sigCache.get(d.hash);
    if (bucket) {
      const k = bucket.indexOf(d);
      if (k >= 0) bucket.splice(k, 1);
      if (bucket.length === 0) this.sigCache.delete(d.hash);
    }
    for (const q of d.recv) this.sigsByRecv.get(q)?.delete(d);
    for (const q of d.src) this.sigsBySrc.get(q)?.delete(d);
  }

  /** Records which sig data a node's cached result uses; unused ones are dropped. */
  private useSig(id: number, d: SigData | undefined): void {
    const prev = this.nodeSig.get(id);
    if (prev === d) return;
    if (prev && --prev.users === 0) this.dropSig(prev);
    if (d) {
      d.users++;
      this.nodeSig.set(id, d);
    } else this.nodeSig.delete(id);
  }

  /** A rule's peer list on one side grew or shrank: patch or drop the unions that use it. */
  private patchSigs(sigs: Set<SigData> | undefined, delta: Delta): void {
    if (!sigs || isNoDelta(delta)) return;
    for (const d of sigs) {
      if (!d.union) continue;
      if (delta.removed.length > 0) {
        d.union = undefined;
        d.pending = undefined;
        this.touched.delete(d);
      } else {
        if (d.pending) for (const x of delta.added) d.pending.push(x);
        else d.pending = delta.added.slice();
        this.touched.add(d);
      }
    }
  }

  private dropPar(sigs: Set<SigData> | undefined): void {
    if (sigs) for (const d of sigs) d.par = undefined;
  }

  /** Ascending union of ascending lists, as a new vector. */
  private unionSorted(lists: ReadonlyArray<readonly number[]>): PeerList {
    let maxId = 0;
    let minId = Infinity;
    for (let i = 0; i < lists.length; i++) {
      const l = lists[i]!;
      if (l.length === 0) continue;
      if (l[l.length - 1]! > maxId) maxId = l[l.length - 1]!;
      if (l[0]! < minId) minId = l[0]!;
    }
    if (minId === Infinity) return PeerList.EMPTY;
    if (lists.length === 1) return PeerList.wrap(PeerList.vec(lists[0]!));
    if (maxId > 50_000_000 || minId < 0 || !Number.isInteger(minId) || !Number.isInteger(maxId)) return PeerList.wrap(PeerList.vec(mergeSorted(lists)));
    if (this.stamp.length <= maxId) this.stamp = new Uint32Array(Math.max(maxId + 1, this.stamp.length * 2));
    const st = this.stamp;
    if (this.gen >= 0xfffffffd) {
      st.fill(0);
      this.gen = 0;
    }
    const g = ++this.gen;
    let count = 0;
    for (let i = 0; i < lists.length; i++) {
      const l = lists[i]!;
      for (let k = 0; k < l.length; k++) {
        const x = l[k]!;
        if (st[x] !== g) {
          st[x] = g;
          count++;
        }
      }
    }
    const out = PeerList.alloc(count, minId, maxId);
    let w = 0;
    if (count > (maxId - minId) >> 4) {
      // Dense: read the marks in order.
      for (let x = minId; x <= maxId; x++) if (st[x] === g) out[w++] = x;
      return PeerList.wrap(out);
    }
    const g2 = ++this.gen;
    for (let i = 0; i < lists.length; i++) {
      const l = lists[i]!;
      for (let k = 0; k < l.length; k++) {
        const x = l[k]!;
        if (st[x] !== g2) {
          st[x] = g2;
          out[w++] = x;
        }
      }
    }
    return PeerList.wrap(out.sort());
  }

  peers(id: number): PeerList {
    return this.peersOf(this.sigData(id), id);
  }

  /** The node's peers: its sig's union without itself (the shared union when it is not in it; a view of it otherwise). */
  private peersOf(d: SigData, id: number): PeerList {
    if (!d.union) {
      const lists: Array<readonly number[]> = [];
      for (let i = 0; i < d.recv.length; i++) {
        const l = this.byId[d.recv[i]!]!.srcNodes;
        if (l.length > 0) lists.push(l);
      }
      for (let i = 0; i < d.src.length; i++) {
        const l = this.byId[d.src[i]!]!.allReceivers;
        if (l.length > 0) lists.push(l);
      }
      d.union = this.unionSorted(lists);
    }
    return d.union.without(id);
  }

  peerAllowedRoutes(id: number): Map<number, string[]> {
    return this.parOf(this.sigData(id), id);
  }

  private parOf(d: SigData, id: number): Map<number, string[]> {
    if (!d.par) {
      const acc = new Map<number, Set<string>>();
      const add = (p: number, route: string): void => {
        let s = acc.get(p);
        if (!s) acc.set(p, (s = new Set()));
        s.add(route);
      };
      for (let i = 0; i < d.src.length; i++) {
        const hits = entryHits(this.byId[d.src[i]!]!);
        for (let k = 0; k < hits.length; k++) add(hits[k]![0], hits[k]![1]);
      }
      for (let i = 0; i < d.recv.length; i++) {
        const hits = this.byId[d.recv[i]!]!.srcRouteHits;
        for (let k = 0; k < hits.length; k++) add(hits[k]![0], hits[k]![1]);
      }
      // One prefix through two peers (a via router and the HA primary): the HA primary wins.
      const primaries = this.model.primaries;
      for (const [p, routes] of acc) {
        for (const r of routes) {
          const owner = primaries.get(r);
          if (owner !== undefined && owner !== p && acc.get(owner)?.has(r)) routes.delete(r);
        }
      }
      const all = new Map<number, string[]>();
      for (const p of [...acc.keys()].sort(ascending)) if (acc.get(p)!.size > 0) all.set(p, sortRoutes(acc.get(p)!));
      d.par = all;
    }
    if (!d.par.has(id)) return d.par;
    const out = new Map<number, string[]>();
    for (const [p, routes] of d.par) if (p !== id) out.set(p, routes);
    return out;
  }

  /**
   * A router serving a prefix of which another node is the HA primary sees
   * that prefix on the primary (when it is a peer), whatever the policy says
   * about the router itself, as in Tailscale. A new map only when it adds something.
   */
  private haView(id: number, d: SigData, peers: PeerList): Map<number, string[]> {
    const n = this.model.nodes.get(id)!;
    const primaries = this.model.primaries;
    if (d.par === undefined) this.parOf(d, id);
    const shared = d.par!;
    // What the view adds: the router's prefixes whose primary is another node, a peer, not already showing it.
    let key = '';
    for (const r of n.routeStrs) {
      const p = primaries.get(r);
      if (p === undefined || p === id || !peers.has(p) || shared.get(p)?.includes(r)) continue;
      key += `${p} ${r},`;
    }
    const c = this.haCache.get(id);
    if (c && c.node === n && c.par === shared && c.primaries === primaries && c.key === key) return c.out;
    const par = this.parOf(d, id);
    const out = key === '' ? par : this.haViewOf(n, peers, par);
    this.haCache.set(id, { node: n, par: shared, primaries, key, out });
    return out;
  }

  /** node id → its last haView and what it was computed from (compared by identity, and the additions). */
  private haCache = new Map<
    number,
    { node: NodeInfo; par: Map<number, string[]>; primaries: ReadonlyMap<string, number>; key: string; out: Map<number, string[]> }
  >();

  private haViewOf(n: NodeInfo, peers: PeerList, par: Map<number, string[]>): Map<number, string[]> {
    const id = n.id;
    let add: Map<number, string[]> | null = null;
    for (const r of n.routeStrs) {
      const p = this.model.primaries.get(r);
      if (p === undefined || p === id || !peers.has(p) || par.get(p)?.includes(r)) continue;
      add ??= new Map();
      const l = add.get(p);
      if (l) l.push(r);
      else add.set(p, [r]);
    }
    if (!add) return par;
    const out = new Map<number, string[]>();
    for (const p of [...new Set([...par.keys(), ...add.keys()])].sort(ascending)) {
      const extra = add.get(p);
      out.set(p, extra ? sortRoutes([...(par.get(p) ?? []), ...extra]) : par.get(p)!);
    }
    return out;
  }

  sshPolicy(id: number): SSHPolicy {
    const rules: SSHRule[] = [];
    const n = this.model.nodes.get(id);
    if (!n) return { rules };
    for (const u of this.ssh) for (const rule of sshRules(u, n)) rules.push(rule);
    return { rules };
  }

  capabilities(id: number): Record<string, unknown[]> {
    const caps: Record<string, unknown[]> = {};
    const n = this.model.nodes.get(id);
    if (!n) return caps;
    for (const na of this.policy.nodeAttrs) {
      const deps = new Set<string>();
      let hit = false;
      for (const t of na.target) {
        const ids = this.resolver.identityNodes(t.alias, deps);
        if (ids) hit = ids.length > 0 && membership(ids)(id);
        else if (t.alias.kind === 'wildcard') hit = true;
        else if (t.alias.kind === 'prefix') hit = IPSet.fromPrefix(t.alias.prefix).overlaps(n.ipSet);
        else if (t.alias.kind === 'host') hit = this.policy.hosts.get(t.alias.name)!.set.overlaps(n.ipSet);
        if (hit) break;
      }
      if (!hit) continue;
      for (const a of na.attr) if (!Object.hasOwn(caps, a)) setOwn(caps, a, []);
      if (na.app) for (const [k, v] of Object.entries(na.app)) setOwn(caps, k, [...(getOwn(caps, k) ?? []), ...v]);
    }
    return caps;
  }

  result(id: number): NodeResult | undefined {
    if (!this.model.nodes.has(id)) return undefined;
    let r = this.cache.get(id);
    if (!r) {
      const prev = this.built.get(id);
      const d = prev !== undefined && !prev.d.dead && !this.listsTouched.has(id) ? prev.d : this.sigData(id);
      this.listsTouched.delete(id);
      // Peers and routes are functions of the sig data's union / route map: reuse the previous ones while those are the same objects.
      const same = prev !== undefined && prev.d === d;
      const peers = same && d.union !== undefined && prev.union === d.union ? prev.result.peers : this.peersOf(d, id);
      // A router's view also depends on its own routes, its peers and the primaries (haView, cached per router).
      const router = this.model.routers.has(id);
      const par = router
        ? this.haView(id, d, peers)
        : same && d.par !== undefined && prev.par === d.par
          ? prev.result.peerAllowedRoutes
          : this.parOf(d, id);
      this.useSig(id, d);
      r = {
        packetFilter: this.packetFilter(id),
        peers,
        peerAllowedRoutes: par,
        primaryRoutes: this.model.primaryRoutesOf(id),
        sshPolicy: this.sshPolicy(id),
        capabilities: this.capabilities(id),
      };
      this.cache.set(id, r);
      this.built.set(id, { d, union: d.union, par: d.par, result: r });
    }
    return r;
  }

  /**
   * Computes the results of candidate nodes (ascending ids) and returns those
   * that differ from the node's result before the changes since the last
   * settle(); a node whose new result is deep-equal keeps its previous result
   * object. Forgets the previous results.
   */
  settle(ids: readonly number[]): number[] {
    const out: number[] = [];
    for (const id of ids) {
      const cur = this.result(id);
      if (!cur) continue;
      const prev = this.prevResult.get(id);
      if (prev !== undefined && (prev === cur || sameResult(prev, cur))) {
        this.cache.set(id, prev);
        const b = this.built.get(id);
        if (b) b.result = prev;
        continue;
      }
      out.push(id);
    }
    this.prevResult.clear();
    return out;
  }

  /** Forgets the previous results (every node is reported changed anyway). */
  forgetPrevious(): void {
    this.prevResult.clear();
  }

  // ---- incremental ---------------------------------------------------------

  /**
   * Recompiles what a node change can affect and returns the ids whose
   * results may have changed. `before`/`after` are the node's old and new
   * records (either may be absent for joins/removals).
   */
  nodeChanged(before: NodeInfo | undefined, after: NodeInfo | undefined, primariesBefore: ReadonlyMap<string, number>): Set<number> {
    const keys = new Set<string>();
    const addr: IPSet[] = [];
    let routesChanged = false;
    for (const n of [before, after]) {
      if (!n) continue;
      for (const t of n.tags) keys.add(t);
      if (n.tagged) keys.add('tagged');
      else {
        keys.add('member');
        if (n.userId !== null) keys.add(`user:${n.userId}`);
      }
      addr.push(n.ipSet, n.routeSet);
      if (n.routes.length > 0 || n.exitRoutes.length > 0) routesChanged = true;
    }
    // Primary changes affect route hits wherever the prefix is used.
    const changedPrefixes: string[] = [];
    const primariesNow = this.model.primaries;
    for (const p of primariesBefore === primariesNow ? [] : new Set([...primariesBefore.keys(), ...primariesNow.keys()])) {
      if (primariesBefore.get(p) !== primariesNow.get(p)) {
        changedPrefixes.push(p);
        addr.push(prefixSet(p));
        routesChanged = true;
      }
    }
    const exitChange = !!(before?.exitRoutes.length || after?.exitRoutes.length);
    const nodes: number[] = [];
    if (before) nodes.push(before.id);
    if (after && after.id !== before?.id) nodes.push(after.id);
    this.deltas.clear();
    const ch: Change = { nodes, keys, addr: IPSet.unionAll(addr), routesChanged, exitChange, delta: this.deltaOf };
    const routesStable = changedPrefixes.length === 0 && !exitChange;
    this.resolver.invalidate(ch);

    const dirty = new Set<number>();
    for (const k of keys) for (const i of this.byDep.get(k) ?? []) dirty.add(i);
    for (const i of this.addrUnits) {
      if (dirty.has(i)) continue;
      const u = this.units[i]!;
      if ((routesChanged && u.usesWildcard) || u.sets.overlaps(ch.addr) || (exitChange && u.sets.overlaps(INTERNET))) dirty.add(i);
    }
    const affected = new Set<number>();
    if (before) affected.add(before.id);
    if (after) affected.add(after.id);
    const reordered = new Set<string>();
    this.touched.clear();
    for (const i of [...dirty].sort(ascending)) this.recompileUnit(i, affected, reordered, routesStable, ch);
    this.slots.interner.sweep();
    for (const d of this.touched) {
      if (d.union && d.pending) d.union = d.union.merged(sortUnique(d.pending));
      d.pending = undefined;
    }
    this.touched.clear();
    // A merge key whose first rule moved changes the filter order of every node that receives it.
    for (const key of reordered) {
      const ids = this.mergeIds.get(key);
      if (!ids) continue;
      const first = this.mergeOrder.get(key)!;
      for (const rid of ids) {
        const r = this.byId[rid]!;
        if (this.firstOf[rid] === first) continue;
        this.reposition(r, first);
        for (const n of r.allReceivers) affected.add(n);
      }
    }

    const sshBefore = this.ssh;
    const sshDirty = (i: number): boolean => {
      const u = sshBefore[i]!;
      if (u.wildcard) return true;
      for (const k of keys) if (u.deps.has(k)) return true;
      return false;
    };
    this.ssh = compileSsh(this.resolver, sshDirty, sshBefore, ch);
    this.deltas.clear();
    for (let i = 0; i < Math.max(sshBefore.length, this.ssh.length); i++) sshDiff(sshBefore[i], this.ssh[i], affected);

    for (const p of changedPrefixes) {
      const a = primariesBefore.get(p);
      const b = this.model.primaries.get(p);
      if (a !== undefined) affected.add(a);
      if (b !== undefined) affected.add(b);
    }
    // Routers see the primary of each prefix they serve (haView).
    if (changedPrefixes.length > 0) {
      const changed = new Set(changedPrefixes);
      for (const rid of this.model.routers) {
        if (this.model.nodes.get(rid)!.routeStrs.some((r) => changed.has(r))) affected.add(rid);
      }
    }
    for (const id of affected) {
      const r = this.cache.get(id);
      if (r === undefined) continue;
      if (!this.prevResult.has(id)) this.prevResult.set(id, r);
      this.cache.delete(id);
    }
    if (before && !after) {
      affected.delete(before.id);
      this.prevResult.delete(before.id);
      this.recvIndex.delete(before.id);
      this.srcIndex.delete(before.id);
      this.snaps.delete(before.id);
      this.built.delete(before.id);
      this.listsTouched.delete(before.id);
      this.haCache.delete(before.id);
      this.useSig(before.id, undefined);
    }
    return affected;
  }

  private readonly deltaOf = (a: readonly number[], b: readonly number[]): Delta => this.delta(a, b);

  /** The difference between two ascending id lists, computed once per pair in an update. */
  private delta(a: readonly number[], b: readonly number[]): Delta {
    if (a === b) return NO_DELTA;
    let m = this.deltas.get(a);
    if (!m) this.deltas.set(a, (m = new Map()));
    let d = m.get(b);
    if (!d) {
      const added: number[] = [];
      const removed: number[] = [];
      diffSorted(a, b, (x, add) => (add ? added : removed).push(x));
      d = added.length === 0 && removed.length === 0 ? NO_DELTA : { added, removed };
      m.set(b, d);
    }
    return d;
  }

  private recompileUnit(i: number, affected: Set<number>, reordered: Set<string>, routesStable: boolean, ch: Change): void {
    const old = this.units[i]!;
    const next = compileUnit(this.resolver, this.tpls[i]!, i, this.slots, old, routesStable, ch);
    this.unregisterDeps(old, i);
    this.units[i] = next;
    this.registerDeps(next, i);
    // Usually the same rule ids in the same order (only some replaced): compare position by position.
    const ol = old.rules;
    const nl = next.rules;
    if (ol.length === nl.length) {
      let k = 0;
      while (k < ol.length && ol[k]!.id === nl[k]!.id) k++;
      if (k === ol.length) {
        for (let j = 0; j < ol.length; j++) if (ol[j] !== nl[j]) this.replaceRule(ol[j]!, nl[j]!, affected, reordered);
        return;
      }
    }
    const nextById = new Map<number, URule>();
    for (const r of next.rules) nextById.set(r.id, r);
    for (const a of old.rules) {
      const b = nextById.get(a.id);
      nextById.delete(a.id);
      if (a === b) continue;
      if (b) this.replaceRule(a, b, affected, reordered);
      else this.removeRule(a, affected, reordered);
    }
    for (const b of nextById.values()) this.addRule(b, affected, reordered);
  }

  private replaceRule(a: URule, b: URule, affected: Set<number>, reordered: Set<string>): void {
    const sd = this.delta(a.srcNodes, b.srcNodes);
    const rd = this.delta(a.allReceivers, b.allReceivers);
    // Same id and seq; the merge position may move with the merge key.
    for (const x of rd.removed) this.indexRecv(x, a.id, false);
    for (const x of sd.removed) this.indexSrc(x, a.id, false);
    this.byId[b.id] = b;
    // The per-node views and route hits depend only on the entries and receivers: share them when those are the same.
    if (a.entries === b.entries) {
      if (b.view === undefined && a.view !== undefined && a.allReceivers === b.allReceivers) b.view = a.view;
      if (b.hits === undefined && a.hits !== undefined) b.hits = a.hits;
    }
    if (a.srcIPs !== b.srcIPs) {
      this.slots.interner.retain(b.srcIPs);
      this.slots.interner.release(a.srcIPs);
    }
    if (a.mergeKey !== b.mergeKey) {
      if (this.mergeRemove(a)) reordered.add(a.mergeKey);
      if (this.mergeAdd(b)) reordered.add(b.mergeKey);
      // Receivers in both versions: move to the new position (added ones are inserted below).
      const first = this.mergeOrder.get(b.mergeKey)!;
      if (this.firstOf[b.id] !== first) {
        const added = membership(rd.added);
        for (const x of b.allReceivers) if (!added(x)) this.indexRecv(x, b.id, false);
        this.firstOf[b.id] = first;
        for (const x of b.allReceivers) if (!added(x)) this.indexRecv(x, b.id, true);
      }
    }
    for (const x of rd.added) this.indexRecv(x, b.id, true);
    for (const x of sd.added) this.indexSrc(x, b.id, true);
    const byRecv = this.sigsByRecv.get(b.id);
    const bySrc = this.sigsBySrc.get(b.id);
    this.patchSigs(byRecv, sd);
    this.patchSigs(bySrc, rd);
    if (!sameHits(a.srcRouteHits, b.srcRouteHits)) this.dropPar(byRecv);
    if (a.entries !== b.entries) this.dropPar(bySrc);
    diffRule(a, b, affected, sd, rd);
  }

  private removeRule(a: URule, affected: Set<number>, reordered: Set<string>): void {
    for (const x of a.allReceivers) this.indexRecv(x, a.id, false);
    for (const x of a.srcNodes) this.indexSrc(x, a.id, false);
    if (this.mergeRemove(a)) reordered.add(a.mergeKey);
    this.byId[a.id] = undefined;
    this.slots.interner.release(a.srcIPs);
    this.dropSigsOf(a.id);
    diffRule(a, undefined, affected, NO_DELTA, NO_DELTA);
  }

  private addRule(b: URule, affected: Set<number>, reordered: Set<string>): void {
    this.byId[b.id] = b;
    this.slots.interner.retain(b.srcIPs);
    this.seqOf[b.id] = b.seq;
    if (this.mergeAdd(b)) reordered.add(b.mergeKey);
    this.firstOf[b.id] = this.mergeOrder.get(b.mergeKey)!;
    for (const x of b.allReceivers) this.indexRecv(x, b.id, true);
    for (const x of b.srcNodes) this.indexSrc(x, b.id, true);
    this.dropSigsOf(b.id);
    diffRule(undefined, b, affected, NO_DELTA, NO_DELTA);
  }

  private dropSigsOf(ruleId: number): void {
    for (const d of [...(this.sigsByRecv.get(ruleId) ?? []), ...(this.sigsBySrc.get(ruleId) ?? [])]) this.dropSig(d);
    this.sigsByRecv.delete(ruleId);
    this.sigsBySrc.delete(ruleId);
  }

  /** Recompiles everything (policy change); every node counts as changed. */
  setPolicy(policy: Policy): void {
    this.policy = policy;
    this.rebuild();
  }
}

/**
 * Adds to `affected` the nodes whose results differ between two versions of
 * one unit-rule; `sd` / `rd` are the differences of its source nodes and receivers.
 */
function diffRule(a: URule | undefined, b: URule | undefined, affected: Set<number>, sd: Delta, rd: Delta): void {
  if (a === b) return;
  const addAll = (l: readonly number[]): void => {
    for (const x of l) affected.add(x);
  };
  if (!a || !b) {
    const r = (a ?? b)!;
    addAll(r.allReceivers);
    addAll(r.srcNodes);
    return;
  }
  for (const x of sd.added) affected.add(x);
  for (const x of sd.removed) affected.add(x);
  for (const x of rd.added) affected.add(x);
  for (const x of rd.removed) affected.add(x);
  // Receivers see a different SrcIPs / merge group, peer set or source routes.
  if (a.mergeKey !== b.mergeKey || !isNoDelta(sd) || !sameHits(a.srcRouteHits, b.srcRouteHits)) addAll(b.allReceivers);
  if (a.entries === b.entries) {
    if (!isNoDelta(rd)) addAll(b.srcNodes);
    return;
  }
  const n = Math.max(a.entries.length, b.entries.length);
  let hitsChanged = false;
  for (let i = 0; i < n; i++) {
    const x = a.entries[i];
    const y = b.entries[i];
    if (!x || !y || x.ip !== y.ip || x.ports.First !== y.ports.First || x.ports.Last !== y.ports.Last) {
      if (x) addAll(x.receivers);
      if (y) addAll(y.receivers);
      if ((x && x.routeHits.length > 0) || (y && y.routeHits.length > 0)) hitsChanged = true;
      continue;
    }
    if (x.receivers !== y.receivers) symDiff(x.receivers, y.receivers, affected);
    if (!sameHits(x.routeHits, y.routeHits)) hitsChanged = true;
  }
  // Sources see a different set of peers or different routes through them.
  if (hitsChanged || !isNoDelta(rd)) addAll(b.srcNodes);
}

function sameFilterRule(a: FilterRule, b: FilterRule): boolean {
  if (a === b) return true;
  if (!sameList(a.SrcIPs, b.SrcIPs) || !sameList(a.IPProto ?? [], b.IPProto ?? []) || (a.IPProto === undefined) !== (b.IPProto === undefined)) return false;
  const x = a.DstPorts;
  const y = b.DstPorts;
  if ((x === undefined) !== (y === undefined)) return false;
  if (x && y) {
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) {
      const p = x[i]!;
      const q = y[i]!;
      if (p !== q && (p.IP !== q.IP || p.Ports.First !== q.Ports.First || p.Ports.Last !== q.Ports.Last)) return false;
    }
  }
  return a.CapGrant === b.CapGrant || JSON.stringify(a.CapGrant) === JSON.stringify(b.CapGrant);
}

function sameSshRule(a: SSHRule, b: SSHRule): boolean {
  if (a === b) return true;
  if (a.principals.length !== b.principals.length) return false;
  for (let i = 0; i < a.principals.length; i++) if (a.principals[i]!.nodeIP !== b.principals[i]!.nodeIP) return false;
  return JSON.stringify([a.sshUsers, a.action, a.acceptEnv]) === JSON.stringify([b.sshUsers, b.action, b.acceptEnv]);
}

/** Deep equality of two results of one node (identity shortcuts first). */
function sameResult(a: NodeResult, b: NodeResult): boolean {
  if (a.peers.length !== b.peers.length || a.packetFilter.length !== b.packetFilter.length) return false;
  if (!sameList(a.primaryRoutes, b.primaryRoutes)) return false;
  if (a.sshPolicy !== b.sshPolicy) {
    const x = a.sshPolicy.rules;
    const y = b.sshPolicy.rules;
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (!sameSshRule(x[i]!, y[i]!)) return false;
  }
  if (a.peerAllowedRoutes !== b.peerAllowedRoutes) {
    if (a.peerAllowedRoutes.size !== b.peerAllowedRoutes.size) return false;
    for (const [p, routes] of a.peerAllowedRoutes) {
      const other = b.peerAllowedRoutes.get(p);
      if (!other || !sameList(routes, other)) return false;
    }
  }
  if (a.packetFilter !== b.packetFilter) {
    if (a.packetFilter.length !== b.packetFilter.length) return false;
    for (let i = 0; i < a.packetFilter.length; i++) if (!sameFilterRule(a.packetFilter[i]!, b.packetFilter[i]!)) return false;
  }
  if (!a.peers.equals(b.peers)) return false;
  return a.capabilities === b.capabilities || JSON.stringify(a.capabilities) === JSON.stringify(b.capabilities);
}
