// Interactive node login, as `tailscale up` does it: `larktun up` without an
// auth key. The node proves its key (the registration proof, nodekey.ts, over a
// nonce bound to the tenant only) and starts a login; it gets the URL
// <public URL>/login/<login_id> to show its user and a poll secret it keeps. A
// console user (or API key) of the tenant with the operator role or more opens
// the URL and approves or rejects; the node long-polls with its poll secret and,
// once approved, collects its node token.
//
// - login_id (256 bits) is in the URL; knowing it lets a signed-in user of the
//   tenant see and decide the login, never collect the token: that needs the
//   poll secret (256 bits, only its SHA-256 stored), which never leaves the node.
// - Approval is the registration (admitNode in http/node.ts, the code path auth
//   keys use): the node is made in the approver's transaction, owned by the
//   approving user, with the requested tags only if that user owns them under
//   tagOwners (else the approval is refused and nothing changes). Its token is
//   random and never shown; the node's poll replaces it with the one it gets, so
//   no token is ever stored in clear.
// - A login is single-use (approved -> used when collected) and expires
//   (LARKTUN_NODE_LOGIN_TTL_MS, default 10 min). Pending logins are bounded per
//   tenant and per source address; decided and expired rows are kept an hour
//   after expiry (the console shows what happened), then removed.
import { randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyRequest, FastifySchema } from 'fastify';
import { nowIso, type Store, type TenantTx } from './store/repo.js';
import type { NodeLoginRow, TenantRow, UserRow } from './store/schema.js';
import { ApiError, badRequest, notFound } from './errors.js';
import { hashSecret, newSecret, secretMatches } from './secrets.js';
import { NONCE_BYTES, REGISTER_PROOF_LABEL, nodeKeyFingerprint, verifyRegistration } from './nodekey.js';
import { admitNode, endpointsFromBody, routesFromBody, type HostinfoBody } from './http/node.js';
import { authenticate, resolveTenant, type Principal } from './http/auth.js';
import type { RouteDoc } from './http/openapi.js';
import type { ControlMetrics } from './metrics.js';
import { jsonList, jsonObject } from './netmap.js';
import { userView, validateTagSyntax } from './service.js';

type S = FastifySchema & RouteDoc;

function envNumber(name: string, dflt: number): number {
  const n = Number(process.env[name]);
  return Number.isFinite(n) && n > 0 ? n : dflt;
}

export interface NodeLoginOptions {
  /** How long a login may wait for a decision (ms; default 10 min; env LARKTUN_NODE_LOGIN_TTL_MS). */
  ttlMs?: number;
  /** Pending logins per tenant (default 100; env LARKTUN_NODE_LOGINS_PER_TENANT). */
  perTenant?: number;
  /** Pending logins per source address (default 10; env LARKTUN_NODE_LOGINS_PER_SOURCE). */
  perSource?: number;
  /** Longest wait of one poll (ms; default 25 s). */
  maxPollMs?: number;
  /** The server's public URL (https://ctl.example.com) for the login link; else the node's own Host header. */
  publicUrl?: string;
}

export const LOGIN_STATES = ['pending', 'approved', 'rejected', 'expired', 'used'] as const;
export type LoginState = (typeof LOGIN_STATES)[number];

/** A login's state as of now: a pending login past its expiry is expired. */
export function effectiveState(row: NodeLoginRow, now = nowIso()): LoginState {
  return row.state === 'pending' && row.expires_at <= now ? 'expired' : (row.state as LoginState);
}

