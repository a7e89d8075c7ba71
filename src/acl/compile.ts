// Policy + tenant → per-node packet filters, peers, per-viewer routes, primary
// routes and SSH policies.
//
// Rules are compiled in "units" (one per grant / ACL entry), each a list of
// unit-rules: sources (SrcIPs strings, the nodes they match) and destination
// entries (IP text, ports, the nodes that receive them). Unit-rules with the
// same SrcIPs+IPProto merge into one FilterRule at the first one's position.
// Per-node results are derived lazily from node→unit-rule indexes, so an
// update recompiles only the units whose inputs changed and only the nodes
// those units touch.
import { type Prefix, tryParsePrefix } from '../net/addr.js';
import { IPSet, formatRangeAsRange } from '../net/ipset.js';
import { ALL_PORTS } from './alias.js';
import { INTERNET, type Model, type NodeInfo, sortUnique } from './model.js';
import { EXIT_V4, EXIT_V6, sortRoutes } from './routes.js';
import type {
  Alias,
  AliasRef,
  FilterRule,
  GrantRule,
  NetPortRange,
  Policy,
  PortRange,
  SSHPolicy,
  SSHRule,
} from './types.js';

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
  readonly capMap?: Record<string, unknown[]>;
  /** autogroup:self rules: which user/call they are for and the inputs they were built from. */
  readonly selfKey?: string;
  readonly selfSig?: string;
}

export interface Unit {
  readonly rules: URule[];
  /** Identity dependencies: "tag:x", "user:<id>", "member", "tagged", "users". */
  readonly deps: Set<string>;
  /** Union of non-identity address sets the unit uses (sources and destinations). */
  readonly sets: IPSet;
  readonly usesWildcard: boolean;
}

interface SrcRes {
  strings: string[];
  nodes: number[];
  set: IPSet;
  identity: number[];
}

