// Relays: the Admin API's relay registry (/api/v1/relays, link rotation) and
// the relay protocol (/relay/v1: the relay's view as JSON and as an SSE stream).
// The operator key manages every relay; a tenant key sees only the relays
// dedicated to its tenant — any other relay id answers exactly like a missing one.
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import type { LinkReport, Store } from '../store/repo.js';
import { nowIso } from '../store/repo.js';
import type { RelayRow } from '../store/schema.js';
import { badRequest, conflict, forbidden, notFound, unauthorized } from '../errors.js';
import { newSecret, parseSecret, secretMatches } from '../secrets.js';
import { authenticate, bearer, resolveTenant, type Principal } from './auth.js';
import { parseHostPort } from '../../net/addr.js';
import { buildRelayView, ensureLinks, RELAY_SELF_ID, relayView, rotateLinks, tenantsOfRelay, type BuiltRelayView } from '../relays.js';
import type { RelayHub, RelayStream } from '../relay-hub.js';
import type { RouteDoc } from './openapi.js';
import type { ControlMetrics } from '../metrics.js';
import { guardedWriter } from './stream-guard.js';
import { NODE_UNSEEN_MS, ROUTER_SEEN_MS, ROUTER_UNSEEN_MS } from '../../dataplane/liveness.js';

export const DEFAULT_HEALTH_TTL_MS = 10_000;
export const DEFAULT_HEALTH_PERSIST_MS = 15_000;

export interface RelayDeps {
  store: Store;
  metrics?: ControlMetrics;
  /** A node whose relays have not seen it for longer than this is offline (ms, default NODE_UNSEEN_MS = 3000). */
  unseenMs?: number;
  /** The same for a node with approved routes (ms, default ROUTER_UNSEEN_MS = 1000). */
  routerUnseenMs?: number;
  /** A router reported unseen is seen again once heard within this (ms, default ROUTER_SEEN_MS = 500; hysteresis). */
  routerSeenMs?: number;
  /** A relay's verdicts count for this long after its last report (ms, default 10 000). */
  healthTtlMs?: number;
  /** last_seen_at/rtt of a link are stored at most this often (ms, default 15 000); verdict flips always. */
  healthPersistMs?: number;
  relayHub: RelayHub;
  /** How long a replaced link key stays valid (ms). */
  graceMs: number;
  keepaliveMs?: number;
  /** A relay stream whose writes stay unread this long is cut (ms, default 15 000): the relay stopped reading. */
  stallMs?: number;
  /** A relay stream with more than this many bytes queued unread is cut at once (default 32 MiB). */
  maxBacklogBytes?: number;
  openStreams: Set<() => void>;
}

export const DEFAULT_RELAY_STALL_MS = 15_000;
export const DEFAULT_RELAY_MAX_BACKLOG = 32 * 1024 * 1024;

type S = FastifySchema & RouteDoc;
const doc = (summary: string, auth = 'operator'): S => ({ tags: ['relays'], summary, 'x-auth': auth });
const NAME = { type: 'string', pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' } as const;
const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'integer', minimum: 1 } }, additionalProperties: false } as const;
const tenantOnlyParams = { type: 'object', required: ['tenant'], properties: { tenant: NAME }, additionalProperties: false } as const;
const nodeParams = {
  type: 'object', required: ['tenant', 'id'], additionalProperties: false,
  properties: { tenant: NAME, id: { type: 'integer', minimum: 1 } },
} as const;

function endpointsCheck(list: string[]): string[] {
  const bad = list.filter((e) => parseHostPort(e) === null);
  if (bad.length) throw badRequest(`endpoint "${bad[0]}" is not host:port`, { endpoints: bad });
  return list;
}

