// Prometheus registries for larktund's managed and relay modes (`--metrics
// HOST:PORT`); the HTTP server and the standalone registry are in
// src/dataplane/metrics.ts. Everything is read from the live objects at scrape
// time through their public API.
//
// Managed mode (a node):
//   larktun_<counter>_total                 every engine counter (0 while the data plane is down)
//   larktun_filter_<verdict>_total          the node's inbound packet filter verdicts
//   larktun_forwarding_rules                rules in the live table (absent while down)
//   larktun_node_state{state}               1 for the backend state, 0 for the others
//   larktun_node_server_connected           map stream to the control server open
//   larktun_node_map_version                version of the network map in force
//   larktun_node_peers, _peers_online       peers in the map / online per the server
//   larktun_node_routes_in_use              accepted peer subnet routes installed
//   larktun_node_exit_node_in_use           an exit node carries internet traffic
//   larktun_node_map_apply_failed           applying the last map failed
//   larktun_node_relay_online               the relay was heard lately
//   larktun_node_relay_last_seen_age_seconds, larktun_node_relay_rtt_seconds
//
// Relay mode:
//   larktun_<counter>_total                 relay totals (the counters a relay moves)
//   larktun_relay_tenant_<counter>_total{tenant,tenant_id}   the same, per tenant
//   larktun_relay_tenant_filter_<verdict>_total{…}           the tenant's packet filter
//   larktun_relay_tenant_links{…}, _links_online{…}, _filter_flows{…}, _filter_skipped_entries{…}
//   larktun_relay_packet_threads, _configured, larktun_relay_packet_thread_failures,
//   larktun_relay_thread_udp_rx_packets{thread}, larktun_udp_io_info{path,gro,gso}
//   larktun_relay_server_connected, larktun_relay_control_state{state},
//   larktun_relay_view_source{source}, larktun_relay_view_applied_timestamp_seconds,
//   larktun_relay_views_rejected_total, larktun_relay_health_reports_total{result}
import { Counter, Gauge, Registry } from 'prom-client';
import { COUNTER_HELP, COUNTER_NAMES, type CounterName } from '../dataplane/counters.js';
import type { NodeEngine } from '../dataplane/engine.js';
import { FILTER_COUNTER_HELP, type FilterCounterName } from '../dataplane/filter.js';
import { registerCounters, registerLabelledCounters } from '../dataplane/metrics.js';
import { RELAY_COUNTER_NAMES, RELAY_ONLINE_MS, type Namespace, type RelayEngine } from '../dataplane/relay.js';
import type { BackendState } from './managed.js';
import type { RelayControlStatus } from './relaymode.js';

const FILTER_COUNTER_NAMES = Object.keys(FILTER_COUNTER_HELP) as FilterCounterName[];

/**
 * `read()` once per scrape: every collect of one `registry.metrics()` call runs
 * in the same turn of the event loop, so they all see one snapshot.
 */
function perScrape<T>(read: () => T): () => T {
  let cached: { v: T } | null = null;
  return () => {
    if (cached === null) {
      cached = { v: read() };
      setImmediate(() => {
        cached = null;
      });
    }
    return cached.v;
  };
}

/** An unlabelled gauge read at scrape time; null leaves it without a sample (absent). */
function gauge(reg: Registry, name: string, help: string, read: () => number | null): void {
  const g: Gauge = new Gauge({
    name,
    help,
    registers: [reg],
    collect() {
      g.reset();
      const v = read();
      if (v === null) g.remove({});
      else g.set(v);
    },
  });
}

/** A labelled gauge whose series `fill` sets at scrape time (after a reset: series not set are absent). */
function labelledGauge<L extends string>(reg: Registry, name: string, help: string, labelNames: readonly L[], fill: (g: Gauge<L>) => void): void {
  const g: Gauge<L> = new Gauge<L>({
    name,
    help,
    labelNames,
    registers: [reg],
    collect() {
      g.reset();
      fill(g);
    },
  });
}

/** One series per possible value, 1 for the current one (`state` outside the list is added). */
function setEnum<L extends string>(g: Gauge<L>, label: L, values: readonly string[], current: string | null): void {
  for (const v of values) g.set({ [label]: v } as Record<L, string>, v === current ? 1 : 0);
  if (current !== null && !values.includes(current)) g.set({ [label]: current } as Record<L, string>, 1);
}

// ---- managed mode ---------------------------------------------------------------

/** What the registry reads from a managed node (ManagedNode has all of it). */
export interface ManagedMetricsSource {
  readonly liveEngine: NodeEngine | null;
  readonly filterCounters: Record<string, number>;
  status(): Record<string, unknown>;
}

const BACKEND_STATES: readonly BackendState[] = ['NeedsLogin', 'Stopped', 'Starting', 'Running'];

/** The parts of ManagedNode.status() the metrics use, read defensively (it is plain JSON). */
export interface NodeStatusMetrics {
  state: string | null;
  serverConnected: boolean;
  mapVersion: number | null;
  peers: number;
  peersOnline: number;
  routesInUse: number;
  exitNodeInUse: boolean;
  applyFailed: boolean;
  relay: { online: boolean; lastSeenAgeSeconds: number | null; rttSeconds: number | null } | null;
}

