// The control server's only link to the ACL engine (src/acl). Everything the
// server needs from a policy goes through this file, so when the engine's API
// moves only this file changes.
import { parse as parseJsonc, type ParseError } from 'jsonc-parser';
import {
  autoApprove as aclAutoApprove,
  electPrimaries as aclElectPrimaries,
  checkPolicy,
  compileNetwork,
  IncrementalCompiler,
  parsePolicy,
  reachOf,
  type AclNetwork,
  type AclNode,
  type AclUser,
  type PeerList,
  type Policy,
  type Reach,
  type TestResult,
} from '../acl/index.js';

export type { AclNetwork, AclNode, AclUser, Reach, ReachPeer, ReachRoute, ReachExit, PortGrant, TestResult } from '../acl/index.js';
export { PeerList } from '../acl/index.js';

export interface PolicyCheck {
  valid: boolean;
  errors: string[];
}

/** What one node may see, as the server puts it into that node's map. */
export interface NodeView {
  /**
   * Ids of the peers this node may reach or be reached by, ascending. A
   * read-only list shared with other nodes' views (iterate it, or use
   * length/at/includes/some/filter/equals); PeerList.EMPTY for none.
   */
  peers: PeerList;
  /** Per peer id: the routes (beyond its own addresses) this node sends to it. */
  peerRoutes: Map<number, string[]>;
  /** Opaque to the server: handed to the node as-is. */
  packetFilter: unknown;
  sshPolicy: unknown;
  /** Routes this node is primary for. */
  primaryRoutes: string[];
}

/** Per-tenant compiled state that follows the tenant's changes incrementally. */
export interface TenantCompiler {
  nodeJoined(n: AclNode): void;
  nodeRemoved(id: number): void;
  /** Applies the differences between two versions of one node. */
  nodeChanged(prev: AclNode, next: AclNode): void;
  setPolicy(text: string): void;
  view(nodeId: number): NodeView | undefined;
  primaries(): Map<string, number>;
  /** Node ids whose compiled results changed since the last call. */
  changedNodes(): number[];
}

export const DEFAULT_POLICY = `// Larktun policy (HuJSON). The default lets every node of the tenant reach every other.
{
  "acls": [
    { "action": "accept", "src": ["*"], "dst": ["*:*"] },
  ],
}
`;

export const ENGINE_NAME = 'acl';

// Parsing is pure and texts repeat (every announce re-runs auto-approval with
// the live policy), so the last few parses are kept.
const parsed = new Map<string, Policy | null>();
function parseCached(text: string): Policy | null {
  const hit = parsed.get(text);
  if (hit !== undefined) return hit;
  const r = parsePolicy(text);
  const p = r.ok ? r.policy : null;
  if (parsed.size >= 8) parsed.delete(parsed.keys().next().value as string);
  parsed.set(text, p);
  return p;
}

/**
 * Policies at least this long are never parsed on the server's event loop
 * (a 750 KB policy takes most of a second): a compile worker reduces them to
 * their "facts" — groups, tagOwners and autoApprovers, the only parts tag
 * ownership and auto-approval read — and the event loop parses that small text.
 */
export const FACTS_MIN_BYTES = 64 * 1024;

// policy text → its facts text, filled by the compile workers (bounded).
const factsOf = new Map<string, string>();

/** Records the facts of a large policy (from a compile worker). */
export function rememberFacts(text: string, facts: string): void {
  if (text.length < FACTS_MIN_BYTES || factsOf.has(text)) return;
  if (factsOf.size >= 32) factsOf.delete(factsOf.keys().next().value as string);
  factsOf.set(text, facts);
}

/** True when the event loop can read this policy's tag owners and auto-approvers without a long parse. */
export function factsKnown(text: string): boolean {
  return text.length < FACTS_MIN_BYTES || factsOf.has(text);
}