interface DstTarget {
  ip: string;
  set: IPSet;
  receivers: number[];
  identity: boolean;
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

function bsearch(a: readonly number[], v: number): boolean {
  let lo = 0;
  let hi = a.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const x = a[mid]!;
    if (x === v) return true;
    if (x < v) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

const memberships = new WeakMap<readonly number[], (id: number) => boolean>();

/** O(1) membership test for an ascending id list (built once per list). */
function membership(ids: readonly number[]): (id: number) => boolean {
  let f = memberships.get(ids);
  if (!f) {
    const max = ids.length > 0 ? ids[ids.length - 1]! : 0;
    if (max < 50_000_000) {
      const bits = new Uint8Array(max + 1);
      for (const x of ids) bits[x] = 1;
      f = (id: number): boolean => id <= max && bits[id] === 1;
    } else {
      const set = new Set(ids);
      f = (id: number): boolean => set.has(id);
    }
    memberships.set(ids, f);
  }
  return f;
}

function mergeSorted(lists: ReadonlyArray<readonly number[]>): number[] {
  if (lists.length === 0) return [];
  if (lists.length === 1) return lists[0]!.slice();
  const out: number[] = [];
  for (const l of lists) for (const x of l) out.push(x);
  return sortUnique(out);
}

/** Resolution of aliases against the tenant, with dependency tracking. */
export class Resolver {
  private memo = new Map<string, { ids: number[] | null; deps: string[] }>();
  private srcMemo = new Map<string, { res: SrcRes; deps: string[]; sets: IPSet[]; wildcard: boolean }>();
  private dstMemo = new Map<string, { res: DstTarget[]; deps: string[]; sets: IPSet[]; wildcard: boolean }>();

  constructor(
    readonly policy: Policy,
    readonly model: Model,
  ) {}

  identityNodes(a: Alias, deps: Set<string>): number[] | null {
    const key = aliasKey(a);
    let m = this.memo.get(key);
    if (!m) {
      const d = new Set<string>();
      m = { ids: this.identityNodesUncached(a, d), deps: [...d] };
      this.memo.set(key, m);
    }
    for (const d of m.deps) deps.add(d);
    return m.ids;
  }

  src(a: Alias, deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): SrcRes {
    const key = aliasKey(a);
    let m = this.srcMemo.get(key);
    if (!m) {
      const d = new Set<string>();
      const ss: IPSet[] = [];
      const f = { wildcard: false };
      m = { res: this.srcUncached(a, d, ss, f), deps: [...d], sets: ss, wildcard: f.wildcard };
      this.srcMemo.set(key, m);
    }
    for (const d of m.deps) deps.add(d);
    sets.push(...m.sets);
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
      m = { res: this.dstUncached(a, d, ss, f), deps: [...d], sets: ss, wildcard: f.wildcard };
      this.dstMemo.set(key, m);
    }
    for (const d of m.deps) deps.add(d);
    sets.push(...m.sets);
    if (m.wildcard) flags.wildcard = true;
    return m.res;
  }

  private ownCache = new Map<number, { ids: number[]; key: string }>();

  /** A user's untagged nodes, ascending, with a content key (cached per resolver). */
  userOwn(uid: number): { ids: number[]; key: string } {
    let o = this.ownCache.get(uid);
    if (!o) {
      const ids = [...(this.model.byUser.get(uid) ?? [])].sort((a, b) => a - b);
      o = { ids, key: ids.join(',') };
      this.ownCache.set(uid, o);
    }
    return o;
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
        return mergeSorted(lists);
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
    for (const id of ids) for (const ip of this.model.nodes.get(id)!.ips) out.push(ip);
    return out;
  }

  wildcardSet(): IPSet {
    let s = this.model.pool;
    for (const id of this.model.routers) s = s.union(this.model.nodes.get(id)!.routeSet);
    return s;
  }

  private srcUncached(a: Alias, deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): SrcRes {
    const ids = this.identityNodes(a, deps);
    if (ids) return { strings: this.nodeIps(ids), nodes: ids, set: IPSet.EMPTY, identity: ids };
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
    return { strings, nodes: this.model.nodesMatching(set, false), set, identity: [] };
  }

  private dstUncached(a: Alias, deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): DstTarget[] {
    const ids = this.identityNodes(a, deps);
    if (ids) {
      const out: DstTarget[] = [];
      for (const id of ids) {
        const n = this.model.nodes.get(id)!;
        const recv = [id];
        n.ips.forEach((ip, k) => out.push({ ip, set: n.ipSets[k]!, receivers: recv, identity: true }));
      }
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
        flags.wildcard = true;
        return targets(this.wildcardSet(), [...this.model.poolStrings, ...this.model.allRoutes()]);
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

interface SrcAgg {
  strings: string[];
  nodes: number[];
  set: IPSet;
  identity: number[];
}

function aggregateSrc(r: Resolver, src: readonly AliasRef[], deps: Set<string>, sets: IPSet[], flags: { wildcard: boolean }): SrcAgg {
  if (src.length === 1) {
    const res = r.src(src[0]!.alias, deps, sets, flags);
    return { strings: res.strings, nodes: res.nodes, set: res.set, identity: res.identity };
  }
  const seen = new Set<string>();
  const strings: string[] = [];
  const nodeLists: number[][] = [];
  const idLists: number[][] = [];
  let set = IPSet.EMPTY;
  for (const s of src) {
    const res = r.src(s.alias, deps, sets, flags);
    for (const x of res.strings) {
      if (!seen.has(x)) {
        seen.add(x);
        strings.push(x);
      }
    }
    nodeLists.push(res.nodes);
    if (res.identity.length > 0) idLists.push(res.identity);
    if (!res.set.isEmpty()) set = set.union(res.set);
  }
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
    for (const [r, owner] of model.primaries) if (prefixSet(r).overlaps(set)) hits.push([owner, r]);
  }
  if (model.exits.size > 0 && set.overlaps(INTERNET)) {
    for (const id of model.exits) {
      if (via && !receivers.includes(id)) continue;
      for (const r of model.nodes.get(id)!.exitRoutes) hits.push([id, r]);
    }
  }
  return hits;
}

function srcRouteHits(model: Model, set: IPSet): Array<[number, string]> {
  const hits: Array<[number, string]> = [];
  if (set.isEmpty()) return hits;
  for (const [r, owner] of model.primaries) {
    if (prefixSet(r).overlaps(set)) hits.push([owner, r]);
  }
  return hits;
}

interface Template {
  kind: 'grant' | 'acl';
  index: number;
}

export function templates(policy: Policy): Template[] {
  return [
    ...policy.grants.map((_, i) => ({ kind: 'grant' as const, index: i })),
    ...policy.acls.map((_, i) => ({ kind: 'acl' as const, index: i })),
  ];
}

const keyCache = new WeakMap<readonly string[], string>();

/** Content key of a SrcIPs list, computed once per (shared) array. */
function stringsKey(a: readonly string[]): string {
  let k = keyCache.get(a);
  if (k === undefined) {
    // Two independent 32-bit FNV-1a style hashes plus the length: short keys
    // for long SrcIPs lists (a collision would need 64 matching hash bits).
    let h1 = 0x811c9dc5;
    let h2 = 0x01000193 ^ a.length;
    for (const str of a) {
      for (let i = 0; i < str.length; i++) {
        const c = str.charCodeAt(i);
        h1 = Math.imul(h1 ^ c, 0x01000193);
        h2 = Math.imul(h2 ^ c, 0x5bd1e995);
        h2 ^= h2 >>> 15;
      }
      h1 = Math.imul(h1 ^ 32, 0x01000193);
      h2 = Math.imul(h2 ^ 32, 0x5bd1e995);
    }
    k = a.length <= 4 ? a.join(' ') : `#${a.length}:${(h1 >>> 0).toString(36)}:${(h2 >>> 0).toString(36)}`;
    keyCache.set(a, k);
  }
  return k;
}

const prefixSets = new Map<string, IPSet>();

/** IPSet of a canonical prefix string, cached. */
export function prefixSet(p: string): IPSet {
  let s = prefixSets.get(p);
  if (!s) {
    s = IPSet.fromPrefix(tryParsePrefix(p)!);
    prefixSets.set(p, s);
  }
  return s;
}

const protoKey = (p: number[] | undefined): string => (p ? p.join(',') : '*');

/** Stable sequence slots for per-user autogroup:self rules. */
export class SelfSlots {
  private readonly slots = new Map<number, number>();
  slot(uid: number): number {
    let s = this.slots.get(uid);
    if (s === undefined) {
      s = this.slots.size;
      this.slots.set(uid, s);
    }
    return s;
  }
}

const SEQ_STRIDE = 1 << 22;
const SELF_BASE = 1 << 16;
const SELF_CALL = 1 << 20;

export function compileUnit(r: Resolver, tpl: Template, tplIdx: number, slots: SelfSlots, prev?: Unit): Unit {
  const policy = r.policy;
  const model = r.model;
  const deps = new Set<string>();
  const sets: IPSet[] = [];
  const flags = { wildcard: false };
  const rules: URule[] = [];
  let local = 0;
  const srcAliases = tpl.kind === 'grant' ? policy.grants[tpl.index]!.src : policy.acls[tpl.index]!.src;
  const src = aggregateSrc(r, srcAliases, deps, sets, flags);
  const srcHits = srcRouteHits(model, src.set);

  const push = (
    kind: 'net' | 'cap',
    s: SrcAgg,
    sHits: Array<[number, string]>,
    proto: number[] | undefined,
    entries: Entry[],
    capMap?: Record<string, unknown[]>,
  ): void => {
    const seq = tplIdx * SEQ_STRIDE + local++;
    pushRule(seq, kind, s, sHits, proto, entries, capMap);
  };

  const pushRule = (
    seq: number,
    kind: 'net' | 'cap',
    s: SrcAgg,
    sHits: Array<[number, string]>,
    proto: number[] | undefined,
    entries: Entry[],
    capMap?: Record<string, unknown[]>,
    self?: { key: string; sig: string },
  ): void => {
    if (s.strings.length === 0 || entries.length === 0) return;
    const mergeKey = `${kind}|${stringsKey(s.strings)}|${protoKey(proto)}${capMap ? `|${JSON.stringify(capMap)}` : ''}`;
    rules.push({
      seq,
      kind,
      mergeKey,
      srcIPs: s.strings,
      srcNodes: s.nodes,
      srcSet: s.set,
      srcIdentity: s.identity,
      srcRouteHits: sHits,
      proto,
      entries,
      allReceivers: mergeSorted(entries.map((e) => e.receivers)),
      capMap,
      ...(self ? { selfKey: self.key, selfSig: self.sig } : {}),
    });
  };
  const prevSelf = new Map<string, URule>();
  for (const pr of prev?.rules ?? []) if (pr.selfKey) prevSelf.set(pr.selfKey, pr);
  let selfCall = 0;

  const entriesFor = (targets: DstTarget[], ports: PortRange[], via: string[] | null): Entry[] => {
    const out: Entry[] = [];
    for (const t of targets) {
      let receivers = t.receivers;
      if (via) {
        receivers = receivers.filter((id) => {
          const n = model.nodes.get(id)!;
          return n.tags.some((tg) => via.includes(tg)) && (n.routeSet.overlaps(t.set) || (n.exitRoutes.length > 0 && t.set.overlaps(INTERNET)));
        });
      }
      const hits = t.identity ? [] : routeHitsFor(model, t.set, receivers, via !== null);
      for (const p of ports) out.push({ ip: t.ip, ports: p, set: t.set, receivers, routeHits: hits });
    }
    return out;
  };

  /** autogroup:self: one rule per user, sources and destinations limited to that user's untagged nodes. */
  const selfRules = (kind: 'net' | 'cap', proto: number[] | undefined, ports: PortRange[], capMap?: Record<string, unknown[]>): void => {
    deps.add('member');
    const call = selfCall++;
    const users = [...model.byUser.keys()].sort((a, b) => a - b);
    const isSrc = membership(src.nodes);
    for (const uid of users) {
      const o = r.userOwn(uid);
      const own = o.ids;
      let all = true;
      for (const id of own) if (!isSrc(id)) all = false;
      const inSrc = all ? own : own.filter(isSrc);
      const seq = tplIdx * SEQ_STRIDE + SELF_BASE + call * SELF_CALL + slots.slot(uid);
      const key = `${call}|${uid}`;
      const sig = inSrc.length === own.length ? `${o.key}|*` : `${o.key}|${inSrc.join(',')}`;
      const before = prevSelf.get(key);
      if (before && before.selfSig === sig && before.seq === seq) {
        rules.push(before);
        continue;
      }
      if (inSrc.length === 0) continue;
      const strings: string[] = [];
      for (const id of inSrc) strings.push(...model.nodes.get(id)!.ips);
      const targets: DstTarget[] = [];
      for (const id of own) {
        const n = model.nodes.get(id)!;
        const recv = [id];
        n.ips.forEach((ip, k) => targets.push({ ip, set: n.ipSets[k]!, receivers: recv, identity: true }));
      }
      const agg = { strings, nodes: inSrc, set: IPSet.EMPTY, identity: inSrc };
      pushRule(seq, kind, agg, [], proto, entriesFor(targets, ports, null), capMap, { key, sig });
    }
  };

  if (tpl.kind === 'acl') {
    const acl = policy.acls[tpl.index]!;
    for (const d of acl.dst) {
      if (d.alias.kind === 'autogroup' && d.alias.name === 'self') {
        selfRules('net', acl.proto, d.ports);
        continue;
      }
      push('net', src, srcHits, acl.proto, entriesFor(r.dst(d.alias, deps, sets, flags), d.ports, null));
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
        push('net', src, srcHits, spec.proto, entriesFor(r.dst(d.alias, deps, sets, flags), spec.ports, via));
      }
    }
    if (g.app) {
      for (const d of g.dst) {
        if (d.alias.kind === 'autogroup' && d.alias.name === 'self') {
          selfRules('cap', undefined, [ALL_PORTS], g.app);
          continue;
        }
        push('cap', src, srcHits, undefined, entriesFor(r.dst(d.alias, deps, sets, flags), [ALL_PORTS], via), g.app);
      }
    }
  }
  return { rules, deps, sets: IPSet.unionAll(sets), usesWildcard: flags.wildcard };
}

// ---- SSH -------------------------------------------------------------------

interface SshUnit {
  /** dst node → principals (IPs). */
  perNode: Map<number, string[]>;
  deps: Set<string>;
  wildcard: boolean;
  sshUsers: Record<string, string>;
  action: SSHRule['action'];
  acceptEnv?: string[];
}

export function compileSsh(r: Resolver, only?: (i: number) => boolean, prev?: SshUnit[]): SshUnit[] {
  const model = r.model;
  const out: SshUnit[] = [];
  for (const [ri, rule] of r.policy.ssh.entries()) {
    if (only && prev && !only(ri)) {
      out.push(prev[ri]!);
      continue;
    }
    const deps = new Set<string>();
    let wildcard = false;
    const srcLists: number[][] = [];
    for (const s of rule.src) {
      const ids = r.identityNodes(s.alias, deps);
      if (ids) srcLists.push(ids);
      else if (s.alias.kind === 'wildcard') {
        wildcard = true;
        srcLists.push([...model.nodes.keys()]);
      }
    }
    const srcNodes = mergeSorted(srcLists);
    const ipsOf = (ids: readonly number[]): string[] => {
      const v: string[] = [];
      for (const id of ids) for (const ip of model.nodes.get(id)!.ips) v.push(ip);
      return v;
    };
    const perNode = new Map<number, string[]>();
    const allPrincipals = ipsOf(srcNodes);
    for (const d of rule.dst) {
      if (d.alias.kind === 'autogroup' && d.alias.name === 'self') {
        deps.add('member');
        const isSrc = membership(srcNodes);
        for (const uid of model.byUser.keys()) {
          const ownIds = r.userOwn(uid).ids;
          const p = ownIds.filter(isSrc);
          if (p.length === 0) continue;
          const ips = ipsOf(p);
          for (const id of ownIds) if (!perNode.has(id)) perNode.set(id, ips);
        }
        continue;
      }
      const ids = r.identityNodes(d.alias, deps) ?? [];
      if (allPrincipals.length === 0) continue;
      for (const id of ids) if (!perNode.has(id)) perNode.set(id, allPrincipals);
    }
    const sshUsers: Record<string, string> = {};
    for (const u of rule.users) {
      if (u === 'autogroup:nonroot') sshUsers['*'] = '=';
      else sshUsers[u] = u;
    }
    if (!('root' in sshUsers)) sshUsers['root'] = '';
    const action: SSHRule['action'] =
      rule.action === 'accept'
        ? { accept: true, allowAgentForwarding: true, allowLocalPortForwarding: true, allowRemotePortForwarding: true }
        : {
            holdAndDelegate:
              'https://unused/machine/ssh/action/from/$SRC_NODE_ID/to/$DST_NODE_ID/ssh_user/$SSH_USER/local_user/$LOCAL_USER',
            allowAgentForwarding: true,
            allowLocalPortForwarding: true,
            allowRemotePortForwarding: true,
            ...(rule.checkPeriod ? { sessionDuration: rule.checkPeriod * 1e9 } : {}),
          };
    out.push({ perNode, deps, wildcard, sshUsers, action, ...(rule.acceptEnv ? { acceptEnv: rule.acceptEnv } : {}) });
  }
  return out;
}

// ---- per-node results ------------------------------------------------------

export interface NodeResult {
  packetFilter: FilterRule[];
  /** Peer node ids, ascending. */
  peers: number[];
  /** peer id → routes (beyond its own addresses) this node puts in that peer's AllowedIPs. */
  peerAllowedRoutes: Map<number, string[]>;
  primaryRoutes: string[];
  sshPolicy: SSHPolicy;
  /** nodeAttrs capabilities (attr names and app capabilities). */
  capabilities: Record<string, unknown[]>;
}

export class Engine {
  resolver: Resolver;
  units: Unit[] = [];
  ssh: SshUnit[] = [];
  private tpls: Template[] = [];
  private slots = new SelfSlots();
  /** mergeKey → first sequence number. */
  mergeOrder = new Map<string, number>();
  /** node id → seqs of unit-rules it receives / is a source of. */
  private recvIndex = new Map<number, Set<number>>();
  private srcIndex = new Map<number, Set<number>>();
  private bySeq = new Map<number, URule>();
  private cache = new Map<number, NodeResult>();
  private byDep = new Map<string, Set<number>>();
  private addrUnits = new Set<number>();

  constructor(
    public policy: Policy,
    readonly model: Model,
  ) {
    this.resolver = new Resolver(policy, model);
    this.rebuild();
  }

  rebuild(): void {
    this.resolver = new Resolver(this.policy, this.model);
    this.tpls = templates(this.policy);
    this.units = this.tpls.map((t, i) => compileUnit(this.resolver, t, i, this.slots));
    this.recvIndex.clear();
    this.srcIndex.clear();
    this.bySeq.clear();
    this.byDep.clear();
    this.addrUnits.clear();
    this.units.forEach((u, i) => {
      this.indexUnit(u, true);
      this.registerDeps(u, i);
    });
    this.computeMergeOrder();
    this.ssh = compileSsh(this.resolver);
    this.cache.clear();
    this.peerCache.clear();
    this.parCache.clear();
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

  private indexUnit(u: Unit, add: boolean): void {
    for (const r of u.rules) {
      if (add) this.bySeq.set(r.seq, r);
      else this.bySeq.delete(r.seq);
      for (const id of r.allReceivers) this.indexOne(this.recvIndex, id, r.seq, add);
      for (const id of r.srcNodes) this.indexOne(this.srcIndex, id, r.seq, add);
    }
  }

  private indexOne(idx: Map<number, Set<number>>, id: number, seq: number, add: boolean): void {
    let s = idx.get(id);
    if (add) {
      if (!s) idx.set(id, (s = new Set()));
      s.add(seq);
    } else s?.delete(seq);
  }

  private rulesOf(idx: Map<number, Set<number>>, id: number): URule[] {
    const out: URule[] = [];
    for (const seq of idx.get(id) ?? []) out.push(this.bySeq.get(seq)!);
    return out;
  }

  private computeMergeOrder(): void {
    this.mergeOrder.clear();
    for (const u of this.units) {
      for (const r of u.rules) {
        const cur = this.mergeOrder.get(r.mergeKey);
        if (cur === undefined || r.seq < cur) this.mergeOrder.set(r.mergeKey, r.seq);
      }
    }
  }

  /** All unit-rules in policy order (global, unreduced). */
  allRules(): URule[] {
    const out: URule[] = [];
    for (const u of this.units) out.push(...u.rules);
    return out;
  }

  /** The global (unreduced) filter: merged rules in order. */
  globalFilter(): FilterRule[] {
    return this.buildFilter(this.allRules(), null);
  }

  private buildFilter(rules: URule[], nodeId: number | null): FilterRule[] {
    const groups = new Map<string, URule[]>();
    for (const r of rules) {
      let g = groups.get(r.mergeKey);
      if (!g) groups.set(r.mergeKey, (g = []));
      g.push(r);
    }
    const keys = [...groups.keys()].sort((a, b) => this.mergeOrder.get(a)! - this.mergeOrder.get(b)!);
    const out: FilterRule[] = [];
    for (const k of keys) {
      const g = groups.get(k)!.sort((a, b) => a.seq - b.seq);
      const first = g[0]!;
      const entries: Entry[] = [];
      for (const r of g) {
        if (nodeId === null) entries.push(...r.entries);
        else {
          const mine = entriesOf(r).get(nodeId);
          if (mine) entries.push(...mine);
        }
      }
      if (entries.length === 0) continue;
      if (first.kind === 'net') {
        const dst: NetPortRange[] = entries.map((e) => ({ IP: e.ip, Ports: { First: e.ports.First, Last: e.ports.Last } }));
        // SrcIPs/IPProto arrays are shared between nodes: treat them as read-only.
        const rule: FilterRule = { SrcIPs: first.srcIPs as string[], DstPorts: dst };
        if (first.proto) rule.IPProto = first.proto;
        out.push(rule);
      } else {
        const dsts: string[] = [];
        for (const e of entries) for (const p of e.set.prefixes()) dsts.push(`${formatPrefixText(p)}`);
        out.push({ SrcIPs: first.srcIPs as string[], CapGrant: [{ Dsts: [...new Set(dsts)], CapMap: first.capMap! }] });
      }
    }
    return out;
  }

  packetFilter(id: number): FilterRule[] {
    return this.buildFilter(this.rulesOf(this.recvIndex, id), id);
  }

  /** Nodes with the same rule memberships share one peer computation. */
  private peerCache = new Map<string, number[]>();
  private stamp = new Uint32Array(0);
  private gen = 0;

  private ruleSig(rules: Set<number> | undefined): string {
    if (!rules || rules.size === 0) return '';
    return [...rules].sort((a, b) => a - b).join(',');
  }

  private unionSorted(lists: ReadonlyArray<readonly number[]>): number[] {
    let maxId = 0;
    for (const l of lists) if (l.length > 0 && l[l.length - 1]! > maxId) maxId = l[l.length - 1]!;
    if (maxId > 50_000_000) return mergeSorted(lists);
    if (this.stamp.length <= maxId) this.stamp = new Uint32Array(Math.max(maxId + 1, this.stamp.length * 2));
    const st = this.stamp;
    const g = ++this.gen;
    if (g === 0xffffffff) {
      st.fill(0);
      this.gen = 1;
    }
    const out: number[] = [];
    for (const l of lists) {
      for (let i = 0; i < l.length; i++) {
        const x = l[i]!;
        if (st[x] !== this.gen) {
          st[x] = this.gen;
          out.push(x);
        }
      }
    }
    if (out.length > maxId >> 4) {
      const sorted: number[] = [];
      for (let x = 0; x <= maxId; x++) if (st[x] === this.gen) sorted.push(x);
      return sorted;
    }
    return out.sort((a, b) => a - b);
  }

  peers(id: number): number[] {
    const recv = this.recvIndex.get(id);
    const src = this.srcIndex.get(id);
    const sig = `${this.ruleSig(recv)}/${this.ruleSig(src)}`;
    let all = this.peerCache.get(sig);
    if (!all) {
      const lists: Array<readonly number[]> = [];
      for (const q of recv ?? []) lists.push(this.bySeq.get(q)!.srcNodes);
      for (const q of src ?? []) lists.push(this.bySeq.get(q)!.allReceivers);
      all = this.unionSorted(lists);
      this.peerCache.set(sig, all);
    }
    // Drop the node itself.
    let lo = 0;
    let hi = all.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (all[mid] === id) return all.slice(0, mid).concat(all.slice(mid + 1));
      if (all[mid]! < id) lo = mid + 1;
      else hi = mid - 1;
    }
    return all.slice();
  }

  private parCache = new Map<string, Map<number, string[]>>();

  peerAllowedRoutes(id: number): Map<number, string[]> {
    const recv = this.recvIndex.get(id);
    const src = this.srcIndex.get(id);
    const sig = `${this.ruleSig(recv)}/${this.ruleSig(src)}`;
    let all = this.parCache.get(sig);
    if (!all) {
      const acc = new Map<number, Set<string>>();
      const add = (p: number, route: string): void => {
        let s = acc.get(p);
        if (!s) acc.set(p, (s = new Set()));
        s.add(route);
      };
      for (const q of src ?? []) for (const [p, route] of entryHits(this.bySeq.get(q)!)) add(p, route);
      for (const q of recv ?? []) for (const [p, route] of this.bySeq.get(q)!.srcRouteHits) add(p, route);
      all = new Map();
      for (const p of [...acc.keys()].sort((a, b) => a - b)) all.set(p, sortRoutes(acc.get(p)!));
      this.parCache.set(sig, all);
    }
    const out = new Map<number, string[]>();
    for (const [p, routes] of all) if (p !== id) out.set(p, routes);
    return out;
  }

  sshPolicy(id: number): SSHPolicy {
    const rules: SSHRule[] = [];
    for (const u of this.ssh) {
      const p = u.perNode.get(id);
      if (!p) continue;
      const rule: SSHRule = {
        principals: p.map((nodeIP) => ({ nodeIP })),
        sshUsers: { ...u.sshUsers },
        action: { ...u.action },
      };
      if (u.acceptEnv) rule.acceptEnv = u.acceptEnv.slice();
      rules.push(rule);
    }
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
        if (ids) hit = ids.includes(id);
        else if (t.alias.kind === 'wildcard') hit = true;
        else if (t.alias.kind === 'prefix') hit = IPSet.fromPrefix(t.alias.prefix).overlaps(n.ipSet);
        else if (t.alias.kind === 'host') hit = this.policy.hosts.get(t.alias.name)!.set.overlaps(n.ipSet);
        if (hit) break;
      }
      if (!hit) continue;
      for (const a of na.attr) caps[a] ??= [];
      if (na.app) for (const [k, v] of Object.entries(na.app)) caps[k] = [...(caps[k] ?? []), ...v];
    }
    return caps;
  }

