// `larktun server`: assembles store, hub, change bus and HTTP routes into one
// process, and shuts it down gracefully.
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Fastify, { LogController, type FastifyError, type FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { openDatabase, pingDatabase } from './store/db.js';
import { Store } from './store/repo.js';
import { ControlMetrics } from './metrics.js';
import { MapHub } from './netmap.js';
import { notifyPayload, nullBus, startPgBus, type ChangeBus } from './bus.js';
import { sql } from 'kysely';
import { ApiError, errorBody } from './errors.js';
import { newSecret } from './secrets.js';
import { OpenApiCollector } from './http/openapi.js';
import { registerAdminRoutes } from './http/admin.js';
import { registerNodeRoutes } from './http/node.js';
import { ENGINE_NAME } from './policy-engine.js';
import { RelayHub } from './relay-hub.js';
import { reconcileRelays } from './relays.js';
import { nodeStats, routeStats } from './service.js';
import { DEFAULT_HEALTH_TTL_MS, registerRelayAdminRoutes, registerRelayProtocolRoutes } from './http/relays.js';
import { registerConsoleApi } from './console/api.js';
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

export async function startServer(opts: ServerOptions = {}): Promise<RunningServer> {
  const log = opts.logger ?? pino({ level: opts.logLevel ?? 'info', base: { svc: 'larktun-server' } });
  const dataDir = resolve(opts.dataDir ?? './larktun-data');
  const { host, port } = parseListen(opts.listen ?? '127.0.0.1:8080');
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
  const hub = new MapHub(store, metrics, log.isLevelEnabled('debug') ? (f, m) => log.debug(f, m) : undefined);
  const relayHub = new RelayHub(store);
  const consoleEvents = new ConsoleEvents();
  const timers = {
    rotateMs: opts.pskRotateMs ?? envMs('LARKTUN_PSK_ROTATE_MS') ?? 24 * 3600_000,
    graceMs: opts.pskGraceMs ?? envMs('LARKTUN_PSK_GRACE_MS') ?? 10 * 60_000,
  };
  const healthTtlMs = opts.relayHealthTtlMs ?? envMs('LARKTUN_RELAY_HEALTH_TTL_MS') ?? DEFAULT_HEALTH_TTL_MS;
  // A relay that misses this many ms of its (1 s) reports is not live: nodes home elsewhere.
  const liveTtlMs = opts.relayLiveTtlMs ?? envMs('LARKTUN_RELAY_LIVE_TTL_MS') ?? Math.min(DEFAULT_LIVE_TTL_MS, healthTtlMs);
  let bus: ChangeBus = nullBus;
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
          consoleEvents.changed(t, g);
        }
      },
      onError: (err) => log.warn({ err: err.message }, 'change bus error'),
      onReceived: () => metrics.notifications.inc({ direction: 'received' }),
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
      return reply.code(err.status).send(errorBody(err.code, err.message, err.details));
    }
    if (err.validation) {
      metrics.rejections.inc({ reason: 'validation' });
      const details = sanitizeValidation(err);
      return reply.code(400).send(errorBody('invalid_request', err.message, details));
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
  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.type(metrics.registry.contentType).send(text);
  });

  await app.register(
    async (api) => {
      api.get('/openapi.json', { schema: { tags: ['meta'], summary: 'This document', 'x-auth': 'none' } as Record<string, unknown> }, async () => openapi.document(SERVER_VERSION));
      registerAdminRoutes(api, { store });
      registerRelayAdminRoutes(api, { store, relayHub, graceMs: timers.graceMs, healthTtlMs, openStreams });
      registerConsoleApi(api, { store, log, events: consoleEvents, openStreams });
    },
    { prefix: '/api/v1' },
  );
  await app.register(
    async (node) => {
      registerNodeRoutes(node, { store, hub, metrics, openStreams, keepaliveMs: opts.keepaliveMs, shuttingDown: () => shuttingDown });
    },
    { prefix: '/node/v1' },
  );
  await app.register(
    async (relay) => {
      registerRelayProtocolRoutes(relay, { store, metrics, relayHub, graceMs: timers.graceMs, healthTtlMs, openStreams, keepaliveMs: opts.keepaliveMs });
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

  await app.listen({ host, port });
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
      await reconciling;
      await sweeping;
      const connected = hub.connectedNodes();
      for (const end of [...openStreams]) end();
      await app.close();
      // Nodes streaming from this server are offline now (they reconnect to a
      // replica, which marks them online again). SQLite resets all on start.
      if (handle.backend === 'postgres') {
        const byTenant = new Map<number, number[]>();
        for (const [t, n] of connected) byTenant.set(t, [...(byTenant.get(t) ?? []), n]);
        for (const [t, ids] of byTenant) await store.setOffline(t, ids).catch(() => undefined);
      }
      await bus.close();
      await store.close();
      log.info('larktun server stopped');
    })();
    return closing;
  };

  return { app, store, hub, relayHub, url, port: boundPort, host, operatorKeyCreated, close };
}

export function operatorKeyPath(dataDir: string): string {
  return join(resolve(dataDir), 'operator.key');
}

export function readOperatorKey(dataDir: string): string | null {
  const p = operatorKeyPath(dataDir);
  return existsSync(p) ? readFileSync(p, 'utf8').trim() : null;
}
