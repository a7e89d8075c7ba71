// From a network map (what the control server streams to a node) and the
// node's preferences to what the data plane and the OS must look like: the
// relay link (peer), the forwarding table, the packet filter and the routes.
// Pure: the managed daemon applies the result; tests check it without root.
//
// Topology: every packet goes through one relay. The node's id on the link is
// the map's `link_id`, the relay's is `relay_link_id`. The table sends the
// node's own addresses (and, on a router, its approved routes; on an exit node
// everything) to the TUN, and peers' addresses, accepted routes and — with an
// exit node in use — the default routes to the relay.
import { formatPrefix, parseHostPort, parsePrefix, type Prefix } from '../net/addr.js';
import type { FwdRule } from '../net/lpm.js';
import type { PeerSpec } from '../dataplane/engine.js';
import type { FilterRule } from '../acl/index.js';
import type { Prefs } from './prefs.js';
import type { MapPeer, MapRelay, NetworkMap } from '../control/netmap.js';

export type { MapPeer, MapRelay } from '../control/netmap.js';

/** A network map as the control server streams it (src/control/netmap.ts), with the packet filter typed. */
export type NodeMap = Omit<NetworkMap, 'packet_filter'> & { packet_filter: FilterRule[] | null };

export class MapError extends Error {
  override name = 'MapError';
}

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Checks the parts of a map the daemon relies on; throws MapError naming the first bad field. */
export function checkMap(v: unknown): NodeMap {
  if (!isObj(v)) throw new MapError('map is not an object');
  const need = (cond: boolean, what: string): void => {
    if (!cond) throw new MapError(`map: ${what}`);
  };
  need(typeof v['version'] === 'number', 'version must be a number');
  need(isObj(v['self']), 'self must be an object');
  const self = v['self'] as Record<string, unknown>;
  need(Array.isArray(self['addresses']), 'self.addresses must be a list');
  need(Array.isArray(v['peers']), 'peers must be a list');
  need(Array.isArray(v['relays']), 'relays must be a list');
  need(Array.isArray(v['online']), 'online must be a list');
  for (const r of v['relays'] as unknown[]) {
    need(isObj(r) && typeof r['link_id'] === 'number' && typeof r['relay_link_id'] === 'number' && typeof r['psk'] === 'string' && /^[0-9a-f]{64}$/.test(r['psk']) && Array.isArray(r['endpoints']), 'relays[] needs link_id, relay_link_id, a 64-hex psk and endpoints');
  }
  return v as unknown as NodeMap;
}

/**
 * The relay every node of the tenant homes on (the choice must agree across
 * nodes, as relays do not forward to each other): a live one first, then the
 * tenant's own (dedicated) before shared ones, then the lowest id; only relays
 * with a usable endpoint. Maps from servers without `live` count every relay live.
 */
export function homeRelay(relays: readonly MapRelay[]): MapRelay | null {
  const rank = (r: MapRelay): number => (r.live === false ? 2 : 0) + (r.dedicated === true ? 0 : 1);
  return [...relays]
    .filter((r) => r.endpoints.some((e) => parseHostPort(e) !== null))
    .sort((a, b) => rank(a) - rank(b) || a.id - b.id)[0] ?? null;
}

/** A patch carries only the changed top-level sections. */
export function applyPatch(map: NodeMap, patch: Record<string, unknown>): NodeMap {
  return checkMap({ ...map, ...patch });
}

/** Presence delta ("peers" event): peer id → online. */
export function applyPresence(map: NodeMap, version: number, online: Record<string, boolean>): NodeMap {
  const on = new Set(map.online);
  for (const [id, o] of Object.entries(online)) {
    if (o) on.add(Number(id));
    else on.delete(Number(id));
  }
  return { ...map, version, online: [...on].sort((a, b) => a - b) };
}

export interface OsPlan {
  addresses: string[];
  routes: string[];
  exitNode: boolean;
  allowLan: boolean;
  forwarding: boolean;
  masquerade: boolean;
}

export interface DataplanePlan {
  relay: MapRelay | null;
  /** The relay as the engine's one peer (none without a relay). */
  peers: PeerSpec[];
  rules: FwdRule[];
  filter: FilterRule[];
  os: OsPlan;
  /** The exit node in use (the map's choice), or why the wished one is not used. */
  exitNode: { id: number; name: string } | null;
  exitProblem: string | null;
  /** Peer routes installed because of --accept-routes. */
  routesInUse: string[];
  /** Routes this node offers that the server approved. */
  servingRoutes: string[];
}

const ALL4 = parsePrefix('0.0.0.0/0');
const ALL6 = parsePrefix('::/0');
/** Destinations that never leave the machine through the overlay. */
const LOCAL_ONLY = ['224.0.0.0/4', '255.255.255.255/32', '169.254.0.0/16', 'ff00::/8', 'fe80::/10'].map((s) => parsePrefix(s));
const isDefault = (s: string): boolean => s === '0.0.0.0/0' || s === '::/0';