/** The policy as tag ownership and auto-approval read it (only those parts for a large one). */
function factsPolicy(text: string): Policy | null {
  if (text.length < FACTS_MIN_BYTES) return parseCached(text);
  const f = factsOf.get(text);
  // Not known yet (another replica stored it, or this process just started):
  // parsed here once, which is what factsKnown() lets callers avoid.
  return parseCached(f ?? text);
}

const topKeys = ['groups', 'tagowners', 'autoapprovers'];

/**
 * The facts text of a policy: a HuJSON object with only its groups,
 * tagOwners and autoApprovers (which refer to nothing else), or null when
 * the text is not an object. Runs in a compile worker.
 */
export function policyFacts(text: string): string | null {
  const errors: ParseError[] = [];
  const v: unknown = parseJsonc(text, errors, { allowTrailingComma: true, disallowComments: false });
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return null;
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) if (topKeys.includes(k.toLowerCase())) out[k] = val;
  return JSON.stringify(out);
}

export function checkPolicyText(text: string, net: AclNetwork): PolicyCheck {
  const r = checkPolicy(text, net);
  return { valid: r.valid, errors: r.errors };
}

/** The subset of `announced` that the policy's autoApprovers approve for the node. */
export function autoApproveRoutes(text: string, net: AclNetwork, nodeId: number, announced: string[]): string[] {
  const p = factsPolicy(text);
  return p ? aclAutoApprove(p, net, nodeId, announced) : [];
}

/** Tags the policy defines (the keys of tagOwners). */
export function definedTags(text: string): Set<string> {
  return new Set(factsPolicy(text)?.tagOwners.keys() ?? []);
}

function tokenIsUser(token: string, u: AclUser): boolean {
  const t = token.toLowerCase();
  if (t.endsWith('@')) return t.slice(0, -1) === u.name.toLowerCase() || (u.email ?? '').toLowerCase() === t;
  return t === (u.email ?? '').toLowerCase() || t === u.name.toLowerCase();
}

/** True when `user` may apply `tag` according to tagOwners (users, groups, autogroup:member). */
export function userOwnsTag(text: string, tag: string, user: AclUser | null): boolean {
  const p = factsPolicy(text);
  const owners = p?.tagOwners.get(tag);
  if (!p || !owners || !user) return false;
  return owners.some((o) => {
    if (o === 'autogroup:member') return true;
    if (o.startsWith('group:')) return (p.groups.get(o) ?? []).some((m) => tokenIsUser(m, user));
    return tokenIsUser(o, user);
  });
}

