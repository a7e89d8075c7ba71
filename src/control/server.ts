// `larktun server`: assembles store, hub, change bus and HTTP routes into one
// process, and shuts it down gracefully.
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Fastify, { LogController, type FastifyError, type FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { isStorageFull, openDatabase, pingDatabase } from './store/db.js';
import { Store } from './store/repo.js';
import { ControlMetrics } from './metrics.js';
import { MapHub } from './netmap.js';
import { notifyPayload, nullBus, startPgBus, type ChangeBus } from './bus.js';
import { sql } from 'kysely';
import { ApiError, errorBody, unauthorized } from './errors.js';
import { authenticate, guardAuthentication } from './http/auth.js';
import { FailureLimiter, LogBudget } from './http/auth-limiter.js';
import { installInputGuard } from './http/input-guard.js';
import { startMetricsListener, type MetricsListener } from './metrics-listener.js';
import { Counter } from 'prom-client';
import { newSecret } from './secrets.js';
import { OpenApiCollector } from './http/openapi.js';
import { registerAdminRoutes } from './http/admin.js';
import { registerNodeRoutes } from './http/node.js';
import { ENGINE_NAME } from './policy-engine.js';
import { RelayHub } from './relay-hub.js';
import { StreamExpiry } from './stream-expiry.js';
import { reconcileRelays } from './relays.js';
import { nodeStats, routeStats } from './service.js';
import { DEFAULT_HEALTH_TTL_MS, registerRelayAdminRoutes, registerRelayProtocolRoutes } from './http/relays.js';
import { attachPool, CompilePool, compileLimits, warmFacts } from './compile/index.js';
import { FACTS_MIN_BYTES } from './policy-engine.js';
import { RateLimiter } from './ratelimit.js';
import { registerConsoleApi } from './console/api.js';
import { parsePublicUrl } from './console/oidc.js';
import { NodeLogins } from './nodelogin.js';
import { registerConsoleStatic } from './console/static.js';
import { ConsoleEvents } from './console/events.js';

export const SERVER_VERSION = '0.1.0';

export interface ServerOptions {
  /** host:port; port 0 picks a free port. Default 127.0.0.1:8080. */
  listen?: string;
  /** Data directory (SQLite file, operator key). Default ./larktun-data. */
  dataDir?: string;
  /** "sqlite" (default) or a postgres:// URL. */
  db?: string;
  tlsCert?: string;
  tlsKey?: string;
  /** pino level; default "info". */
  logLevel?: string;
  /** A logger to use instead of pino to stdout. */
  logger?: Logger;
  /** SSE heartbeat interval in ms (default 1000 on node streams, 15000 on relay streams). */
  keepaliveMs?: number;
  /** Periodic rotation of relay link keys, ms (default 24 h; env LARKTUN_PSK_ROTATE_MS). */
  pskRotateMs?: number;
  /** How long a replaced link key stays valid, ms (default 10 min; env LARKTUN_PSK_GRACE_MS). */
  pskGraceMs?: number;
  /** How long a relay stays live without reporting, ms (default 5 s or the health TTL if shorter; env LARKTUN_RELAY_LIVE_TTL_MS). */
  relayLiveTtlMs?: number;
  /** How long a relay's health verdicts count after its last report, ms (default 10 s; env LARKTUN_RELAY_HEALTH_TTL_MS). */
  relayHealthTtlMs?: number;
  /**
   * host:port of a separate listener serving GET /metrics without
   * authentication, for a local Prometheus (env LARKTUN_METRICS_LISTEN).
   * The main listener's /metrics needs the operator key.
   */
  metricsListen?: string;
  /** A relay stream whose writes stay unread this long is cut, ms (default 15 s; env LARKTUN_RELAY_STALL_MS). */
  relayStallMs?: number;
  /** A node's presence lease, ms (default 6 s; env LARKTUN_NODE_LEASE_TTL_MS): renewed every TTL/3 while it streams from this replica. */
  nodeLeaseTtlMs?: number;
  /** Compile worker threads (default min(4, max(2, cores)); env LARKTUN_COMPILE_WORKERS). */
  compileWorkers?: number;
  /** Time budget of one policy compile, ms (default 5000; env LARKTUN_COMPILE_BUDGET_MS). */
  compileBudgetMs?: number;
  /** Map streams one node token may hold open (default 4; env LARKTUN_MAX_STREAMS_PER_NODE). */
  maxStreamsPerNode?: number;
  /** POST …/policy/check per tenant: sustained rate per second and burst (default 1/s, 5; env LARKTUN_POLICY_CHECK_RATE, LARKTUN_POLICY_CHECK_BURST). */
  policyCheckRate?: { perSecond: number; burst: number };
  /** The URL browsers, identity providers and nodes reach this server at, e.g. https://larktun.example.com (env LARKTUN_PUBLIC_URL): console SSO redirect URIs and interactive node login links derive from it. */
  publicUrl?: string;
}

function envMs(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}="${v}" is not a positive number of milliseconds`);
  return n;
}

export interface RunningServer {
  app: FastifyInstance;
  store: Store;
  hub: MapHub;
  relayHub: RelayHub;
  url: string;
  port: number;
  host: string;
  /** Path of the operator key file when this start created it, else null. */
  operatorKeyCreated: string | null;
  /** URL of the unauthenticated metrics listener (--metrics-listen), else null. */
  metricsUrl: string | null;
  close(): Promise<void>;
}

export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`--listen "${s}" is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)`);
  return { host: (m[1] ?? m[2]) as string, port };
}

function sanitizeValidation(err: FastifyError): { field: string; message: string }[] {
  return (err.validation ?? []).map((v) => ({
    field: `${err.validationContext ?? 'body'}${v.instancePath ? v.instancePath.replace(/\//g, '.') : ''}`,
    message: v.message ?? 'invalid',
  }));
}