export function registerRelayAdminRoutes(app: FastifyInstance, deps: RelayDeps): void {
  const { store, relayHub } = deps;

  const tenantName = async (r: RelayRow): Promise<string | null> =>
    r.tenant_id === null ? null : ((await store.getTenant(r.tenant_id))?.name ?? null);

  /** The relay if this principal may see it; 404 otherwise (never a hint). */
  const relayFor = async (p: Principal, id: number, write: boolean): Promise<RelayRow> => {
    const r = await store.getRelay(id);
    if (!r) throw notFound('relay');
    if (p.kind === 'apikey') {
      if (r.tenant_id !== p.tenantId) throw notFound('relay');
      if (write && p.role !== 'admin') throw forbidden(`the ${p.role} role may not do this (needs admin)`);
    }
    return r;
  };

  app.post<{ Body: { name: string; endpoints: string[]; tenant?: string } }>(
    '/relays',
    {
      schema: {
        ...doc('Register a relay (its token is shown once); with "tenant" it serves that tenant only, else every tenant'),
        body: {
          type: 'object', additionalProperties: false, required: ['name', 'endpoints'],
          properties: {
            name: NAME,
            endpoints: { type: 'array', items: { type: 'string', maxLength: 300 }, minItems: 1, maxItems: 16, description: 'public UDP endpoints, host:port' },
            tenant: { ...NAME, description: 'tenant served by a dedicated relay' },
          },
        },
      },
    },
    async (req, reply) => {
      const p = await authenticate(store, req);
      if (p.kind !== 'operator') throw forbidden('this endpoint needs the operator key');
      const b = req.body;
      const endpoints = endpointsCheck(b.endpoints);
      let tenantId: number | null = null;
      if (b.tenant !== undefined) {
        const t = await store.getTenantByName(b.tenant);
        if (!t) throw badRequest(`tenant "${b.tenant}" does not exist`);
        tenantId = t.id;
      }
      if (await store.getRelayByName(b.name)) throw conflict(`relay "${b.name}" already exists`);
      const s = newSecret('lkrelay');
      const now = nowIso();
      const served = tenantId === null ? (await store.listTenants()).map((t) => t.id) : [tenantId];
      // One transaction: the relay row, every served tenant's links and one
      // audit entry per tenant commit together (or not at all).
      const row = await store.writeTenants(served, p.actor, async (txs, relays) => {
        if (tenantId !== null && txs.length === 0) throw badRequest(`tenant "${b.tenant}" does not exist`);
        const r = await relays.insertRelay({
          name: b.name, endpoints: JSON.stringify(endpoints), tenant_id: tenantId, self_id: RELAY_SELF_ID,
          token_prefix: s.prefix, token_hash: s.hash, generation: 1, created_at: now, updated_at: now,
        });
        const v = relayView(r, b.tenant ?? null);
        for (const tx of txs) {
          const n = await ensureLinks(tx, [r]);
          await tx.audit('relay.create', 'relay', r.id, null, { ...v, links: n });
        }
        return r;
      });
      const view = relayView(row, b.tenant ?? null);
      return reply.code(201).send({ ...view, token: s.secret });
    },
  );

  app.get('/relays', { schema: doc('List relays (a tenant key: its dedicated relays)', 'apikey') }, async (req) => {
    const p = await authenticate(store, req);
    const [all, tenants, links] = await Promise.all([
      store.listRelays(), store.listTenants(), store.linkCountsByRelay(p.kind === 'operator' ? undefined : p.tenantId),
    ]);
    const names = new Map(tenants.map((t) => [t.id, t.name]));
    const mine = p.kind === 'operator' ? all : all.filter((r) => r.tenant_id === p.tenantId);
    return {
      relays: mine.map((r) => ({
        ...relayView(r, r.tenant_id === null ? null : (names.get(r.tenant_id) ?? null)),
        tenants: (links.get(r.id) ?? []).map((l) => ({ tenant: names.get(l.tenant_id) ?? null, links: l.links, last_seen: l.last_seen })),
      })),
    };
  });

  app.get<{ Params: { tenant: string } }>(
    '/tenants/:tenant/relays',
    { schema: { ...doc('The relays serving a tenant (shared and its dedicated ones): live state, last report, and this tenant\'s links on each (never another tenant\'s)', 'apikey'), params: tenantOnlyParams } },
    async (req) => {
      const p = await authenticate(store, req);
      const t = await resolveTenant(store, p, req.params.tenant, 'read');
      const [relays, links] = await Promise.all([store.tenant(t.id).relaysServing(), store.linkCountsByRelay(t.id)]);
      return {
        relays: relays.map((r) => {
          const l = links.get(r.id)?.[0];
          return { ...relayView(r, r.tenant_id === null ? null : t.name), dedicated: r.tenant_id !== null, links: l?.links ?? 0, last_seen: l?.last_seen ?? null };
        }),
      };
    },
  );

  app.get<{ Params: { id: number } }>('/relays/:id', { schema: { ...doc('Get a relay', 'apikey'), params: idParams } }, async (req) => {
    const p = await authenticate(store, req);
    const r = await relayFor(p, req.params.id, false);
    return relayView(r, await tenantName(r));
  });

  app.delete<{ Params: { id: number } }>('/relays/:id', { schema: { ...doc('Delete a relay and its links', 'apikey'), params: idParams } }, async (req) => {
    const p = await authenticate(store, req);
    const r = await relayFor(p, req.params.id, true);
    const view = relayView(r, await tenantName(r));
    // One transaction: every served tenant (locked in id order), then the
    // relay row; links, audit entries and the row go together.
    const served = r.tenant_id === null ? (await store.listTenants()).map((t) => t.id) : [r.tenant_id];
    await store.writeTenants(served, p.actor, async (txs, relays) => {
      if (!(await relays.lockRelay(r.id))) throw notFound('relay');
      for (const tx of txs) {
        const n = await tx.deleteLinksOfRelay(r.id);
        await tx.audit('relay.delete', 'relay', r.id, { ...view, links: n }, null);
        // its verdicts went with its links
        await tx.refreshUnseen(deps.healthTtlMs ?? DEFAULT_HEALTH_TTL_MS);
      }
      await relays.deleteRelayRow(r.id);
    });
    relayHub.relayChanged(r.id);
    return { deleted: true };
  });

  app.post<{ Params: { id: number } }>('/relays/:id/rotate', { schema: { ...doc('Rotate the keys of every link of a relay (old keys stay valid for the grace period)', 'apikey'), params: idParams } }, async (req) => {
    const p = await authenticate(store, req);
    const r = await relayFor(p, req.params.id, true);
    let total = 0;
    for (const t of await tenantsOfRelay(store, r)) {
      await store.write(t.id, p.actor, async (tx) => {
        const n = await rotateLinks(tx, await tx.linksOfRelay(r.id), deps.graceMs);
        total += n;
        await tx.audit('relay.rotate', 'relay', r.id, null, { links: n });
      }).catch(() => undefined);
    }
    return { rotated: total, grace_seconds: Math.round(deps.graceMs / 1000) };
  });

  app.get<{ Params: { tenant: string; id: number } }>(
    '/tenants/:tenant/nodes/:id/links',
    { schema: { ...doc('A node\'s relay links (ids and rotation times; keys are never listed)', 'apikey'), params: nodeParams } },
    async (req) => {
      const p = await authenticate(store, req);
      const t = await resolveTenant(store, p, req.params.tenant, 'read');
      const repo = store.tenant(t.id);
      if (!(await repo.getNode(req.params.id))) throw notFound('node');
      const relays = new Map((await repo.relaysServing()).map((r) => [r.id, r]));
      const links = await repo.linksOfNode(req.params.id);
      return {
        links: links.map((l) => ({
          relay: l.relay_id, relay_name: relays.get(l.relay_id)?.name ?? null, link_id: l.link_id,
          relay_link_id: relays.get(l.relay_id)?.self_id ?? null, rotated_at: l.rotated_at, created_at: l.created_at,
        })),
      };
    },
  );

  app.post<{ Params: { tenant: string; id: number } }>(
    '/tenants/:tenant/nodes/:id/links/rotate',
    { schema: { ...doc('Rotate the keys of a node\'s relay links', 'apikey'), params: nodeParams } },
    async (req) => {
      const p = await authenticate(store, req);
      const t = await resolveTenant(store, p, req.params.tenant, 'nodes');
      const { result } = await store.write(t.id, p.actor, async (tx) => {
        const n = await tx.getNode(req.params.id);
        if (!n) throw notFound('node');
        const c = await rotateLinks(tx, await tx.linksOfNode(n.id), deps.graceMs);
        await tx.audit('node.links.rotate', 'node', n.id, null, { links: c });
        return c;
      });
      return { rotated: result, grace_seconds: Math.round(deps.graceMs / 1000) };
    },
  );
}

