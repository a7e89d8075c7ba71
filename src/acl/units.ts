// Compilation of one grant / ACL entry into unit-rules: resolved sources,
// destination entries and the nodes that receive them, merge keys, route
// hits, per-user autogroup:self rules; and the per-node views of a unit-rule
// that reduced filters are built from.
import type { Prefix } from '../net/addr.js';
import { IPSet } from '../net/ipset.js';
import { ALL_PORTS } from './alias.js';
import { ascending, diffSorted, membership, mergeSorted, sameList, sameNums, unionOf } from './idlists.js';
import { INTERNET, type Model } from './model.js';
import type { Change, DstTarget, OwnNodes, Resolver, SrcRes } from './resolve.js';
import { prefixSet } from './routes.js';
import type { Alias, AliasRef, CapGrant, GrantRule, NetPortRange, Policy, PortRange } from './types.js';

type CapMap = CapGrant['CapMap'];

/** App capabilities that come with a companion capability in the reverse direction (grant destinations → sources). */
const COMPANION_CAPS: ReadonlyMap<string, CapMap> = new Map<string, CapMap>([
  ['tailscale.com/cap/drive', Object.freeze({ 'tailscale.com/cap/drive-sharer': null })],
  ['tailscale.com/cap/relay', Object.freeze({ 'tailscale.com/cap/relay-target': null })],
]);

/** Every node of the tenant, as two memoised identity resolutions (each node is a member or tagged). */
const MEMBER_ALIAS: Alias = Object.freeze({ kind: 'autogroup' as const, name: 'member' as const });
const TAGGED_ALIAS: Alias = Object.freeze({ kind: 'autogroup' as const, name: 'tagged' as const });

export interface Entry {
  readonly ip: string;
  readonly ports: PortRange;
  readonly set: IPSet;
  /** Sorted node ids that receive this destination. */
  readonly receivers: readonly number[];
  /** [node, route] pairs: primary routes reachable through this entry. */
  readonly routeHits: ReadonlyArray<readonly [number, string]>;
}

export interface URule {
  /** Small dense id (stable per seq) for indexes. */
  readonly id: number;
  /** Position in policy order (merge order, filter order). */
  readonly seq: number;
  readonly kind: 'net' | 'cap';
  readonly mergeKey: string;
  readonly srcIPs: readonly string[];
  readonly srcNodes: readonly number[];
  /** Non-identity part of the sources (prefixes, hosts, *), for tests and route matching. */
  readonly srcSet: IPSet;
  /** Identity sources' node ids (their addresses are part of the sources too). */
  readonly srcIdentity: readonly number[];
  /** [node, route] pairs: primary routes that are sources of this rule. */
  readonly srcRouteHits: ReadonlyArray<readonly [number, string]>;
  readonly proto?: number[];
  readonly entries: readonly Entry[];
  readonly allReceivers: readonly number[];
  readonly capMap?: CapMap;
  /** autogroup:self rules: which call (self destination of the unit) and user they are for, and their inputs. */
  readonly selfCall?: number;
  readonly selfUser?: number;
  readonly selfOwn?: OwnNodes;
  /** The user's nodes that are sources; null when all of them are. */
  readonly selfIn?: readonly number[] | null;
  /** The (memoised) destination targets the entries were built from. */
  readonly targets?: readonly DstTarget[];
  /** Per-node views, built on first use. */
  view?: RuleView;
  hits?: ReadonlyArray<readonly [number, string]>;
}

const recvUnions = new WeakMap<readonly DstTarget[], readonly number[]>();

/** Ascending union of a target list's receivers (built once per memoised list). */
export function targetsReceivers(targets: readonly DstTarget[]): readonly number[] {
  let u = recvUnions.get(targets);
  if (!u) {
    u = unionOf(targets.map((t) => t.receivers));
    recvUnions.set(targets, u);
  }
  return u;
}

export interface Unit {
  readonly rules: URule[];
  /** Identity dependencies: "tag:x", "user:<id>", "member", "tagged", "users". */
  readonly deps: Set<string>;
  /** Union of non-identity address sets the unit uses (sources and destinations). */
  readonly sets: IPSet;
  readonly usesWildcard: boolean;
  /** The source resolutions and their aggregate, reused while the parts are unchanged. */
  readonly srcParts: readonly SrcRes[];
  readonly src: SrcRes;
  readonly srcHits: ReadonlyArray<readonly [number, string]>;
}