  result(id: number): NodeResult | undefined {
    if (!this.model.nodes.has(id)) return undefined;
    let r = this.cache.get(id);
    if (!r) {
      r = {
        packetFilter: this.packetFilter(id),
        peers: this.peers(id),
        peerAllowedRoutes: this.peerAllowedRoutes(id),
        primaryRoutes: this.model.primaryRoutesOf(id),
        sshPolicy: this.sshPolicy(id),
        capabilities: this.capabilities(id),
      };
      this.cache.set(id, r);
    }
    return r;
  }

  // ---- incremental ---------------------------------------------------------

  /**
   * Recompiles the units a node change can affect and returns the ids whose
   * results may have changed. `before`/`after` are the node's old and new
   * records (either may be absent for joins/removals).
   */
  nodeChanged(before: NodeInfo | undefined, after: NodeInfo | undefined, primariesBefore: Map<string, number>): Set<number> {
    this.resolver = new Resolver(this.policy, this.model);
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
    const changedPrimaries: IPSet[] = [];
    const allPrefixes = new Set([...primariesBefore.keys(), ...this.model.primaries.keys()]);
    for (const p of allPrefixes) {
      if (primariesBefore.get(p) !== this.model.primaries.get(p)) {
        changedPrimaries.push(IPSet.fromPrefix(tryParsePrefix(p)!));
        routesChanged = true;
      }
    }
    const addrSet = IPSet.unionAll([...addr, ...changedPrimaries]);
    const exitChange = !!(before?.exitRoutes.length || after?.exitRoutes.length);
    const dirty = new Set<number>();
    for (const k of keys) for (const i of this.byDep.get(k) ?? []) dirty.add(i);
    for (const i of this.addrUnits) {
      if (dirty.has(i)) continue;
      const u = this.units[i]!;
      if ((routesChanged && u.usesWildcard) || u.sets.overlaps(addrSet) || (exitChange && u.sets.overlaps(INTERNET))) dirty.add(i);
    }
    const affected = new Set<number>();
    if (before) affected.add(before.id);
    if (after) affected.add(after.id);
    for (const i of dirty) this.recompileUnit(i, affected);
    if (dirty.size > 0) {
      this.computeMergeOrder();
      this.peerCache.clear();
    this.parCache.clear();
    }
    // Route-hit source side: rules whose src sets overlap changed routes.
    for (const id of affected) this.cache.delete(id);
    // SSH and primaries are cheap to recompute wholesale.
    const sshBefore = this.ssh;
    const sshDirty = (i: number): boolean => {
      const u = sshBefore[i]!;
      if (u.wildcard) return true;
      for (const k of keys) if (u.deps.has(k)) return true;
      return false;
    };
    this.ssh = compileSsh(this.resolver, sshDirty, sshBefore);
    this.sshAffected(sshBefore, this.ssh, affected);
    for (const p of allPrefixes) {
      const a = primariesBefore.get(p);
      const b = this.model.primaries.get(p);
      if (a !== b) {
        if (a !== undefined) affected.add(a);
        if (b !== undefined) affected.add(b);
      }
    }
    for (const id of affected) this.cache.delete(id);
    if (before && !after) {
      affected.delete(before.id);
      this.recvIndex.delete(before.id);
      this.srcIndex.delete(before.id);
    }
    return affected;
  }

