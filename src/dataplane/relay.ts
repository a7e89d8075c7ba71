// The relay packet engine: one UDP port serving many tenants. The sibling of
// engine.ts (a node's engine); same wire, same receive order, same allocation
// discipline, but every link (node ↔ relay) belongs to exactly one tenant
// namespace, found from the key that authenticates the datagram, and forwarding
// and filtering use only that namespace's tables.
//
// Receive path (`onDatagram`): length check → find the link (obfuscated headers:
// trial the links last seen at this source address first, then all) → open
// (current key; the previous key until its valid-until) → keepalive: learn the
// endpoint, stop → inner source in the link's allowed sources (its addresses ∪
// its routes; an exit node: any) → destination lookup in the link's OWN
// namespace; no match and the link uses an exit node → that exit link → never
// back to the source link → the tenant's packet filter (stateful: replies of
// admitted flows pass) → seal with the target link's key and send to the
// endpoint it was last authenticated from. Every failure is a silent drop
// counted exactly once in the relay totals and, once the link is known, in its
// tenant's counters.
//
// Keys: the server rotates a link's PSK and keeps the previous one valid for a
// grace period. The relay opens datagrams with either and answers with the key
// the node last used successfully, so a node that has not seen the new key yet
// keeps receiving.
//
// Views (`setView`): the typed JSON of GET /relay/v1/map, validated as a whole
// (a bad view is refused and the old one stays). Everything is built aside and
// swapped in one assignment; links whose id, node and key survive keep their
// session (replay windows, epochs, sequence numbers), learned endpoint, last-seen
// time and counters; a tenant's flow table survives policy changes.
//
// Hot path: no allocation of our own per packet (scratch plaintext buffer; the
// send ring of UdpPorts; numeric counters).
import type { FilterRule } from '../acl/index.js';
import { type Prefix, formatPrefix, parsePrefix } from '../net/addr.js';
import { ForwardingTable, PrefixMatcher, type FwdRule } from '../net/lpm.js';
import { WireRx, WireTx, RxCode, MAX_PLAINTEXT, OVERHEAD, newRxShared, newTxShared } from '../wire/index.js';
import { COUNTER_NAMES, Counters, type CounterName } from './counters.js';
import { FILTER_COUNTER_NAMES, FilterCounters, FilterState, PacketFilter } from './filter.js';
import { SharedEndpoint } from './workers/endpoint.js';
import {
  LINK_COUNTER_NAMES,
  LINK_COUNTERS,
  RELAY_IO_SLOT,
  sharedF64,
  type FromRelayWorker,
  type LinkShare,
  type NamespaceShare,
  type RelayWorkerData,
  type SessionShare,
  type ToRelayWorker,
  type ViewShare,
} from './workers/relay-share.js';
import { spawnWorker } from '../runtime/worker.js';
import type { Worker } from 'node:worker_threads';
import { BUF_SIZE, UDP_IO_COUNTS, createUdpIo, type UdpIo, type UdpIoStatus, type UdpSock } from './io/index.js';
import { DEFAULT_SCAN_LIMITS, ScanLimiter, UNTRIED, type ScanLimitOptions } from './scanlimit.js';

export { BindError } from './io/index.js';

/** The relay's own id on every link (the server's RELAY_SELF_ID). */
export const RELAY_LINK_ID = 65535;
/** Links get ids 1..MAX_LINK_ID. */
export const MAX_LINK_ID = 65534;
/** A link heard within this window counts as online in status() (the server's default unseen threshold). */
export const RELAY_ONLINE_MS = 3000;
/** A link's keepalives are echoed at most this often. */
export const ECHO_MIN_INTERVAL_MS = 200;

// ---- the view (GET /relay/v1/map) -------------------------------------------------

export interface RelayLinkSpec {
  /** Relay-unique link id, 1..65534: the node's key_id on this link. */
  link_id: number;
  node_id: number;
  /** Node name (display only). */
  node: string;
  /** 32-byte PSK, hex. */
  psk: string;
  /** The key before the last rotation (hex), accepted until previous_psk_valid_until. */
  previous_psk: string | null;
  /** ISO time. */
  previous_psk_valid_until: string | null;
  /** The node's addresses (prefixes). */
  allowed_src: string[];
  /** Prefixes routed to this node (primary subnet routes, approved exit routes /0). */
  routes: string[];
  /** Link id of the exit node this node uses (null/absent: none). */
  exit_link_id?: number | null;
}

export interface RelayTenantView {
  tenant: string;
  tenant_id: number;
  /** Node ids the server considers online. */
  online: number[];
  links: RelayLinkSpec[];
  /** The tenant's global packet filter (tailcfg FilterRule[]). */
  packet_filter: FilterRule[];
}

export interface RelayInfo {
  id: number;
  name: string;
  endpoints: string[];
  /** The relay's id on every link (65535). */
  relay_link_id: number;
  /** Tenant of a dedicated relay; null: shared. */
  tenant_id: number | null;
}

export interface RelayView {
  hash: string;
  relay: RelayInfo;
  tenants: RelayTenantView[];
}

export class RelayViewError extends Error {
  override name = 'RelayViewError';
  constructor(readonly problems: string[]) {
    super(`invalid relay view: ${problems.slice(0, 10).join('; ')}${problems.length > 10 ? `; and ${problems.length - 10} more` : ''}`);
  }
}

const HEX64 = /^[0-9a-fA-F]{64}$/;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isInt = (v: unknown, lo: number, hi: number): v is number => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
const isStrList = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

export interface ParsedRelayView {
  view: RelayView;
  /** Things that were accepted but ignored (e.g. an exit_link_id naming no link). */
  warnings: string[];
}

/**
 * Typed parse of a relay view. Throws RelayViewError listing every problem
 * (with its JSON path); returns a normalised copy (hex keys lower-case,
 * `exit_link_id` always present) and warnings.
 */
