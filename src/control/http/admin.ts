// Admin API routes under /api/v1. Handlers authenticate, resolve the tenant
// (which enforces isolation and roles), then call the repository/service layer.
// Every body, path parameter and query string is validated by its JSON schema.
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import type { Store, TenantTx } from '../store/repo.js';
import { nowIso } from '../store/repo.js';
import { ApiError, badRequest, conflict, notFound } from '../errors.js';
import { newSecret } from '../secrets.js';
import { authenticate, requireOperator, resolveTenant, ROLES, type Permission, type Principal } from './auth.js';
import {
  allocateAddresses, apiKeyView, authKeyView, canonicalRoutes, nodeAuditView, nodeView, runAutoApprove,
  tenantView, userView, validateTagSyntax,
} from '../service.js';
import { DEFAULT_POLICY, definedTags, rememberFacts } from '../policy-engine.js';
import { aclNetwork, jsonList, type MapHub } from '../netmap.js';
import { BudgetError, NoWorkerError, QueueFullError, type CompilePool } from '../compile/index.js';
import type { CheckResult } from '../compile/protocol.js';
import type { RateLimiter } from '../ratelimit.js';
import { publicTenantFields } from '../store/repo.js';
import { parsePrefix, AddrError } from '../../net/addr.js';
import { verifyChain } from '../audit.js';
import type { RouteDoc } from './openapi.js';
import type { TenantRow } from '../store/schema.js';

export interface AdminDeps {
  store: Store;
  /** Policy checks and compiles run here (worker threads, per-tenant budget). */
  pool: CompilePool;
  /** Tells GET /policy whether the live policy compiled. */
  hub: MapHub;
  /** POST …/policy/check per tenant. */
  policyChecks: RateLimiter;
}