function prefixOrNull(s: string): Prefix | null {
  try {
    return parsePrefix(s);
  } catch {
    return null;
  }
}

/** Finds a peer by name, DNS name (with or without the tenant base) or overlay IP. */
export function findPeer(map: NodeMap, wanted: string): MapPeer | undefined {
  const w = wanted.toLowerCase().replace(/\.$/, '');
  return map.peers.find((p) => {
    if (p.name.toLowerCase() === w || `${p.name}.${map.dns.base}`.toLowerCase() === w) return true;
    return p.addresses.some((a) => a.split('/')[0] === wanted);
  });
}

export function planFromMap(map: NodeMap, prefs: Prefs): DataplanePlan {
  const relay = homeRelay(map.relays);
  const target = relay ? relay.relay_link_id : -1;
  const rules: FwdRule[] = [];
  const add = (dst: Prefix, to: number): void => {
    rules.push({ src: dst.family === 4 ? ALL4 : ALL6, dst, action: 'forward', target: to });
  };
  const sources: Prefix[] = [];
  // Own addresses and what this node serves go to the TUN.
  for (const a of map.self.addresses) {
    const p = prefixOrNull(a);
    if (p) add(p, 0);
  }
  const servingRoutes = map.self.approved_routes.filter((r) => !isDefault(r));
  const isExit = map.self.approved_routes.includes('0.0.0.0/0') && prefs.advertiseExitNode;
  for (const r of servingRoutes) {
    const p = prefixOrNull(r);
    if (p && prefs.advertiseRoutes.includes(r)) add(p, 0);
  }
  if (isExit) {
    add(ALL4, 0);
    add(ALL6, 0);
  }
  // Peers: their addresses always; their routes with --accept-routes.
  const routesInUse = new Set<string>();
  const peerDsts: string[] = [];
  const exitPeer = map.exit_node === null ? undefined : map.peers.find((p) => p.id === map.exit_node);
  for (const peer of map.peers) {
    for (const a of peer.allowed_ips) {
      const own = peer.addresses.includes(a);
      if (!own && isDefault(a)) continue;
      if (!own && !prefs.acceptRoutes) continue;
      const p = prefixOrNull(a);
      if (!p) continue;
      if (target > 0) add(p, target);
      sources.push(p);
      if (own) peerDsts.push(a);
      else routesInUse.add(formatPrefix(p));
    }
  }
  let exitNode: DataplanePlan['exitNode'] = null;
  let exitProblem: string | null = null;
  if (prefs.exitNode !== null) {
    if (exitPeer && !isExit) {
      exitNode = { id: exitPeer.id, name: exitPeer.name };
      if (target > 0) {
        add(ALL4, target);
        add(ALL6, target);
      }
      sources.push(ALL4, ALL6);
    } else {
      const named = findPeer(map, prefs.exitNode);
      exitProblem = !named
        ? `exit node "${prefs.exitNode}" is not a peer of this node`
        : !named.exit_node
          ? `"${named.name}" is not offered to this node as an exit node (not an approved exit node, or the policy does not grant autogroup:internet through it)`
          : `exit node "${named.name}" is being set up`;
    }
  }
  // Never into the tunnel: multicast, broadcast and link-local destinations. The
  // kernel's own chatter on the TUN (MLD reports, router solicitations, IGMP)
  // would otherwise ride an exit node's default route and reach the relay from a
  // source no link may use. Dropped here, counted as drop_policy.
  for (const p of LOCAL_ONLY) rules.push({ src: p.family === 4 ? ALL4 : ALL6, dst: p, action: 'drop', target: 0 });
  // Longest destination first is the table's job; duplicates (a peer address that
  // is also a route) keep the first, i.e. the TUN for our own.
  const seen = new Set<string>();
  const uniq = rules.filter((r) => {
    const k = formatPrefix(r.dst);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  const peers: PeerSpec[] = relay
    ? [
        {
          id: relay.relay_link_id,
          localId: relay.link_id,
          name: relay.name,
          endpoint: parseHostPort(relay.endpoints.find((e) => parseHostPort(e) !== null)!)!,
          allowedSrc: sources.length ? sources : [],
          roam: false,
          psk: Buffer.from(relay.psk, 'hex'),
        },
      ]
    : [];
  const routes = [...new Set([...peerDsts, ...routesInUse])].sort();
  return {
    relay,
    peers,
    rules: uniq,
    filter: Array.isArray(map.packet_filter) ? map.packet_filter : [],
    os: {
      addresses: map.self.addresses,
      routes,
      exitNode: exitNode !== null,
      allowLan: prefs.exitNodeAllowLanAccess,
      forwarding: servingRoutes.length > 0 || isExit,
      masquerade: isExit || (servingRoutes.length > 0 && prefs.snatSubnetRoutes),
    },
    exitNode,
    exitProblem,
    routesInUse: [...routesInUse].sort(),
    servingRoutes,
  };
}