export function parseRelayView(input: unknown): ParsedRelayView {
  const errs: string[] = [];
  const warnings: string[] = [];
  const err = (path: string, msg: string): void => void errs.push(`${path}: ${msg}`);
  if (!isObj(input)) throw new RelayViewError(['view: not a JSON object']);
  if (typeof input['hash'] !== 'string' || input['hash'] === '') err('hash', 'must be a non-empty string');
  const r = input['relay'];
  let relay: RelayInfo | null = null;
  if (!isObj(r)) err('relay', 'must be an object');
  else {
    if (!isInt(r['id'], 1, Number.MAX_SAFE_INTEGER)) err('relay.id', 'must be a positive integer');
    if (typeof r['name'] !== 'string') err('relay.name', 'must be a string');
    if (!isStrList(r['endpoints'])) err('relay.endpoints', 'must be a list of strings');
    if (!isInt(r['relay_link_id'], 1, 65535)) err('relay.relay_link_id', 'must be an integer in 1..65535');
    if (!(r['tenant_id'] === null || isInt(r['tenant_id'], 1, Number.MAX_SAFE_INTEGER))) err('relay.tenant_id', 'must be a positive integer or null');
    relay = {
      id: r['id'] as number,
      name: r['name'] as string,
      endpoints: [...((r['endpoints'] as string[] | undefined) ?? [])],
      relay_link_id: r['relay_link_id'] as number,
      tenant_id: (r['tenant_id'] as number | null | undefined) ?? null,
    };
  }
  const selfId = relay?.relay_link_id;
  const tenants: RelayTenantView[] = [];
  const linkTenant = new Map<number, number>(); // link id → tenant index
  const tenantIds = new Set<number>();
  if (!Array.isArray(input['tenants'])) err('tenants', 'must be a list');
  else {
    input['tenants'].forEach((t: unknown, ti: number) => {
      const tp = `tenants[${ti}]`;
      if (!isObj(t)) return err(tp, 'must be an object');
      const tenantId = t['tenant_id'];
      if (!isInt(tenantId, 1, Number.MAX_SAFE_INTEGER)) err(`${tp}.tenant_id`, 'must be a positive integer');
      else if (tenantIds.has(tenantId)) err(`${tp}.tenant_id`, `tenant ${tenantId} appears twice`);
      else tenantIds.add(tenantId);
      if (relay !== null && relay.tenant_id !== null && tenantId !== relay.tenant_id) {
        err(`${tp}.tenant_id`, `a relay dedicated to tenant ${relay.tenant_id} was sent tenant ${String(tenantId)}`);
      }
      if (typeof t['tenant'] !== 'string') err(`${tp}.tenant`, 'must be a string');
      const online = t['online'];
      if (!Array.isArray(online) || !online.every((x) => isInt(x, 1, Number.MAX_SAFE_INTEGER))) err(`${tp}.online`, 'must be a list of node ids');
      const filter = parseFilterRules(t['packet_filter'], `${tp}.packet_filter`, err);
      const links: RelayLinkSpec[] = [];
      if (!Array.isArray(t['links'])) err(`${tp}.links`, 'must be a list');
      else {
        t['links'].forEach((l: unknown, li: number) => {
          const lp = `${tp}.links[${li}]`;
          const spec = parseLink(l, lp, err);
          if (spec === null) return;
          if (spec.link_id === selfId) err(`${lp}.link_id`, `${spec.link_id} is the relay's own id`);
          const other = linkTenant.get(spec.link_id);
          if (other !== undefined) err(`${lp}.link_id`, `link ${spec.link_id} appears twice`);
          else linkTenant.set(spec.link_id, ti);
          links.push(spec);
        });
      }
      tenants.push({
        tenant: t['tenant'] as string,
        tenant_id: tenantId as number,
        online: Array.isArray(online) ? [...(online as number[])] : [],
        links,
        packet_filter: filter,
      });
    });
  }
  // Exit links must stay inside the tenant.
  tenants.forEach((t, ti) => {
    t.links.forEach((l, li) => {
      const ex = l.exit_link_id;
      if (ex === null || ex === undefined) return;
      const where = `tenants[${ti}].links[${li}].exit_link_id`;
      const owner = linkTenant.get(ex);
      if (owner === undefined) {
        warnings.push(`${where}: link ${ex} is not in the view; node "${l.node}" has no exit node on this relay`);
        l.exit_link_id = null;
      } else if (owner !== ti) {
        err(where, `link ${ex} belongs to another tenant`);
      } else if (ex === l.link_id) {
        warnings.push(`${where}: node "${l.node}" names itself as its exit node; ignored`);
        l.exit_link_id = null;
      }
    });
  });
  if (errs.length > 0 || relay === null) throw new RelayViewError(errs.length ? errs : ['relay: missing']);
  return { view: { hash: input['hash'] as string, relay, tenants }, warnings };
}

function parseLink(l: unknown, lp: string, err: (path: string, msg: string) => void): RelayLinkSpec | null {
  if (!isObj(l)) {
    err(lp, 'must be an object');
    return null;
  }
  const before = { n: 0 };
  const e = (p: string, m: string): void => {
    before.n++;
    err(`${lp}.${p}`, m);
  };
  if (!isInt(l['link_id'], 1, MAX_LINK_ID)) e('link_id', `must be an integer in 1..${MAX_LINK_ID}`);
  if (!isInt(l['node_id'], 1, Number.MAX_SAFE_INTEGER)) e('node_id', 'must be a positive integer');
  if (typeof l['node'] !== 'string') e('node', 'must be a string');
  if (typeof l['psk'] !== 'string' || !HEX64.test(l['psk'])) e('psk', 'must be 64 hex digits (32 bytes)');
  const prev = l['previous_psk'] ?? null;
  const until = l['previous_psk_valid_until'] ?? null;
  if (prev !== null && (typeof prev !== 'string' || !HEX64.test(prev))) e('previous_psk', 'must be 64 hex digits or null');
  if (until !== null && (typeof until !== 'string' || Number.isNaN(Date.parse(until)))) e('previous_psk_valid_until', 'must be an ISO time or null');
  if (prev !== null && until === null) e('previous_psk_valid_until', 'is required with previous_psk');
  const prefixes = (key: string): string[] => {
    const v = l[key];
    if (!isStrList(v)) {
      e(key, 'must be a list of prefixes');
      return [];
    }
    for (const s of v) {
      try {
        parsePrefix(s);
      } catch (x) {
        e(key, (x as Error).message);
      }
    }
    return [...v];
  };
  const allowed = prefixes('allowed_src');
  const routes = prefixes('routes');
  const ex = l['exit_link_id'];
  if (!(ex === undefined || ex === null || isInt(ex, 1, MAX_LINK_ID))) e('exit_link_id', `must be a link id in 1..${MAX_LINK_ID} or null`);
  if (before.n > 0) return null;
  return {
    link_id: l['link_id'] as number,
    node_id: l['node_id'] as number,
    node: l['node'] as string,
    psk: (l['psk'] as string).toLowerCase(),
    previous_psk: prev === null ? null : (prev as string).toLowerCase(),
    previous_psk_valid_until: until as string | null,
    allowed_src: allowed,
    routes,
    exit_link_id: (ex as number | null | undefined) ?? null,
  };
}

function parseFilterRules(v: unknown, path: string, err: (path: string, msg: string) => void): FilterRule[] {
  if (!Array.isArray(v)) {
    err(path, 'must be a list of filter rules');
    return [];
  }
  const out: FilterRule[] = [];
  v.forEach((r: unknown, i: number) => {
    const p = `${path}[${i}]`;
    if (!isObj(r)) return err(p, 'must be an object');
    let ok = true;
    if (!isStrList(r['SrcIPs'])) {
      err(`${p}.SrcIPs`, 'must be a list of strings');
      ok = false;
    }
    const d = r['DstPorts'];
    if (d !== undefined && d !== null) {
      const good =
        Array.isArray(d) &&
        d.every((x) => isObj(x) && typeof x['IP'] === 'string' && isObj(x['Ports']) && Number.isInteger(x['Ports']['First']) && Number.isInteger(x['Ports']['Last']));
      if (!good) {
        err(`${p}.DstPorts`, 'must be a list of {IP, Ports: {First, Last}}');
        ok = false;
      }
    }
    const pr = r['IPProto'];
    if (pr !== undefined && pr !== null && !(Array.isArray(pr) && pr.every((x) => Number.isInteger(x)))) {
      err(`${p}.IPProto`, 'must be a list of protocol numbers');
      ok = false;
    }
    if (ok) out.push(r as unknown as FilterRule);
  });
  return out;
}

// ---- namespaces and links -----------------------------------------------------

/** Scratch for summing filter counters (status and metrics only). */
const SCRATCH_F = new Float64Array(FILTER_COUNTER_NAMES.length);

/** Per-link traffic counts. */
export class LinkCounters {
  rx_packets = 0;
  rx_bytes = 0;
  tx_packets = 0;
  tx_bytes = 0;
  keepalive_rx = 0;
  /** Datagrams of this link that were dropped (auth, replay, spoof, route, filter, ...). */
  drops = 0;

  toJSON(): Record<string, number> {
    return { rx_packets: this.rx_packets, rx_bytes: this.rx_bytes, tx_packets: this.tx_packets, tx_bytes: this.tx_bytes, keepalive_rx: this.keepalive_rx, drops: this.drops };
  }

  writeTo(f: Float64Array, off: number): void {
    for (let i = 0; i < LINK_COUNTERS; i++) f[off + i] = this[LINK_COUNTER_NAMES[i]!];
  }

  addFrom(f: Float64Array, off: number): void {
    for (let i = 0; i < LINK_COUNTERS; i++) this[LINK_COUNTER_NAMES[i]!] += f[off + i]!;
  }

  add(o: LinkCounters): void {
    for (const k of LINK_COUNTER_NAMES) this[k] += o[k];
  }
}

/** The counters a relay moves (a subset of the node engine's Counters; no TUN). keepalive_tx counts echoes. */
export const RELAY_COUNTER_NAMES: readonly CounterName[] = [
  'udp_rx_packets',
  'udp_tx_packets',
  'udp_rx_bytes',
  'udp_tx_bytes',
  'relay_packets',
  'keepalive_rx',
  'keepalive_tx',
  'endpoint_changes',
  'drop_unknown_peer',
  'drop_scan_limited',
  'drop_malformed',
  'drop_auth',
  'drop_replay',
  'drop_old_epoch',
  'drop_spoof',
  'drop_no_route',
  'drop_filter',
  'drop_no_reflect',
  'drop_oversized',
  'drop_no_endpoint',
  'drop_send_error',
  'drop_not_ip',
];