class AclTenantCompiler implements TenantCompiler {
  private readonly inner: IncrementalCompiler;
  constructor(policy: Policy, net: AclNetwork, previous?: ReadonlyMap<string, number>) {
    this.inner = new IncrementalCompiler(policy, net, previous ? { previousPrimaries: previous } : {});
  }
  nodeJoined(n: AclNode): void {
    this.inner.nodeJoined(n);
  }
  nodeRemoved(id: number): void {
    this.inner.nodeRemoved(id);
  }
  nodeChanged(prev: AclNode, next: AclNode): void {
    const same = (a: string[], b: string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
    const identity =
      prev.name !== next.name || prev.user !== next.user || !same(prev.tags, next.tags) ||
      prev.ipv4 !== next.ipv4 || prev.ipv6 !== next.ipv6;
    if (identity) {
      this.inner.nodeRemoved(prev.id);
      this.inner.nodeJoined(next);
      return;
    }
    if (!same(prev.announced_routes, next.announced_routes)) this.inner.routesAnnounced(next.id, next.announced_routes);
    if (!same(prev.approved_routes, next.approved_routes)) this.inner.routesApproved(next.id, next.approved_routes);
    if (prev.online !== next.online) this.inner.setOnline(next.id, next.online);
    if ((prev.healthy ?? true) !== (next.healthy ?? true)) this.inner.setHealthy(next.id, next.healthy ?? true);
  }
  setPolicy(text: string): void {
    const p = parseCached(text);
    if (p) this.inner.setPolicy(p);
  }
  view(nodeId: number): NodeView | undefined {
    const r = this.inner.result(nodeId);
    if (!r) return undefined;
    return { peers: r.peers, peerRoutes: r.peerAllowedRoutes, packetFilter: r.packetFilter, sshPolicy: r.sshPolicy, primaryRoutes: r.primaryRoutes };
  }
  primaries(): Map<string, number> {
    return this.inner.primaries();
  }
  changedNodes(): number[] {
    return this.inner.changedNodes();
  }
}

/** A compiler for a stored (hence valid) policy; an unparseable one yields null. */
export function newTenantCompiler(text: string, net: AclNetwork): TenantCompiler | null {
  const p = parseCached(text);
  return p ? new AclTenantCompiler(p, net) : null;
}

/**
 * Primary election with the current primaries as input: a healthy current
 * primary is kept (anti-flap), otherwise the lowest id among online candidates.
 */
export function electWithPrevious(nodes: AclNode[], previous: ReadonlyMap<string, number>): Map<string, number> {
  return aclElectPrimaries(nodes, previous);
}

/** A compiler whose election starts from `previous` (the stored primaries). */
export function newTenantCompilerFrom(text: string, net: AclNetwork, previous: ReadonlyMap<string, number>): TenantCompiler | null {
  const p = parseCached(text);
  return p ? new AclTenantCompiler(p, net, previous) : null;
}

/** Stateless primary election over stored nodes (lowest id among online candidates). */
export function currentPrimaries(nodes: AclNode[]): Map<string, number> {
  return aclElectPrimaries(nodes);
}

/** What a relay needs of a tenant's compiled policy: the primaries and the global filter. */
export interface RelayCompiled {
  primaries: Map<string, number>;
  globalFilter: unknown;
  /**
   * Per node that asked for an exit node (`useExitNode`): the exit node it
   * uses, when the wish names (by name or id) a node whose approved routes
   * include 0.0.0.0/0 and the policy gives the asking node that node's
   * 0.0.0.0/0 (the same test that marks a peer as a usable exit in its map).
   */
  exitFor: Map<number, number>;
}

/**
 * Compiles a stored policy for a relay's view (a whole-tenant compile: the
 * server runs it in a compile worker, see compile/pool.ts); an unparseable one yields null.
 * `useExitNode`: node id → its hostinfo's use_exit_node (a node name or id).
 */
export function compileForRelayNow(
  text: string,
  net: AclNetwork,
  previousPrimaries?: ReadonlyMap<string, number>,
  useExitNode?: ReadonlyMap<number, string>,
): RelayCompiled | null {
  const p = parseCached(text);
  if (!p) return null;
  const c = compileNetwork(p, net, previousPrimaries ? { previousPrimaries } : {});
  const exitFor = new Map<number, number>();
  if (useExitNode && useExitNode.size > 0) {
    const exits = net.nodes.filter((n) => n.approved_routes.includes('0.0.0.0/0'));
    for (const [nodeId, wish] of useExitNode) {
      const routes = c.nodes.get(nodeId)?.peerAllowedRoutes;
      if (!routes) continue;
      const exit = exits.find((e) => e.id !== nodeId && (e.name === wish || String(e.id) === wish) && (routes.get(e.id) ?? []).includes('0.0.0.0/0'));
      if (exit) exitFor.set(nodeId, exit.id);
    }
  }
  return { primaries: c.primaries, globalFilter: c.globalFilter, exitFor };
}

/** Size caps on a policy, checked after parsing. */
export interface PolicySizeCaps {
  maxHosts: number;
  maxRules: number;
  maxEntries: number;
}

export interface CandidateCheck {
  valid: boolean;
  errors: string[];
  /** Every expectation of the `tests` block with its outcome (empty when the policy does not parse or has none). */
  tests: TestResult[];
  /** The first cap the policy exceeds. */
  over: { limit: keyof PolicySizeCaps; value: number; max: number } | null;
  /** The compiled state (every node's result computed) when valid. */
  compiler: TenantCompiler | null;
}

/**
 * Everything storing `text` would cost, done now: parse, size caps, the
 * policy's tests, and a complete compile over `net` (every node's result).
 * Runs in a compile worker, under its time budget.
 */
export function compileCandidate(text: string, net: AclNetwork, primaries: ReadonlyMap<string, number>, caps: PolicySizeCaps): CandidateCheck {
  const r = parseWithCaps(text, caps);
  if (!r.ok) return { valid: false, errors: r.errors, tests: [], over: r.over, compiler: null };
  const p = r.policy;
  let tests: TestResult[] = [];
  if (p.tests.length > 0 || p.sshTests.length > 0) {
    const c = checkPolicy(text, net);
    tests = c.tests ?? [];
    if (!c.valid) return { valid: false, errors: c.errors, tests, over: null, compiler: null };
  }
  const compiler = new AclTenantCompiler(p, net, primaries);
  for (const n of net.nodes) compiler.view(n.id);
  return { valid: true, errors: [], tests, over: null, compiler };
}

type Capped = { ok: true; policy: Policy } | { ok: false; errors: string[]; over: CandidateCheck['over'] };

/** Parses `text` and checks it against the size caps (the first step of every candidate compile). */
function parseWithCaps(text: string, caps: PolicySizeCaps): Capped {
  const r = parsePolicy(text);
  if (!r.ok) return { ok: false, errors: r.errors, over: null };
  const p = r.policy;
  const groupSize = (a: { alias: { kind: string; name?: string } }): number =>
    a.alias.kind === 'group' && a.alias.name !== undefined ? Math.max(1, p.groups.get(a.alias.name)?.length ?? 1) : 1;
  let entries = 0;
  for (const a of p.acls) for (const x of [...a.src, ...a.dst]) entries += groupSize(x);
  for (const g of p.grants) for (const x of [...g.src, ...g.dst]) entries += groupSize(x);
  const sizes: [keyof PolicySizeCaps, number][] = [
    ['maxHosts', p.hosts.size],
    ['maxRules', p.acls.length + p.grants.length + p.ssh.length],
    ['maxEntries', entries],
  ];
  for (const [limit, value] of sizes) {
    const max = caps[limit];
    if (value > max) {
      const what = limit === 'maxHosts' ? 'hosts entries' : limit === 'maxRules' ? 'rules (acls + grants + ssh)' : 'source and destination entries over all rules (groups expanded)';
      return { ok: false, errors: [`the policy has ${value} ${what}; the limit is ${max}`], over: { limit, value, max } };
    }
  }
  return { ok: true, policy: p };
}

export interface CandidatePreview {
  valid: boolean;
  errors: string[];
  over: CandidateCheck['over'];
  /** Per subject node id (in the order asked): its reach under the candidate. */
  reach: [number, Reach][];
}

/**
 * The reach of `subjects` (node ids of `net`) under a candidate policy, read
 * off the same compile the nodes' maps come from. The policy's tests are not
 * run (check does that): a draft whose test fails can still be previewed.
 * Runs in a compile worker, under its time budget.
 */
export function previewCandidate(text: string, net: AclNetwork, primaries: ReadonlyMap<string, number>, caps: PolicySizeCaps, subjects: number[]): CandidatePreview {
  const r = parseWithCaps(text, caps);
  if (!r.ok) return { valid: false, errors: r.errors, over: r.over, reach: [] };
  const inc = new IncrementalCompiler(r.policy, net, { previousPrimaries: primaries });
  const nodes = new Map(net.nodes.map((n) => [n.id, n]));
  const reach: [number, Reach][] = [];
  for (const id of subjects) {
    const n = nodes.get(id);
    if (n) reach.push([id, reachOf(n, nodes, (x) => inc.result(x))]);
  }
  return { valid: true, errors: [], over: null, reach };
}
