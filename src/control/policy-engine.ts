// The control server's only link to the ACL engine (src/acl). Everything the
// server needs from a policy goes through this file, so when the engine's API
// moves only this file changes.
import {
  autoApprove as aclAutoApprove,
  electPrimaries as aclElectPrimaries,
  checkPolicy,
  compileNetwork,
  IncrementalCompiler,
  parsePolicy,
  type AclNetwork,
  type AclNode,
  type AclUser,
  type PeerList,
  type Policy,
} from '../acl/index.js';

export type { AclNetwork, AclNode, AclUser } from '../acl/index.js';
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
  if (parsed.size >= 16) parsed.delete(parsed.keys().next().value as string);
  parsed.set(text, p);
  return p;
}

export function checkPolicyText(text: string, net: AclNetwork): PolicyCheck {
  const r = checkPolicy(text, net);
  return { valid: r.valid, errors: r.errors };
}

/** The subset of `announced` that the policy's autoApprovers approve for the node. */
export function autoApproveRoutes(text: string, net: AclNetwork, nodeId: number, announced: string[]): string[] {
  const p = parseCached(text);
  return p ? aclAutoApprove(p, net, nodeId, announced) : [];
}

/** Tags the policy defines (the keys of tagOwners). */
export function definedTags(text: string): Set<string> {
  return new Set(parseCached(text)?.tagOwners.keys() ?? []);
}

function tokenIsUser(token: string, u: AclUser): boolean {
  const t = token.toLowerCase();
  if (t.endsWith('@')) return t.slice(0, -1) === u.name.toLowerCase() || (u.email ?? '').toLowerCase() === t;
  return t === (u.email ?? '').toLowerCase() || t === u.name.toLowerCase();
}

/** True when `user` may apply `tag` according to tagOwners (users, groups, autogroup:member). */
export function userOwnsTag(text: string, tag: string, user: AclUser | null): boolean {
  const p = parseCached(text);
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
 * Compiles a stored policy for a relay's view; an unparseable one yields null.
 * `useExitNode`: node id → its hostinfo's use_exit_node (a node name or id).
 */
export function compileForRelay(
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