export function relayCounters(c: Counters): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of RELAY_COUNTER_NAMES) out[k] = c[k];
  return out;
}

/** One tenant's forwarding domain on the relay. */
export class Namespace {
  links: RelayLink[] = [];
  /** The tenant's view section as JSON: an identical section next time reuses this namespace whole. */
  sig = '';
  /** Worker mode: what the workers share of it (null: one thread). */
  share: NamespaceShare | null = null;
  /** Worker thread: counted since the last publish. */
  dirty = false;
  constructor(
    readonly tenantId: number,
    readonly name: string,
    /** Destination prefix → link id (rule target), built from this tenant's links only. */
    readonly table: ForwardingTable,
    /** Kept across views (flows survive policy changes). */
    readonly filter: FilterState,
    /** The packet_filter JSON the filter was compiled from (unchanged: no recompile). */
    readonly filterJson: string,
    /** This thread's counts (the packet path adds here). */
    readonly local: Counters,
    /** Node ids the server reports online. */
    readonly serverOnline: readonly number[],
  ) {}

  /** The tenant's counts over every worker (this thread's live, the others' as last published). */
  get counters(): Counters {
    const sh = this.share;
    if (sh === null) return this.local;
    const sum = new Counters();
    sum.add(this.local);
    const n = COUNTER_NAMES.length;
    for (let o = n; o < sh.counters.length; o += n) sum.addFrom(sh.counters, o);
    return sum;
  }

  /** The tenant filter's verdict counts over every worker. */
  get filterCounters(): FilterCounters {
    const sh = this.share;
    if (sh === null) return this.filter.counters;
    const sum = new FilterCounters();
    const n = FILTER_COUNTER_NAMES.length;
    this.filter.counters.writeTo(SCRATCH_F, 0);
    sum.addFrom(SCRATCH_F, 0);
    for (let o = n; o < sh.filterCounters.length; o += n) sum.addFrom(sh.filterCounters, o);
    return sum;
  }
}

/** Which key the node last authenticated with (kept in the shared endpoint's tag). */
const HEARD_NONE = 0;
const HEARD_CURRENT = 1;
const HEARD_PREVIOUS = 2;

export class RelayLink {
  /** Where the node was last authenticated from (learned, never configured), and when: shared by the workers. */
  readonly ep: SharedEndpoint;
  /** This thread's socket for the endpoint's local port (resolved when the endpoint changes). */
  sock: UdpSock | null = null;
  rxPrev: WireRx | null = null;
  txPrev: WireTx | null = null;
  prevUntilMs = 0;
  /** prevUntilMs on the engine's packet clock (ms since its clockBase), for the receive path. */
  prevUntilRel = 0;
  prevHex: string | null = null;
  /** When this thread last echoed a keepalive on this link, on the engine's packet clock (the echo is rate-limited). */
  lastEchoMs = -ECHO_MIN_INTERVAL_MS;
  /** Since when this relay process has been waiting for the node (the link's first view here). */
  sinceMs = 0;
  /** The exit node this link's node uses (same namespace), resolved after all links are built. */
  exitLink: RelayLink | null = null;
  /** This thread's counts. */
  local = new LinkCounters();
  /** Worker thread: counted since the last publish. */
  dirty = false;
  /** Worker mode: what the workers share of it (null: one thread). */
  share: LinkShare | null = null;

  constructor(
    readonly id: number,
    readonly nodeId: number,
    readonly node: string,
    readonly ns: Namespace,
    readonly pskHex: string,
    readonly rx: WireRx,
    readonly tx: WireTx,
    /** Inner sources this link may send from: allowed_src ∪ routes. */
    readonly allowedSrc: PrefixMatcher,
    /** This link is an exit node for IPv4 / IPv6 (its routes hold 0.0.0.0/0 / ::/0). */
    readonly exit4: boolean,
    readonly exit6: boolean,
    ep?: SharedEndpoint,
  ) {
    this.ep = ep ?? new SharedEndpoint();
  }

  get addr(): string | null {
    this.ep.refresh();
    return this.ep.addr;
  }

  get port(): number {
    this.ep.refresh();
    return this.ep.port;
  }

  get family(): 4 | 6 {
    this.ep.refresh();
    return this.ep.family;
  }

  get lastSeenMs(): number {
    return this.ep.lastSeenMs;
  }

  get heard(): number {
    return this.ep.tag;
  }

  set heard(v: number) {
    this.ep.tag = v;
  }

  /** The link's counts over every worker. */
  get counters(): LinkCounters {
    const sh = this.share;
    if (sh === null) return this.local;
    const sum = new LinkCounters();
    sum.add(this.local);
    for (let o = LINK_COUNTERS; o < sh.counters.length; o += LINK_COUNTERS) sum.addFrom(sh.counters, o);
    return sum;
  }

  online(now: number, windowMs = RELAY_ONLINE_MS): boolean {
    const seen = this.ep.lastSeenMs;
    return seen > 0 && now - seen <= windowMs;
  }

  endpointText(): string | null {
    const addr = this.addr;
    if (addr === null) return null;
    return this.ep.family === 6 ? `[${addr}]:${this.ep.port}` : `${addr}:${this.ep.port}`;
  }

  /** 'current' / 'previous': the key the node last used (and the relay answers with); null: never heard. */
  keyInUse(now: number): 'current' | 'previous' | null {
    const heard = this.heard;
    if (heard === HEARD_NONE) return null;
    return heard === HEARD_PREVIOUS && this.txPrev !== null && now < this.prevUntilMs ? 'previous' : 'current';
  }
}

/** Files a link under its learned address (obfuscated lookups try those first). */
function indexByAddr(st: RelayState, link: RelayLink): void {
  if (link.addr === null) return;
  const list = st.byAddr.get(link.addr);
  if (list !== undefined) list.push(link);
  else st.byAddr.set(link.addr, [link]);
}

/** Puts a link into a state being built: the list, by id, by address. */
function admit(st: RelayState, link: RelayLink): void {
  st.links.push(link);
  st.byId[link.id] = link;
  indexByAddr(st, link);
}

/** Everything a packet looks at, swapped as one object. */
interface RelayState {
  view: RelayView | null;
  selfId: number;
  links: RelayLink[];
  byId: (RelayLink | undefined)[];
  /** Learned endpoint address → links last seen there (obfuscated lookups try these first). */
  byAddr: Map<string, RelayLink[]>;
  namespaces: Map<number, Namespace>;
}

export interface RelayEngineOptions {
  listenPorts: number[];
  /** Address to bind; default all. Tests bind loopback. */
  bindHost4?: string;
  bindHost6?: string | null;
  log?: (msg: string) => void;
  /** Window for "online" in status() (default RELAY_ONLINE_MS). */
  onlineMs?: number;
  /** Budget for trying every link's key on datagrams from unlearned endpoints (default DEFAULT_SCAN_LIMITS). */
  scanLimits?: ScanLimitOptions;
  /** UDP I/O path: batched (native recvmmsg/sendmmsg) or node:dgram; default from LARKTUN_UDP_BATCH, batched when unset. */
  udpBatch?: boolean;
  /** UDP GRO/GSO on the batched path; default from LARKTUN_UDP_OFFLOAD, on when unset. */
  udpOffload?: boolean;
  /**
   * Packet threads (default 1): this one plus workers - 1 worker threads, each
   * with its own SO_REUSEPORT sockets on the same ports. Needs the batched UDP
   * path; with node:dgram the relay runs on one thread and status says why.
   */
  workers?: number;
  /** @internal Set by relay-worker.ts: this engine is packet worker `index` of `count`. */
  role?: { index: number; count: number; counters: Float64Array; io: Float64Array; clockBase: number };
}

