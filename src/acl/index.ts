// Public API of the ACL policy engine (pure: no I/O).
import { tryParsePrefix } from '../net/addr.js';
import { IPSet } from '../net/ipset.js';
import { Engine, type NodeResult } from './compile.js';
import { Model } from './model.js';
import { parsePolicy } from './parse.js';
import { runPolicyTests, runSshTests, type TestOutcome } from './policytests.js';
import { EXIT_V4, EXIT_V6, canonPrefix, sortRoutes } from './routes.js';
import type { AclNetwork, AclNode, Alias, FilterRule, Policy, SSHPolicy } from './types.js';

export { parsePolicy } from './parse.js';
export type { ParseResult } from './parse.js';
export {
  electPrimaries,
  pickPrimary,
  PrimaryElector,
  servingRoutes,
  setApprovedRoutes,
  sortRoutes,
  type ApproveResult,
  type ElectionNode,
} from './routes.js';
export { INTERNET, DEFAULT_POOL } from './model.js';
export type { NodeResult } from './compile.js';
export { PeerList, type IdVec } from './peerlist.js';
export { reachOf, type Reach, type ReachPeer, type ReachRoute, type ReachExit, type PortGrant } from './reach.js';
export type * from './types.js';

export type { TestOutcome } from './policytests.js';

/** One expectation of the `tests` block as check reports it. */
export interface TestResult {
  /** 1-based line and column of the entry in the policy text. */
  line: number;
  col: number;
  /** Index of the test in the block (0-based). */
  test: number;
  src: string;
  proto?: string;
  dst: string;
  expect: 'accept' | 'deny';
  pass: boolean;
  message: string;
}

export interface CheckResult {
  valid: boolean;
  errors: string[];
  policy?: Policy;
  /** Every expectation of the `tests` block, passed or failed, in policy order (when a network was given and the policy parsed). */
  tests?: TestResult[];
}

/** Parse, validate and (when a network is given) run the policy's tests and sshTests. */
export function checkPolicy(text: string, net?: AclNetwork, file = 'policy.hujson'): CheckResult {
  const parsed = parsePolicy(text, file);
  if (!parsed.ok) return { valid: false, errors: parsed.errors };
  const policy = parsed.policy;
  if (!net) return { valid: true, errors: [], policy };
  if (policy.tests.length === 0 && policy.sshTests.length === 0) return { valid: true, errors: [], policy, tests: [] };
  const engine = new Engine(policy, new Model(net));
  const outcomes: TestOutcome[] = [];
  const failures = [...runPolicyTests(engine, outcomes), ...runSshTests(engine)];
  const tests = outcomes.map(({ pos, ...o }): TestResult => ({ line: pos.line, col: pos.col, ...o }));
  if (failures.length === 0) return { valid: true, errors: [], policy, tests };
  return {
    valid: false,
    errors: failures.map((f) => `${file}:${f.pos.line}:${f.pos.col}: test(s) failed: ${f.message}`),
    policy,
    tests,
  };
}

export interface CompiledNetwork {
  /** node id → its results. */
  nodes: Map<number, NodeResult>;
  /** prefix → primary node id. */
  primaries: Map<string, number>;
  /** The global (unreduced) filter. */
  globalFilter: FilterRule[];
}

export interface CompileOptions {
  /** Current HA primaries (prefix → node id); a healthy current primary is kept. */
  previousPrimaries?: ReadonlyMap<string, number>;
}

export function compileNetwork(policy: Policy, net: AclNetwork, opts: CompileOptions = {}): CompiledNetwork {
  const model = new Model(net, opts.previousPrimaries);
  const engine = new Engine(policy, model);
  const nodes = new Map<number, NodeResult>();
  for (const id of [...model.nodes.keys()].sort((a, b) => a - b)) nodes.set(id, engine.result(id)!);
  return { nodes, primaries: new Map(model.primaries), globalFilter: engine.globalFilter() };
}

function approverMatches(policy: Policy, model: Model, a: Alias, node: AclNode): boolean {
  const tagged = node.tags.length > 0;
  const ownerId = (): number | null => (node.user ? model.userIdOf(node.user) ?? model.userIdOf(`${node.user}@`) : null);
  switch (a.kind) {
    case 'tag':
      return node.tags.includes(a.name);
    case 'user': {
      if (tagged) return false;
      const uid = model.userIdOf(a.name);
      return uid !== null && uid === ownerId();
    }
    case 'group': {
      if (tagged) return false;
      const me = ownerId();
      if (me === null) return false;
      return (policy.groups.get(a.name) ?? []).some((tok) => model.userIdOf(tok) === me);
    }
    default:
      return false;
  }
}

/**
 * Routes among `announced` that auto-approval approves for the node. Exit
 * routes only through autoApprovers.exitNode; other routes when a
 * autoApprovers.routes key contains them. Tagged nodes match only through
 * their tags, never through the user who created them.
 */
export function autoApprove(policy: Policy, net: AclNetwork, nodeId: number, announced: string[]): string[] {
  const model = new Model({ users: net.users, nodes: [], pool: net.pool });
  const node = net.nodes.find((n) => n.id === nodeId);
  if (!node) return [];
  const out: string[] = [];
  for (const r of announced) {
    const c = canonPrefix(r);
    if (!c) continue;
    const p = tryParsePrefix(c)!;
    if (c === EXIT_V4 || c === EXIT_V6) {
      if (policy.autoApprovers.exitNode.some((a) => approverMatches(policy, model, a.alias, node))) out.push(c);
      continue;
    }
    const set = IPSet.fromPrefix(p);
    const hit = policy.autoApprovers.routes.some(
      (ar) =>
        ar.prefix.family === p.family &&
        ar.prefix.bits <= p.bits &&
        IPSet.fromPrefix(ar.prefix).containsSet(set) &&
        ar.approvers.some((a) => approverMatches(policy, model, a.alias, node)),
    );
    if (hit) out.push(c);
  }
  return sortRoutes(out);
}

