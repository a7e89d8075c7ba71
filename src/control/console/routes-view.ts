// The tenant-wide routes view (GET /tenants/{t}/routes): every routed prefix
// with the nodes that advertise or are approved for it, which one is primary
// and which are standbys, and the exit nodes in their own list.
import type { nodeView } from '../service.js';

type NodeView = ReturnType<typeof nodeView>;

const EXIT = new Set(['0.0.0.0/0', '::/0']);

export type RouterState = 'primary' | 'standby' | 'not_approved' | 'offline' | 'not_advertised' | 'expired';

export interface RouteRouter {
  node_id: number;
  node: string;
  online: boolean;
  advertised: boolean;
  approved: boolean;
  state: RouterState;
  relay_rtt_ms: number | null;
  last_seen: string | null;
}

export interface RouteEntry {
  prefix: string;
  primary: string | null;
  primary_node_id: number | null;
  /** When the current primary was elected. */
  primary_since: string | null;
  routers: RouteRouter[];
}

export interface ExitNodeEntry {
  node_id: number;
  node: string;
  online: boolean;
  advertised: string[];
  approved: boolean;
  relay_rtt_ms: number | null;
  last_seen: string | null;
}

export interface RoutesOverview {
  routes: RouteEntry[];
  exit_nodes: ExitNodeEntry[];
}

const routerSchema = {
  type: 'object',
  properties: {
    node_id: { type: 'integer' }, node: { type: 'string' }, online: { type: 'boolean' }, advertised: { type: 'boolean' }, approved: { type: 'boolean' },
    state: { type: 'string', enum: ['primary', 'standby', 'not_approved', 'offline', 'not_advertised', 'expired'] },
    relay_rtt_ms: { type: ['number', 'null'] }, last_seen: { type: ['string', 'null'] },
  },
} as const;

/** OpenAPI response schema of the view. */
export const ConsoleRoutesView = {
  type: 'object',
  properties: {
    routes: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          prefix: { type: 'string' }, primary: { type: ['string', 'null'] }, primary_node_id: { type: ['integer', 'null'] },
          primary_since: { type: ['string', 'null'] }, routers: { type: 'array', items: routerSchema },
        },
      },
    },
    exit_nodes: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          node_id: { type: 'integer' }, node: { type: 'string' }, online: { type: 'boolean' }, advertised: { type: 'array', items: { type: 'string' } },
          approved: { type: 'boolean' }, relay_rtt_ms: { type: ['number', 'null'] }, last_seen: { type: ['string', 'null'] },
        },
      },
    },
  },
} as const;

function cmpPrefix(a: string, b: string): number {
  const fa = a.includes(':') ? 6 : 4;
  const fb = b.includes(':') ? 6 : 4;
  return fa - fb || a.localeCompare(b, 'en', { numeric: true });
}

export function routesOverview(nodes: NodeView[], primaries: { prefix: string; node_id: number; elected_at: string }[]): RoutesOverview {
  const prim = new Map(primaries.map((p) => [p.prefix, p]));
  const byPrefix = new Map<string, RouteRouter[]>();
  const names = new Map(nodes.map((n) => [n.id, n.name]));
  const exits: ExitNodeEntry[] = [];
  for (const n of nodes) {
    const prefixes = new Set([...n.announced_routes, ...n.approved_routes]);
    for (const prefix of prefixes) {
      if (EXIT.has(prefix)) continue;
      const advertised = n.announced_routes.includes(prefix);
      const approved = n.approved_routes.includes(prefix);
      const state: RouterState = n.expired ? 'expired'
        : !advertised ? 'not_advertised'
        : !approved ? 'not_approved'
        : prim.get(prefix)?.node_id === n.id ? 'primary'
        : !n.online ? 'offline' : 'standby';
      const list = byPrefix.get(prefix) ?? [];
      list.push({ node_id: n.id, node: n.name, online: n.online, advertised, approved, state, relay_rtt_ms: n.relay_rtt_ms, last_seen: n.last_seen });
      byPrefix.set(prefix, list);
    }
    const exitAdv = n.announced_routes.filter((r) => EXIT.has(r));
    if (exitAdv.length) {
      exits.push({
        node_id: n.id, node: n.name, online: n.online, advertised: exitAdv.sort(),
        approved: exitAdv.every((r) => n.approved_routes.includes(r)), relay_rtt_ms: n.relay_rtt_ms, last_seen: n.last_seen,
      });
    }
  }
  const order: Record<RouterState, number> = { primary: 0, standby: 1, offline: 2, not_approved: 3, not_advertised: 4, expired: 5 };
  const routes = [...byPrefix].sort(([a], [b]) => cmpPrefix(a, b)).map(([prefix, routers]) => {
    const p = prim.get(prefix);
    return {
      prefix,
      primary: p ? (names.get(p.node_id) ?? null) : null,
      primary_node_id: p?.node_id ?? null,
      primary_since: p?.elected_at ?? null,
      routers: routers.sort((a, b) => order[a.state] - order[b.state] || a.node.localeCompare(b.node)),
    };
  });
  exits.sort((a, b) => a.node.localeCompare(b.node));
  return { routes, exit_nodes: exits };
}