export interface SetViewResult {
  hash: string;
  tenants: number;
  links: number;
  /** Links that kept their session, endpoint and counters. */
  kept: number;
  warnings: string[];
  /** Filter entries that did not compile (skipped), per tenant name. */
  filterErrors: Record<string, readonly string[]>;
}

export interface HealthReport {
  /**
   * last_seen_ms_ago: null when never heard; then known_ms says how long this
   * relay has had the link (a restarted relay's silence means little at first).
   */
  links: { link_id: number; last_seen_ms_ago: number | null; known_ms?: number }[];
}

/** The packet threads of a relay, for status. */
export interface RelayWorkersStatus {
  /** Packet threads asked for. */
  configured: number;
  /** Packet threads moving packets now (this one included). */
  running: number;
  /** Why fewer run than configured (null: all do). */
  reason: string | null;
  /** Worker threads that stopped unexpectedly since start. */
  failures: number;
  /** Per packet thread (0: the main thread; the others as last published): datagrams received and sent. */
  threads: { udp_rx_packets: number; udp_tx_packets: number }[];
}

const RX_IDX = COUNTER_NAMES.indexOf('udp_rx_packets');
const TX_IDX = COUNTER_NAMES.indexOf('udp_tx_packets');

const EMPTY_STATE = (): RelayState => ({
  view: null,
  selfId: RELAY_LINK_ID,
  links: [],
  byId: new Array<RelayLink | undefined>(65536),
  byAddr: new Map(),
  namespaces: new Map(),
});

const PREFIX_OPTS = {} as const;
const prefixesOf = (list: readonly string[]): Prefix[] => list.map((s) => parsePrefix(s, PREFIX_OPTS));

/** How often a worker publishes its counters for the main thread's status and metrics. */
export const PUBLISH_MS = 50;
/** How long start() waits for a worker to bind its sockets. */
const WORKER_READY_MS = 15_000;

let nextShareId = 1;

export class RelayEngine {
  /** This thread's relay totals (every datagram counted here, tenant-attributable ones also in their namespace). */
  private readonly c = new Counters();
  readonly startedAt = Date.now();
  private st: RelayState = EMPTY_STATE();
  private readonly udp: UdpIo;
  private readonly plain = Buffer.alloc(BUF_SIZE);
  /**
   * The packet clock: ms since clockBase, read once per receive batch (each
   * Date.now() allocates a heap number), small enough to stay an unboxed
   * small integer through the packet path's calls for 24 days of uptime
   * (after that, values are boxed again: 16 B per packet, nothing else).
   * Every time the receive path handles (flow table, scan budget, echo rate,
   * key validity) is on this clock; what leaves the engine (last-heard times,
   * status) is wall-clock ms.
   */
  private readonly clock = new Float64Array(1);
  /** Wall-clock ms of packet clock 0; the same on every packet thread of the engine (their flow tables are shared). */
  readonly clockBase: number;
  /** The receiver that matched in findLink (current key or previous). */
  private matched: WireRx | null = null;
  private readonly log: (msg: string) => void;
  private readonly onlineMs: number;
  private readonly scan: ScanLimiter;
  private readonly opts: RelayEngineOptions;
  /** Worker role (null on the main thread). */
  private readonly role: { index: number; count: number; counters: Float64Array; io: Float64Array; clockBase: number } | null;
  /** Main thread with workers: their UDP I/O counts (RELAY_IO_SLOT per worker, published on the timer). */
  private ioTotals: Float64Array | null = null;
  // Main thread with workers: the worker threads, their published totals, the share of the view in force.
  private readonly wantWorkers: number;
  private workerReason: string | null = null;
  private workerFailures = 0;
  private readonly workers: Worker[] = [];
  private totals: Float64Array | null = null;
  private share: ViewShare | null = null;
  private stopping = false;
  /** Views posted to workers, and per worker the last one it applied (or refused). */
  private viewSeq = 0;
  private readonly appliedSeq = new Map<Worker, number>();
  private settleWaiters: { seq: number; resolve: () => void }[] = [];
  // Worker thread: sessions and endpoints received, by id, kept across views.
  private readonly sessionsById = new Map<number, { rx: WireRx; tx: WireTx }>();
  private readonly endpointsById = new Map<number, SharedEndpoint>();
  private incoming: ViewShare | null = null;
  private publishTimer: NodeJS.Timeout | null = null;
  /** Worker thread: links and namespaces counted since the last publish (each listed once, bounded by the view). */
  private readonly dirtyLinks: RelayLink[] = [];
  private readonly dirtyNs: Namespace[] = [];
  private readonly tracking: boolean;

  constructor(opts: RelayEngineOptions) {
    this.opts = opts;
    this.log = opts.log ?? (() => {});
    this.onlineMs = opts.onlineMs ?? RELAY_ONLINE_MS;
    this.scan = new ScanLimiter(opts.scanLimits ?? DEFAULT_SCAN_LIMITS);
    this.role = opts.role ?? null;
    this.tracking = this.role !== null;
    this.clockBase = this.role?.clockBase ?? Date.now();
    this.clock[0] = Date.now() - this.clockBase;
    const want = Math.floor(opts.workers ?? 1);
    if (!(want >= 1 && want <= 64)) throw new RangeError(`workers must be 1..64, got ${opts.workers}`);
    this.wantWorkers = this.role === null ? want : 1;
    this.udp = createUdpIo({
      ports: opts.listenPorts,
      bindHost4: opts.bindHost4,
      bindHost6: opts.bindHost6,
      onDatagram: (msg, len, addr, port, sock) => this.onDatagram(msg, len, addr, port, sock),
      onBatchStart: () => {
        this.clock[0] = Date.now() - this.clockBase;
      },
      ...(opts.role !== undefined ? { onBatchEnd: () => this.publish() } : {}),
      onSendError: (n) => {
        this.c.drop_send_error += n;
      },
      log: this.log,
      batch: this.role !== null ? true : opts.udpBatch,
      offload: opts.udpOffload,
      reusePort: this.role !== null || this.wantWorkers > 1,
    });
    if (this.wantWorkers > 1) {
      if (this.udp.path === 'batch') {
        this.totals = sharedF64(this.wantWorkers * COUNTER_NAMES.length);
        this.ioTotals = sharedF64(this.wantWorkers * RELAY_IO_SLOT);
      }
      else this.workerReason = 'node:dgram cannot share a port between threads (SO_REUSEPORT needs the batched UDP path)';
    }
  }

  async start(): Promise<void> {
    if (this.workerReason !== null) this.log(`relay runs on one thread: ${this.workerReason}`);
    await this.udp.start();
    if (this.role !== null) {
      this.publishTimer = setInterval(() => {
        this.publish();
        this.publishIo();
      }, PUBLISH_MS);
      return;
    }
    if (this.totals !== null) await this.startWorkers();
  }

  private async startWorkers(): Promise<void> {
    const n = this.wantWorkers;
    const ports = this.udp.ports();
    const started = await Promise.allSettled(
      Array.from({ length: n - 1 }, (_, i) => this.startWorker(i + 1, n, ports)),
    );
    const failed = started.filter((r) => r.status === 'rejected');
    if (failed.length > 0) {
      this.workerReason = `${failed.length} of ${n - 1} worker threads did not start: ${(failed[0] as PromiseRejectedResult).reason}`;
      this.log(`relay: ${this.workerReason}`);
    }
    if (this.st.view !== null) this.postView(this.st.view);
    await this.viewSettled();
  }