export async function authenticateRelay(store: Store, req: FastifyRequest): Promise<RelayRow> {
  const token = bearer(req);
  const parsed = token ? parseSecret(token) : null;
  if (!token || parsed?.kind !== 'lkrelay') throw unauthorized('missing or invalid relay token');
  const r = await store.findRelayByToken(parsed.prefix);
  if (!r || !secretMatches(token, r.token_hash)) throw unauthorized('missing or invalid relay token');
  return r;
}

export function registerRelayProtocolRoutes(app: FastifyInstance, deps: RelayDeps): void {
  const { store, relayHub } = deps;
  const rdoc = (summary: string): S => ({ tags: ['relay'], summary, 'x-auth': 'relay' });

  app.get('/map', { schema: rdoc('The relay\'s view: per tenant its links and global packet filter (one shot)') }, async (req, reply) => {
    const r = await authenticateRelay(store, req);
    const v = await buildRelayView(store, r.id);
    if (!v) throw unauthorized('missing or invalid relay token');
    return reply.type('application/json; charset=utf-8').send(v.json);
  });

  app.post<{ Body: { links: { link_id: number; last_seen_ms_ago: number | null; known_ms?: number; rtt_ms?: number }[] } }>(
    '/health',
    {
      schema: {
        ...rdoc('Health report: when the relay last saw each link\'s node. A node is offline (primaries fail over) while a relay that reported recently (default: within 10 s) has not seen it for more than 3 s (1 s for a node with approved routes; once unseen, such a node is seen again when heard within 0.5 s) and no such relay has; a relay\'s verdicts lapse when it stops reporting'),
        body: {
          type: 'object', additionalProperties: false, required: ['links'],
          properties: {
            links: {
              type: 'array', maxItems: 65535,
              items: {
                type: 'object', additionalProperties: false, required: ['link_id', 'last_seen_ms_ago'],
                properties: {
                  link_id: { type: 'integer', minimum: 1, maximum: 65535 },
                  last_seen_ms_ago: { type: ['integer', 'null'], minimum: 0, description: 'null: never seen' },
                  known_ms: { type: 'integer', minimum: 0, description: 'with last_seen_ms_ago null: how long the relay has had the link; within the unseen threshold it gives no verdict yet' },
                  rtt_ms: { type: 'number', minimum: 0 },
                },
              },
            },
          },
        },
      },
    },
    async (req) => {
      const r = await authenticateRelay(store, req);
      const now = Date.now();
      const unseenMs = deps.unseenMs ?? NODE_UNSEEN_MS;
      const routerUnseenMs = deps.routerUnseenMs ?? ROUTER_UNSEEN_MS;
      const routerSeenMs = Math.min(routerUnseenMs, deps.routerSeenMs ?? ROUTER_SEEN_MS);
      const ttlMs = deps.healthTtlMs ?? DEFAULT_HEALTH_TTL_MS;
      const prev = await store.relayReported(r.id, new Date(now).toISOString());
      // A relay heard again (or for the first time) is live: its tenants' maps say so.
      if (r.live !== 1) await store.setRelayLive(r.id, true);
      // Read the relay's links once (with whether each node is a router), and
      // visit only the tenants where something is to be written.
      const rows = await store.linksOfRelayWithRole(r.id);
      const byLink = new Map(rows.map((row) => [row.link_id, row]));
      const reported = new Map<number, LinkReport>();
      for (const l of req.body.links) {
        const row = byLink.get(l.link_id);
        const router = row?.router === true;
        // A link the relay has had for less than the threshold and not heard yet
        // (a relay that just started): no verdict, as if left out of the report.
        if (l.last_seen_ms_ago === null && l.known_ms !== undefined && l.known_ms <= (router ? routerUnseenMs : unseenMs)) continue;
        const ago = l.last_seen_ms_ago;
        // Routers: unseen after routerUnseenMs; once unseen, seen again only when
        // heard within routerSeenMs (between the two the last verdict holds).
        const unseen = ago === null
          || ago > (router ? routerUnseenMs : unseenMs)
          || (router && row?.reported_unseen === 1 && ago > routerSeenMs);
        reported.set(l.link_id, {
          lastSeenAt: ago === null ? null : new Date(now - ago).toISOString(),
          rtt: l.rtt_ms === undefined ? null : Math.round(l.rtt_ms),
          unseen,
        });
      }
      // A relay that had gone quiet (its verdicts lapsed) counts afresh for every node it reports.
      const recheck = prev === null || Date.parse(prev) <= now - ttlMs;
      const persistMs = deps.healthPersistMs ?? DEFAULT_HEALTH_PERSIST_MS;
      const known = new Set<number>();
      const tenants = new Set<number>();
      for (const row of rows) {
        const rep = reported.get(row.link_id);
        if (rep) known.add(row.link_id);
        if (tenants.has(row.tenant_id)) continue;
        const work = rep
          ? recheck || row.reported_unseen !== (rep.unseen ? 1 : 0) || (rep.rtt !== null && row.rtt_ms === null) ||
            (rep.lastSeenAt !== null && (row.last_seen_at === null || Date.parse(rep.lastSeenAt) - Date.parse(row.last_seen_at) >= persistMs))
          : row.reported_unseen !== null;
        if (work) tenants.add(row.tenant_id);
      }
      let offline = 0;
      let online = 0;
      for (const tenantId of tenants) {
        const { changes } = await store.applyRelayHealth(tenantId, r.id, reported, { ttlMs, persistMs, recheck });
        for (const c of changes) {
          if (c.unseen) offline++;
          else online++;
        }
      }
      if (offline) deps.metrics?.liveness.inc({ event: 'relay_unseen' }, offline);
      if (online) deps.metrics?.liveness.inc({ event: 'relay_seen_again' }, online);
      return { accepted: known.size, unknown_links: [...reported.keys()].filter((id) => !known.has(id)), marked_offline: offline, marked_online: online };
    },
  );

  app.get<{ Querystring: { since?: string } }>(
    '/stream',
    {
      schema: {
        ...rdoc('Server-Sent Events stream of the relay\'s view (event "map"; "unchanged" on a resume with Last-Event-ID; "end")'),
        querystring: { type: 'object', additionalProperties: false, properties: { since: { type: 'string', maxLength: 100 } } },
      },
    },
    async (req, reply) => {
      const r = await authenticateRelay(store, req);
      const last = (req.headers['last-event-id'] as string | undefined) ?? req.query.since ?? null;
      openRelayStream(deps, reply, r, last, relayHub);
    },
  );
}