export const NO_HITS: ReadonlyArray<readonly [number, string]> = Object.freeze([]) as ReadonlyArray<readonly [number, string]>;

/**
 * The sources of a rule: the union of its source aliases' resolutions. The
 * address sets are unioned in one pass (IPSet.unionAll sorts and merges every
 * span once), never pairwise in a loop: that was quadratic in the number of
 * sources (20 000 host sources took seconds).
 */
function aggregateSrc(parts: readonly SrcRes[]): SrcRes {
  if (parts.length === 1) return parts[0]!;
  const seen = new Set<string>();
  const strings: string[] = [];
  const nodeLists: Array<readonly number[]> = [];
  const idLists: Array<readonly number[]> = [];
  const sets: IPSet[] = [];
  for (const res of parts) {
    for (const x of res.strings) {
      if (!seen.has(x)) {
        seen.add(x);
        strings.push(x);
      }
    }
    if (res.nodes.length > 0) nodeLists.push(res.nodes);
    if (res.identity.length > 0) idLists.push(res.identity);
    if (!res.set.isEmpty()) sets.push(res.set);
  }
  const set = sets.length === 0 ? IPSet.EMPTY : sets.length === 1 ? sets[0]! : IPSet.unionAll(sets);
  return { strings, nodes: mergeSorted(nodeLists), set, identity: mergeSorted(idLists) };
}

/** The node serving `route` for traffic through a via-restricted destination. */
function viaPrimary(model: Model, route: string, candidates: readonly number[]): number | null {
  const global = model.primaries.get(route);
  if (global !== undefined && candidates.includes(global)) return global;
  let best: number | null = null;
  for (const id of candidates) {
    const n = model.nodes.get(id)!;
    if (!n.online || !n.routeStrs.includes(route)) continue;
    if (best === null || id < best) best = id;
  }
  return best;
}

function routeHitsFor(model: Model, set: IPSet, receivers: readonly number[], via: boolean): Array<[number, string]> {
  const hits: Array<[number, string]> = [];
  if (via) {
    const routes = new Set<string>();
    for (const id of receivers) for (const r of model.nodes.get(id)!.routeStrs) routes.add(r);
    for (const r of routes) {
      if (!prefixSet(r).overlaps(set)) continue;
      const owner = viaPrimary(model, r, receivers);
      if (owner !== null) hits.push([owner, r]);
    }
  } else {
    const prim = model.primaryList();
    for (const i of model.primariesOverlapping(set)) hits.push([prim[i]!.owner, prim[i]!.prefix]);
  }
  if (model.exits.size > 0 && set.overlaps(INTERNET)) {
    for (const id of model.exits) {
      if (via && !receivers.includes(id)) continue;
      for (const r of model.nodes.get(id)!.exitRoutes) hits.push([id, r]);
    }
  }
  return hits;
}

function srcRouteHits(model: Model, set: IPSet): ReadonlyArray<readonly [number, string]> {
  if (set.isEmpty()) return NO_HITS;
  const hits: Array<[number, string]> = [];
  const prim = model.primaryList();
  for (const i of model.primariesOverlapping(set)) hits.push([prim[i]!.owner, prim[i]!.prefix]);
  return hits.length === 0 ? NO_HITS : hits;
}

export interface Template {
  /** 'allow-all': the implicit src ["*"] → dst ["*:*"] of a policy with neither acls nor grants. */
  kind: 'grant' | 'acl' | 'allow-all';
  index: number;
}

const WILDCARD_REF: AliasRef = Object.freeze({ text: '*', alias: Object.freeze({ kind: 'wildcard' as const }), pos: Object.freeze({ line: 0, col: 0 }) });

export function templates(policy: Policy): Template[] {
  if (!policy.hasAcls && !policy.hasGrants) return [{ kind: 'allow-all', index: 0 }];
  return [
    ...policy.grants.map((_, i) => ({ kind: 'grant' as const, index: i })),
    ...policy.acls.map((_, i) => ({ kind: 'acl' as const, index: i })),
  ];
}

