// Console endpoints of the Admin API (under /api/v1): sign-in/out and the
// session, console users of a tenant, and the tenant-wide routes view. They
// authenticate and authorise exactly as the rest of the Admin API does (an API
// key or a console session; the tenant resolved through resolveTenant).
import type { FastifyInstance, FastifyRequest, FastifySchema } from 'fastify';
import type { Logger } from 'pino';
import type { Store, TenantTx } from '../store/repo.js';
import { nowIso } from '../store/repo.js';
import type { ConsoleUserRow } from '../store/schema.js';
import { ApiError, badRequest, conflict, notFound, unauthorized } from '../errors.js';
import { authenticate, resolveTenant, ROLES, type Permission, type Principal, type Role } from '../http/auth.js';
import type { RouteDoc } from '../http/openapi.js';
import { parseSecret, secretMatches } from '../secrets.js';
import { nodeView } from '../service.js';
import { ConsoleRepo, auditOnly } from './repo.js';
import { PASSWORD_MAX, PASSWORD_MIN, decoyHash, hashPassword, verifyPassword } from './passwords.js';
import {
  SigninLimiter, clearSessionCookie, csrfOfRequest, sessionFromRequest, setSessionCookie, startSession,
} from './sessions.js';
import { ConsoleRoutesView, routesOverview } from './routes-view.js';
import type { ConsoleEvents } from './events.js';
import { registerOidc } from './oidc.js';

export interface ConsoleApiDeps {
  store: Store;
  log: Logger;
  /** Live updates (GET /tenants/{t}/events); without it the endpoint is not registered. */
  events?: ConsoleEvents;
  /** Streams the server ends at shutdown. */
  openStreams?: Set<() => void>;
  /** Failed sign-ins per tenant username (and the operator key). */
  userLimiter?: SigninLimiter;
  /** Failed sign-ins per client address: some typos free, then slowed, then refused. */
  ipLimiter?: SigninLimiter;
  /** The server's public URL (--public-url): SSO redirect URIs are derived from it. */
  publicUrl?: URL | null;
}