  private startWorker(index: number, count: number, ports: number[]): Promise<void> {
    const data: RelayWorkerData = {
      index,
      count,
      ports,
      counters: this.totals!,
      io: this.ioTotals!,
      clockBase: this.clockBase,
      ...(this.opts.bindHost4 !== undefined ? { bindHost4: this.opts.bindHost4 } : {}),
      ...(this.opts.bindHost6 !== undefined ? { bindHost6: this.opts.bindHost6 } : {}),
      ...(this.opts.udpOffload !== undefined ? { udpOffload: this.opts.udpOffload } : {}),
      ...(this.opts.onlineMs !== undefined ? { onlineMs: this.opts.onlineMs } : {}),
      ...(this.opts.scanLimits !== undefined ? { scanLimits: this.opts.scanLimits } : {}),
    };
    const w = spawnWorker(import.meta.url, 'relay-worker', { workerData: data });
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      const timer = setTimeout(() => {
        if (ready) return;
        void w.terminate();
        reject(new Error(`worker ${index} not ready within ${WORKER_READY_MS} ms`));
      }, WORKER_READY_MS);
      w.on('message', (m: FromRelayWorker) => {
        if (m.type === 'ready') {
          ready = true;
          clearTimeout(timer);
          this.workers.push(w);
          resolve();
        } else if (m.type === 'log') this.log(`relay worker ${index}: ${m.msg}`);
        else if (m.type === 'view-applied' || m.type === 'view-error') {
          if (m.type === 'view-error') this.log(`relay worker ${index}: view not applied: ${m.error}`);
          this.appliedSeq.set(w, m.seq);
          this.wakeSettled();
        }
      });
      w.on('error', (err) => {
        this.log(`relay worker ${index} failed: ${err.message}`);
        if (!ready) {
          clearTimeout(timer);
          reject(err);
        }
      });
      w.on('exit', (code) => {
        const i = this.workers.indexOf(w);
        if (i >= 0) this.workers.splice(i, 1);
        this.appliedSeq.delete(w);
        this.wakeSettled();
        if (!ready) {
          clearTimeout(timer);
          reject(new Error(`worker ${index} exited with code ${code} before it was ready`));
          return;
        }
        if (!this.stopping) {
          // Its sockets are closed: the kernel spreads its share of the traffic over the rest.
          this.workerFailures++;
          this.log(`relay worker ${index} stopped (exit code ${code}); ${this.workers.length + 1} packet threads remain`);
        }
      });
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.publishTimer !== null) clearInterval(this.publishTimer);
    this.publishTimer = null;
    const ws = this.workers.splice(0);
    await Promise.all(
      ws.map(
        (w) =>
          new Promise<void>((resolve) => {
            const t = setTimeout(() => void w.terminate(), 2000);
            w.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
            w.postMessage({ type: 'stop' } satisfies ToRelayWorker);
          }),
      ),
    );
    await this.udp.close();
  }

  listenPorts(): number[] {
    return this.udp.ports();
  }

  boundAddresses(): { family: 4 | 6; port: number }[] {
    return this.udp.boundAddresses();
  }

  /**
   * The UDP I/O path and its offloads (for status), with every packet
   * thread's syscall and datagram counts (the workers' as last published, at
   * most PUBLISH_MS old).
   */
  ioStatus(): UdpIoStatus {
    const st = this.udp.status();
    const t = this.ioTotals;
    if (t === null) return st;
    const n = UDP_IO_COUNTS.length;
    for (let o = RELAY_IO_SLOT; o < t.length; o += RELAY_IO_SLOT) {
      for (let i = 0; i < n; i++) st[UDP_IO_COUNTS[i]!] += t[o + i]!;
      st.rx_batches += t[o + n]!;
      st.rx_max_batch = Math.max(st.rx_max_batch, t[o + n + 1]!);
    }
    return st;
  }

  /** Worker thread: copies this thread's UDP I/O counts where ioStatus() sums them. */
  private publishIo(): void {
    const role = this.role!;
    const st = this.udp.status();
    const o = role.index * RELAY_IO_SLOT;
    const n = UDP_IO_COUNTS.length;
    for (let i = 0; i < n; i++) role.io[o + i] = st[UDP_IO_COUNTS[i]!];
    role.io[o + n] = st.rx_batches;
    role.io[o + n + 1] = st.rx_max_batch;
  }

  /** The packet threads: configured, running, and why not all when so. */
  workersStatus(): RelayWorkersStatus {
    return {
      configured: this.wantWorkers,
      running: this.workerReason !== null && this.workers.length === 0 ? 1 : this.workers.length + 1,
      reason: this.workerReason,
      failures: this.workerFailures,
      threads: Array.from({ length: this.totals === null ? 1 : this.wantWorkers }, (_, i) =>
        i === 0
          ? { udp_rx_packets: this.c.udp_rx_packets, udp_tx_packets: this.c.udp_tx_packets }
          : { udp_rx_packets: this.totals![i * COUNTER_NAMES.length + RX_IDX]!, udp_tx_packets: this.totals![i * COUNTER_NAMES.length + TX_IDX]! },
      ),
    };
  }

  /**
   * Stops worker thread `i` (0-based among the workers) as if it had died; for
   * tests of what a failure leaves running. Resolves when it has exited.
   */
  async killWorkerForTest(i: number): Promise<void> {
    const w = this.workers[i];
    if (w === undefined) throw new RangeError(`no worker ${i}`);
    await w.terminate();
  }

  /** Relay totals over every packet thread (this one live, the workers' as last published, at most PUBLISH_MS old). */
  get counters(): Counters {
    const t = this.totals;
    if (t === null) return this.c;
    const sum = new Counters();
    sum.add(this.c);
    const n = COUNTER_NAMES.length;
    for (let o = n; o < t.length; o += n) sum.addFrom(t, o);
    return sum;
  }

  /** The view in force (null before the first). */
  get view(): RelayView | null {
    return this.st.view;
  }

  get links(): readonly RelayLink[] {
    return this.st.links;
  }

  link(id: number): RelayLink | undefined {
    return this.st.byId[id];
  }

  namespace(tenantId: number): Namespace | undefined {
    return this.st.namespaces.get(tenantId);
  }

  get namespaces(): Namespace[] {
    return [...this.st.namespaces.values()];
  }

  // ---- workers ------------------------------------------------------------------

  /**
   * Worker thread: copies this thread's counts where the main thread sums
   * them: the totals, and the namespaces and links counted since the last
   * time. Runs after every receive batch (status is current to the batch) and
   * on a timer (sends that failed outside a batch).
   */
  private publish(): void {
    const role = this.role;
    if (role === null) return;
    const w = role.index;
    this.c.writeTo(role.counters, w * COUNTER_NAMES.length);
    const nss = this.dirtyNs;
    for (let i = 0; i < nss.length; i++) {
      const ns = nss[i]!;
      ns.dirty = false;
      const sh = ns.share;
      if (sh === null) continue;
      ns.local.writeTo(sh.counters, w * COUNTER_NAMES.length);
      ns.filter.counters.writeTo(sh.filterCounters, w * FILTER_COUNTER_NAMES.length);
    }
    nss.length = 0;
    const ls = this.dirtyLinks;
    for (let i = 0; i < ls.length; i++) {
      const l = ls[i]!;
      l.dirty = false;
      if (l.share !== null) l.local.writeTo(l.share.counters, w * LINK_COUNTERS);
    }
    ls.length = 0;
  }

  /** Worker thread: note that a link (and its namespace) was counted. */
  private mark(l: RelayLink): void {
    if (!l.dirty) {
      l.dirty = true;
      this.dirtyLinks.push(l);
    }
    const ns = l.ns;
    if (!ns.dirty) {
      ns.dirty = true;
      this.dirtyNs.push(ns);
    }
  }

  /** Main thread: hands the view in force and its shared state to every worker. */
  private postView(view: RelayView): void {
    if (this.workers.length === 0 || this.share === null) return;
    const msg: ToRelayWorker = { type: 'view', seq: ++this.viewSeq, view, share: this.share };
    for (const w of this.workers) w.postMessage(msg);
  }

  /**
   * Resolves once every running worker has applied (or refused) the last view
   * setView() made; at once with no workers. Workers apply a view a moment
   * after the main thread: this is for callers that must know all threads
   * forward by it (tests, benches).
   */
  viewSettled(): Promise<void> {
    const seq = this.viewSeq;
    if (this.allApplied(seq)) return Promise.resolve();
    return new Promise((resolve) => this.settleWaiters.push({ seq, resolve }));
  }

  private allApplied(seq: number): boolean {
    for (const w of this.workers) if ((this.appliedSeq.get(w) ?? 0) < seq) return false;
    return true;
  }

  private wakeSettled(): void {
    const still: { seq: number; resolve: () => void }[] = [];
    for (const x of this.settleWaiters) {
      if (this.allApplied(x.seq)) x.resolve();
      else still.push(x);
    }
    this.settleWaiters = still;
  }

  /**
   * Worker thread: applies a view the main thread validated, over the shared
   * state it made (sessions, endpoints, flow tables, counter slots).
   */
  applySharedView(view: RelayView, share: ViewShare): SetViewResult {
    this.incoming = share;
    try {
      const r = this.setView(view);
      // Forget what the view no longer names.
      const sids = new Set<number>();
      const eids = new Set<number>();
      for (const l of Object.values(share.links)) {
        eids.add(l.eid);
        for (const s of l.sessions) sids.add(s.sid);
      }
      for (const id of [...this.sessionsById.keys()]) if (!sids.has(id)) this.sessionsById.delete(id);
      for (const id of [...this.endpointsById.keys()]) if (!eids.has(id)) this.endpointsById.delete(id);
      return r;
    } finally {
      this.incoming = null;
    }
  }

  // ---- view -------------------------------------------------------------------

  /**
   * Validates `view` and makes it the one in force, atomically. Throws
   * RelayViewError (nothing changed) when it does not validate. With workers,
   * they get it (and the state they share) right after.
   */
  setView(view: RelayView): SetViewResult {
    const { view: v, warnings } = parseRelayView(view as unknown);
    const old = this.st;
    const now = Date.now();
    const selfId = v.relay.relay_link_id;
    const next: RelayState = {
      view: v,
      selfId,
      links: [],
      byId: new Array<RelayLink | undefined>(65536),
      byAddr: new Map(),
      namespaces: new Map(),
    };
    const commits: (() => void)[] = [];
    const filterErrors: Record<string, readonly string[]> = {};
    let kept = 0;
    for (const t of v.tenants) {
      const prevNs = old.namespaces.get(t.tenant_id);
      // An unchanged tenant section (the usual case: one tenant changed) keeps
      // its namespace and links as they are: no table, filter or link rebuild.
      const sig = JSON.stringify(t);
      if (prevNs !== undefined && prevNs.sig === sig && old.selfId === selfId && this.sameNsShare(prevNs, t)) {
        next.namespaces.set(t.tenant_id, prevNs);
        for (const link of prevNs.links) admit(next, link);
        kept += prevNs.links.length;
        continue;
      }
      const rules: FwdRule[] = [];
      for (const l of t.links) {
        for (const s of [...l.allowed_src, ...l.routes]) {
          const p = parsePrefix(s, PREFIX_OPTS);
          if (p.bits === 0) continue; // exit routes: reached through exit_link_id only
          const any: Prefix = { family: p.family, addr: 0n, bits: 0 };
          rules.push({ src: any, dst: p, action: 'forward', target: l.link_id });
        }
      }
      const filterJson = JSON.stringify(t.packet_filter);
      let filter: FilterState;
      let nsShare: NamespaceShare | null = null;
      const given = this.incoming?.namespaces[t.tenant_id];
      if (prevNs !== undefined && (given === undefined || prevNs.share?.nid === given.nid)) {
        filter = prevNs.filter;
        nsShare = prevNs.share;
        if (prevNs.filterJson !== filterJson) {
          const compiled = PacketFilter.compile(t.packet_filter);
          if (compiled.errors.length) filterErrors[t.tenant] = compiled.errors;
          commits.push(() => filter.setFilter(compiled));
        }
      } else {
        const compiled = PacketFilter.compile(t.packet_filter);
        if (compiled.errors.length) filterErrors[t.tenant] = compiled.errors;
        if (given !== undefined) {
          filter = FilterState.attach(given.flows, compiled);
          nsShare = given;
        } else if (this.totals !== null) {
          filter = FilterState.createShared(compiled);
          nsShare = {
            nid: nextShareId++,
            counters: sharedF64(this.wantWorkers * COUNTER_NAMES.length),
            filterCounters: sharedF64(this.wantWorkers * FILTER_COUNTER_NAMES.length),
            flows: filter.share(),
          };
        } else filter = new FilterState(compiled);
      }
      const ns = new Namespace(
        t.tenant_id,
        t.tenant,
        ForwardingTable.build(rules),
        filter,
        filterJson,
        prevNs !== undefined && prevNs.share === nsShare ? prevNs.local : new Counters(),
        t.online,
      );
      ns.sig = sig;
      ns.share = nsShare;
      next.namespaces.set(t.tenant_id, ns);
      for (const spec of t.links) {
        const link = this.buildLink(spec, ns, selfId, old, now);
        if (old.byId[spec.link_id]?.local === link.local) kept++;
        ns.links.push(link);
        admit(next, link);
      }
    }
    for (const t of v.tenants) {
      for (const spec of t.links) {
        const ex = spec.exit_link_id;
        if (ex !== null && ex !== undefined) next.byId[spec.link_id]!.exitLink = next.byId[ex] ?? null;
      }
    }
    // Commit: one assignment for the tables; flow tables get their new filters.
    for (const c of commits) c();
    this.st = next;
    if (this.totals !== null) {
      const share: ViewShare = { links: {}, namespaces: {} };
      for (const ns of next.namespaces.values()) if (ns.share !== null) share.namespaces[ns.tenantId] = ns.share;
      for (const l of next.links) if (l.share !== null) share.links[l.id] = l.share;
      this.share = share;
      this.postView(v);
    }
    if (this.role === null) {
      for (const w of warnings) this.log(`relay view ${v.hash}: ${w}`);
      for (const [t, e] of Object.entries(filterErrors)) this.log(`relay view ${v.hash}: tenant ${t}: ${e.length} packet filter entries skipped: ${e.slice(0, 3).join('; ')}`);
    }
    return { hash: v.hash, tenants: v.tenants.length, links: next.links.length, kept, warnings, filterErrors };
  }

  /** Worker thread: is a kept namespace still the one the main thread shares (same flow table, same links' shares)? */
  private sameNsShare(ns: Namespace, t: RelayTenantView): boolean {
    const inc = this.incoming;
    if (inc === null) return true;
    if (ns.share?.nid !== inc.namespaces[t.tenant_id]?.nid) return false;
    for (const l of ns.links) {
      const given = inc.links[l.id];
      if (given === undefined || given.eid !== l.share?.eid) return false;
      const sids = given.sessions.map((s) => s.sid).join(',');
      if (sids !== (l.share?.sessions.map((s) => s.sid).join(',') ?? '')) return false;
    }
    return true;
  }

  private buildLink(spec: RelayLinkSpec, ns: Namespace, selfId: number, old: RelayState, now: number): RelayLink {
    const prevLink = old.byId[spec.link_id];
    // The same node on the same link (and the same relay id): its keys' sessions can carry over.
    const same =
      prevLink !== undefined && old.selfId === selfId && prevLink.nodeId === spec.node_id && prevLink.ns.tenantId === ns.tenantId;
    const given = this.incoming?.links[spec.link_id];
    const sessions = new Map<string, { rx: WireRx; tx: WireTx; share: SessionShare | null }>();
    if (same && given === undefined) {
      const cur = prevLink.share?.sessions.find((x) => x.hex === prevLink.pskHex) ?? null;
      sessions.set(prevLink.pskHex, { rx: prevLink.rx, tx: prevLink.tx, share: cur });
      if (prevLink.prevHex !== null && prevLink.rxPrev !== null && prevLink.txPrev !== null) {
        const prev = prevLink.share?.sessions.find((x) => x.hex === prevLink.prevHex) ?? null;
        sessions.set(prevLink.prevHex, { rx: prevLink.rxPrev, tx: prevLink.txPrev, share: prev });
      }
    }
    const mk = (hex: string): { rx: WireRx; tx: WireTx; share: SessionShare | null } => {
      const psk = Buffer.from(hex, 'hex');
      if (given !== undefined) {
        // Worker: the main thread's session for this key, our own objects over it.
        const sh = given.sessions.find((x) => x.hex === hex);
        if (sh === undefined) throw new Error(`link ${spec.link_id}: no shared session for a key of the view`);
        let objs = this.sessionsById.get(sh.sid);
        if (objs === undefined) {
          objs = {
            rx: new WireRx({ psk, from: spec.link_id, to: selfId, obfuscate: true, shared: sh.rx }),
            tx: new WireTx({ psk, from: selfId, to: spec.link_id, obfuscate: true, shared: sh.tx }),
          };
          this.sessionsById.set(sh.sid, objs);
        }
        return { ...objs, share: sh };
      }
      if (this.totals !== null) {
        const share: SessionShare = { sid: nextShareId++, hex, rx: newRxShared(), tx: newTxShared() };
        return {
          rx: new WireRx({ psk, from: spec.link_id, to: selfId, obfuscate: true, shared: share.rx }),
          tx: new WireTx({ psk, from: selfId, to: spec.link_id, obfuscate: true, shared: share.tx }),
          share,
        };
      }
      return {
        rx: new WireRx({ psk, from: spec.link_id, to: selfId, obfuscate: true }),
        tx: new WireTx({ psk, from: selfId, to: spec.link_id, obfuscate: true }),
        share: null,
      };
    };
    const cur = sessions.get(spec.psk) ?? mk(spec.psk);
    const allowed = prefixesOf([...spec.allowed_src, ...spec.routes]);
    const keep = same && given === undefined && (sessions.has(spec.psk) || (spec.previous_psk !== null && sessions.has(spec.previous_psk)));
    let ep: SharedEndpoint | undefined;
    if (given !== undefined) {
      ep = this.endpointsById.get(given.eid);
      if (ep === undefined) {
        ep = new SharedEndpoint(given.ep);
        this.endpointsById.set(given.eid, ep);
      }
    } else if (keep) ep = prevLink!.ep;
    const link = new RelayLink(
      spec.link_id,
      spec.node_id,
      spec.node,
      ns,
      spec.psk,
      cur.rx,
      cur.tx,
      new PrefixMatcher(allowed),
      allowed.some((p) => p.family === 4 && p.bits === 0),
      allowed.some((p) => p.family === 6 && p.bits === 0),
      ep,
    );
    link.sinceMs = same ? prevLink.sinceMs : now;
    const untilMs = spec.previous_psk_valid_until === null ? 0 : Date.parse(spec.previous_psk_valid_until);
    let prevShare: SessionShare | null = null;
    if (spec.previous_psk !== null && spec.previous_psk !== spec.psk && untilMs > now) {
      const p = sessions.get(spec.previous_psk) ?? mk(spec.previous_psk);
      link.rxPrev = p.rx;
      link.txPrev = p.tx;
      link.prevHex = spec.previous_psk;
      link.prevUntilMs = untilMs;
      link.prevUntilRel = untilMs - this.clockBase;
      prevShare = p.share;
    }
    if (given !== undefined) {
      link.share = given;
      const prevShared = prevLink !== undefined && prevLink.share?.eid === given.eid ? prevLink : undefined;
      if (prevShared !== undefined) {
        link.local = prevShared.local;
        link.sock = prevShared.sock;
        link.lastEchoMs = prevShared.lastEchoMs;
      }
    } else if (this.totals !== null) {
      link.share = {
        eid: keep && prevLink!.share !== null ? prevLink!.share.eid : nextShareId++,
        ep: link.ep.buffer,
        counters: keep && prevLink!.share !== null ? prevLink!.share.counters : sharedF64(this.wantWorkers * LINK_COUNTERS),
        sessions: [cur.share!, ...(prevShare !== null ? [prevShare] : [])],
      };
    }
    if (keep) {
      // A surviving key: keep where the node is, when it was heard, its counters,
      // and which key it speaks (so answers use the key it still has).
      link.sock = prevLink!.sock;
      link.local = prevLink!.local;
      const heard = prevLink!.heard;
      const lastHex = heard === HEARD_CURRENT ? prevLink!.pskHex : heard === HEARD_PREVIOUS ? prevLink!.prevHex : null;
      link.heard = lastHex === null ? HEARD_NONE : lastHex === spec.psk ? HEARD_CURRENT : lastHex === link.prevHex ? HEARD_PREVIOUS : HEARD_NONE;
      if (link.heard === HEARD_NONE && link.lastSeenMs > 0) link.heard = HEARD_CURRENT;
    }
    return link;
  }

  // ---- receive path -------------------------------------------------------------

  private onDatagram(msg: Buffer, len: number, addr: string, port: number, sock: UdpSock): void {
    const c = this.c;
    if (len < OVERHEAD || len > OVERHEAD + MAX_PLAINTEXT) {
      c.drop_malformed++;
      return;
    }
    const st = this.st;
    const now = this.clock[0]!;
    const link = this.findLink(st, msg, len, addr, port, now);
    if (link === null) {
      c.drop_unknown_peer++;
      return;
    }
    if (link === UNTRIED) {
      c.drop_scan_limited++;
      return;
    }
    const ns = link.ns;
    const tc = ns.local;
    const lc = link.local;
    if (this.tracking) this.mark(link);
    // findLink ran matches(), which already unmasked the header.
    const rx = this.matched!;
    const code = rx.openMatched(msg, len, this.plain);
    if (code !== RxCode.Accept) {
      c.rxDrop(code);
      tc.rxDrop(code);
      lc.drops++;
      return;
    }
    link.heard = rx === link.rx ? HEARD_CURRENT : HEARD_PREVIOUS;
    c.udp_rx_packets++;
    c.udp_rx_bytes += len;
    tc.udp_rx_packets++;
    tc.udp_rx_bytes += len;
    lc.rx_packets++;
    lc.rx_bytes += len;
    if (rx.keepalive) {
      c.keepalive_rx++;
      tc.keepalive_rx++;
      lc.keepalive_rx++;
      this.touch(st, link, addr, port, sock, now);
      // Echo it (same size, only to an authenticated link, at most every
      // ECHO_MIN_INTERVAL_MS) so the node can time its path to the relay. A
      // keepalive is never answered by a node, so this cannot loop; a subnetra
      // peer takes it as an ordinary keepalive.
      if (now - link.lastEchoMs >= ECHO_MIN_INTERVAL_MS) {
        link.lastEchoMs = now;
        this.sendOn(link, this.plain, 0, true, now);
        c.keepalive_tx++;
        tc.keepalive_tx++;
      }
      return;
    }
    const plen = rx.plaintextLen;
    const pkt = this.plain;
    if (!link.allowedSrc.hasPacketSource(pkt, plen)) {
      if (plen < 1 || (pkt[0]! >> 4 !== 4 && pkt[0]! >> 4 !== 6)) {
        c.drop_not_ip++;
        tc.drop_not_ip++;
      } else {
        c.drop_spoof++;
        tc.drop_spoof++;
      }
      lc.drops++;
      return;
    }
    this.touch(st, link, addr, port, sock, now);
    this.forward(st, link, pkt, plen, now);
  }

  /** Routes an authenticated inner packet from `from` inside its namespace. */
  private forward(st: RelayState, from: RelayLink, pkt: Buffer, len: number, now: number): void {
    const c = this.c;
    const ns = from.ns;
    const tc = ns.local;
    let to: RelayLink | null = null;
    const table = ns.table;
    const ri = table.lookupPacket(pkt, len);
    if (ri >= 0) {
      const t = st.byId[table.rules[ri]!.target];
      // Tables only name their own tenant's links; the check keeps it so.
      if (t !== undefined && t.ns === ns) to = t;
    }
    if (to === null) {
      // Not an address of the namespace: internet-bound, via the node's exit node.
      const ex = from.exitLink;
      if (ex !== null && ex.ns === ns && ((pkt[0]! >> 4 === 4) ? ex.exit4 : ex.exit6)) to = ex;
    }
    if (to === null) {
      c.drop_no_route++;
      tc.drop_no_route++;
      from.local.drops++;
      return;
    }
    if (to === from) {
      c.drop_no_reflect++;
      tc.drop_no_reflect++;
      from.local.drops++;
      return;
    }
    if (!ns.filter.check(pkt, len, now)) {
      c.drop_filter++;
      tc.drop_filter++;
      from.local.drops++;
      return;
    }
    if (!this.resolveSock(to)) {
      c.drop_no_endpoint++;
      tc.drop_no_endpoint++;
      from.local.drops++;
      return;
    }
    if (len > MAX_PLAINTEXT) {
      c.drop_oversized++;
      tc.drop_oversized++;
      from.local.drops++;
      return;
    }
    this.sendOn(to, pkt, len, false, now);
    c.relay_packets++;
    tc.relay_packets++;
  }

  /**
   * Brings `to.sock` in line with its (shared) endpoint: this thread's socket
   * on the local port the node talks to. False when no endpoint is known (or
   * this thread has no such socket).
   */
  private resolveSock(to: RelayLink): boolean {
    const ep = to.ep;
    if (ep.refresh() || to.sock === null) {
      to.sock = null;
      if (ep.addr === null) return false;
      const socks = this.udp.socks;
      for (let i = 0; i < socks.length; i++) {
        const s = socks[i]!;
        if (s.family === ep.family && s.port === ep.localPort) {
          to.sock = s;
          break;
        }
      }
    }
    return to.sock !== null && ep.addr !== null;
  }

  /**
   * Seals `pkt[0 .. len]` for `to` and sends it to its learned endpoint (known
   * to be set: resolveSock), counting the datagram globally, for the tenant and
   * the link. Uses the key the node last used: one still on the previous key can read it.
   */
  private sendOn(to: RelayLink, pkt: Buffer, len: number, keepalive: boolean, now: number): void {
    const tx = to.heard === HEARD_PREVIOUS && to.txPrev !== null && now < to.prevUntilRel ? to.txPrev : to.tx;
    const sock = to.sock!;
    const out = this.udp.nextBuffer(sock);
    const n = tx.seal(pkt, 0, len, out, keepalive);
    this.udp.send(sock, out, n, to.ep.port, to.ep.addr!);
    const c = this.c;
    const tc = to.ns.local;
    c.udp_tx_packets++;
    c.udp_tx_bytes += n;
    tc.udp_tx_packets++;
    tc.udp_tx_bytes += n;
    to.local.tx_packets++;
    to.local.tx_bytes += n;
    if (this.tracking) this.mark(to);
  }

  private touch(st: RelayState, link: RelayLink, addr: string, port: number, sock: UdpSock, now: number): void {
    const ep = link.ep;
    // Written once per millisecond at most: the line is read by every thread that sends to this link.
    const at = this.clockBase + now;
    if (ep.lastSeenMs !== at) ep.lastSeenMs = at;
    ep.refresh();
    if (ep.addr === addr && ep.port === port && ep.localPort === sock.port && link.sock === sock) return;
    const before = ep.addr;
    if (ep.set(addr, port, sock.family, sock.port) && before !== null) {
      this.c.endpoint_changes++;
      link.ns.local.endpoint_changes++;
    }
    if (before !== null) {
      const list = st.byAddr.get(before);
      if (list !== undefined) {
        const i = list.indexOf(link);
        if (i >= 0) list.splice(i, 1);
        if (list.length === 0) st.byAddr.delete(before);
      }
    }
    link.sock = sock;
    indexByAddr(st, link);
  }

  /** Current key, then (while valid) the previous one. */
  private linkMatches(l: RelayLink, msg: Buffer, len: number, now: number): boolean {
    if (l.rx.matches(msg, len)) {
      this.matched = l.rx;
      return true;
    }
    const prev = l.rxPrev;
    if (prev !== null && now < l.prevUntilRel && prev.matches(msg, len)) {
      this.matched = prev;
      return true;
    }
    return false;
  }

  /** The link that sent `msg`; null: none; UNTRIED: not tried (scan budget spent, see ScanLimiter). */
  private findLink(st: RelayState, msg: Buffer, len: number, addr: string, port: number, now: number): RelayLink | null | typeof UNTRIED {
    // Obfuscated headers: the links last seen at this address first, then everyone.
    const near = st.byAddr.get(addr);
    if (near !== undefined) {
      for (let i = 0; i < near.length; i++) {
        const l = near[i]!;
        if (l.ep.port === port && this.linkMatches(l, msg, len, now)) return l;
      }
    }
    const all = st.links;
    if (!this.scan.allow(addr, all.length, now)) return UNTRIED;
    for (let i = 0; i < all.length; i++) {
      if (this.linkMatches(all[i]!, msg, len, now)) return all[i]!;
    }
    return null;
  }

  // ---- reports ------------------------------------------------------------------

  /** Body of POST /relay/v1/health: when each link's node was last authenticated. */
  healthReport(now: number = Date.now()): HealthReport {
    const links = this.st.links
      .map((l) => {
        const seen = l.lastSeenMs;
        return seen > 0
          ? { link_id: l.id, last_seen_ms_ago: Math.max(0, Math.round(now - seen)) }
          : { link_id: l.id, last_seen_ms_ago: null, known_ms: Math.max(0, Math.round(now - l.sinceMs)) };
      })
      .sort((a, b) => a.link_id - b.link_id);
    return { links };
  }

  status(now: number = Date.now()): RelayStatus {
    const st = this.st;
    const v = st.view;
    return {
      relay: v ? { id: v.relay.id, name: v.relay.name, relay_link_id: v.relay.relay_link_id, tenant_id: v.relay.tenant_id, endpoints: v.relay.endpoints } : null,
      view_hash: v?.hash ?? null,
      uptime_s: Math.round((now - this.startedAt) / 1000),
      listen: this.udp.boundAddresses(),
      io: this.ioStatus(),
      workers: this.workersStatus(),
      counters: relayCounters(this.counters),
      tenants: [...st.namespaces.values()].map((ns) => ({
        tenant: ns.name,
        tenant_id: ns.tenantId,
        links: ns.links.length,
        online_links: ns.links.filter((l) => l.online(now, this.onlineMs)).length,
        server_online: [...ns.serverOnline],
        routes: ns.table.rules.map((r) => `${formatPrefix(r.dst)} -> ${r.target}`),
        counters: relayCounters(ns.counters),
        filter: {
          rules: ns.filter.filter.ruleCount,
          skipped_entries: ns.filter.filter.errors.length,
          flows: ns.filter.flows.size,
          ...ns.filterCounters.toJSON(),
        },
        link_list: ns.links.map((l) => {
          const seen = l.lastSeenMs;
          return {
            link_id: l.id,
            node_id: l.nodeId,
            node: l.node,
            endpoint: l.endpointText(),
            online: l.online(now, this.onlineMs),
            last_seen_ms_ago: seen > 0 ? Math.max(0, now - seen) : null,
            key: l.keyInUse(now),
            previous_key_valid_s: l.rxPrev !== null && now < l.prevUntilMs ? Math.round((l.prevUntilMs - now) / 1000) : null,
            exit_link_id: l.exitLink?.id ?? null,
            exit_node: l.exit4 || l.exit6,
            ...l.counters.toJSON(),
          };
        }),
      })),
    };
  }
}

export interface RelayLinkStatus {
  link_id: number;
  node_id: number;
  node: string;
  endpoint: string | null;
  online: boolean;
  last_seen_ms_ago: number | null;
  key: 'current' | 'previous' | null;
  previous_key_valid_s: number | null;
  exit_link_id: number | null;
  exit_node: boolean;
  [counter: string]: unknown;
}

export interface RelayTenantStatus {
  tenant: string;
  tenant_id: number;
  links: number;
  online_links: number;
  server_online: number[];
  routes: string[];
  counters: Record<string, number>;
  filter: Record<string, number>;
  link_list: RelayLinkStatus[];
}

export interface RelayStatus {
  relay: { id: number; name: string; relay_link_id: number; tenant_id: number | null; endpoints: string[] } | null;
  view_hash: string | null;
  uptime_s: number;
  listen: { family: 4 | 6; port: number }[];
  /** The UDP I/O path (batched or dgram) and which offloads are on. */
  io: UdpIoStatus;
  /** The packet threads. */
  workers: RelayWorkersStatus;
  counters: Record<string, number>;
  tenants: RelayTenantStatus[];
}