interface Interned {
  readonly list: readonly string[];
  readonly key: string;
  readonly digest: string;
  /** Installed unit-rules holding this list. */
  refs: number;
}

/**
 * Content keys of SrcIPs lists, per engine: lists with equal contents get
 * equal keys, others different ones. A short list is its own key; a long one
 * is looked up by a cheap digest (length and a few elements) among the lists
 * in use and confirmed by comparing contents, so no hashing of every string
 * and no chance of collision. Lists are held while an installed unit-rule
 * holds them (retain/release); lists keyed during an update but not
 * installed are dropped by sweep().
 */
export class Interner {
  private readonly keys = new WeakMap<readonly string[], string>();
  private readonly byDigest = new Map<string, Interned[]>();
  private readonly byList = new Map<readonly string[], Interned>();
  private fresh: Interned[] = [];
  private seq = 0;

  key(a: readonly string[]): string {
    let k = this.keys.get(a);
    if (k !== undefined) return k;
    const n = a.length;
    if (n <= 4) k = a.join(' ');
    else {
      const digest = `${n}|${a[0]}|${a[n >> 2]}|${a[n >> 1]}|${a[(3 * n) >> 2]}|${a[n - 1]}`;
      let bucket = this.byDigest.get(digest);
      if (!bucket) this.byDigest.set(digest, (bucket = []));
      for (const e of bucket) {
        if (sameList(a, e.list)) {
          k = e.key;
          break;
        }
      }
      k ??= `#${++this.seq}`;
      const e: Interned = { list: a, key: k, digest, refs: 0 };
      bucket.push(e);
      this.byList.set(a, e);
      this.fresh.push(e);
    }
    this.keys.set(a, k);
    return k;
  }

  retain(a: readonly string[]): void {
    const e = this.byList.get(a);
    if (e) e.refs++;
  }

  release(a: readonly string[]): void {
    const e = this.byList.get(a);
    if (e && --e.refs === 0) this.drop(e);
  }

  /** Drops the lists keyed since the last sweep that no installed rule holds. */
  sweep(): void {
    for (const e of this.fresh) if (e.refs === 0) this.drop(e);
    this.fresh = [];
  }

  private drop(e: Interned): void {
    if (this.byList.get(e.list) !== e) return;
    this.byList.delete(e.list);
    // Forget the list's key too: if it is used again, it is looked up (and held) anew.
    this.keys.delete(e.list);
    const bucket = this.byDigest.get(e.digest);
    if (!bucket) return;
    const i = bucket.indexOf(e);
    if (i >= 0) bucket.splice(i, 1);
    if (bucket.length === 0) this.byDigest.delete(e.digest);
  }
}

const protoKey = (p: number[] | undefined): string => (p ? p.join(',') : '*');

/** Per-engine compile state: small rule ids per seq, and the interned source lists. */
export class SelfSlots {
  readonly interner = new Interner();
  /** Per template: position within the template (seq - template base) → rule id. */
  private readonly ids: Array<Map<number, number>> = [];
  private next = 0;
  ruleId(tplIdx: number, local: number): number {
    let m = this.ids[tplIdx];
    if (!m) this.ids[tplIdx] = m = new Map();
    let id = m.get(local);
    if (id === undefined) {
      id = this.next++;
      m.set(local, id);
    }
    return id;
  }
}

// A rule's seq orders it in the filter: template, then (plain rules) its place
// in the template, or (autogroup:self rules) the self expansion and the user's
// id. The user id, not the order users were first seen in, so an engine that
// saw users arrive in any order and a fresh compile agree. Seqs stay exact
// integers (< 2^53) for up to 2^18 templates, 8 self expansions per template
// and user ids below 2^31.
const SELF_BASE = 2 ** 16;
const SELF_CALL = 2 ** 31;
const SEQ_STRIDE = 2 ** 35;

export function sameHits(a: ReadonlyArray<readonly [number, string]>, b: ReadonlyArray<readonly [number, string]>): boolean {
  return a === b || (a.length === b.length && a.every((x, i) => x[0] === b[i]![0] && x[1] === b[i]![1]));
}