  private sshAffected(a: SshUnit[], b: SshUnit[], affected: Set<number>): void {
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      if (a[i] === b[i]) continue;
      const x = a[i]?.perNode ?? new Map<number, string[]>();
      const y = b[i]?.perNode ?? new Map<number, string[]>();
      for (const [id, p] of x) if (y.get(id) !== p && !sameStrings(y.get(id), p)) affected.add(id);
      for (const id of y.keys()) if (!x.has(id)) affected.add(id);
    }
  }

  private recompileUnit(i: number, affected: Set<number>): void {
    const old = this.units[i]!;
    const next = compileUnit(this.resolver, this.tpls[i]!, i, this.slots, old);
    this.unregisterDeps(old, i);
    this.units[i] = next;
    this.registerDeps(next, i);
    const oldBySeq = new Map(old.rules.map((r) => [r.seq, r] as const));
    const nextBySeq = new Map(next.rules.map((r) => [r.seq, r] as const));
    for (const seq of new Set([...oldBySeq.keys(), ...nextBySeq.keys()])) {
      const a = oldBySeq.get(seq);
      const b = nextBySeq.get(seq);
      if (b) this.bySeq.set(seq, b);
      else this.bySeq.delete(seq);
      const none: readonly number[] = [];
      diffSorted(a?.allReceivers ?? none, b?.allReceivers ?? none, (x, added) => this.indexOne(this.recvIndex, x, seq, added));
      diffSorted(a?.srcNodes ?? none, b?.srcNodes ?? none, (x, added) => this.indexOne(this.srcIndex, x, seq, added));
      diffRule(a, b, affected);
    }
  }

  /** Recompiles everything (policy change); every node counts as changed. */
  setPolicy(policy: Policy): void {
    this.policy = policy;
    this.rebuild();
  }
}

