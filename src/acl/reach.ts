// What one node may reach and be reached by, read off compiled results (the
// packet filters and peer routes the nodes' maps carry). Nothing here decides
// ACL semantics: a node may send to a peer exactly when the peer's packet
// filter accepts the node's addresses, which is what the peer enforces.
import { IPSet } from '../net/ipset.js';
import { INTERNET } from './model.js';
import { EXIT_V4, EXIT_V6 } from './routes.js';
import type { NodeResult } from './compile.js';
import type { AclNode, FilterRule } from './types.js';

/** Allowed traffic: these protocols to these ports ("*" = all ports). */
export interface PortGrant {
  protocols: string[];
  ports: string;
}

export interface ReachPeer {
  id: number;
  name: string;
  addresses: string[];
  tags: string[];
  user: string | null;
  ports: PortGrant[];
}

export interface ReachRoute {
  prefix: string;
  via: { id: number; name: string };
  ports: PortGrant[];
}

export interface ReachExit {
  id: number;
  name: string;
  ports: PortGrant[];
}

export interface Reach {
  /** Peers whose own addresses this node may send to, with what. */
  peers: ReachPeer[];
  /** Subnet routes this node may use (through the router that carries them for it). */
  routes: ReachRoute[];
  /** Exit nodes this node may use. */
  exitNodes: ReachExit[];
  /** Peers that may open connections to this node, with what. */
  inbound: ReachPeer[];
}

const PROTO_NAMES: Record<number, string> = { 1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 47: 'gre', 50: 'esp', 51: 'ah', 58: 'ipv6-icmp', 132: 'sctp' };
/** A rule without IPProto admits these (the engine's default). */
const DEFAULT_PROTOS = ['tcp', 'udp', 'icmp', 'ipv6-icmp'];

const protoNames = (r: FilterRule): string[] =>
  r.IPProto && r.IPProto.length > 0 ? r.IPProto.map((p) => PROTO_NAMES[p] ?? String(p)) : DEFAULT_PROTOS;

function portText(first: number, last: number): string {
  if (first === 0 && last === 65535) return '*';
  return first === last ? String(first) : `${first}-${last}`;
}

// Filters repeat the same few address strings many times.
const parsedSets = new Map<string, IPSet | null>();
function setOf(s: string): IPSet | null {
  let v = parsedSets.get(s);
  if (v === undefined) {
    v = IPSet.parse(s);
    if (parsedSets.size > 65536) parsedSets.clear();
    parsedSets.set(s, v);
  }
  return v;
}

// A rule's sources as one set, made once per rule object (filters are shared
// between results and a rule may list thousands of addresses).
const sources = new WeakMap<FilterRule, IPSet>();
function sourceHits(r: FilterRule, from: IPSet): boolean {
  let set = sources.get(r);
  if (!set) {
    set = IPSet.unionAll(r.SrcIPs.map((s) => setOf(s) ?? IPSet.EMPTY));
    sources.set(r, set);
  }
  return set.overlaps(from);
}

/**
 * Whether a rule's sources include one of `addrs` (a node's own addresses),
 * without building the set of its sources: each peer's filter is read once,
 * and a rule may list thousands of single addresses, which can only hit by
 * being one of ours (IPv4 text is canonical; IPv6 text is compared parsed).
 */
function sourceHitsAddrs(r: FilterRule, addrs: ReadonlySet<string>, from: IPSet): boolean {
  for (const s of r.SrcIPs) {
    if (s === '*' || addrs.has(s)) return true;
    if (s.includes('/') || s.includes('-') || s.includes(':')) {
      if (setOf(s)?.overlaps(from)) return true;
    }
  }
  return false;
}

/** Who: a set of addresses (checked against each rule's sources as one set), or a node's own addresses (scanned). */
type From = { set: IPSet } | { node: IPSet; addrs: ReadonlySet<string> };

/** What `filter` (a receiver's) accepts from `from` towards addresses in `to`. */
function grants(filter: readonly FilterRule[], from: From, to: IPSet): PortGrant[] {
  const out = new Map<string, PortGrant>();
  for (const r of filter) {
    if (!r.DstPorts || r.DstPorts.length === 0) continue;
    if (!('set' in from ? sourceHits(r, from.set) : sourceHitsAddrs(r, from.addrs, from.node))) continue;
    const protocols = protoNames(r);
    for (const d of r.DstPorts) {
      if (!(setOf(d.IP)?.overlaps(to) ?? false)) continue;
      const g = { protocols, ports: portText(d.Ports.First, d.Ports.Last) };
      const key = `${protocols.join(',')}/${g.ports}`;
      if (!out.has(key)) out.set(key, g);
    }
  }
  return [...out.values()];
}

const addrSet = (n: AclNode): IPSet =>
  IPSet.unionAll([n.ipv4, n.ipv6].filter((a): a is string => a !== null).map((a) => setOf(a) ?? IPSet.EMPTY));

const addresses = (n: AclNode): string[] => [n.ipv4, n.ipv6].filter((a): a is string => a !== null);

const peerOf = (n: AclNode, ports: PortGrant[]): ReachPeer => ({ id: n.id, name: n.name, addresses: addresses(n), tags: n.tags, user: n.user, ports });

/**
 * The reach of `subject` given every node's compiled result. Only the subject's
 * peers are looked at (a node that is no peer can be neither reached nor a source).
 */
export function reachOf(subject: AclNode, nodes: ReadonlyMap<number, AclNode>, result: (id: number) => NodeResult | undefined): Reach {
  const mine = result(subject.id);
  const reach: Reach = { peers: [], routes: [], exitNodes: [], inbound: [] };
  if (!mine) return reach;
  const me = addrSet(subject);
  const from: From = { node: me, addrs: new Set(addresses(subject)) };
  for (const peerId of mine.peers) {
    const peer = nodes.get(peerId);
    const theirs = result(peerId);
    if (!peer || !theirs) continue;
    const out = grants(theirs.packetFilter, from, addrSet(peer));
    if (out.length > 0) reach.peers.push(peerOf(peer, out));
    const inbound = grants(mine.packetFilter, { set: addrSet(peer) }, me);
    if (inbound.length > 0) reach.inbound.push(peerOf(peer, inbound));
    const routes = mine.peerAllowedRoutes.get(peerId) ?? [];
    let exit = false;
    for (const prefix of routes) {
      if (prefix === EXIT_V4 || prefix === EXIT_V6) {
        exit = true;
        continue;
      }
      const ports = grants(theirs.packetFilter, from, setOf(prefix) ?? IPSet.EMPTY);
      reach.routes.push({ prefix, via: { id: peer.id, name: peer.name }, ports });
    }
    if (exit) reach.exitNodes.push({ id: peer.id, name: peer.name, ports: grants(theirs.packetFilter, from, INTERNET) });
  }
  const byName = (a: { name: string; id: number }, b: { name: string; id: number }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id - b.id);
  reach.peers.sort(byName);
  reach.inbound.sort(byName);
  reach.exitNodes.sort(byName);
  reach.routes.sort((a, b) => (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : a.via.id - b.via.id));
  return reach;
}