const LOGIN_ID = { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$', description: 'the login id (base64url, 32 bytes) from the login URL' } as const;
const NAME = { type: 'string', pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' } as const;

const expired = (): ApiError => new ApiError(410, 'login_expired', 'this node login has expired: run larktun up again on the machine for a new link');

/** What the console shows of a login (never the poll secret, nonce or signature). */
export function loginView(row: NodeLoginRow, tenant: string, node: { id: number; name: string } | null) {
  const hi = jsonObject(row.hostinfo);
  return {
    login_id: row.login_id,
    tenant,
    state: effectiveState(row),
    machine_name: row.hostname,
    requested_tags: jsonList(row.tags),
    node_key: row.node_key,
    key_fingerprint: nodeKeyFingerprint(row.node_key),
    source_addr: row.source_addr,
    os: typeof hi['os'] === 'string' ? hi['os'] : null,
    version: typeof hi['version'] === 'string' ? hi['version'] : null,
    routes: Array.isArray(hi['routes']) ? (hi['routes'] as unknown[]).map(String) : [],
    created_at: row.created_at,
    expires_at: row.expires_at,
    decided_by: row.approved_by,
    decided_at: row.decided_at,
    node,
  };
}

export const NodeLoginView = {
  type: 'object',
  properties: {
    login_id: { type: 'string' }, tenant: { type: 'string' }, state: { type: 'string', enum: [...LOGIN_STATES] },
    machine_name: { type: 'string' }, requested_tags: { type: 'array', items: { type: 'string' } },
    node_key: { type: 'string' }, key_fingerprint: { type: 'string', description: 'SHA256:<base64> of the raw node key' },
    source_addr: { type: 'string', description: 'the address the login was started from' },
    os: { type: ['string', 'null'] }, version: { type: ['string', 'null'] }, routes: { type: 'array', items: { type: 'string' } },
    created_at: { type: 'string' }, expires_at: { type: 'string' },
    decided_by: { type: ['string', 'null'] }, decided_at: { type: ['string', 'null'] },
    node: { type: ['object', 'null'], properties: { id: { type: 'integer' }, name: { type: 'string' } } },
  },
} as const;

interface StartBody extends HostinfoBody {
  tenant: string;
  node_key: string;
  nonce: string;
  signature: string;
  hostname: string;
  tags?: string[];
}

/** Both halves (node API, Admin API) share one instance: an approval wakes this server's polls at once. */
export class NodeLogins {
  readonly ttlMs: number;
  readonly perTenant: number;
  readonly perSource: number;
  readonly maxPollMs: number;
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(private readonly store: Store, private readonly metrics: ControlMetrics, readonly opts: NodeLoginOptions = {}) {
    this.ttlMs = opts.ttlMs ?? envNumber('LARKTUN_NODE_LOGIN_TTL_MS', 10 * 60_000);
    this.perTenant = opts.perTenant ?? envNumber('LARKTUN_NODE_LOGINS_PER_TENANT', 100);
    this.perSource = opts.perSource ?? envNumber('LARKTUN_NODE_LOGINS_PER_SOURCE', 10);
    this.maxPollMs = opts.maxPollMs ?? 25_000;
  }

  private wake(loginId: string): void {
    const set = this.waiters.get(loginId);
    if (!set) return;
    this.waiters.delete(loginId);
    for (const w of set) w();
  }

  /** Resolves on a decision made by this server, or after `ms` (another replica's decision is seen by re-reading). */
  private waitFor(loginId: string, ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let set = this.waiters.get(loginId);
      if (!set) this.waiters.set(loginId, (set = new Set()));
      const s = set;
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        s.delete(done);
        if (s.size === 0 && this.waiters.get(loginId) === s) this.waiters.delete(loginId);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done);
      s.add(done);
    });
  }

  private row(loginId: string): Promise<NodeLoginRow | undefined> {
    return this.store.db.selectFrom('node_logins').selectAll().where('login_id', '=', loginId).executeTakeFirst();
  }

  // ---- node API (/node/v1) --------------------------------------------------------------

  registerNodeRoutes(app: FastifyInstance): void {
    const { store, metrics } = this;
    const doc = (summary: string): S => ({ tags: ['node'], summary, 'x-auth': 'none' });
    const refuse = (reason: string, err: ApiError): never => {
      metrics.rejections.inc({ reason: `login_${reason}` });
      throw err;
    };

    app.post<{ Body: { tenant: string } }>(
      '/login/challenge',
      {
        schema: {
          ...doc(`Interactive login, step 1: a nonce for the tenant (single-use, valid 60 s). Sign it with the node key as for registration ("${REGISTER_PROOF_LABEL}" ‖ u8(32) ‖ nonce ‖ u16be(len) ‖ node_key ‖ u16be(len) ‖ tenant) and POST it to /login`),
          body: { type: 'object', additionalProperties: false, required: ['tenant'], properties: { tenant: NAME } },
        },
      },
      async (req) => {
        const t = await store.getTenantByName(req.body.tenant);
        if (!t) refuse('tenant_unknown', new ApiError(404, 'not_found', `tenant "${req.body.tenant}" not found: give the tenant this node joins (larktun up --tenant NAME)`));
        const tenant = t as TenantRow;
        const nonce = randomBytes(NONCE_BYTES).toString('base64url');
        const ttlMs = 60_000;
        if (!(await store.issueRegisterNonce({ nonce, tenantId: tenant.id, ttlMs, login: true }, { perKey: this.perTenant * 4, total: 100_000 }))) {
          refuse('nonces_full', new ApiError(429, 'too_many_challenges', 'too many logins are pending on this server: retry in a minute'));
        }
        return { nonce, tenant: tenant.name, expires_at: new Date(Date.now() + ttlMs).toISOString(), label: REGISTER_PROOF_LABEL };
      },
    );

    app.post<{ Body: StartBody }>(
      '/login',
      {
        schema: {
          ...doc('Interactive login, step 2: start a login with the proven node key; returns the URL for a signed-in user of the tenant to approve, and the poll secret (keep it: only it collects the node token)'),
          body: {
            type: 'object', additionalProperties: false, required: ['tenant', 'node_key', 'nonce', 'signature', 'hostname'],
            properties: {
              tenant: NAME,
              node_key: { type: 'string', pattern: '^nodekey:[0-9a-f]{64}$', description: 'the node\'s Ed25519 public key' },
              nonce: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' },
              signature: { type: 'string', pattern: '^[A-Za-z0-9_-]{86}$' },
              tags: { type: 'array', items: { type: 'string', maxLength: 200 }, maxItems: 64 },
              hostname: { type: 'string', minLength: 1, maxLength: 253 },
              routes: { type: 'array', items: { type: 'string', maxLength: 64 }, maxItems: 1024 },
              exit_node: { type: 'boolean' },
              use_exit_node: { type: ['string', 'null'], maxLength: 253 },
              endpoints: { type: 'array', items: { type: 'string', maxLength: 300 }, maxItems: 64 },
              os: { type: 'string', maxLength: 100 },
              version: { type: 'string', maxLength: 100 },
            },
          },
        },
      },
      async (req, reply) => {
        const b = req.body;
        const t = await store.getTenantByName(b.tenant);
        if (!t) refuse('tenant_unknown', new ApiError(404, 'not_found', `tenant "${b.tenant}" not found`));
        const tenant = t as TenantRow;
        const taken = await store.takeRegisterNonce(b.nonce);
        if (!taken || taken.tenant_id !== tenant.id || taken.auth_key_id !== null || taken.node_id !== null) {
          refuse('proof_nonce_invalid', new ApiError(401, 'proof_nonce_invalid', 'the login nonce is unknown, expired, already used or was issued for something else: get a new one from POST /node/v1/login/challenge'));
        }
        if (!verifyRegistration(b.node_key, Buffer.from(b.nonce, 'base64url'), tenant.name, b.signature)) {
          refuse('proof_invalid', new ApiError(401, 'proof_invalid', `the signature does not prove possession of node key "${b.node_key}"`));
        }
        const tags = b.tags ? [...new Set(b.tags)].sort() : [];
        validateTagSyntax(tags);
        const routes = routesFromBody(b);
        endpointsFromBody(b);
        const now = new Date();
        const nowS = now.toISOString();
        // Old rows go first (an hour past their expiry), then the bounds.
        await store.db.deleteFrom('node_logins').where('expires_at', '<=', new Date(now.getTime() - 3600_000).toISOString()).execute();
        await store.db.updateTable('node_logins').set({ state: 'expired' }).where('state', '=', 'pending').where('expires_at', '<=', nowS).execute();
        const pending = (q: 'tenant_id' | 'source_addr', v: number | string) => store.db.selectFrom('node_logins')
          .select((eb) => eb.fn.countAll<number>().as('n')).where(q, '=', v).where('state', '=', 'pending').where('expires_at', '>', nowS)
          .executeTakeFirstOrThrow().then((r) => Number(r.n));
        if ((await pending('source_addr', req.ip)) >= this.perSource) {
          refuse('per_source', new ApiError(429, 'too_many_logins', `${this.perSource} logins started from ${req.ip} are waiting for approval: approve or reject them, or wait until they expire`));
        }
        if ((await pending('tenant_id', tenant.id)) >= this.perTenant) {
          refuse('per_tenant', new ApiError(429, 'too_many_logins', `${this.perTenant} logins of tenant "${tenant.name}" are waiting for approval: approve or reject them, or wait until they expire`));
        }
        const loginId = randomBytes(32).toString('base64url');
        const pollSecret = randomBytes(32).toString('base64url');
        const row: NodeLoginRow = {
          login_id: loginId, tenant_id: tenant.id, poll_hash: hashSecret(pollSecret), node_key: b.node_key,
          nonce: b.nonce, signature: b.signature, hostname: b.hostname, tags: JSON.stringify(tags),
          hostinfo: JSON.stringify({
            routes, exit_node: b.exit_node ?? false, endpoints: b.endpoints ?? [],
            ...(b.use_exit_node !== undefined ? { use_exit_node: b.use_exit_node } : {}),
            ...(b.os !== undefined ? { os: b.os } : {}), ...(b.version !== undefined ? { version: b.version } : {}),
          }),
          source_addr: req.ip, state: 'pending', approved_by: null, decided_at: null, node_id: null,
          created_at: nowS, expires_at: new Date(now.getTime() + this.ttlMs).toISOString(),
        };
        await store.db.insertInto('node_logins').values(row).execute();
        await store.auditOnly(tenant.id, `nodekey:${b.node_key.slice(8, 24)}`, 'node_login.start', 'node_login', loginId.slice(0, 8), null, {
          hostname: b.hostname, requested_tags: tags, node_key: b.node_key, source_addr: req.ip, expires_at: row.expires_at,
        });
        const path = `/login/${loginId}`;
        return reply.code(201).send({
          login_id: loginId, url: `${this.baseUrl(req)}${path}`, path, poll_secret: pollSecret,
          expires_at: row.expires_at, poll_wait_s: Math.round(this.maxPollMs / 1000),
        });
      },
    );

    app.post<{ Body: { login_id: string; poll_secret: string; wait_s?: number } }>(
      '/login/poll',
      {
        schema: {
          ...doc(`Interactive login, step 3: wait (up to ${Math.round(this.maxPollMs / 1000)} s a request) for the decision; with the poll secret from /login. Pending: 200 {state:"pending"}; approved: 200 with the node token, once; rejected: 403 login_rejected; expired: 410 login_expired; collected before: 410 login_used`),
          body: {
            type: 'object', additionalProperties: false, required: ['login_id', 'poll_secret'],
            properties: { login_id: LOGIN_ID, poll_secret: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' }, wait_s: { type: 'integer', minimum: 0, maximum: 60 } },
          },
        },
      },
      async (req) => {
        const b = req.body;
        const unknown = (): never => refuse('poll_unknown', new ApiError(401, 'login_unknown', 'no node login with this id and poll secret'));
        const first = await this.row(b.login_id);
        if (!first || !secretMatches(b.poll_secret, first.poll_hash)) unknown();
        const deadline = Date.now() + Math.min((b.wait_s ?? this.maxPollMs / 1000) * 1000, this.maxPollMs);
        const ac = new AbortController();
        req.raw.once('close', () => ac.abort());
        let row = first as NodeLoginRow;
        for (;;) {
          const state = effectiveState(row);
          if (state === 'approved') return this.collect(row);
          if (state === 'rejected') throw new ApiError(403, 'login_rejected', `this login was rejected by ${row.approved_by ?? 'an admin'}`);
          if (state === 'expired') throw expired();
          if (state === 'used') throw new ApiError(410, 'login_used', 'this login was completed already: its node token was handed out');
          const left = Math.min(deadline, Date.parse(row.expires_at) + 50) - Date.now();
          if (left <= 0 || ac.signal.aborted) return { state: 'pending', expires_at: row.expires_at };
          await this.waitFor(row.login_id, Math.min(left, 1000), ac.signal);
          const next = await this.row(row.login_id);
          if (!next) throw expired();
          row = next;
        }
      },
    );
  }

  private baseUrl(req: FastifyRequest): string {
    if (this.opts.publicUrl) return this.opts.publicUrl.replace(/\/+$/, '');
    const host = req.headers.host ?? '';
    return /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/.test(host) ? `${req.protocol}://${host}` : '';
  }

  /** An approved login's node token: a new one replaces the unshown token of approval; the login is used from then on. */
  private async collect(row: NodeLoginRow): Promise<Record<string, unknown>> {
    const s = newSecret('lknode');
    const tenant = await this.store.getTenant(row.tenant_id); // before the transaction: SQLite has one connection
    const { result } = await this.store.write(row.tenant_id, `nodekey:${row.node_key.slice(8, 24)}`, async (tx) => {
      const cur = await tx.transaction.selectFrom('node_logins').selectAll().where('login_id', '=', row.login_id).where('tenant_id', '=', row.tenant_id).executeTakeFirst();
      if (!cur || cur.state !== 'approved') throw new ApiError(410, 'login_used', 'this login was completed already: its node token was handed out');
      const node = cur.node_id !== null ? await tx.getNode(cur.node_id) : undefined;
      if (!node || node.node_key !== cur.node_key) throw new ApiError(410, 'login_node_gone', 'the node this login made was deleted before it collected its token: run larktun up again');
      await tx.updateNode(node.id, { token_prefix: s.prefix, token_hash: s.hash });
      await tx.transaction.updateTable('node_logins').set({ state: 'used' }).where('login_id', '=', cur.login_id).execute();
      await tx.audit('node_login.complete', 'node', node.id, { login: cur.login_id.slice(0, 8), state: 'approved' }, { login: cur.login_id.slice(0, 8), state: 'used' });
      return { node, tenant: tenant?.name ?? '', approvedBy: cur.approved_by };
    });
    const n = result.node;
    return {
      state: 'approved', token: s.secret, tenant: result.tenant, approved_by: result.approvedBy,
      node: { id: n.id, name: n.name, ipv4: n.ipv4, ipv6: n.ipv6, tags: jsonList(n.tags), approved_routes: jsonList(n.approved_routes) },
    };
  }

  // ---- Admin API (/api/v1) -----------------------------------------------------------------

  registerAdminRoutes(app: FastifyInstance): void {
    const { store, metrics } = this;
    const params = { type: 'object', required: ['tenant', 'id'], properties: { tenant: NAME, id: LOGIN_ID }, additionalProperties: false } as const;
    const doc = (summary: string, extra: Record<string, unknown> = {}): S => ({ tags: ['node-logins'], summary, 'x-auth': 'apikey', ...extra });
    const find = async (tx: TenantTx | null, tenantId: number, id: string): Promise<NodeLoginRow> => {
      const q = (tx ? tx.transaction : store.db).selectFrom('node_logins').selectAll().where('login_id', '=', id).where('tenant_id', '=', tenantId);
      const row = await q.executeTakeFirst();
      if (!row) throw notFound('node login');
      return row;
    };
    const decidable = (row: NodeLoginRow): void => {
      const st = effectiveState(row);
      if (st === 'expired') throw expired();
      if (st !== 'pending') throw new ApiError(409, 'login_decided', `this login was ${st === 'used' ? 'approved' : st} already${row.approved_by ? ` by ${row.approved_by}` : ''}`);
    };
    const nodeOf = async (row: NodeLoginRow) => {
      if (row.node_id === null) return null;
      const n = await store.tenant(row.tenant_id).getNode(row.node_id);
      return n ? { id: n.id, name: n.name } : null;
    };

    app.get<{ Params: { tenant: string; id: string } }>(
      '/tenants/:tenant/node-logins/:id',
      { schema: { ...doc('A node login started by larktun up without an auth key: machine name, requested tags, key fingerprint, source address, expiry (expired: 410 login_expired)', { 'x-response': NodeLoginView }), params } },
      async (req) => {
        const p = await authenticate(store, req);
        const t = await resolveTenant(store, p, req.params.tenant, 'read');
        const row = await find(null, t.id, req.params.id);
        if (effectiveState(row) === 'expired') throw expired();
        return loginView(row, t.name, await nodeOf(row));
      },
    );

    app.post<{ Params: { tenant: string; id: string }; Body: { user?: string } | undefined }>(
      '/tenants/:tenant/node-logins/:id/approve',
      {
        schema: {
          ...doc('Approve a node login: the node joins as the approving console user (their tenant user of the same name, made if missing), or as "user" for an API key; its requested tags only if that user owns them under tagOwners (else 403 tags_not_allowed and nothing changes). Needs the operator role or more', { 'x-response': NodeLoginView }),
          params,
          body: { type: ['object', 'null'], additionalProperties: false, properties: { user: { type: 'string', pattern: '^[A-Za-z0-9._@-]{1,64}$', description: 'with an API key or the operator key: the tenant user the node joins as (a console session joins it as its own user)' } } },
        },
      },
      async (req) => {
        const p = await authenticate(store, req);
        const t = await resolveTenant(store, p, req.params.tenant, 'nodes');
        const asUser = req.body?.user;
        const { result } = await store.write(t.id, p.actor, async (tx) => {
          const row = await find(tx, t.id, req.params.id);
          decidable(row);
          const user = await approvingUser(tx, p, asUser);
          const tags = jsonList(row.tags);
          const hi = jsonObject(row.hostinfo);
          const existing = await tx.getNodeByKey(row.node_key);
          if (existing && existing.user_id !== user.id) {
            metrics.identityRefusals.inc({ reason: 'takeover' });
            throw new ApiError(403, 'node_owned_by_other_user', `node "${existing.name}" with this node key belongs to ${existing.user_id === null ? 'its tags' : 'another user'}: only its own user re-logs it in; on the machine, run larktun logout first to join as a new node`);
          }
          const hidden = newSecret('lknode'); // replaced when the node collects its token
          const seen = { tagsKept: null as string[] | null };
          const node = await admitNode(tx, metrics, {
            tenant: t,
            body: {
              hostname: row.hostname, routes: Array.isArray(hi['routes']) ? (hi['routes'] as string[]) : [], exit_node: hi['exit_node'] === true,
              endpoints: Array.isArray(hi['endpoints']) ? (hi['endpoints'] as string[]) : [],
              ...(typeof hi['os'] === 'string' ? { os: hi['os'] } : {}), ...(typeof hi['version'] === 'string' ? { version: hi['version'] } : {}),
              ...(hi['use_exit_node'] !== undefined ? { use_exit_node: hi['use_exit_node'] as string | null } : {}),
            },
            nodeKey: row.node_key, requested: tags, tagsGiven: tags.length > 0, freeTags: [],
            userId: user.id, authKeyId: null, ephemeral: 0, token: hidden, existing, previousKey: null,
            tagRefusal: (tag) => `tag "${tag}" is not owned by user "${user.name}" under the policy's tagOwners: ${user.name} cannot approve a node asking for it (a user who owns it can, or run larktun up again without --advertise-tags)`,
          }, seen);
          const decidedAt = nowIso();
          await tx.transaction.updateTable('node_logins').set({ state: 'approved', approved_by: p.actor, decided_at: decidedAt, node_id: node.id })
            .where('login_id', '=', row.login_id).execute();
          await tx.audit('node_login.approve', 'node', node.id, { login: row.login_id.slice(0, 8), state: 'pending' }, {
            login: row.login_id.slice(0, 8), state: 'approved', user: user.name, node: node.name, tags: jsonList(node.tags), node_key: row.node_key, source_addr: row.source_addr,
          });
          return { ...row, state: 'approved', approved_by: p.actor, decided_at: decidedAt, node_id: node.id, node: { id: node.id, name: node.name } };
        });
        this.wake(req.params.id);
        const { node, ...row } = result;
        return loginView(row, t.name, node);
      },
    );

    app.post<{ Params: { tenant: string; id: string } }>(
      '/tenants/:tenant/node-logins/:id/reject',
      { schema: { ...doc('Reject a node login: the waiting larktun up ends with an error; the link cannot be used again. Needs the operator role or more', { 'x-response': NodeLoginView }), params } },
      async (req) => {
        const p = await authenticate(store, req);
        const t = await resolveTenant(store, p, req.params.tenant, 'nodes');
        const { result } = await store.write(t.id, p.actor, async (tx) => {
          const row = await find(tx, t.id, req.params.id);
          decidable(row);
          const decidedAt = nowIso();
          await tx.transaction.updateTable('node_logins').set({ state: 'rejected', approved_by: p.actor, decided_at: decidedAt }).where('login_id', '=', row.login_id).execute();
          await tx.audit('node_login.reject', 'node_login', row.login_id.slice(0, 8), { state: 'pending' }, {
            state: 'rejected', hostname: row.hostname, requested_tags: jsonList(row.tags), node_key: row.node_key, source_addr: row.source_addr,
          });
          return { ...row, state: 'rejected', approved_by: p.actor, decided_at: decidedAt };
        });
        this.wake(req.params.id);
        return loginView(result, t.name, null);
      },
    );
  }
}

/**
 * The tenant user an approved node joins as: a console session's own user (the
 * tenant user of its username, made if missing, audited); an API key or the
 * operator key names one with "user".
 */
async function approvingUser(tx: TenantTx, p: Principal, asUser: string | undefined): Promise<UserRow> {
  if (p.kind === 'apikey' && p.sessionId !== undefined) {
    const username = p.actor.replace(/^user:/, '');
    if (asUser !== undefined && asUser !== username) throw badRequest(`a console session approves as its own user ("${username}"); "user" is for API keys`);
    const found = await tx.getUserByName(username);
    if (found) return found;
    const u = await tx.insertUser({ name: username, email: username.includes('@') ? username : null, display_name: null, created_at: nowIso() });
    await tx.audit('user.create', 'user', u.id, null, userView(u));
    return u;
  }
  if (asUser === undefined) throw badRequest('approving with an API key or the operator key needs "user": the tenant user the node joins as');
  const u = await tx.getUserByName(asUser);
  if (!u) throw new ApiError(404, 'not_found', `user "${asUser}" not found in this tenant`);
  return u;
}