function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

/** Default: a relay silent for 5 s (five missed reports) is not live. */
const DEFAULT_LIVE_TTL_MS = 5000;
/**
 * Default presence lease: renewed every 2 s, so a replica that dies (kill -9)
 * has its nodes offline within TTL + one sweep (≤ 7 s), and two missed
 * renewals in a row are tolerated.
 */
export const DEFAULT_NODE_LEASE_TTL_MS = 6000;
/** Leases are swept (expired ones taken offline) this often at most. */
const LEASE_SWEEP_MS = 1000;

export async function startServer(opts: ServerOptions = {}): Promise<RunningServer> {
  const log = opts.logger ?? pino({ level: opts.logLevel ?? 'info', base: { svc: 'larktun-server' } });
  const dataDir = resolve(opts.dataDir ?? './larktun-data');
  const { host, port } = parseListen(opts.listen ?? '127.0.0.1:8080');
  const publicUrlSpec = opts.publicUrl ?? (process.env.LARKTUN_PUBLIC_URL || undefined);
  const publicUrl = publicUrlSpec === undefined ? null : parsePublicUrl(publicUrlSpec);
  const metricsListenSpec = opts.metricsListen ?? (process.env.LARKTUN_METRICS_LISTEN || undefined);
  const metricsAt = metricsListenSpec === undefined ? null : (() => {
    try {
      return parseListen(metricsListenSpec);
    } catch {
      throw new Error(`--metrics-listen "${metricsListenSpec}" is not host:port (e.g. 127.0.0.1:9090 or [::1]:9090)`);
    }
  })();
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });

  const handle = await openDatabase(opts.db ?? 'sqlite', dataDir);
  const store = new Store(handle);
  log.info({ backend: handle.backend, file: handle.file, engine: ENGINE_NAME }, 'database ready');

  // Operator key: created once per database, written to DATA/operator.key.
  let operatorKeyCreated: string | null = null;
  if (!(await store.hasOperatorKey())) {
    const s = newSecret('lkop');
    const file = join(dataDir, 'operator.key');
    await store.addOperatorKey(s.prefix, s.hash);
    writeFileSync(file, `${s.secret}\n`, { mode: 0o600 });
    chmodSync(file, 0o600);
    operatorKeyCreated = file;
    log.info({ path: file }, 'created the operator key');
  }
  if (handle.backend === 'sqlite') await store.resetOnline();
  store.leaseTtlMs = opts.nodeLeaseTtlMs ?? envMs('LARKTUN_NODE_LEASE_TTL_MS') ?? DEFAULT_NODE_LEASE_TTL_MS;

  const metrics = new ControlMetrics(async () => {
    const rows = await store.db
      .selectFrom('tenants')
      .leftJoin('nodes', 'nodes.tenant_id', 'tenants.id')
      .select((eb) => [
        'tenants.name as tenant',
        eb.fn.count<number>('nodes.id').as('total'),
        eb.fn.sum<number>(eb.case().when(eb.and([eb('nodes.online', '=', 1), eb('nodes.unseen', '=', 0)])).then(1).else(0).end()).as('online'),
      ])
      .groupBy('tenants.name')
      .execute();
    return rows.map((r) => ({ tenant: r.tenant, total: Number(r.total), online: Number(r.online ?? 0) }));
  }, {
    routeStats: () => routeStats(store),
    nodeStats: (limit) => nodeStats(store, limit),
    relayStats: async () => {
      const [relays, tenants] = await Promise.all([store.listRelays(), store.listTenants()]);
      const names = new Map(tenants.map((t) => [t.id, t.name]));
      return { relays: relays.map((r) => ({ relay: r.name, tenant: r.tenant_id === null ? null : (names.get(r.tenant_id) ?? null), live: r.live === 1, lastReport: r.reported_at })) };
    },
  });
  // Failed API key attempts: counted, slowed per client address and key
  // prefix (bounded memory), logged at a bounded rate.
  const authLimiter = new FailureLimiter();
  const authLog = new LogBudget(10, 10_000);
  metrics.authLimiterEntries = () => authLimiter.size;
  guardAuthentication(store, {
    limiter: authLimiter,
    onFailure: (f) => {
      metrics.authFailures.inc({ result: f.result });
      if (f.result === 'expired' || (!f.blocked && f.result !== 'invalid')) return;
      const suppressed = authLog.take();
      if (suppressed === null) return;
      const fields = { client: f.ip, key_prefix: f.key, suppressed_since_last: suppressed };
      if (f.blocked) log.warn(fields, 'repeated failed API key attempts: refusing this client or key prefix for a while (429)');
      else log.info(fields, 'failed API key attempt');
    },
    onError: (err) => log.warn({ err }, 'recording API key use failed'),
  });
  // Policy compilation runs in worker threads, never on this event loop.
  const pool = new CompilePool(compileLimits({ workers: opts.compileWorkers, timeMs: opts.compileBudgetMs }), metrics);
  attachPool(store, pool);
  const hub = new MapHub(store, metrics, pool, log.isLevelEnabled('debug') ? (f, m) => log.debug(f, m) : undefined, (f, m) => log.warn(f, m));
  const checkRate = opts.policyCheckRate ?? {
    perSecond: envMs('LARKTUN_POLICY_CHECK_RATE') ?? 1,
    burst: envMs('LARKTUN_POLICY_CHECK_BURST') ?? 5,
  };
  const policyChecks = new RateLimiter(checkRate.perSecond, checkRate.burst);
  // Large stored policies: their tag owners and auto-approvers are learned in
  // a worker now, so no request ever parses them on the event loop.
  void (async () => {
    for (const t of await store.listTenants()) {
      const pol = await store.tenant(t.id).currentPolicy();
      if (pol && pol.text.length >= FACTS_MIN_BYTES) await warmFacts(pool, t.id, pol.text).catch((err: unknown) => log.warn({ tenant: t.name, err }, 'reading a large policy failed'));
    }
  })().catch((err: unknown) => log.warn({ err }, 'reading large policies failed'));
  const relayHub = new RelayHub(store);
  // Node streams end when their node expires (timer per stream, re-armed on every tenant change).
  const expiry = new StreamExpiry(store, {
    onEnded: (tenantId, nodeId) => log.info({ tenant_id: tenantId, node: nodeId }, 'node expired: its map stream was ended'),
    onError: (err) => log.warn({ err }, 'reading node expiries failed'),
  });
  const consoleEvents = new ConsoleEvents();
  const timers = {
    rotateMs: opts.pskRotateMs ?? envMs('LARKTUN_PSK_ROTATE_MS') ?? 24 * 3600_000,
    graceMs: opts.pskGraceMs ?? envMs('LARKTUN_PSK_GRACE_MS') ?? 10 * 60_000,
  };
  const healthTtlMs = opts.relayHealthTtlMs ?? envMs('LARKTUN_RELAY_HEALTH_TTL_MS') ?? DEFAULT_HEALTH_TTL_MS;
  // A relay that misses this many ms of its (1 s) reports is not live: nodes home elsewhere.
  const liveTtlMs = opts.relayLiveTtlMs ?? envMs('LARKTUN_RELAY_LIVE_TTL_MS') ?? Math.min(DEFAULT_LIVE_TTL_MS, healthTtlMs);
  let bus: ChangeBus = nullBus;
  const busReconnects = new Counter({
    name: 'larktun_change_bus_reconnects_total', help: 'Attempts to re-open the LISTEN connection after it was lost (result: ok, failed)',
    labelNames: ['result'], registers: [metrics.registry],
  });
  const busResyncs = new Counter({
    name: 'larktun_change_bus_resyncs_total', help: 'Re-syncs of every tenant\'s generation after the LISTEN connection came back', registers: [metrics.registry],
  });
  const busResyncTenants = new Counter({
    name: 'larktun_change_bus_resync_stale_tenants_total', help: 'Tenants found behind (a change missed while LISTEN was down) and refreshed by a re-sync', registers: [metrics.registry],
  });
  if (handle.backend === 'postgres' && handle.pgUrl) {
    // This server's own notifications come back to its listener: skip them
    // (its hub already heard of the change directly through onCommit).
    const mine = new Set<string>();
    bus = await startPgBus({
      url: handle.pgUrl,
      onChange: (t, g) => {
        if (!mine.delete(notifyPayload(t, g))) {
          hub.changed(t, g);
          relayHub.changed(t);
          expiry.tenantChanged(t);
          consoleEvents.changed(t, g);
        }
      },
      onError: (err) => log.warn({ err: err.message }, 'change bus error'),
      onReceived: () => metrics.notifications.inc({ direction: 'received' }),
      onReconnect: (ok) => busReconnects.inc({ result: ok ? 'ok' : 'failed' }),
      // LISTEN was down: changes committed meanwhile by other replicas were not
      // announced to us. Compare every tenant's generation with what the hub
      // last pushed (hub.changed ignores tenants it is current on) and refresh.
      onResync: async () => {
        const t0 = performance.now();
        const rows = await store.db.selectFrom('tenants').select(['id', 'generation']).execute();
        const present = new Set(rows.map((r) => r.id));
        let stale = 0;
        for (const r of rows) if (hub.changed(r.id, r.generation)) stale++;
        for (const [t] of hub.connectedNodes()) if (!present.has(t) && hub.changed(t, -1)) stale++;
        relayHub.resync();
        busResyncs.inc();
        busResyncTenants.inc(stale);
        log.info({ tenants: rows.length, stale, ms: Number((performance.now() - t0).toFixed(1)) }, 'change bus reconnected: re-synced tenant generations');
      },
    });
    const channel = bus.channel as string;
    store.inTransaction = async (trx, tenantId, generation) => {
      const payload = notifyPayload(tenantId, generation);
      if (mine.size > 100_000) mine.clear(); // only rolled-back commits leave entries behind
      mine.add(payload);
      await sql`select pg_notify(${channel}, ${payload})`.execute(trx);
      metrics.notifications.inc({ direction: 'sent' });
    };
  }
  store.onCommit = (tenantId, generation) => {
    hub.changed(tenantId, generation);
    relayHub.changed(tenantId);
    expiry.tenantChanged(tenantId);
    consoleEvents.changed(tenantId, generation);
  };

  const https = opts.tlsCert || opts.tlsKey
    ? (() => {
        if (!opts.tlsCert || !opts.tlsKey) throw new Error('TLS needs both --tls-cert and --tls-key');
        return { cert: readFileSync(opts.tlsCert), key: readFileSync(opts.tlsKey) };
      })()
    : null;

  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    ...(https ? { https } : {}),
    ajv: { customOptions: { removeAdditional: false, allErrors: true, coerceTypes: 'array', useDefaults: true } },
    return503OnClosing: true,
    forceCloseConnections: true,
  }) as unknown as FastifyInstance;

  const openapi = new OpenApiCollector('/api/v1');
  openapi.attach(app);

  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser(['text/plain', 'application/hujson'], { parseAs: 'string' }, (_req, body, done) => {
    done(null, { policy: body as string });
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err instanceof ApiError) {
      if (err.status >= 500) req.log.error({ err }, 'request failed');
      const retry = (err.details as { retry_after_seconds?: unknown } | null)?.retry_after_seconds;
      if (err.status === 429 && typeof retry === 'number') void reply.header('retry-after', String(retry));
      return reply.code(err.status).send(errorBody(err.code, err.message, err.details));
    }
    if (err.validation) {
      metrics.rejections.inc({ reason: 'validation' });
      const details = sanitizeValidation(err);
      return reply.code(400).send(errorBody('invalid_request', err.message, details));
    }
    if (isStorageFull(err)) {
      metrics.rejections.inc({ reason: 'storage_full' });
      req.log.error({ path: handle.file ?? 'PostgreSQL', backend: handle.backend, err: err.message }, 'database disk is full');
      return reply.code(507).send(errorBody('storage_full', 'the server\'s database storage is full: the change was not saved; retry once the operator has freed space'));
    }
    if (isUniqueViolation(err)) {
      return reply.code(409).send(errorBody('conflict', 'the change conflicts with an existing object; retry'));
    }
    const status = typeof err.statusCode === 'number' ? err.statusCode : 500;
    if (status >= 400 && status < 500) {
      const code = err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? 'unsupported_media_type'
        : err.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? 'body_too_large'
        : /JSON/i.test(err.message) ? 'invalid_json' : 'bad_request';
      return reply.code(status).send(errorBody(code, err.message));
    }
    req.log.error({ err }, 'internal error');
    return reply.code(500).send(errorBody('internal', 'internal server error'));
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(errorBody('not_found', `no route ${req.method} ${req.url.split('?')[0]}`));
  });
  app.addHook('onResponse', async (req, reply) => {
    metrics.apiLatency.observe(
      { method: req.method, route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });

  // NUL characters anywhere in params, query or body, and bodies nested deeper
  // than 64 levels: 400 naming the field (one place for every route).
  installInputGuard(app, () => metrics.rejections.inc({ reason: 'validation' }));

  let shuttingDown = false;
  const openStreams = new Set<() => void>();

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    if (shuttingDown) return reply.code(503).send(errorBody('shutting_down', 'the server is shutting down'));
    try {
      await pingDatabase(store.db);
      return { status: 'ready', backend: handle.backend };
    } catch {
      return reply.code(503).send(errorBody('database_unavailable', 'the database does not answer'));
    }
  });
  // Per-tenant names, nodes and prefixes: only for the operator on this
  // listener (which every node reaches); --metrics-listen serves them without
  // authentication on an address of the operator's choice.
  app.get('/metrics', async (req, reply) => {
    const p = await authenticate(store, req);
    if (p.kind !== 'operator') throw unauthorized('/metrics needs the operator key: send "Authorization: Bearer <operator key>" (or scrape --metrics-listen)');
    const text = await metrics.registry.metrics();
    return reply.type(metrics.registry.contentType).send(text);
  });

  const nodeLogins = new NodeLogins(store, metrics, publicUrl ? { publicUrl: publicUrl.toString() } : {});
  await app.register(
    async (api) => {
      api.get('/openapi.json', { schema: { tags: ['meta'], summary: 'This document', 'x-auth': 'none' } as Record<string, unknown> }, async () => openapi.document(SERVER_VERSION));
      registerAdminRoutes(api, { store, pool, hub, policyChecks });
      registerRelayAdminRoutes(api, { store, relayHub, graceMs: timers.graceMs, healthTtlMs, openStreams });
      registerConsoleApi(api, { store, log, events: consoleEvents, openStreams, publicUrl });
      nodeLogins.registerAdminRoutes(api);
    },
    { prefix: '/api/v1' },
  );
  await app.register(
    async (node) => {
      registerNodeRoutes(node, {
        store, hub, metrics, openStreams, keepaliveMs: opts.keepaliveMs, shuttingDown: () => shuttingDown, expiry,
        maxStreamsPerNode: opts.maxStreamsPerNode ?? envMs('LARKTUN_MAX_STREAMS_PER_NODE'),
      });
      nodeLogins.registerNodeRoutes(node);
    },
    { prefix: '/node/v1' },
  );
  await app.register(
    async (relay) => {
      registerRelayProtocolRoutes(relay, {
        store, metrics, relayHub, graceMs: timers.graceMs, healthTtlMs, openStreams, keepaliveMs: opts.keepaliveMs,
        stallMs: opts.relayStallMs ?? envMs('LARKTUN_RELAY_STALL_MS'),
      });
    },
    { prefix: '/relay/v1' },
  );

  // The web console at / (static build; its pages call the Admin API above).
  const consoleApp = registerConsoleStatic(app);
  if (!consoleApp.built) log.warn({ dir: consoleApp.dir }, 'the console is not built: run "npm run build" to serve it at /');

  // Relay links: made where missing and rotated when due, at start and then
  // periodically (several replicas may do this at once; each tenant is
  // re-checked under its lock).
  let reconciling: Promise<unknown> = Promise.resolve();
  const reconcile = () => {
    reconciling = reconcileRelays(store, timers)
      .then((r) => { if (r.made || r.rotated) log.info(r, 'relay links reconciled'); })
      .catch((err: unknown) => log.warn({ err }, 'relay link reconcile failed'));
  };
  reconcile();
  const reconcileTimer = setInterval(reconcile, Math.max(1000, Math.min(60_000, Math.floor(timers.rotateMs / 4))));
  reconcileTimer.unref();

  // Relay health verdicts lapse when their relay goes quiet: a sweep clears
  // them (each tenant under its lock, so replicas may sweep at once) and the
  // nodes they kept offline come back (primaries re-elected, maps pushed).
  let sweeping: Promise<unknown> | null = null;
  const sweep = () => {
    if (sweeping) return;
    sweeping = store.sweepRelayHealth(healthTtlMs)
      .then(async (r) => {
        if (r.flipped) {
          metrics.liveness.inc({ event: 'relay_verdict_lapsed' }, r.flipped);
          log.info(r, 'relay health verdicts lapsed');
        }
        // Relays that stopped reporting are no longer live: nodes home elsewhere.
        const cutoff = new Date(Date.now() - liveTtlMs).toISOString();
        for (const id of await store.relaysGoneQuiet(cutoff)) {
          if (await store.setRelayLive(id, false, cutoff)) {
            metrics.liveness.inc({ event: 'relay_quiet' });
            log.warn({ relay: id, live_ttl_ms: liveTtlMs }, 'relay stopped reporting: marked not live, its nodes move to another relay');
          }
        }
      })
      .catch((err: unknown) => log.warn({ err }, 'relay health sweep failed'))
      .finally(() => { sweeping = null; });
  };
  const sweepTimer = setInterval(sweep, Math.max(250, Math.min(5000, Math.floor(Math.min(healthTtlMs, liveTtlMs) / 4))));
  sweepTimer.unref();

  // Presence leases: renew those of the nodes streaming from here (every
  // TTL/3), then take offline the nodes whose lease lapsed anywhere (a crashed
  // or cut-off replica's). Renewing first, in the same task, means a replica
  // whose own event loop stalled never expires its own live nodes.
  const leaseTtlMs = store.leaseTtlMs;
  let lastRenew = 0;
  let leasing: Promise<unknown> | null = null;
  const leaseTick = () => {
    if (leasing || shuttingDown) return;
    // Bounded: a database call that hangs (a connection cut without a reset)
    // must not stop the renewals for good; after one TTL the next tick starts afresh.
    let giveUp: NodeJS.Timeout | null = null;
    const bound = new Promise<void>((resolve) => {
      giveUp = setTimeout(() => {
        log.warn({ lease_ttl_ms: leaseTtlMs }, 'node lease renewal/sweep did not finish within the lease TTL: starting over');
        resolve();
      }, leaseTtlMs);
      giveUp.unref();
    });
    const work = (async () => {
      if (performance.now() - lastRenew >= leaseTtlMs / 3) {
        const byTenant = new Map<number, number[]>();
        for (const [t, n] of hub.connectedNodes()) byTenant.set(t, [...(byTenant.get(t) ?? []), n]);
        const r = await store.renewLeases(byTenant, () => new Set(hub.connectedNodes().map(([t, n]) => `${t}:${n}`)));
        lastRenew = performance.now();
        const back = r.restored.reduce((a, x) => a + x.nodeIds.length, 0);
        if (back) {
          metrics.liveness.inc({ event: 'lease_restored' }, back);
          log.info({ restored: r.restored }, 'nodes streaming here had lost their lease: online again');
        }
      }
      const expired = await store.expireLeases();
      const n = expired.reduce((a, x) => a + x.nodeIds.length, 0);
      if (n) {
        metrics.liveness.inc({ event: 'lease_expired' }, n);
        log.warn({ expired, lease_ttl_ms: leaseTtlMs }, 'node presence leases lapsed (their replica stopped renewing): marked offline');
      }
    })().catch((err: unknown) => log.warn({ err }, 'node lease renewal/sweep failed'));
    leasing = Promise.race([work, bound]).finally(() => {
      if (giveUp) clearTimeout(giveUp);
      leasing = null;
    });
  };
  const leaseTimer = setInterval(leaseTick, Math.max(100, Math.min(LEASE_SWEEP_MS, Math.floor(leaseTtlMs / 4))));
  leaseTimer.unref();

  await app.listen({ host, port });
  let metricsListener: MetricsListener | null = null;
  if (metricsAt) {
    try {
      metricsListener = await startMetricsListener(metricsAt.host, metricsAt.port, metrics.registry, (err) => log.warn({ err }, 'metrics scrape failed'));
    } catch (err) {
      clearInterval(reconcileTimer);
      clearInterval(sweepTimer);
      await reconciling;
      await sweeping;
      expiry.close();
      await app.close();
      await bus.close();
      await store.close();
      throw err;
    }
    log.info({ url: metricsListener.url }, 'metrics listener (no authentication)');
  }
  const addr = app.server.address();
  const boundPort = typeof addr === 'object' && addr ? addr.port : port;
  const scheme = https ? 'https' : 'http';
  const url = `${scheme}://${host.includes(':') ? `[${host}]` : host}:${boundPort}`;
  log.info({ url }, 'larktun server listening');

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      shuttingDown = true;
      clearInterval(reconcileTimer);
      clearInterval(sweepTimer);
      clearInterval(leaseTimer);
      await reconciling;
      await sweeping;
      await leasing;
      const connected = hub.connectedNodes();
      expiry.close();
      for (const end of [...openStreams]) end();
      await metricsListener?.close();
      await app.close();
      // Nodes streaming from this server are offline now (they reconnect to a
      // replica, which marks them online again). SQLite resets all on start.
      if (handle.backend === 'postgres') {
        const byTenant = new Map<number, number[]>();
        for (const [t, n] of connected) byTenant.set(t, [...(byTenant.get(t) ?? []), n]);
        for (const [t, ids] of byTenant) await store.setOffline(t, ids).catch(() => undefined);
      }
      hub.close();
      await bus.close();
      await pool.close();
      await store.close();
      log.info('larktun server stopped');
    })();
    return closing;
  };

  return { app, store, hub, relayHub, url, port: boundPort, host, operatorKeyCreated, metricsUrl: metricsListener?.url ?? null, close };
}

export function operatorKeyPath(dataDir: string): string {
  return join(resolve(dataDir), 'operator.key');
}

export function readOperatorKey(dataDir: string): string | null {
  const p = operatorKeyPath(dataDir);
  return existsSync(p) ? readFileSync(p, 'utf8').trim() : null;
}