const NAME = { type: 'string', pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$', description: 'lowercase letters, digits and dashes' } as const;
const ID = { type: 'integer', minimum: 1 } as const;
const TS = { type: 'string', format: 'date-time' } as const;
const TAGS = { type: 'array', items: { type: 'string', pattern: '^tag:[A-Za-z0-9][A-Za-z0-9-]*$' }, maxItems: 64 } as const;
const tenantParams = { type: 'object', required: ['tenant'], properties: { tenant: NAME }, additionalProperties: false } as const;
const idParams = { type: 'object', required: ['tenant', 'id'], properties: { tenant: NAME, id: ID }, additionalProperties: false } as const;

type S = FastifySchema & RouteDoc;
const doc = (tag: string, summary: string, extra: Record<string, unknown> = {}, auth = 'apikey'): S => ({ tags: [tag], summary, 'x-auth': auth, ...extra });

interface TP { tenant: string }
interface IP { tenant: string; id: number }

function poolCheck(field: string, value: string, family: 4 | 6): string {
  try {
    const p = parsePrefix(value, { requireMasked: true, allowBare: false });
    if (p.family !== family) throw badRequest(`${field}: "${value}" is not an IPv${family} prefix`);
    const min = family === 4 ? 30 : 126;
    if (p.bits > min) throw badRequest(`${field}: "${value}" is too small for a pool: use /${min} or shorter`);
    return value;
  } catch (err) {
    if (err instanceof AddrError) throw badRequest(`${field}: ${err.message}`);
    throw err;
  }
}

export function registerAdminRoutes(app: FastifyInstance, deps: AdminDeps): void {
  const { store } = deps;
  const principal = (req: FastifyRequest): Promise<Principal> => authenticate(store, req);
  const tenantFor = async (req: FastifyRequest, name: string, need: Permission): Promise<{ p: Principal; t: TenantRow }> => {
    const p = await principal(req);
    return { p, t: await resolveTenant(store, p, name, need) };
  };

  // ---- tenants (operator key) ---------------------------------------------------
  const tenantBody = {
    type: 'object',
    additionalProperties: false,
    properties: {
      pool4: { type: 'string', description: 'IPv4 address pool, default 100.64.0.0/10' },
      pool6: { type: ['string', 'null'], description: 'IPv6 pool, default fd7a:115c:a1e0::/48; null for none' },
      dns_base: { type: 'string', pattern: '^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$' },
      max_nodes: { type: 'integer', minimum: 1, maximum: 1000000 },
    },
  } as const;

  app.post<{ Body: { name: string; pool4?: string; pool6?: string | null; dns_base?: string; max_nodes?: number } }>(
    '/tenants',
    { schema: { ...doc('tenants', 'Create a tenant', {}, 'operator'), body: { ...tenantBody, required: ['name'], properties: { name: NAME, ...tenantBody.properties } } } },
    async (req, reply) => {
      const p = await principal(req);
      requireOperator(p);
      const b = req.body;
      const t = await store.createTenant(
        {
          name: b.name,
          pool4: poolCheck('pool4', b.pool4 ?? '100.64.0.0/10', 4),
          pool6: b.pool6 === null ? null : poolCheck('pool6', b.pool6 ?? 'fd7a:115c:a1e0::/48', 6),
          dns_base: b.dns_base ?? `${b.name}.larktun.internal`,
          max_nodes: b.max_nodes ?? 10000,
        },
        p.actor,
        DEFAULT_POLICY,
      );
      return reply.code(201).send(tenantView(t));
    },
  );

  app.get('/tenants', { schema: doc('tenants', 'List tenants, each with its node count (nodes) and online nodes (online_nodes)', {}, 'operator') }, async (req) => {
    requireOperator(await principal(req));
    const [tenants, counts] = await Promise.all([store.listTenants(), store.nodeCountsByTenant()]);
    return {
      tenants: tenants.map((t) => {
        const c = counts.get(t.id);
        return { ...tenantView(t), nodes: c?.nodes ?? 0, online_nodes: c?.online ?? 0 };
      }),
    };
  });

  app.get<{ Params: TP }>('/tenants/:tenant', { schema: { ...doc('tenants', 'Get a tenant'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    return tenantView(t);
  });

  app.patch<{ Params: TP; Body: { pool4?: string; pool6?: string | null; dns_base?: string; max_nodes?: number } }>(
    '/tenants/:tenant',
    { schema: { ...doc('tenants', 'Change a tenant', {}, 'operator'), params: tenantParams, body: tenantBody } },
    async (req) => {
      const p = await principal(req);
      const t = await resolveTenant(store, p, req.params.tenant, 'admin');
      requireOperator(p);
      const b = req.body;
      const patch: { pool4?: string; pool6?: string | null; dns_base?: string; max_nodes?: number } = {};
      if (b.pool4 !== undefined) patch.pool4 = poolCheck('pool4', b.pool4, 4);
      if (b.pool6 !== undefined) patch.pool6 = b.pool6 === null ? null : poolCheck('pool6', b.pool6, 6);
      if (b.dns_base !== undefined) patch.dns_base = b.dns_base;
      if (b.max_nodes !== undefined) patch.max_nodes = b.max_nodes;
      return tenantView(await store.updateTenant(t.id, p.actor, patch));
    },
  );

  app.delete<{ Params: TP }>('/tenants/:tenant', { schema: { ...doc('tenants', 'Delete a tenant and everything it owns', {}, 'operator'), params: tenantParams } }, async (req) => {
    const p = await principal(req);
    const t = await resolveTenant(store, p, req.params.tenant, 'admin');
    requireOperator(p);
    await store.deleteTenant(t.id);
    return { deleted: true, tenant: publicTenantFields(t) };
  });

  // ---- API keys -------------------------------------------------------------------
  app.post<{ Params: TP; Body: { role: string; description?: string; expires_at?: string } }>(
    '/tenants/:tenant/apikeys',
    {
      schema: {
        ...doc('apikeys', 'Create an API key (the key is shown once)'),
        params: tenantParams,
        body: {
          type: 'object', additionalProperties: false, required: ['role'],
          properties: { role: { type: 'string', enum: [...ROLES] }, description: { type: 'string', maxLength: 200 }, expires_at: TS },
        },
      },
    },
    async (req, reply) => {
      const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
      const s = newSecret('lkapi');
      const expires = futureTime(req.body.expires_at);
      const { result } = await store.write(t.id, p.actor, async (tx) => {
        const row = await tx.insertApiKey({ prefix: s.prefix, hash: s.hash, role: req.body.role, description: req.body.description ?? '', expires_at: expires, created_at: nowIso(), last_used_at: null });
        await tx.audit('apikey.create', 'apikey', row.id, null, apiKeyView(row));
        return row;
      });
      return reply.code(201).send({ ...apiKeyView(result), key: s.secret });
    },
  );

  app.get<{ Params: TP }>('/tenants/:tenant/apikeys', { schema: { ...doc('apikeys', 'List API keys'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read-keys');
    return { apikeys: (await store.tenant(t.id).listApiKeys()).map(apiKeyView) };
  });

  app.delete<{ Params: IP }>('/tenants/:tenant/apikeys/:id', { schema: { ...doc('apikeys', 'Revoke an API key'), params: idParams } }, async (req) => {
    const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
    await store.write(t.id, p.actor, async (tx) => {
      const row = await tx.getApiKey(req.params.id);
      if (!row) throw notFound('API key');
      await tx.deleteApiKey(row.id);
      await tx.audit('apikey.delete', 'apikey', row.id, apiKeyView(row), null);
    });
    return { deleted: true };
  });

  // ---- users ------------------------------------------------------------------
  app.post<{ Params: TP; Body: { name: string; email?: string; display_name?: string } }>(
    '/tenants/:tenant/users',
    {
      schema: {
        ...doc('users', 'Create a user'),
        params: tenantParams,
        body: {
          type: 'object', additionalProperties: false, required: ['name'],
          properties: {
            name: { type: 'string', pattern: '^[A-Za-z0-9._-]{1,64}$' },
            email: { type: 'string', format: 'email', maxLength: 254 },
            display_name: { type: 'string', maxLength: 200 },
          },
        },
      },
    },
    async (req, reply) => {
      const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
      const { result } = await store.write(t.id, p.actor, async (tx) => {
        if (await tx.getUserByName(req.body.name)) throw conflict(`user "${req.body.name}" already exists`);
        const u = await tx.insertUser({ name: req.body.name, email: req.body.email ?? null, display_name: req.body.display_name ?? null, created_at: nowIso() });
        await tx.audit('user.create', 'user', u.id, null, userView(u));
        return u;
      });
      return reply.code(201).send(userView(result));
    },
  );

  app.get<{ Params: TP }>('/tenants/:tenant/users', { schema: { ...doc('users', 'List users'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    return { users: (await store.tenant(t.id).listUsers()).map(userView) };
  });

  app.delete<{ Params: IP }>('/tenants/:tenant/users/:id', { schema: { ...doc('users', 'Delete a user (their nodes stay, without owner)'), params: idParams } }, async (req) => {
    const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
    await store.write(t.id, p.actor, async (tx) => {
      const u = await tx.getUser(req.params.id);
      if (!u) throw notFound('user');
      await tx.deleteUser(u.id);
      await tx.audit('user.delete', 'user', u.id, userView(u), null);
    });
    return { deleted: true };
  });

  // ---- auth keys ------------------------------------------------------------------
  app.post<{ Params: TP; Body: { user?: string; tags?: string[]; reusable?: boolean; ephemeral?: boolean; expires_at?: string; description?: string } }>(
    '/tenants/:tenant/authkeys',
    {
      schema: {
        ...doc('authkeys', 'Create a node auth key for a user or for tags (the key is shown once)'),
        params: tenantParams,
        body: {
          type: 'object', additionalProperties: false,
          properties: {
            user: { type: 'string', description: 'user name or id' },
            tags: TAGS,
            reusable: { type: 'boolean' },
            ephemeral: { type: 'boolean' },
            expires_at: TS,
            description: { type: 'string', maxLength: 200 },
          },
        },
      },
    },
    async (req, reply) => {
      const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
      const b = req.body;
      const tags = [...new Set(b.tags ?? [])].sort();
      if (!b.user && tags.length === 0) throw badRequest('an auth key needs a "user" or "tags"');
      validateTagSyntax(tags);
      const expires = futureTime(b.expires_at);
      const s = newSecret('lkauth');
      const { result } = await store.write(t.id, p.actor, async (tx) => {
        let userId: number | null = null;
        if (b.user) {
          const u = /^[0-9]+$/.test(b.user) ? await tx.getUser(Number(b.user)) : await tx.getUserByName(b.user);
          if (!u) throw badRequest(`user "${b.user}" does not exist in this tenant`);
          userId = u.id;
        }
        if (tags.length) {
          const pol = await tx.currentPolicy();
          const defined = definedTags(pol?.text ?? '{}');
          const undef = tags.filter((x) => !defined.has(x));
          if (undef.length) throw badRequest(`tag "${undef[0]}" is not defined in the policy's tagOwners`, { undefined_tags: undef });
        }
        const row = await tx.insertAuthKey({
          prefix: s.prefix, hash: s.hash, user_id: userId, tags: JSON.stringify(tags),
          reusable: b.reusable ? 1 : 0, ephemeral: b.ephemeral ? 1 : 0, expires_at: expires,
          used_count: 0, description: b.description ?? '', created_at: nowIso(),
        });
        const users = new Map((await tx.listUsers()).map((u) => [u.id, u]));
        const view = authKeyView(row, users);
        await tx.audit('authkey.create', 'authkey', row.id, null, view);
        return view;
      });
      return reply.code(201).send({ ...result, key: s.secret });
    },
  );

  app.get<{ Params: TP }>('/tenants/:tenant/authkeys', { schema: { ...doc('authkeys', 'List auth keys'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    const repo = store.tenant(t.id);
    const users = new Map((await repo.listUsers()).map((u) => [u.id, u]));
    return { authkeys: (await repo.listAuthKeys()).map((k) => authKeyView(k, users)) };
  });

  app.delete<{ Params: IP }>('/tenants/:tenant/authkeys/:id', { schema: { ...doc('authkeys', 'Revoke an auth key'), params: idParams } }, async (req) => {
    const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
    await store.write(t.id, p.actor, async (tx) => {
      const k = await tx.getAuthKey(req.params.id);
      if (!k) throw notFound('auth key');
      await tx.deleteAuthKey(k.id);
      await tx.audit('authkey.delete', 'authkey', k.id, { prefix: k.prefix }, null);
    });
    return { deleted: true };
  });

  // ---- nodes ------------------------------------------------------------------
  const nodesOf = async (t: TenantRow) => {
    const repo = store.tenant(t.id);
    const [nodes, users, health] = await Promise.all([repo.listNodes(), repo.listUsers(), repo.relayHealthByNode()]);
    return { nodes, users: new Map(users.map((u) => [u.id, u])), primaries: await repo.listPrimaries(), health };
  };

  app.get<{ Params: TP; Querystring: { limit?: number; offset?: number; q?: string; status?: 'all' | 'online' | 'offline' } }>(
    '/tenants/:tenant/nodes',
    {
      schema: {
        ...doc('nodes', 'List nodes with addresses, tags, presence and routes. Without limit: every node (matching q/status); with limit: one page sorted by name. total counts the matches, counts the tenant\'s nodes by state'),
        params: tenantParams,
        querystring: {
          type: 'object', additionalProperties: false,
          properties: {
            limit: { type: 'integer', minimum: 1, maximum: 1000, description: 'page size (sorts by name)' },
            offset: { type: 'integer', minimum: 0, maximum: 10000000, default: 0, description: 'matches to skip (with limit)' },
            q: { type: 'string', maxLength: 200, description: 'case-insensitive substring of name, host name, owner, address, tag or announced route' },
            status: { type: 'string', enum: ['all', 'online', 'offline'], default: 'all' },
          },
        },
      },
    },
    async (req) => {
      const { t } = await tenantFor(req, req.params.tenant, 'read');
      const { nodes, users, primaries, health } = await nodesOf(t);
      const q = req.query;
      const all = nodes.map((n) => nodeView(n, users, primaries, health));
      const online = all.filter((n) => n.online).length;
      const needle = (q.q ?? '').trim().toLowerCase();
      let shown = all
        .filter((n) => (q.status === 'online' ? n.online : q.status === 'offline' ? !n.online : true))
        .filter((n) => !needle || [n.name, n.hostname, n.user ?? '', n.ipv4 ?? '', n.ipv6 ?? '', ...n.tags, ...n.announced_routes].some((x) => x.toLowerCase().includes(needle)));
      const total = shown.length;
      if (q.limit !== undefined) {
        const off = q.offset ?? 0;
        shown = shown.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id - b.id)).slice(off, off + q.limit);
      }
      return { nodes: shown, total, counts: { all: all.length, online, offline: all.length - online } };
    },
  );

  app.get<{ Params: TP }>('/tenants/:tenant/tags', { schema: { ...doc('nodes', 'The tags the live policy defines (the keys of tagOwners): what a node\'s tags may be set to'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    const pol = await store.tenant(t.id).currentPolicy();
    return { tags: [...definedTags(pol?.text ?? '{}')].sort() };
  });

  app.get<{ Params: IP }>('/tenants/:tenant/nodes/:id', { schema: { ...doc('nodes', 'Get a node'), params: idParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    const { nodes, users, primaries, health } = await nodesOf(t);
    const n = nodes.find((x) => x.id === req.params.id);
    if (!n) throw notFound('node');
    return nodeView(n, users, primaries, health);
  });

  const changeNode = async (
    req: FastifyRequest,
    tenant: string,
    id: number,
    fn: (tx: TenantTx, node: NonNullable<Awaited<ReturnType<TenantTx['getNode']>>>, t: TenantRow) => Promise<void>,
  ) => {
    const { p, t } = await tenantFor(req, tenant, 'nodes');
    await store.write(t.id, p.actor, async (tx) => {
      const n = await tx.getNode(id);
      if (!n) throw notFound('node');
      await fn(tx, n, t);
    });
    const { nodes, users, primaries, health } = await nodesOf(t);
    const n = nodes.find((x) => x.id === id);
    if (!n) throw notFound('node');
    return nodeView(n, users, primaries, health);
  };

  app.patch<{ Params: IP; Body: { name: string } }>(
    '/tenants/:tenant/nodes/:id',
    { schema: { ...doc('nodes', 'Rename a node'), params: idParams, body: { type: 'object', additionalProperties: false, required: ['name'], properties: { name: NAME } } } },
    async (req) =>
      changeNode(req, req.params.tenant, req.params.id, async (tx, n) => {
        const other = await tx.getNodeByName(req.body.name);
        if (other && other.id !== n.id) throw conflict(`a node named "${req.body.name}" already exists`);
        await tx.updateNode(n.id, { name: req.body.name });
        await tx.audit('node.rename', 'node', n.id, { name: n.name }, { name: req.body.name });
      }),
  );

  app.put<{ Params: IP; Body: { tags: string[] } }>(
    '/tenants/:tenant/nodes/:id/tags',
    { schema: { ...doc('nodes', 'Set a node\'s tags (each must be defined in tagOwners)'), params: idParams, body: { type: 'object', additionalProperties: false, required: ['tags'], properties: { tags: TAGS } } } },
    async (req) =>
      changeNode(req, req.params.tenant, req.params.id, async (tx, n) => {
        const tags = [...new Set(req.body.tags)].sort();
        const pol = await tx.currentPolicy();
        const defined = definedTags(pol?.text ?? '{}');
        const undef = tags.filter((x) => !defined.has(x));
        if (undef.length) throw badRequest(`tag "${undef[0]}" is not defined in the policy's tagOwners`, { undefined_tags: undef });
        await tx.updateNode(n.id, { tags: JSON.stringify(tags) });
        await tx.audit('node.tags', 'node', n.id, { tags: jsonList(n.tags) }, { tags });
      }),
  );

  app.post<{ Params: IP }>('/tenants/:tenant/nodes/:id/expire', { schema: { ...doc('nodes', 'Expire a node now (it must register again)'), params: idParams } }, async (req) =>
    changeNode(req, req.params.tenant, req.params.id, async (tx, n) => {
      const now = nowIso();
      await tx.updateNode(n.id, { expires_at: now });
      await tx.audit('node.expire', 'node', n.id, { expires_at: n.expires_at }, { expires_at: now });
    }),
  );

  app.delete<{ Params: IP }>('/tenants/:tenant/nodes/:id', { schema: { ...doc('nodes', 'Delete a node'), params: idParams } }, async (req) => {
    const { p, t } = await tenantFor(req, req.params.tenant, 'nodes');
    await store.write(t.id, p.actor, async (tx) => {
      const n = await tx.getNode(req.params.id);
      if (!n) throw notFound('node');
      await tx.deleteNode(n.id);
      await tx.audit('node.delete', 'node', n.id, nodeAuditView(n), null);
    });
    return { deleted: true };
  });

  // ---- routes -------------------------------------------------------------------
  const routesView = (v: ReturnType<typeof nodeView>) => ({
    node: v.id,
    announced: v.announced_routes,
    approved: v.approved_routes,
    primary: v.primary_routes,
  });

  app.get<{ Params: IP }>('/tenants/:tenant/nodes/:id/routes', { schema: { ...doc('routes', 'A node\'s announced, approved and primary routes'), params: idParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    const { nodes, users, primaries, health } = await nodesOf(t);
    const n = nodes.find((x) => x.id === req.params.id);
    if (!n) throw notFound('node');
    return routesView(nodeView(n, users, primaries, health));
  });

  app.post<{ Params: IP; Body: { approved: string[] } }>(
    '/tenants/:tenant/nodes/:id/routes',
    {
      schema: {
        ...doc('routes', 'Replace a node\'s approved routes (approving 0.0.0.0/0 or ::/0 approves both)'),
        params: idParams,
        body: { type: 'object', additionalProperties: false, required: ['approved'], properties: { approved: { type: 'array', items: { type: 'string' }, maxItems: 1024 } } },
      },
    },
    async (req) => {
      const approved = canonicalRoutes(req.body.approved, 'approved');
      return routesView(
        await changeNode(req, req.params.tenant, req.params.id, async (tx, n) => {
          await tx.updateNode(n.id, { approved_routes: JSON.stringify(approved) });
          await tx.audit('node.routes.approve', 'node', n.id, { approved_routes: jsonList(n.approved_routes) }, { approved_routes: approved });
        }),
      );
    },
  );

  // ---- policy -------------------------------------------------------------------
  const policyBody = {
    type: 'object', additionalProperties: false, required: ['policy'],
    properties: { policy: { type: 'string', maxLength: 1048576, description: 'the policy as HuJSON text' } },
  } as const;

  app.get<{ Params: TP }>('/tenants/:tenant/policy', { schema: { ...doc('policy', 'The live policy (HuJSON text)'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    const pol = await store.tenant(t.id).currentPolicy();
    if (!pol) throw notFound('policy');
    // compile: whether this server could compile the live policy (failed: over the budget; maps then come from the last good compile, if any).
    const failure = hub.compileFailure(t.id);
    const compile = failure ? { state: 'failed', ...failure } : { state: 'ok' };
    return { version: pol.version, policy: pol.text, created_at: pol.created_at, created_by: pol.created_by, compile };
  });

  // A candidate policy is parsed, size-checked, tested and compiled completely
  // in a compile worker within the tenant's budget; over it, the request gets
  // 422 policy_over_budget naming the limit (the live policy is never touched).
  const { pool, hub, policyChecks } = deps;
  const overBudget = (limit: string, max: number, message: string, value?: number) =>
    new ApiError(422, 'policy_over_budget', `${message}; the live policy is unchanged`, { limit, max, ...(value !== undefined ? { value } : {}) });
  const byteCap = (text: string): void => {
    const lim = pool.limits;
    const bytes = Buffer.byteLength(text);
    if (bytes > lim.maxBytes) throw overBudget('policy_bytes', lim.maxBytes, `the policy is ${bytes} bytes; the limit is ${lim.maxBytes} (LARKTUN_POLICY_MAX_BYTES)`, bytes);
  };
  /** Runs a compile job, mapping the pool's refusals to API errors. */
  const inPool = async <R extends { errors: string[]; over: CheckResult['over'] }>(run: () => Promise<R>): Promise<R> => {
    let c: R;
    try {
      c = await run();
    } catch (err) {
      if (err instanceof BudgetError) throw overBudget(err.limit, err.max, err.message);
      if (err instanceof QueueFullError) throw new ApiError(429, 'compile_busy', `${err.message}; try again shortly`);
      if (err instanceof NoWorkerError) throw new ApiError(503, 'compile_unavailable', `${err.message}; the live policy is unchanged`);
      throw err;
    }
    if (c.over) {
      const env = { maxHosts: 'LARKTUN_POLICY_MAX_HOSTS', maxRules: 'LARKTUN_POLICY_MAX_RULES', maxEntries: 'LARKTUN_POLICY_MAX_ENTRIES' }[c.over.limit];
      const name = { maxHosts: 'policy_hosts', maxRules: 'policy_rules', maxEntries: 'policy_entries' }[c.over.limit];
      throw overBudget(name, c.over.max, `${c.errors[0] ?? 'the policy is too large'} (${env})`, c.over.value);
    }
    return c;
  };
  const checkText = async (t: TenantRow, text: string, keep: boolean): Promise<CheckResult> => {
    byteCap(text);
    const repo = store.tenant(t.id);
    const [users, nodes, primaries] = await Promise.all([repo.listUsers(), repo.listNodes(), repo.listPrimaries()]);
    const c = await inPool(() => pool.check(t.id, text, aclNetwork(t, users, nodes), primaries, keep));
    if (c.facts !== null) rememberFacts(text, c.facts);
    return c;
  };
  /** One token of the tenant's bucket (`kind` keeps check and preview in separate buckets of the same rate), or 429. */
  const takeToken = (req: FastifyRequest, reply: FastifyReply, t: TenantRow, kind: 'check' | 'preview'): void => {
    const wait = policyChecks.take(kind === 'check' ? String(t.id) : `${kind}:${t.id}`);
    if (wait <= 0) return;
    req.server.log.debug({ tenant: t.name }, `policy ${kind} rate limited`);
    reply.header('retry-after', String(Math.max(1, Math.ceil(wait))));
    throw new ApiError(429, 'rate_limited', `policy ${kind}s for this tenant are limited to ${policyChecks.perSecond}/s (burst ${policyChecks.burst}); retry in ${Math.ceil(wait)} s`, { retry_after_s: Math.ceil(wait) });
  };

  app.put<{ Params: TP; Body: { policy: string } }>(
    '/tenants/:tenant/policy',
    { schema: { ...doc('policy', 'Replace the policy: validated, its tests run and compiled within the compile budget; on any error (400 invalid_policy, 422 policy_over_budget) the live policy stays (also accepts the raw text as text/plain or application/hujson)'), params: tenantParams, body: policyBody } },
    async (req) => {
      const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
      const text = req.body.policy;
      const check = await checkText(t, text, true);
      if (!check.valid) throw new ApiError(400, 'invalid_policy', `the policy has ${check.errors.length} error(s); the live policy is unchanged`, { errors: check.errors });
      const { result } = await store.write(t.id, p.actor, async (tx) => {
        const before = await tx.currentPolicy();
        const row = await tx.insertPolicy(text, p.actor);
        await tx.audit('policy.set', 'policy', row.version, before ? { version: before.version } : null, { version: row.version });
        await runAutoApprove(tx, t, text);
        return row;
      });
      return { version: result.version, created_at: result.created_at, created_by: result.created_by };
    },
  );

  app.get<{ Params: TP }>('/tenants/:tenant/policy/versions', { schema: { ...doc('policy', 'Stored policy versions, newest first'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read');
    const rows = await store.tenant(t.id).listPolicyVersions();
    return { versions: rows.map((r) => ({ version: r.version, created_at: r.created_at, created_by: r.created_by })) };
  });

  app.get<{ Params: { tenant: string; version: number } }>(
    '/tenants/:tenant/policy/versions/:version',
    { schema: { ...doc('policy', 'One stored policy version'), params: { type: 'object', required: ['tenant', 'version'], properties: { tenant: NAME, version: ID }, additionalProperties: false } } },
    async (req) => {
      const { t } = await tenantFor(req, req.params.tenant, 'read');
      const pol = await store.tenant(t.id).getPolicyVersion(req.params.version);
      if (!pol) throw notFound('policy version');
      return { version: pol.version, policy: pol.text, created_at: pol.created_at, created_by: pol.created_by };
    },
  );

  app.post<{ Params: TP; Body: { policy: string } }>(
    '/tenants/:tenant/policy/check',
    { schema: { ...doc('policy', 'Validate a policy and run its tests without applying it (rate-limited per tenant: 429 rate_limited with Retry-After; over the compile budget: 422 policy_over_budget)'), params: tenantParams, body: policyBody } },
    async (req, reply) => {
      const { t } = await tenantFor(req, req.params.tenant, 'read');
      // Every role (the read-only auditor too) shares the tenant's bucket.
      takeToken(req, reply, t, 'check');
      const c = await checkText(t, req.body.policy, false);
      // tests: every expectation of the tests block, passed or failed (errors still lists the failures).
      return { valid: c.valid, errors: c.errors, tests: c.tests };
    },
  );

  app.post<{ Params: TP; Body: { policy: string; node?: number | string; user?: string } }>(
    '/tenants/:tenant/policy/preview',
    {
      schema: {
        ...doc('policy', 'What a node (or each node of a user, or a new untagged node of that user when it has none) may reach under a draft policy: peers with ports, subnet routes, exit nodes, and who may reach it. Computed by the same compile as the maps, within the compile budget; nothing is stored. Invalid draft: 400 invalid_policy with positioned errors (its tests are not run); over the budget: 422 policy_over_budget; rate-limited per tenant: 429 rate_limited'),
        params: tenantParams,
        body: {
          type: 'object', additionalProperties: false, required: ['policy'],
          properties: {
            policy: policyBody.properties.policy,
            node: { anyOf: [ID, { type: 'string', minLength: 1, maxLength: 253 }], description: 'a node id or name of the tenant' },
            user: { type: 'string', minLength: 1, maxLength: 320, description: 'a user name (login) or email of the tenant' },
          },
        },
      },
    },
    async (req, reply) => {
      const { t } = await tenantFor(req, req.params.tenant, 'read');
      const { policy: text, node, user } = req.body;
      if ((node === undefined) === (user === undefined)) throw badRequest('give exactly one of node and user');
      takeToken(req, reply, t, 'preview');
      byteCap(text);
      const repo = store.tenant(t.id);
      const [users, nodes, primaries] = await Promise.all([repo.listUsers(), repo.listNodes(), repo.listPrimaries()]);
      const net = aclNetwork(t, users, nodes);
      const inNet = new Map(net.nodes.map((n) => [n.id, n]));
      let subjects: number[];
      let hypothetical: number | null = null;
      if (node !== undefined) {
        const key = String(node);
        // an id, else a name (a node may be named with digits only)
        const row = (/^[0-9]+$/.test(key) ? nodes.find((n) => n.id === Number(key)) : undefined) ?? nodes.find((n) => n.name === key);
        if (!row || !inNet.has(row.id)) throw notFound('node');
        subjects = [row.id];
      } else {
        const login = (user as string).toLowerCase();
        const u = users.find((x) => x.name.toLowerCase() === login) ?? users.find((x) => (x.email ?? '').toLowerCase() === login);
        if (!u) throw notFound('user');
        subjects = nodes.filter((n) => n.user_id === u.id && jsonList(n.tags).length === 0 && inNet.has(n.id)).map((n) => n.id);
        if (subjects.length === 0) {
          // A node this user would register next: untagged, at the next free addresses.
          const addr = await allocateAddresses(repo, t, nodes.length);
          hypothetical = nodes.reduce((m, n) => Math.max(m, n.id), 0) + 1;
          net.nodes.push({
            id: hypothetical, name: `new node of ${u.name}`, user: u.email ?? u.name, tags: [],
            ipv4: addr.ipv4, ipv6: addr.ipv6, announced_routes: [], approved_routes: [], online: true,
          });
          subjects = [hypothetical];
        }
      }
      const c = await inPool(() => pool.preview(t.id, text, net, primaries, subjects));
      if (!c.valid) throw new ApiError(400, 'invalid_policy', `the policy has ${c.errors.length} error(s)`, { errors: c.errors });
      const byId = new Map(net.nodes.map((n) => [n.id, n]));
      return {
        subjects: c.reach.map(([id, r]) => {
          const n = byId.get(id);
          return {
            node: { id, name: n?.name ?? '', addresses: [n?.ipv4, n?.ipv6].filter((a): a is string => !!a), tags: n?.tags ?? [], user: n?.user ?? null, hypothetical: id === hypothetical },
            peers: r.peers, routes: r.routes, exit_nodes: r.exitNodes, inbound: r.inbound,
          };
        }),
      };
    },
  );

  // ---- audit -------------------------------------------------------------------
  app.get<{ Params: TP; Querystring: { since?: string; until?: string; limit?: number; action?: string; actor?: string; object?: string; after?: number; before?: number; order?: 'asc' | 'desc'; offset?: number } }>(
    '/tenants/:tenant/audit',
    {
      schema: {
        ...doc('audit', 'Audit entries, oldest first (order=desc: newest first, with total, the number of matches)'),
        params: tenantParams,
        querystring: {
          type: 'object', additionalProperties: false,
          properties: {
            since: { ...TS, description: 'entries at or after this time' },
            until: { ...TS, description: 'entries before this time' },
            limit: { type: 'integer', minimum: 1, maximum: 10000, default: 100 },
            action: { type: 'string', maxLength: 100 },
            actor: { type: 'string', maxLength: 200, description: 'exact actor, e.g. user:alice' },
            object: { type: 'string', maxLength: 200, description: 'object type (node) or type:id (node:3)' },
            after: { type: 'integer', minimum: 0, description: 'entries with seq greater than this (paging)' },
            before: { type: 'integer', minimum: 1, description: 'entries with seq less than this (paging newest first)' },
            order: { type: 'string', enum: ['asc', 'desc'], default: 'asc' },
            offset: { type: 'integer', minimum: 0, maximum: 10000000, description: 'matches to skip' },
          },
        },
      },
    },
    async (req) => {
      const { t } = await tenantFor(req, req.params.tenant, 'read-audit');
      const q = req.query;
      const colon = q.object?.indexOf(':') ?? -1;
      const filter = {
        ...(q.since ? { since: new Date(q.since).toISOString() } : {}),
        ...(q.until ? { until: new Date(q.until).toISOString() } : {}),
        ...(q.action ? { action: q.action } : {}),
        ...(q.actor ? { actor: q.actor } : {}),
        ...(q.object ? (colon < 0 ? { objectType: q.object } : { objectType: q.object.slice(0, colon), objectId: q.object.slice(colon + 1) }) : {}),
      };
      const desc = q.order === 'desc';
      const repo = store.tenant(t.id);
      const [rows, total] = await Promise.all([
        repo.listAudit({
          ...filter,
          ...(q.after !== undefined ? { afterSeq: q.after } : {}),
          ...(q.before !== undefined ? { beforeSeq: q.before } : {}),
          ...(q.offset ? { offset: q.offset } : {}),
          newestFirst: desc,
          limit: q.limit ?? 100,
        }),
        desc ? repo.countAudit(filter) : Promise.resolve(undefined),
      ]);
      return {
        ...(total !== undefined ? { total } : {}),
        entries: rows.map((r) => ({
          seq: r.seq, ts: r.ts, actor: r.actor, action: r.action, object_type: r.object_type, object_id: r.object_id,
          before: r.before === null ? null : (JSON.parse(r.before) as unknown),
          after: r.after === null ? null : (JSON.parse(r.after) as unknown),
          before_json: r.before, after_json: r.after, prev_hash: r.prev_hash, hash: r.hash,
        })),
      };
    },
  );

  app.get<{ Params: TP }>('/tenants/:tenant/audit/verify', { schema: { ...doc('audit', 'Verify the tenant\'s audit hash chain'), params: tenantParams } }, async (req) => {
    const { t } = await tenantFor(req, req.params.tenant, 'read-audit');
    const rows = await store.tenant(t.id).allAudit();
    // tenant_id is covered by every hash; clients need it to recompute the chain
    return { ...verifyChain(rows), tenant_id: t.id };
  });
}

function futureTime(s: string | undefined): string | null {
  if (s === undefined) return null;
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) throw badRequest(`expires_at: "${s}" is not a date-time`);
  if (d.getTime() <= Date.now()) throw badRequest(`expires_at: ${s} is in the past`);
  return d.toISOString();
}