const entryIndex = new WeakMap<URule, Map<number, Entry[]>>();

/** A unit-rule's destination entries grouped by receiving node (built once). */
function entriesOf(r: URule): Map<number, Entry[]> {
  let m = entryIndex.get(r);
  if (!m) {
    m = new Map();
    for (const e of r.entries) {
      for (const id of e.receivers) {
        let l = m.get(id);
        if (!l) m.set(id, (l = []));
        l.push(e);
      }
    }
    entryIndex.set(r, m);
  }
  return m;
}

const hitIndex = new WeakMap<URule, ReadonlyArray<readonly [number, string]>>();

/** All destination route hits of a unit-rule, flattened (built once). */
function entryHits(r: URule): ReadonlyArray<readonly [number, string]> {
  let h = hitIndex.get(r);
  if (!h) {
    const all: Array<readonly [number, string]> = [];
    for (const e of r.entries) if (e.routeHits.length > 0) for (const x of e.routeHits) all.push(x);
    h = all;
    hitIndex.set(r, h);
  }
  return h;
}

function sameStrings(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  if (!a || !b) return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function sameNums(a: readonly number[], b: readonly number[]): boolean {
  return a === b || a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Walks two ascending id lists, reporting ids only in `a` (added=false) or only in `b` (added=true). */
export function diffSorted(a: readonly number[], b: readonly number[], fn: (id: number, added: boolean) => void): void {
  if (a === b) return;
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i]! < b[j]!)) fn(a[i++]!, false);
    else if (i >= a.length || b[j]! < a[i]!) fn(b[j++]!, true);
    else {
      i++;
      j++;
    }
  }
}