/** Approved routes after auto-approval for every node (auto-approval only adds). */
export function applyAutoApproval(policy: Policy, net: AclNetwork): AclNetwork {
  return {
    ...net,
    nodes: net.nodes.map((n) => ({
      ...n,
      approved_routes: sortRoutes([...n.approved_routes, ...autoApprove(policy, net, n.id, n.announced_routes)]),
    })),
  };
}

/**
 * Keeps compiled per-node results current as the tenant changes, recompiling
 * only the rules and nodes a change touches. changedNodes() tells the server
 * which nodes need a new map; every other node's result() is the very same
 * object as before. Results share structure with each other and with later
 * results: treat them as read-only. A result's peers is a PeerList, a view of
 * an id vector shared by the nodes with the same rule memberships.
 */
export class IncrementalCompiler {
  private model: Model;
  private engine: Engine;
  private changed = new Set<number>();
  /** Every node is reported (construction or a policy change): no need to compare results. */
  private all = true;

  constructor(policy: Policy, net: AclNetwork, opts: CompileOptions = {}) {
    this.model = new Model(net, opts.previousPrimaries);
    this.engine = new Engine(policy, this.model);
    for (const id of this.model.nodes.keys()) this.changed.add(id);
  }

  private apply(mutate: () => void, id: number): void {
    const before = this.model.nodes.get(id);
    // The model replaces (never mutates) its primaries map on a change.
    const prim = this.model.primaries;
    mutate();
    const after = this.model.nodes.get(id);
    for (const x of this.engine.nodeChanged(before, after, prim)) this.changed.add(x);
  }

  nodeJoined(node: AclNode): void {
    this.apply(() => this.model.addNode(node), node.id);
  }

  nodeRemoved(id: number): void {
    this.apply(() => this.model.removeNode(id), id);
    this.changed.delete(id);
  }

  private update(id: number, patch: Partial<AclNode>): void {
    const n = this.model.nodes.get(id);
    if (!n) return;
    this.apply(() => this.model.replaceNode({ ...n.raw, ...patch }), id);
  }

  /** Sets the node's approved routes (the list replaces the previous one). */
  routesApproved(id: number, routes: string[]): void {
    this.update(id, { approved_routes: routes.slice() });
  }

  routesAnnounced(id: number, routes: string[]): void {
    this.update(id, { announced_routes: routes.slice() });
  }

  setOnline(id: number, online: boolean): void {
    this.update(id, { online });
  }

  setHealthy(id: number, healthy: boolean): void {
    this.update(id, { healthy });
  }

  setPolicy(policy: Policy): void {
    this.engine.setPolicy(policy);
    for (const id of this.model.nodes.keys()) this.changed.add(id);
    this.all = true;
  }

  result(nodeId: number): NodeResult | undefined {
    return this.engine.result(nodeId);
  }

  primaries(): Map<string, number> {
    return new Map(this.model.primaries);
  }

  /**
   * Node ids whose results changed since the last call (then cleared),
   * ascending. Exact: the candidates' new results are computed here and a
   * node whose result is deep-equal to the one before keeps that result
   * object and is not reported. After construction or setPolicy every node
   * is reported (and results are computed on demand).
   */
  changedNodes(): number[] {
    const ids = [...this.changed].filter((id) => this.model.nodes.has(id)).sort((a, b) => a - b);
    this.changed.clear();
    if (this.all) {
      this.all = false;
      this.engine.forgetPrevious();
      return ids;
    }
    return this.engine.settle(ids);
  }
}

// ---- JSON view (CLI / conformance) -----------------------------------------

export interface CompiledJson {
  valid: true;
  packet_filter: Record<string, FilterRule[]>;
  peers: Record<string, string[]>;
  peer_allowed_routes: Record<string, Record<string, string[]>>;
  primary_routes: Record<string, string[]>;
  approved_routes_after_autoapproval: Record<string, string[]>;
  ssh_policy: Record<string, SSHPolicy>;
}

/**
 * Compiles the network as given and renders everything keyed by node name;
 * approved_routes_after_autoapproval shows what auto-approval would add.
 */
export function compileToJson(policy: Policy, net: AclNetwork): CompiledJson {
  const approved = applyAutoApproval(policy, net);
  const compiled = compileNetwork(policy, net);
  const name = new Map(approved.nodes.map((n) => [n.id, n.name]));
  const byName = [...approved.nodes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const out: CompiledJson = {
    valid: true,
    packet_filter: {},
    peers: {},
    peer_allowed_routes: {},
    primary_routes: {},
    approved_routes_after_autoapproval: {},
    ssh_policy: {},
  };
  for (const n of byName) {
    const r = compiled.nodes.get(n.id)!;
    out.packet_filter[n.name] = r.packetFilter;
    out.peers[n.name] = r.peers.map((p) => name.get(p)!).sort();
    const par: Record<string, string[]> = {};
    for (const [p, routes] of r.peerAllowedRoutes) par[name.get(p)!] = routes;
    if (Object.keys(par).length > 0) out.peer_allowed_routes[n.name] = par;
    if (r.primaryRoutes.length > 0) out.primary_routes[n.name] = r.primaryRoutes;
    out.approved_routes_after_autoapproval[n.name] = sortRoutes(n.approved_routes);
    out.ssh_policy[n.name] = r.sshPolicy;
  }
  return out;
}