const obj = (v: unknown): Record<string, unknown> | null => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function nodeStatusMetrics(s: Record<string, unknown>): NodeStatusMetrics {
  const peers = Array.isArray(s['peers']) ? (s['peers'] as unknown[]) : [];
  const relay = obj(s['relay']);
  const rtt = relay ? num(relay['rtt_ms']) : null;
  const exit = obj(s['exit_node']);
  return {
    state: typeof s['state'] === 'string' ? s['state'] : null,
    serverConnected: obj(s['server'])?.['connected'] === true,
    mapVersion: num(s['map_version']),
    peers: peers.length,
    peersOnline: peers.filter((p) => obj(p)?.['online'] === true).length,
    routesInUse: Array.isArray(s['routes_in_use']) ? s['routes_in_use'].length : 0,
    exitNodeInUse: exit !== null && typeof exit['in_use'] === 'string',
    applyFailed: typeof s['apply_error'] === 'string',
    relay: relay
      ? {
          online: relay['online'] === true,
          lastSeenAgeSeconds: num(relay['last_seen_age_seconds']),
          rttSeconds: rtt === null ? null : rtt / 1000,
        }
      : null,
  };
}

export function buildManagedRegistry(node: ManagedMetricsSource): Registry {
  const reg = new Registry();
  const status = perScrape(() => nodeStatusMetrics(node.status()));
  const filter = perScrape(() => node.filterCounters);

  registerCounters(reg, COUNTER_NAMES, COUNTER_HELP, (name) => node.liveEngine?.counters[name] ?? 0);
  const filterHelp = Object.fromEntries(FILTER_COUNTER_NAMES.map((n) => [n, `node packet filter (inbound): ${FILTER_COUNTER_HELP[n]}`])) as Record<FilterCounterName, string>;
  registerCounters(reg, FILTER_COUNTER_NAMES, filterHelp, (name) => filter()[name] ?? 0);

  const b = (v: boolean): number => (v ? 1 : 0);
  gauge(reg, 'larktun_forwarding_rules', 'rules in the live forwarding table (absent while the data plane is down)', () => node.liveEngine?.rules.length ?? null);
  gauge(reg, 'larktun_packet_workers', 'threads running the packet engine (1: the main thread; absent while the data plane is down)', () => node.liveEngine?.workers ?? null);
  labelledGauge(reg, 'larktun_node_state', 'backend state: 1 for the current one (NeedsLogin, Stopped, Starting, Running)', ['state'], (g) => setEnum(g, 'state', BACKEND_STATES, status().state));
  gauge(reg, 'larktun_node_server_connected', '1 while the map stream to the control server is open', () => b(status().serverConnected));
  gauge(reg, 'larktun_node_map_version', 'version of the network map in force (absent before the first map)', () => status().mapVersion);
  gauge(reg, 'larktun_node_peers', 'peers in the network map', () => status().peers);
  gauge(reg, 'larktun_node_peers_online', 'peers in the network map that the control server reports online', () => status().peersOnline);
  gauge(reg, 'larktun_node_routes_in_use', "peers' subnet routes installed (--accept-routes)", () => status().routesInUse);
  gauge(reg, 'larktun_node_exit_node_in_use', '1 when internet traffic goes through an exit node', () => b(status().exitNodeInUse));
  gauge(reg, 'larktun_node_map_apply_failed', '1 when applying the last network map failed (see larktun status)', () => b(status().applyFailed));
  gauge(reg, 'larktun_node_relay_online', '1 when the relay was heard lately (0 also when the map names no relay)', () => b(status().relay?.online === true));
  gauge(reg, 'larktun_node_relay_last_seen_age_seconds', 'seconds since the relay was last heard (absent when never)', () => status().relay?.lastSeenAgeSeconds ?? null);
  gauge(reg, 'larktun_node_relay_rtt_seconds', 'smoothed round-trip time to the relay, from keepalive echoes (absent when not measured)', () => status().relay?.rttSeconds ?? null);
  return reg;
}

// ---- relay mode -----------------------------------------------------------------

/** What the registry reads in relay mode: the engine, and (from runRelay) the control side. */
export interface RelayMetricsSource {
  readonly engine: RelayEngine;
  controlStatus?: () => RelayControlStatus;
}

const CONTROL_STATES = ['connecting', 'open', 'down', 'ended', 'unauthorized', 'stopped'] as const;
const VIEW_SOURCES = ['none', 'saved', 'server'] as const;
type TenantLabel = 'tenant' | 'tenant_id';