function symDiff(a: readonly number[], b: readonly number[], out: Set<number>): void {
  diffSorted(a, b, (x) => out.add(x));
}

function sameHits(a: ReadonlyArray<readonly [number, string]>, b: ReadonlyArray<readonly [number, string]>): boolean {
  return a.length === b.length && a.every((x, i) => x[0] === b[i]![0] && x[1] === b[i]![1]);
}

/** Adds to `affected` the nodes whose results differ between two versions of one unit-rule. */
function diffRule(a: URule | undefined, b: URule | undefined, affected: Set<number>): void {
  if (a === b) return;
  if (!a || !b) {
    const r = (a ?? b)!;
    for (const x of r.allReceivers) affected.add(x);
    for (const x of r.srcNodes) affected.add(x);
    return;
  }
  const srcChanged = a.mergeKey !== b.mergeKey;
  if (srcChanged) {
    for (const x of a.allReceivers) affected.add(x);
    for (const x of b.allReceivers) affected.add(x);
  }
  if (!sameNums(a.srcNodes, b.srcNodes)) {
    symDiff(a.srcNodes, b.srcNodes, affected);
    for (const x of b.allReceivers) affected.add(x);
    for (const x of a.allReceivers) affected.add(x);
  }
  if (!sameHits(a.srcRouteHits, b.srcRouteHits)) for (const x of b.allReceivers) affected.add(x);
  const n = Math.max(a.entries.length, b.entries.length);
  let entriesChanged = false;
  for (let i = 0; i < n; i++) {
    const x = a.entries[i];
    const y = b.entries[i];
    if (!x || !y || x.ip !== y.ip || x.ports.First !== y.ports.First || x.ports.Last !== y.ports.Last) {
      entriesChanged = true;
      if (x) for (const id of x.receivers) affected.add(id);
      if (y) for (const id of y.receivers) affected.add(id);
      continue;
    }
    if (!sameNums(x.receivers, y.receivers)) {
      symDiff(x.receivers, y.receivers, affected);
      entriesChanged = true;
    }
    if (!sameHits(x.routeHits, y.routeHits)) {
      for (const id of a.srcNodes) affected.add(id);
      for (const id of b.srcNodes) affected.add(id);
    }
  }
  if (entriesChanged && !sameNums(a.allReceivers, b.allReceivers)) {
    // Sources see a different set of peers.
    for (const x of a.srcNodes) affected.add(x);
    for (const x of b.srcNodes) affected.add(x);
  }
}

function formatPrefixText(p: Prefix): string {
  const s = IPSet.fromPrefix(p).toStrings()[0]!;
  return s.includes('/') ? s : `${s}/${p.family === 4 ? 32 : 128}`;
}

export { EXIT_V4, EXIT_V6 };
