// Prometheus metrics of one server instance (its own registry, so several
// servers can live in one process during tests).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface OnlineCounter {
  (): Promise<{ tenant: string; online: number; total: number }[]>;
}

/** Routes of every tenant, for the route gauges (read at scrape time). */
export interface RouteStats {
  /** Per tenant: (node, prefix) pairs approved, and announced but not approved. */
  routes: { tenant: string; state: 'approved' | 'announced'; n: number }[];
  /** Every stored HA primary. */
  primaries: { tenant: string; prefix: string; node: string }[];
  /** Per tenant: approved routed prefixes (exit routes aside) that have no primary (no router online). */
  unserved: { tenant: string; n: number }[];
}

/** At most this many larktun_route_primary series (one per primary prefix) are exported. */
export const MAX_PRIMARY_SERIES = 1000;

/** Per-node monitoring, read at scrape time: the first `limit` nodes (by tenant, name) and how many more exist. */
export interface NodeStats {
  nodes: { tenant: string; node: string; online: boolean; lastSeen: string | null; relayRttMs: number | null }[];
  omitted: number;
}

/** Relays as the server sees them, read at scrape time. */
export interface RelayStats {
  relays: { relay: string; tenant: string | null; live: boolean; lastReport: string | null }[];
}

/** What the scrape-time gauges read (each optional). */
export interface MetricSources {
  routeStats?: () => Promise<RouteStats>;
  nodeStats?: (limit: number) => Promise<NodeStats>;
  relayStats?: () => Promise<RelayStats>;
}

/** At most this many nodes get per-node series (larktun_node_*{tenant,node}). */
export const MAX_NODE_SERIES = 1000;

/**
 * One read per scrape for several gauges: the gauges' collects share the
 * pending read, which is dropped once it has settled and the scrape's other
 * collects (queued behind it) have taken it.
 */
function oncePerScrape<T>(read: () => Promise<T>): () => Promise<T> {
  let pending: Promise<T> | null = null;
  return () => {
    pending ??= read().finally(() => setTimeout(() => { pending = null; }, 0));
    return pending;
  };
}

export class ControlMetrics {
  readonly registry = new Registry();
  readonly apiLatency: Histogram<'method' | 'route' | 'status'>;
  readonly mapPushes: Counter<'tenant'>;
  readonly compileSeconds: Histogram<'tenant'>;
  readonly rejections: Counter<'reason'>;
  readonly streams: Gauge;
  readonly notifications: Counter<'direction'>;
  /** Liveness transitions: relay reports (unseen/seen again) and stalled streams cut. */
  readonly liveness: Counter<'event'>;
  /** Registrations refused for node identity: missing/invalid/replayed proofs, takeover attempts. */
  readonly identityRefusals: Counter<'reason'>;
  /** Failed operator/API key attempts by result (invalid, expired, limited). */
  readonly authFailures: Counter<'result'>;
  /** Subjects (client addresses, key prefixes) the auth-failure limiter remembers; set by the server. */
  authLimiterEntries: () => number = () => 0;
  /** Compile worker jobs by kind and outcome (no tenant label: bounded). */
  readonly compileJobs: Counter<'kind' | 'result'>;
  /** Time a compile job ran in its worker, by kind. */
  readonly compileJobSeconds: Histogram<'kind'>;
  /** Time a compile job waited for a worker. */
  readonly compileWaitSeconds: Histogram;
  /** Compile workers replaced (a job over the time budget, or a crash). */
  readonly compileWorkerRestarts: Counter<'reason'>;
  /** Tenants whose live policy could not be compiled within the budget (served from their last good compile, if any). */
  readonly compileFailedTenants: Gauge;