const NAME = { type: 'string', pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' } as const;
const USERNAME = { type: 'string', pattern: '^[A-Za-z0-9._@-]{1,64}$', description: 'letters, digits and . _ @ -' } as const;
const EMAIL = { type: ['string', 'null'], maxLength: 254, pattern: '^[^@\\s]+@[^@\\s]+$', description: 'matched (case-insensitively) by SSO sign-in; unique in the tenant' } as const;
const PASSWORD = { type: 'string', minLength: PASSWORD_MIN, maxLength: PASSWORD_MAX } as const;
const tenantParams = { type: 'object', required: ['tenant'], properties: { tenant: NAME }, additionalProperties: false } as const;
const idParams = { type: 'object', required: ['tenant', 'id'], properties: { tenant: NAME, id: { type: 'integer', minimum: 1 } }, additionalProperties: false } as const;

type S = FastifySchema & RouteDoc;
const doc = (tag: string, summary: string, extra: Record<string, unknown> = {}, auth = 'apikey'): S => ({ tags: [tag], summary, 'x-auth': auth, ...extra });

export function consoleUserView(u: ConsoleUserRow) {
  return { id: u.id, username: u.username, email: u.email, source: u.source, role: u.role, created_at: u.created_at, created_by: u.created_by, last_signin_at: u.last_signin_at };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const invalidCredentials = (): ApiError => new ApiError(401, 'invalid_credentials', 'the tenant, username or password is not right');

export function registerConsoleApi(app: FastifyInstance, deps: ConsoleApiDeps): void {
  const { store, log } = deps;
  const users = deps.userLimiter ?? new SigninLimiter({ freeFailures: 0, maxFailures: 20 });
  const ips = deps.ipLimiter ?? new SigninLimiter({ freeFailures: 10, maxFailures: 100 });
  const repo = new ConsoleRepo(store.db);
  const tenantFor = async (req: FastifyRequest, name: string, need: Permission): Promise<{ p: Principal; t: Awaited<ReturnType<typeof resolveTenant>> }> => {
    const p = await authenticate(store, req);
    return { p, t: await resolveTenant(store, p, name, need) };
  };
  const secure = (req: FastifyRequest): boolean => req.protocol === 'https';
  // Single sign-on (OpenID Connect): its failures count in the same limiters.
  registerOidc(app, { store, log, publicUrl: deps.publicUrl ?? null, users, ips });

  // ---- sign-in, session, sign-out ----------------------------------------------------
  app.post<{ Body: { tenant?: string; username?: string; password?: string; operator_key?: string } }>(
    '/console/session',
    {
      schema: {
        ...doc('console', 'Sign in to the console: a tenant\'s console user (tenant, username, password) or the operator (operator_key). Sets an HttpOnly, SameSite=Strict session cookie and returns the CSRF token to send as X-CSRF-Token on changes', {}, 'none'),
        body: {
          type: 'object', additionalProperties: false,
          properties: { tenant: NAME, username: USERNAME, password: { type: 'string', maxLength: PASSWORD_MAX }, operator_key: { type: 'string', maxLength: 200 } },
        },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const ipKey = req.ip;
      if (b.operator_key !== undefined) {
        if (b.tenant !== undefined || b.username !== undefined || b.password !== undefined) throw badRequest('sign in either with operator_key or with tenant, username and password');
        await throttle(users, ips, 'operator', ipKey);
        const parsed = parseSecret(b.operator_key);
        const row = parsed?.kind === 'lkop' ? await store.findOperatorKey(parsed.prefix) : undefined;
        if (!row || !secretMatches(b.operator_key, row.hash)) {
          users.failed(['operator']);
          ips.failed([ipKey]);
          log.warn({ ip: req.ip }, 'console: failed operator sign-in');
          throw new ApiError(401, 'invalid_credentials', 'the operator key is not right');
        }
        users.succeeded('operator');
        const s = await startSession(store, { operatorPrefix: row.prefix });
        setSessionCookie(reply, s.token, secure(req));
        log.info({ actor: `operator:${row.prefix}`, ip: req.ip }, 'console: operator signed in');
        return { kind: 'operator', actor: `operator:${row.prefix}`, tenant: null, username: null, role: null, csrf: s.csrf };
      }
      if (b.tenant === undefined || b.username === undefined || b.password === undefined) {
        throw badRequest('sign in needs tenant, username and password (or operator_key)');
      }
      const userKey = `user:${b.tenant}/${b.username.toLowerCase()}`;
      await throttle(users, ips, userKey, ipKey);
      const t = await store.getTenantByName(b.tenant);
      const u = t ? await repo.getUserByName(t.id, b.username) : undefined;
      // Unknown tenant or user: the same work and the same answer as a wrong password.
      // An SSO user has no password: checked against the decoy, so it fails like a wrong one.
      const ok = await verifyPassword(b.password, u && u.source !== 'sso' ? u.password_hash : await decoyHash());
      if (!t || !u || !ok) {
        users.failed([userKey]);
        ips.failed([ipKey]);
        if (t) await auditOnly(store, t.id, 'anonymous', 'console.signin.failed', 'console_user', u?.id ?? b.username, { username: b.username, ip: req.ip });
        log.warn({ tenant: b.tenant, username: b.username, ip: req.ip }, 'console: failed sign-in');
        throw invalidCredentials();
      }
      users.succeeded(userKey);
      const s = await startSession(store, { tenantId: t.id, userId: u.id });
      await repo.updateUser(t.id, u.id, { last_signin_at: nowIso() });
      await auditOnly(store, t.id, `user:${u.username}`, 'console.signin', 'console_user', u.id, { username: u.username, ip: req.ip });
      setSessionCookie(reply, s.token, secure(req));
      return { kind: 'user', actor: `user:${u.username}`, tenant: t.name, username: u.username, role: u.role as Role, csrf: s.csrf };
    },
  );

  app.get('/console/session', { schema: doc('console', 'The signed-in console session: who, which tenant, which role, and its CSRF token', {}, 'session') }, async (req) => {
    const s = await sessionFromRequest(store, req);
    if (!s) throw unauthorized('not signed in');
    const csrf = csrfOfRequest(req);
    if (s.user) {
      const t = await store.getTenant(s.user.tenantId);
      if (!t) throw unauthorized('the tenant of this session no longer exists');
      return { kind: 'user', actor: s.principal.actor, tenant: t.name, username: s.user.username, role: s.user.role, csrf };
    }
    return { kind: 'operator', actor: s.principal.actor, tenant: null, username: null, role: null, csrf };
  });

  app.delete('/console/session', { schema: doc('console', 'Sign out: ends the session on the server and clears its cookie (needs X-CSRF-Token)', {}, 'session') }, async (req, reply) => {
    const s = await sessionFromRequest(store, req);
    if (!s) throw unauthorized('not signed in');
    await repo.deleteSession(s.row.id);
    if (s.user) await auditOnly(store, s.user.tenantId, s.principal.actor, 'console.signout', 'console_user', s.user.id, null);
    clearSessionCookie(reply, secure(req));
    return { signed_out: true };
  });

  // ---- console users --------------------------------------------------------------
  app.get<{ Params: { tenant: string } }>(
    '/tenants/:tenant/console-users',
    { schema: { ...doc('console', 'List the tenant\'s console users'), params: tenantParams } },
    async (req) => {
      const { t } = await tenantFor(req, req.params.tenant, 'read');
      return { console_users: (await repo.listUsers(t.id)).map(consoleUserView) };
    },
  );

  app.post<{ Params: { tenant: string }; Body: { username: string; password: string; role: Role; email?: string | null } }>(
    '/tenants/:tenant/console-users',
    {
      schema: {
        ...doc('console', `Create a console user (password ${PASSWORD_MIN}..${PASSWORD_MAX} characters, stored as a scrypt hash); needs the operator key or the admin role`),
        params: tenantParams,
        body: { type: 'object', additionalProperties: false, required: ['username', 'password', 'role'], properties: { username: USERNAME, password: PASSWORD, role: { type: 'string', enum: [...ROLES] }, email: EMAIL } },
      },
    },
    async (req, reply) => {
      const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
      const hash = await hashPassword(req.body.password);
      const { result } = await store.write(t.id, p.actor, async (tx) => {
        const email = req.body.email ? req.body.email.toLowerCase() : null;
        if (await new ConsoleRepo(txConn(tx)).getUserByName(t.id, req.body.username)) throw conflict(`console user "${req.body.username}" already exists`);
        if (email && (await new ConsoleRepo(txConn(tx)).getUserByEmail(t.id, email))) throw conflict(`a console user with email ${email} already exists`);
        const u = await new ConsoleRepo(txConn(tx)).insertUser(t.id, { username: req.body.username, password_hash: hash, role: req.body.role, email, created_at: nowIso(), created_by: p.actor });
        await tx.audit('console_user.create', 'console_user', u.id, null, consoleUserView(u));
        return u;
      });
      return reply.code(201).send(consoleUserView(result));
    },
  );

  app.patch<{ Params: { tenant: string; id: number }; Body: { password?: string; role?: Role; email?: string | null } }>(
    '/tenants/:tenant/console-users/:id',
    {
      schema: {
        ...doc('console', 'Change a console user\'s password, role or email (a new password ends the user\'s sessions; an SSO user has no password)'),
        params: idParams,
        body: { type: 'object', additionalProperties: false, minProperties: 1, properties: { password: PASSWORD, role: { type: 'string', enum: [...ROLES] }, email: EMAIL } },
      },
    },
    async (req) => {
      const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
      const hash = req.body.password !== undefined ? await hashPassword(req.body.password) : undefined;
      const { result } = await store.write(t.id, p.actor, async (tx) => {
        const r = new ConsoleRepo(txConn(tx));
        const u = await r.getUser(t.id, req.params.id);
        if (!u) throw notFound('console user');
        if (hash && u.source === 'sso') throw conflict(`console user "${u.username}" signs in with SSO and has no password`);
        const email = req.body.email === undefined ? undefined : req.body.email === null ? null : req.body.email.toLowerCase();
        if (email) {
          const other = await r.getUserByEmail(t.id, email);
          if (other && other.id !== u.id) throw conflict(`a console user with email ${email} already exists`);
        }
        await r.updateUser(t.id, u.id, { ...(hash ? { password_hash: hash } : {}), ...(req.body.role ? { role: req.body.role } : {}), ...(email !== undefined ? { email } : {}) });
        if (hash) await r.deleteUserSessions(u.id);
        const after = { ...consoleUserView(u), ...(req.body.role ? { role: req.body.role } : {}), ...(email !== undefined ? { email } : {}) };
        const action = hash ? 'console_user.password' : req.body.role ? 'console_user.role' : 'console_user.email';
        await tx.audit(action, 'console_user', u.id, { role: u.role, email: u.email }, { role: after.role, email: after.email, ...(hash ? { password_changed: true } : {}) });
        return after;
      });
      return result;
    },
  );

  app.delete<{ Params: { tenant: string; id: number } }>(
    '/tenants/:tenant/console-users/:id',
    { schema: { ...doc('console', 'Delete a console user (their sessions end)'), params: idParams } },
    async (req) => {
      const { p, t } = await tenantFor(req, req.params.tenant, 'admin');
      await store.write(t.id, p.actor, async (tx) => {
        const r = new ConsoleRepo(txConn(tx));
        const u = await r.getUser(t.id, req.params.id);
        if (!u) throw notFound('console user');
        await r.deleteUserSessions(u.id);
        await r.deleteUser(t.id, u.id);
        await tx.audit('console_user.delete', 'console_user', u.id, consoleUserView(u), null);
      });
      return { deleted: true };
    },
  );

  // ---- routes (tenant-wide) -----------------------------------------------------------
  app.get<{ Params: { tenant: string } }>(
    '/tenants/:tenant/routes',
    {
      schema: {
        ...doc('routes', 'Every routed prefix of the tenant with its advertising nodes (primary, standby, not approved, offline), and the exit nodes', {
          'x-response': ConsoleRoutesView,
        }),
        params: tenantParams,
      },
    },
    async (req) => {
      const { t } = await tenantFor(req, req.params.tenant, 'read');
      const r = store.tenant(t.id);
      const [nodes, users, health, primaries] = await Promise.all([
        r.listNodes(), r.listUsers(), r.relayHealthByNode(),
        store.db.selectFrom('primaries').select(['prefix', 'node_id', 'elected_at']).where('tenant_id', '=', t.id).execute(),
      ]);
      const byId = new Map(users.map((u) => [u.id, u]));
      const prim = new Map(primaries.map((x) => [x.prefix, x.node_id]));
      const views = nodes.map((n) => nodeView(n, byId, prim, health));
      return routesOverview(views, primaries);
    },
  );

  // ---- live updates ---------------------------------------------------------------------
  const { events, openStreams } = deps;
  if (events && openStreams) {
    app.get<{ Params: { tenant: string } }>(
      '/tenants/:tenant/events',
      {
        schema: {
          ...doc('console', 'Server-Sent Events: "changed" with the tenant\'s generation after every committed change (nodes on/offline, routes, policy, audit); coalesced, at most ~3 a second'),
          params: tenantParams,
        },
      },
      async (req, reply) => {
        const { t } = await tenantFor(req, req.params.tenant, 'read');
        events.open(req, reply, t.id, t.generation, openStreams);
      },
    );
  }
}

const txConn = (tx: TenantTx) => tx.transaction;

async function throttle(users: SigninLimiter, ips: SigninLimiter, userKey: string, ipKey: string): Promise<void> {
  const u = users.delayFor([userKey]);
  const i = ips.delayFor([ipKey]);
  if (u.locked || i.locked) {
    const retry = Math.max(u.retryAfterS, i.retryAfterS);
    throw new ApiError(429, 'too_many_attempts', `too many failed sign-ins; try again in ${retry} s`, { retry_after_s: retry });
  }
  const delay = Math.max(u.delayMs, i.delayMs);
  if (delay > 0) await sleep(delay);
}