function openRelayStream(deps: RelayDeps, reply: FastifyReply, r: RelayRow, lastHash: string | null, hub: RelayHub): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache, no-transform', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  // A relay that stops reading (hung, or gone without closing its TCP
  // connection) would pile views up in memory: its stream is cut once a
  // write is not drained within stallMs or the backlog passes the limit;
  // the relay reconnects and resumes with the current view.
  const out = guardedWriter(res, {
    stallMs: deps.stallMs ?? DEFAULT_RELAY_STALL_MS,
    maxBacklog: deps.maxBacklogBytes ?? DEFAULT_RELAY_MAX_BACKLOG,
    onCut: (reason) => deps.metrics?.liveness.inc({ event: reason === 'backlog' ? 'relay_stream_backlog' : 'relay_stream_stalled' }),
  });
  out.write(': larktun relay stream\n\n');
  let closed = false;
  const write = (chunk: string) => {
    if (!closed) out.write(chunk);
  };
  const stream: RelayStream = {
    relayId: r.id,
    lastHash,
    first: true,
    send(v: BuiltRelayView) {
      write(`id: ${v.hash}\nevent: map\ndata: ${v.json}\n\n`);
    },
    unchanged(v: BuiltRelayView) {
      write(`id: ${v.hash}\nevent: unchanged\ndata: ${JSON.stringify({ hash: v.hash })}\n\n`);
    },
    end(reason: string) {
      write(`event: end\ndata: ${JSON.stringify({ reason })}\n\n`);
      finish();
    },
  };
  const keepalive = setInterval(() => write(': keepalive\n\n'), deps.keepaliveMs ?? 15000);
  keepalive.unref();
  const finish = () => {
    if (closed) return;
    closed = true;
    clearInterval(keepalive);
    out.dispose();
    deps.openStreams.delete(finish);
    res.end();
    hub.detach(stream);
  };
  deps.openStreams.add(finish);
  res.on('close', finish);
  hub.attach(stream);
}