  constructor(onlineCounter: OnlineCounter, sources: MetricSources = {}) {
    const { routeStats, nodeStats, relayStats } = sources;
    collectDefaultMetrics({ register: this.registry, prefix: 'larktun_server_' });
    this.apiLatency = new Histogram({
      name: 'larktun_api_request_duration_seconds',
      help: 'HTTP API latency by route',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.registry],
    });
    this.mapPushes = new Counter({
      name: 'larktun_map_pushes_total',
      help: 'Network maps pushed to nodes',
      labelNames: ['tenant'],
      registers: [this.registry],
    });
    this.compileSeconds = new Histogram({
      name: 'larktun_policy_compile_seconds',
      help: 'Time to compile a tenant policy into per-node views',
      labelNames: ['tenant'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5],
      registers: [this.registry],
    });
    this.rejections = new Counter({
      name: 'larktun_api_rejections_total',
      help: 'Requests rejected (authentication, validation, limits) by reason',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.streams = new Gauge({
      name: 'larktun_map_streams',
      help: 'Open node map streams on this server',
      registers: [this.registry],
    });
    this.liveness = new Counter({
      name: 'larktun_node_liveness_events_total',
      help: 'Nodes marked offline/online again by relay health reports (relay_unseen, relay_seen_again), back online because their relay went quiet (relay_verdict_lapsed), and node streams cut because the node stopped reading',
      labelNames: ['event'],
      registers: [this.registry],
    });
    this.identityRefusals = new Counter({
      name: 'larktun_node_identity_refusals_total',
      help: 'Node registrations refused for identity: proof_required, proof_nonce_invalid (unknown, expired, replayed or another key\'s nonce), proof_invalid (bad signature), takeover (an existing node\'s key without its proof, or another user\'s auth key)',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.authFailures = new Counter({
      name: 'larktun_api_auth_failures_total',
      help: 'Failed operator/API key attempts: invalid (wrong or unknown key), expired, limited (refused with 429 after repeated failures from the client address or on the key prefix)',
      labelNames: ['result'],
      registers: [this.registry],
    });
    const entries = () => this.authLimiterEntries();
    new Gauge({
      name: 'larktun_api_auth_limiter_entries',
      help: 'Client addresses and key prefixes the failed-attempt limiter remembers (bounded)',
      registers: [this.registry],
      collect() {
        this.set(entries());
      },
    });
    this.compileJobs = new Counter({
      name: 'larktun_compile_jobs_total',
      help: 'Compile worker jobs by kind (sync_full: a tenant compiled from scratch or for a new policy; sync: an incremental update; check: a candidate policy; preview: the reach of some nodes under a candidate policy; relay; facts) and result (ok, invalid, over_budget, error)',
      labelNames: ['kind', 'result'],
      registers: [this.registry],
    });
    this.compileJobSeconds = new Histogram({
      name: 'larktun_compile_job_seconds',
      help: 'Time a compile job ran in its worker, by kind',
      labelNames: ['kind'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
      registers: [this.registry],
    });
    this.compileWaitSeconds = new Histogram({
      name: 'larktun_compile_wait_seconds',
      help: 'Time a compile job waited for a free worker',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
      registers: [this.registry],
    });
    this.compileWorkerRestarts = new Counter({
      name: 'larktun_compile_worker_restarts_total',
      help: 'Compile workers replaced, by reason (over_budget: a job ran past the time budget; crashed)',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.compileFailedTenants = new Gauge({
      name: 'larktun_compile_failed_tenants',
      help: 'Tenants whose live policy did not compile within the budget (served from their last good compile when there is one; see GET /policy "compile")',
      registers: [this.registry],
    });
    this.notifications = new Counter({
      name: 'larktun_change_notifications_total',
      help: 'Cross-replica change notifications sent/received',
      labelNames: ['direction'],
      registers: [this.registry],
    });
    const onlineG = new Gauge({
      name: 'larktun_nodes_online',
      help: 'Nodes online per tenant (stream open and not reported unseen by the relays)',
      labelNames: ['tenant'],
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const r of await onlineCounter()) this.set({ tenant: r.tenant }, r.online);
      },
    });
    void onlineG;
    if (routeStats) {
      const stats = oncePerScrape(routeStats);
      new Gauge({
        name: 'larktun_routes',
        help: 'Routes per tenant by state: approved, or announced and not approved (one per node and prefix)',
        labelNames: ['tenant', 'state'],
        registers: [this.registry],
        async collect() {
          this.reset();
          for (const r of (await stats()).routes) this.set({ tenant: r.tenant, state: r.state }, r.n);
        },
      });
      new Gauge({
        name: 'larktun_route_primary',
        help: `The HA primary of each routed prefix (value 1; at most ${MAX_PRIMARY_SERIES} series)`,
        labelNames: ['tenant', 'prefix', 'node'],
        registers: [this.registry],
        async collect() {
          this.reset();
          for (const p of (await stats()).primaries.slice(0, MAX_PRIMARY_SERIES)) this.set({ tenant: p.tenant, prefix: p.prefix, node: p.node }, 1);
        },
      });
      new Gauge({
        name: 'larktun_routes_unserved',
        help: 'Approved routed prefixes per tenant that have no primary (none of their routers online)',
        labelNames: ['tenant'],
        registers: [this.registry],
        async collect() {
          this.reset();
          for (const u of (await stats()).unserved) this.set({ tenant: u.tenant }, u.n);
        },
      });
    }
    if (nodeStats) {
      const stats = oncePerScrape(() => nodeStats(MAX_NODE_SERIES));
      const perNode = (name: string, help: string, value: (n: NodeStats['nodes'][number]) => number | null): void => {
        new Gauge({
          name,
          help: `${help} (at most ${MAX_NODE_SERIES} nodes; see larktun_node_series_omitted)`,
          labelNames: ['tenant', 'node'],
          registers: [this.registry],
          async collect() {
            this.reset();
            for (const n of (await stats()).nodes) {
              const v = value(n);
              if (v !== null) this.set({ tenant: n.tenant, node: n.node }, v);
            }
          },
        });
      };
      perNode('larktun_node_online', 'Node online (1) or not (0): stream open and seen by its relays', (n) => (n.online ? 1 : 0));
      perNode('larktun_node_last_seen_timestamp_seconds', 'Latest sign of life of the node (its stream or a relay seeing it), Unix time', (n) =>
        n.lastSeen === null ? null : Date.parse(n.lastSeen) / 1000);
      perNode('larktun_node_relay_rtt_seconds', 'Round-trip time between the node and its relay (the node\'s keepalive-echo measurement)', (n) =>
        n.relayRttMs === null ? null : n.relayRttMs / 1000);
      new Gauge({
        name: 'larktun_node_series_omitted',
        help: `Nodes left out of the per-node series (beyond the first ${MAX_NODE_SERIES})`,
        registers: [this.registry],
        async collect() {
          this.set((await stats()).omitted);
        },
      });
    }
    if (relayStats) {
      const stats = oncePerScrape(relayStats);
      new Gauge({
        name: 'larktun_relay_live',
        help: 'Relay reporting health within its live timeout (1) or not (0); nodes home on live relays',
        labelNames: ['relay', 'tenant'],
        registers: [this.registry],
        async collect() {
          this.reset();
          for (const r of (await stats()).relays) this.set({ relay: r.relay, tenant: r.tenant ?? '' }, r.live ? 1 : 0);
        },
      });
      new Gauge({
        name: 'larktun_relay_last_report_timestamp_seconds',
        help: 'When the relay last reported health, Unix time (absent: never)',
        labelNames: ['relay', 'tenant'],
        registers: [this.registry],
        async collect() {
          this.reset();
          for (const r of (await stats()).relays) if (r.lastReport !== null) this.set({ relay: r.relay, tenant: r.tenant ?? '' }, Date.parse(r.lastReport) / 1000);
        },
      });
    }
    new Gauge({
      name: 'larktun_nodes',
      help: 'Registered nodes per tenant',
      labelNames: ['tenant'],
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const r of await onlineCounter()) this.set({ tenant: r.tenant }, r.total);
      },
    });
  }
}