export function buildRelayRegistry(src: RelayMetricsSource): Registry {
  const reg = new Registry();
  const engine = src.engine;
  const tenantLabels: readonly TenantLabel[] = ['tenant', 'tenant_id'];
  const labels = (ns: Namespace): Record<TenantLabel, string> => ({ tenant: ns.name, tenant_id: String(ns.tenantId) });
  const namespaces = (): Namespace[] => engine.namespaces;

  registerCounters(reg, RELAY_COUNTER_NAMES, COUNTER_HELP, (name) => engine.counters[name]);
  const tenantHelp = Object.fromEntries(RELAY_COUNTER_NAMES.map((n) => [n, `per tenant: ${COUNTER_HELP[n]}`])) as Record<CounterName, string>;
  registerLabelledCounters(reg, RELAY_COUNTER_NAMES, tenantHelp, tenantLabels, namespaces, labels, (ns, name) => ns.counters[name], 'larktun_relay_tenant_');
  const filterHelp = Object.fromEntries(FILTER_COUNTER_NAMES.map((n) => [n, `tenant packet filter: ${FILTER_COUNTER_HELP[n]}`])) as Record<FilterCounterName, string>;
  registerLabelledCounters(reg, FILTER_COUNTER_NAMES, filterHelp, tenantLabels, namespaces, labels, (ns, name) => ns.filterCounters[name], 'larktun_relay_tenant_');

  labelledGauge(reg, 'larktun_relay_tenant_links', "links (nodes) of the tenant in the relay's view", tenantLabels, (g) => {
    for (const ns of namespaces()) g.set(labels(ns), ns.links.length);
  });
  labelledGauge(reg, 'larktun_relay_tenant_links_online', `the tenant's links heard within the last ${RELAY_ONLINE_MS / 1000} s`, tenantLabels, (g) => {
    const now = Date.now();
    for (const ns of namespaces()) g.set(labels(ns), ns.links.filter((l) => l.online(now)).length);
  });
  labelledGauge(reg, 'larktun_relay_tenant_filter_flows', "flows in the tenant's flow table", tenantLabels, (g) => {
    for (const ns of namespaces()) g.set(labels(ns), ns.filter.flows.size);
  });
  labelledGauge(reg, 'larktun_relay_tenant_filter_skipped_entries', "entries of the tenant's packet filter that did not compile (skipped)", tenantLabels, (g) => {
    for (const ns of namespaces()) g.set(labels(ns), ns.filter.filter.errors.length);
  });

  gauge(reg, 'larktun_relay_packet_threads', 'packet threads moving packets now (the main thread and its workers)', () => engine.workersStatus().running);
  gauge(reg, 'larktun_relay_packet_threads_configured', 'packet threads asked for (--workers / LARKTUN_WORKERS, default one per core)', () => engine.workersStatus().configured);
  gauge(reg, 'larktun_relay_packet_thread_failures', 'worker threads that stopped unexpectedly since start', () => engine.workersStatus().failures);
  labelledGauge(reg, 'larktun_relay_thread_udp_rx_packets', 'authenticated datagrams received per packet thread (the kernel spreads senders by address and port)', ['thread'], (g) => {
    engine.workersStatus().threads.forEach((t, i) => g.set({ thread: String(i) }, t.udp_rx_packets));
  });
  labelledGauge(reg, 'larktun_udp_io_info', 'the UDP I/O path (batch: recvmmsg/sendmmsg; dgram: the fallback) and its offloads: 1 for the one in use', ['path', 'gro', 'gso'], (g) => {
    const io = engine.ioStatus();
    g.set({ path: io.path, gro: String(io.gro), gso: String(io.gso) }, 1);
  });

  const control = src.controlStatus;
  if (control !== undefined) {
    gauge(reg, 'larktun_relay_server_connected', '1 while the relay stream to the control server is open', () => (control().control === 'open' ? 1 : 0));
    labelledGauge(reg, 'larktun_relay_control_state', 'talking to the control server: 1 for the current state (ended/unauthorized: the relay stopped talking to it)', ['state'], (g) =>
      setEnum(g, 'state', CONTROL_STATES, control().control),
    );
    labelledGauge(reg, 'larktun_relay_view_source', 'where the view in force came from: 1 for the current source (none, saved, server)', ['source'], (g) =>
      setEnum(g, 'source', VIEW_SOURCES, control().view_source),
    );
    gauge(reg, 'larktun_relay_view_applied_timestamp_seconds', 'when the view in force was applied (Unix time; absent before the first)', () => {
      const at = control().view_applied_at;
      const ms = at === null ? NaN : Date.parse(at);
      return Number.isFinite(ms) ? ms / 1000 : null;
    });
    const rejectedHelp = { views_rejected: 'views from the control server that did not validate (the previous view stayed)' };
    registerCounters(reg, ['views_rejected'], rejectedHelp, () => control().views_rejected, 'larktun_relay_');
    const health: Counter<'result'> = new Counter({
      name: 'larktun_relay_health_reports_total',
      help: 'health reports to the control server, by result (sent, failed)',
      labelNames: ['result'],
      registers: [reg],
      collect() {
        health.reset();
        const h = control().health;
        health.inc({ result: 'sent' }, h.sent);
        health.inc({ result: 'failed' }, h.failed);
      },
    });
  }
  return reg;
}