function sameParts(a: readonly SrcRes[], b: readonly SrcRes[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Compiles one grant / ACL entry. With `prev` (the unit's previous
 * compilation), unit-rules whose inputs are unchanged are reused as the same
 * objects; `routesStable` says primaries and exit nodes did not change, so
 * route hits computed before still hold.
 */
export function compileUnit(
  r: Resolver,
  tpl: Template,
  tplIdx: number,
  slots: SelfSlots,
  prev?: Unit,
  routesStable = false,
  ch?: Change,
): Unit {
  const policy = r.policy;
  const model = r.model;
  const deps = new Set<string>();
  const sets: IPSet[] = [];
  const flags = { wildcard: false };
  const rules: URule[] = [];
  let local = 0;
  const srcAliases =
    tpl.kind === 'grant' ? policy.grants[tpl.index]!.src : tpl.kind === 'acl' ? policy.acls[tpl.index]!.src : [WILDCARD_REF];
  const srcParts = srcAliases.map((s: AliasRef) => r.src(s.alias, deps, sets, flags));
  let src: SrcRes;
  let srcHits: ReadonlyArray<readonly [number, string]>;
  if (prev && sameParts(prev.srcParts, srcParts)) {
    src = prev.src;
    if (routesStable) srcHits = prev.srcHits;
    else {
      srcHits = srcRouteHits(model, src.set);
      if (sameHits(srcHits, prev.srcHits)) srcHits = prev.srcHits;
    }
  } else {
    src = aggregateSrc(srcParts);
    srcHits = srcRouteHits(model, src.set);
    if (prev && sameHits(srcHits, prev.srcHits)) srcHits = prev.srcHits;
  }
  // Keyed by position within the template (seq minus the template's base).
  const base = tplIdx * SEQ_STRIDE;
  const prevBySeq = new Map<number, URule>();
  /** Per self call: the previous rules, in their order (one per user). */
  const prevSelf: URule[][] = [];
  for (const pr of prev?.rules ?? []) {
    if (pr.selfCall !== undefined) {
      let l = prevSelf[pr.selfCall];
      if (!l) prevSelf[pr.selfCall] = l = [];
      l.push(pr);
    } else prevBySeq.set(pr.seq - base, pr);
  }
  // Users whose autogroup:self rules can differ from `prev`: those named by the change, and the owners of nodes that joined or left the sources.
  let touched: Set<number> | null = null;
  if (prev && ch) {
    touched = touchedUsers(r.model, ch, prev.src.nodes, src.nodes);
  }

  const pushRule = (
    seq: number,
    kind: 'net' | 'cap',
    s: SrcRes,
    sHits: ReadonlyArray<readonly [number, string]>,
    proto: number[] | undefined,
    built: { entries: readonly Entry[]; allReceivers: readonly number[]; targets?: readonly DstTarget[] },
    capMap?: CapMap,
    self?: { call: number; uid: number; own: OwnNodes; inSrc: readonly number[] | null },
  ): void => {
    // An app grant whose sources resolve to nothing still gives its CapGrant (SrcIPs []), as in Tailscale.
    if ((s.strings.length === 0 && kind !== 'cap') || built.entries.length === 0) return;
    const before = self ? undefined : prevBySeq.get(seq - base);
    if (
      before &&
      before.srcIPs === s.strings &&
      before.srcNodes === s.nodes &&
      before.srcSet === s.set &&
      before.srcRouteHits === sHits &&
      before.entries === built.entries &&
      before.kind === kind &&
      before.proto === proto &&
      before.capMap === capMap
    ) {
      rules.push(before);
      return;
    }
    const mergeKey = `${kind}|${slots.interner.key(s.strings)}|${protoKey(proto)}${capMap ? `|${JSON.stringify(capMap)}` : ''}`;
    rules.push({
      id: slots.ruleId(tplIdx, seq - base),
      seq,
      kind,
      mergeKey,
      srcIPs: s.strings,
      srcNodes: s.nodes,
      srcSet: s.set,
      srcIdentity: s.identity,
      srcRouteHits: sHits,
      proto,
      entries: built.entries,
      allReceivers: built.allReceivers,
      capMap,
      ...(self ? { selfCall: self.call, selfUser: self.uid, selfOwn: self.own, selfIn: self.inSrc } : {}),
      ...(built.targets ? { targets: built.targets } : {}),
    });
  };
  let selfCall = 0;

  const entriesFor = (
    targets: readonly DstTarget[],
    ports: readonly PortRange[],
    via: string[] | null,
    before?: URule,
  ): { entries: readonly Entry[]; allReceivers: readonly number[]; targets: readonly DstTarget[] } => {
    if (before && before.targets === targets && !via && (routesStable || targets.every((t) => t.identity))) {
      return { entries: before.entries, allReceivers: before.allReceivers, targets };
    }
    const out: Entry[] = new Array<Entry>(targets.length * ports.length);
    let w = 0;
    const lists: Array<readonly number[]> = [];
    for (let ti = 0; ti < targets.length; ti++) {
      const t = targets[ti]!;
      let receivers = t.receivers;
      if (via) {
        receivers = receivers.filter((id) => {
          const n = model.nodes.get(id)!;
          return n.tags.some((tg) => via.includes(tg)) && (n.routeSet.overlaps(t.set) || (n.exitRoutes.length > 0 && t.set.overlaps(INTERNET)));
        });
        lists.push(receivers);
      }
      const hits = t.identity ? NO_HITS : routeHitsFor(model, t.set, receivers, via !== null);
      for (let pi = 0; pi < ports.length; pi++) out[w++] = { ip: t.ip, ports: ports[pi]!, set: t.set, receivers, routeHits: hits };
    }
    return { entries: out, allReceivers: via ? mergeSorted(lists) : targetsReceivers(targets), targets };
  };

  // Rule order inside the template: plain rules by `local` in slot `slot`; autogroup:self rules in
  // their own slot. An ACL whose destinations are all autogroups keeps policy order (each self
  // expansion takes the current slot and later rules move to the next); otherwise the plain rules
  // all come first (slot 0) and self expansion c takes slot c.
  let slot = 0;
  let policyOrder = false;

  const pushFrom = (
    s: SrcRes,
    sHits: ReadonlyArray<readonly [number, string]>,
    kind: 'net' | 'cap',
    proto: number[] | undefined,
    targets: readonly DstTarget[],
    ports: readonly PortRange[],
    via: string[] | null,
    capMap?: CapMap,
  ): void => {
    const seq = base + slot * SELF_CALL + local++;
    if (s.strings.length === 0 && kind !== 'cap') return;
    pushRule(seq, kind, s, sHits, proto, entriesFor(targets, ports, via, prevBySeq.get(seq - base)), capMap);
  };
  const push = (
    kind: 'net' | 'cap',
    proto: number[] | undefined,
    targets: readonly DstTarget[],
    ports: readonly PortRange[],
    via: string[] | null,
    capMap?: CapMap,
  ): void => pushFrom(src, srcHits, kind, proto, targets, ports, via, capMap);

  /** Destination targets of an app grant: `*` is every node's own addresses (never routes). */
  const capTargets = (a: Alias): Array<readonly DstTarget[]> =>
    a.kind === 'wildcard' ? [r.dst(MEMBER_ALIAS, deps, sets, flags), r.dst(TAGGED_ALIAS, deps, sets, flags)] : [r.dst(a, deps, sets, flags)];

  /** autogroup:self: one rule per user, sources and destinations limited to that user's untagged nodes. */
  const selfRules = (kind: 'net' | 'cap', proto: number[] | undefined, ports: readonly PortRange[], capMap?: CapMap): void => {
    deps.add('member');
    const call = selfCall++;
    const selfSlot = policyOrder ? slot++ : call;
    const before = prevSelf[call];
    const isSrc = membership(src.nodes);
    const one = (uid: number, pr: URule | undefined): void => {
      if (!model.byUser.has(uid)) return;
      const o = r.userOwn(uid);
      const own = o.ids;
      let all = true;
      for (let k = 0; k < own.length; k++) {
        if (!isSrc(own[k]!)) {
          all = false;
          break;
        }
      }
      const inSrc = all ? own : own.filter(isSrc);
      const seq = base + selfSlot * SELF_CALL + SELF_BASE + uid;
      if (
        pr &&
        pr.seq === seq &&
        pr.selfOwn === o &&
        (all ? pr.selfIn === null : pr.selfIn != null && sameNums(pr.selfIn, inSrc))
      ) {
        rules.push(pr);
        return;
      }
      if (inSrc.length === 0) return;
      const strings = all ? (o.strings ??= r.ipsOf(own)) : r.ipsOf(inSrc);
      const targets = (o.targets ??= r.targetsOf(own));
      const agg: SrcRes = { strings, nodes: inSrc, set: IPSet.EMPTY, identity: inSrc };
      const built = entriesFor(targets, ports, null);
      pushRule(seq, kind, agg, NO_HITS, proto, { entries: built.entries, allReceivers: built.allReceivers }, capMap, {
        call,
        uid,
        own: o,
        inSrc: all ? null : inSrc,
      });
    };
    if (before && touched) {
      // Only the touched users' rules can differ: keep the others (in place, so the unit's rule order stays the same).
      const seen = new Set<number>();
      for (let k = 0; k < before.length; k++) {
        const pr = before[k]!;
        const uid = pr.selfUser!;
        if (!touched.has(uid)) rules.push(pr);
        else {
          seen.add(uid);
          one(uid, pr);
        }
      }
      for (const uid of [...touched].sort(ascending)) if (!seen.has(uid)) one(uid, undefined);
    } else {
      const byUser = new Map<number, URule>();
      if (before) for (const pr of before) byUser.set(pr.selfUser!, pr);
      for (const uid of [...model.byUser.keys()].sort(ascending)) one(uid, byUser.get(uid));
    }
  };

  if (tpl.kind === 'allow-all') {
    push('net', undefined, r.dst(WILDCARD_REF.alias, deps, sets, flags), [ALL_PORTS], null);
  } else if (tpl.kind === 'acl') {
    const acl = policy.acls[tpl.index]!;
    policyOrder = acl.dst.every((d) => d.alias.kind === 'autogroup');
    for (const d of acl.dst) {
      if (d.alias.kind === 'autogroup' && d.alias.name === 'self') {
        selfRules('net', acl.proto, d.ports);
        continue;
      }
      push('net', acl.proto, r.dst(d.alias, deps, sets, flags), d.ports, null);
    }
  } else {
    const g: GrantRule = policy.grants[tpl.index]!;
    const via = g.via.length > 0 ? g.via : null;
    if (via) for (const t of via) deps.add(t);
    for (const spec of g.ip) {
      for (const d of g.dst) {
        if (d.alias.kind === 'autogroup' && d.alias.name === 'self') {
          selfRules('net', spec.proto, spec.ports);
          continue;
        }
        push('net', spec.proto, r.dst(d.alias, deps, sets, flags), spec.ports, via);
      }
    }
    // The app part of a via grant is ignored (as in Tailscale).
    if (g.app && !via) {
      for (const d of g.dst) {
        if (d.alias.kind === 'autogroup' && d.alias.name === 'self') {
          selfRules('cap', undefined, [ALL_PORTS], g.app);
          continue;
        }
        for (const targets of capTargets(d.alias)) push('cap', undefined, targets, [ALL_PORTS], null, g.app);
      }
      // drive / relay: a companion capability right after, from the grant's destinations to its sources.
      for (const cap of Object.keys(g.app)) {
        const capMap = COMPANION_CAPS.get(cap);
        if (!capMap) continue;
        // autogroup:self and autogroup:internet name no source addresses of their own.
        const revDst = g.dst.filter((d) => !(d.alias.kind === 'autogroup' && (d.alias.name === 'self' || d.alias.name === 'internet')));
        if (revDst.length > 0) {
          const revSrc = aggregateSrc(revDst.map((d) => r.src(d.alias, deps, sets, flags)));
          for (const s of g.src) for (const targets of capTargets(s.alias)) pushFrom(revSrc, NO_HITS, 'cap', undefined, targets, [ALL_PORTS], null, capMap);
        }
        // The reverse of an autogroup:self grant is the same per-user grant.
        if (g.dst.some((d) => d.alias.kind === 'autogroup' && d.alias.name === 'self')) selfRules('cap', undefined, [ALL_PORTS], capMap);
      }
    }
  }
  return { rules, deps, sets: IPSet.unionAll(sets), usesWildcard: flags.wildcard, srcParts, src, srcHits };
}

/**
 * Users whose autogroup:self results can differ after a change: those the
 * change names, and the owners of nodes that joined or left the sources.
 */
export function touchedUsers(model: Model, ch: Change, before: readonly number[], after: readonly number[]): Set<number> {
  const out = new Set<number>();
  for (const k of ch.keys) if (k.startsWith('user:')) out.add(Number(k.slice(5)));
  const add = (id: number): void => {
    const uid = model.nodes.get(id)?.userId;
    if (uid !== null && uid !== undefined) out.add(uid);
  };
  if (ch.delta) {
    const d = ch.delta(before, after);
    for (const id of d.added) add(id);
    for (const id of d.removed) add(id);
  } else diffSorted(before, after, add);
  return out;
}

/**
 * Per-node views of a unit-rule, built on first use (a changed rule is a new
 * object). Arrays are parallel to the rule's allReceivers.
 */
export interface RuleView {
  /** One per entry, in entry order (the global filter's DstPorts). */
  all: NetPortRange[];
  nprs: NetPortRange[][];
  dsts?: Array<string[] | undefined>;
}

/** Position of a node in a rule's allReceivers, or -1. */
export function recvPos(r: URule, id: number): number {
  const a = r.allReceivers;
  let lo = 0;
  let hi = a.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const x = a[mid]!;
    if (x === id) return mid;
    if (x < id) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

export function ruleView(r: URule): RuleView {
  let v = r.view;
  if (!v) {
    const n = r.allReceivers.length;
    const entries = r.entries;
    // Count each receiver's entries first, so every list is allocated at its size.
    const counts = new Int32Array(n);
    for (let i = 0; i < entries.length; i++) {
      const recv = entries[i]!.receivers;
      if (recv.length === n) for (let k = 0; k < n; k++) counts[k]!++;
      else for (let k = 0; k < recv.length; k++) counts[recvPos(r, recv[k]!)]!++;
    }
    const nprs: NetPortRange[][] = new Array<NetPortRange[]>(n);
    for (let i = 0; i < n; i++) nprs[i] = new Array<NetPortRange>(counts[i]!);
    counts.fill(0);
    const all: NetPortRange[] = new Array<NetPortRange>(entries.length);
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      // Ports objects are shared with the policy (read-only, like every result).
      const npr: NetPortRange = { IP: e.ip, Ports: e.ports };
      all[i] = npr;
      const recv = e.receivers;
      if (recv.length === n) for (let k = 0; k < n; k++) nprs[k]![counts[k]!++] = npr;
      else {
        for (let k = 0; k < recv.length; k++) {
          const at = recvPos(r, recv[k]!);
          nprs[at]![counts[at]!++] = npr;
        }
      }
    }
    v = { all, nprs };
    r.view = v;
  }
  return v;
}

/** CapGrant destinations of a cap rule for one node (prefix texts, de-duplicated). */
export function capDsts(r: URule, id: number): string[] {
  const v = ruleView(r);
  const pos = recvPos(r, id);
  if (pos < 0) return [];
  v.dsts ??= [];
  let d = v.dsts[pos];
  if (!d) {
    const out: string[] = [];
    for (const e of r.entries) if (e.receivers.includes(id)) for (const p of e.set.prefixes()) out.push(formatPrefixText(p));
    d = [...new Set(out)];
    v.dsts[pos] = d;
  }
  return d;
}

/** All destination route hits of a unit-rule, flattened (built once). */
export function entryHits(r: URule): ReadonlyArray<readonly [number, string]> {
  let h = r.hits;
  if (!h) {
    const all: Array<readonly [number, string]> = [];
    const entries = r.entries;
    for (let i = 0; i < entries.length; i++) {
      const hits = entries[i]!.routeHits;
      for (let k = 0; k < hits.length; k++) all.push(hits[k]!);
    }
    h = all;
    r.hits = h;
  }
  return h;
}

export function formatPrefixText(p: Prefix): string {
  const s = IPSet.fromPrefix(p).toStrings()[0]!;
  return s.includes('/') ? s : `${s}/${p.family === 4 ? 32 : 128}`;
}
