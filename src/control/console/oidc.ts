// Console single sign-on with OpenID Connect (authorization code + PKCE S256,
// through openid-client). A tenant configures one provider
// (GET/PUT/DELETE /tenants/{t}/oidc); GET /console/oidc/{tenant}/start
// redirects the browser to it, and GET /console/oidc/callback checks the
// state (single use, ~10 min, bound to the browser that started), exchanges
// the code, verifies the ID token and its nonce, and matches the verified
// email to a console user of that tenant (or creates one with the configured
// role), then starts the same session a password sign-in does.
//
// email_verified: a provider that sends it must send true; one that omits it
// (several enterprise providers never send it) is trusted for the email it
// returns, since the tenant chose that provider and lists the domains it
// accepts.
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import type { Logger } from 'pino';
import * as client from 'openid-client';
import type { Store, TenantTx } from '../store/repo.js';
import { nowIso } from '../store/repo.js';
import type { ConsoleOidcRow, TenantRow } from '../store/schema.js';
import { ApiError, badRequest, notFound } from '../errors.js';
import { authenticate, resolveTenant, ROLES, type Role } from '../http/auth.js';
import type { RouteDoc } from '../http/openapi.js';
import { hashSecret, secretMatches } from '../secrets.js';
import { ConsoleRepo, OidcRepo, auditOnly } from './repo.js';
import { SigninLimiter, cookieValue, setSessionCookie, startSession } from './sessions.js';

export const OIDC_COOKIE = 'larktun_oidc';
export const CALLBACK_PATH = '/api/v1/console/oidc/callback';
/** A pending sign-in expires this long after /start. */
export const STATE_TTL_MS = 10 * 60_000;
/** Provider metadata is kept this long and for this many issuers at most. */
export const DISCOVERY_TTL_MS = 10 * 60_000;
export const DISCOVERY_MAX = 100;
/** Seconds one request to the provider (discovery, token, userinfo) may take. */
export const PROVIDER_TIMEOUT_S = 8;
const DOMAIN_MAX = 50;

type S = FastifySchema & RouteDoc;
const doc = (summary: string, extra: Record<string, unknown> = {}, auth = 'apikey'): S => ({ tags: ['console'], summary, 'x-auth': auth, ...extra });
const NAME = { type: 'string', pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' } as const;
const DOMAIN = { type: 'string', pattern: '^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\\.)+[a-zA-Z]{2,63}$' } as const;
const tenantParams = { type: 'object', required: ['tenant'], properties: { tenant: NAME }, additionalProperties: false } as const;

export interface OidcDeps {
  store: Store;
  log: Logger;
  /** The server's public URL (--public-url); the redirect URI is derived from it. */
  publicUrl: URL | null;
  users: SigninLimiter;
  ips: SigninLimiter;
}

export interface OidcConfigBody {
  issuer: string;
  client_id: string;
  client_secret?: string | null;
  allowed_domains: string[];
  new_user_role?: Role | null;
  enabled?: boolean;
}

/** The config as the API shows it: never the secret, only whether one is set. */
export function oidcConfigView(c: ConsoleOidcRow) {
  return {
    issuer: c.issuer,
    client_id: c.client_id,
    client_secret_set: c.client_secret !== null,
    allowed_domains: JSON.parse(c.allowed_domains) as string[],
    new_user_role: c.new_user_role as Role | null,
    enabled: c.enabled === 1,
    updated_at: c.updated_at,
    updated_by: c.updated_by,
  };
}

export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1';
  return false;
}

/** An issuer must be an http(s) URL without credentials, query or fragment; http only on loopback. */
export function validateIssuer(s: string): string {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw badRequest(`issuer "${s}" is not a URL`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw badRequest('issuer must be an https:// URL');
  if (u.protocol === 'http:' && !isLoopbackHost(u.hostname)) throw badRequest('issuer must be https:// (http:// only for a provider on this machine: 127.0.0.1, ::1 or localhost)');
  if (u.username || u.password || u.search || u.hash) throw badRequest('issuer must not carry credentials, a query or a fragment');
  return s;
}

/** The public URL option: an absolute http(s) URL, no path beyond "/". */
export function parsePublicUrl(s: string): URL {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new Error(`--public-url "${s}" is not a URL (e.g. https://larktun.example.com)`);
  }
  if ((u.protocol !== 'https:' && u.protocol !== 'http:') || u.username || u.password || u.search || u.hash || (u.pathname !== '/' && u.pathname !== '')) {
    throw new Error(`--public-url "${s}" must be http(s)://host[:port] without a path`);
  }
  return u;
}

interface CachedMeta {
  at: number;
  meta: client.ServerMetadata;
}

/** Provider metadata by issuer: bounded, with a TTL; concurrent look-ups of one issuer share one fetch. */
export class DiscoveryCache {
  private readonly map = new Map<string, CachedMeta>();
  private readonly inflight = new Map<string, Promise<client.ServerMetadata>>();
  constructor(private readonly ttlMs = DISCOVERY_TTL_MS, private readonly max = DISCOVERY_MAX, private readonly timeoutS = PROVIDER_TIMEOUT_S) {}

  async get(issuer: string, now = Date.now()): Promise<client.ServerMetadata> {
    const c = this.map.get(issuer);
    if (c && now - c.at < this.ttlMs) return c.meta;
    const running = this.inflight.get(issuer);
    if (running) return running;
    const p = (async () => {
      const u = new URL(issuer);
      const conf = await client.discovery(u, 'larktun-discovery', undefined, undefined, {
        timeout: this.timeoutS,
        ...(u.protocol === 'http:' ? { execute: [client.allowInsecureRequests] } : {}),
      });
      const meta = conf.serverMetadata();
      this.map.delete(issuer);
      this.map.set(issuer, { at: Date.now(), meta: { ...meta } });
      while (this.map.size > this.max) this.map.delete(this.map.keys().next().value as string);
      return meta;
    })();
    this.inflight.set(issuer, p);
    try {
      return await p;
    } finally {
      this.inflight.delete(issuer);
    }
  }

  get size(): number {
    return this.map.size;
  }
}

/** The openid-client configuration of a tenant's provider and client. */
function clientConfig(meta: client.ServerMetadata, c: ConsoleOidcRow): client.Configuration {
  const conf = new client.Configuration(meta, c.client_id, undefined, c.client_secret !== null ? client.ClientSecretBasic(c.client_secret) : client.None());
  if (new URL(c.issuer).protocol === 'http:') client.allowInsecureRequests(conf);
  conf.timeout = PROVIDER_TIMEOUT_S;
  return conf;
}

/** A console username from an email: the email itself when it fits the username rule, else a sanitised form. */
export function usernameFromEmail(email: string): string {
  const u = email.replace(/[^A-Za-z0-9._@-]/g, '-');
  return u.length <= 64 ? u : u.slice(0, 64);
}

/** Failure codes the sign-in page explains (console/src/pages/SignIn.tsx). */
export type SsoError =
  | 'sso_not_configured' | 'sso_provider_unreachable' | 'sso_state_invalid' | 'sso_denied' | 'sso_exchange_failed'
  | 'sso_no_email' | 'sso_email_unverified' | 'sso_domain_not_allowed' | 'sso_no_account' | 'sso_username_taken'
  | 'sso_no_redirect_uri' | 'too_many_attempts';

class SsoFailure extends Error {
  constructor(readonly code: SsoError, readonly status: number, message: string, readonly tenant: TenantRow | null = null) {
    super(message);
  }
}

const token = (): string => randomBytes(32).toString('base64url');

export function registerOidc(app: FastifyInstance, deps: OidcDeps): { discovery: DiscoveryCache } {
  const { store, log, publicUrl, users, ips } = deps;
  const discovery = new DiscoveryCache();
  const consoleRepo = new ConsoleRepo(store.db);
  const oidcRepo = new OidcRepo(store.db);

  /** The redirect URI registered at the provider: from --public-url, else from a loopback Host only. */
  const redirectUri = (req: FastifyRequest): string | null => {
    if (publicUrl) return new URL(CALLBACK_PATH, publicUrl).toString();
    let host: URL;
    try {
      host = new URL(`${req.protocol}://${req.host}`);
    } catch {
      return null;
    }
    if (!isLoopbackHost(host.hostname)) return null;
    return new URL(CALLBACK_PATH, host).toString();
  };

  // ---- configuration -------------------------------------------------------------------
  const configBody = {
    type: 'object', additionalProperties: false, required: ['issuer', 'client_id', 'allowed_domains'],
    properties: {
      issuer: { type: 'string', minLength: 8, maxLength: 500, description: 'https:// URL of the provider (http:// only on loopback)' },
      client_id: { type: 'string', minLength: 1, maxLength: 500 },
      client_secret: { type: ['string', 'null'], minLength: 1, maxLength: 1000, description: 'write-only; omit to keep the stored one, null to remove it (a public client)' },
      allowed_domains: { type: 'array', minItems: 1, maxItems: DOMAIN_MAX, uniqueItems: true, items: DOMAIN, description: 'email domains that may sign in (exact match)' },
      new_user_role: { type: ['string', 'null'], enum: [...ROLES, null], description: 'role of a console user created at a first SSO sign-in; null: only existing users (matched by email)' },
      enabled: { type: 'boolean' },
    },
  } as const;

  const tenantFor = async (req: FastifyRequest, name: string) => {
    const p = await authenticate(store, req);
    return { p, t: await resolveTenant(store, p, name, 'admin') };
  };

  app.get<{ Params: { tenant: string } }>(
    '/tenants/:tenant/oidc',
    { schema: { ...doc('The tenant\'s OpenID Connect provider for console sign-in (the client secret is never shown, only whether it is set) and the redirect URI to register at the provider; needs the admin role'), params: tenantParams } },
    async (req) => {
      const { t } = await tenantFor(req, req.params.tenant);
      const c = await oidcRepo.getConfig(t.id);
      return { oidc: c ? oidcConfigView(c) : null, redirect_uri: redirectUri(req), start_path: `/api/v1/console/oidc/${t.name}/start` };
    },
  );

  app.put<{ Params: { tenant: string }; Body: OidcConfigBody }>(
    '/tenants/:tenant/oidc',
    { schema: { ...doc('Set the tenant\'s OpenID Connect provider: issuer, client id and secret, allowed email domains, role for new users, enabled; needs the admin role'), params: tenantParams, body: configBody } },
    async (req) => {
      const { p, t } = await tenantFor(req, req.params.tenant);
      const b = req.body;
      const issuer = validateIssuer(b.issuer);
      const { result } = await store.write(t.id, p.actor, async (tx: TenantTx) => {
        const r = new OidcRepo(tx.transaction);
        const before = await r.getConfig(t.id);
        const secret = b.client_secret === undefined ? (before?.client_secret ?? null) : b.client_secret;
        const row = {
          issuer, client_id: b.client_id, client_secret: secret,
          allowed_domains: JSON.stringify(b.allowed_domains.map((d) => d.toLowerCase())),
          new_user_role: b.new_user_role ?? null, enabled: b.enabled === false ? 0 : 1,
          updated_at: nowIso(), updated_by: p.actor,
        };
        await r.putConfig(t.id, row);
        const after = oidcConfigView({ ...row, id: before?.id ?? 0, tenant_id: t.id });
        await tx.audit('oidc.set', 'oidc', t.name, before ? oidcConfigView(before) : null, {
          ...after, ...(b.client_secret !== undefined ? { client_secret_changed: true } : {}),
        });
        return after;
      });
      return { oidc: result, redirect_uri: redirectUri(req), start_path: `/api/v1/console/oidc/${t.name}/start` };
    },
  );

  app.delete<{ Params: { tenant: string } }>(
    '/tenants/:tenant/oidc',
    { schema: { ...doc('Remove the tenant\'s OpenID Connect provider (SSO users stay; they cannot sign in until a provider is set again); needs the admin role'), params: tenantParams } },
    async (req) => {
      const { p, t } = await tenantFor(req, req.params.tenant);
      await store.write(t.id, p.actor, async (tx: TenantTx) => {
        const r = new OidcRepo(tx.transaction);
        const before = await r.getConfig(t.id);
        if (!before) throw notFound('OIDC configuration');
        await r.deleteConfig(t.id);
        await tx.audit('oidc.delete', 'oidc', t.name, oidcConfigView(before), null);
      });
      return { deleted: true };
    },
  );

  // ---- sign-in flow -----------------------------------------------------------------------
  const secure = (req: FastifyRequest): boolean => req.protocol === 'https';
  const wantsJson = (req: FastifyRequest): boolean => !/text\/html/.test(req.headers.accept ?? '');

  /** Browsers go back to the sign-in page with the code; API clients get the JSON error. */
  const answerFailure = (req: FastifyRequest, reply: FastifyReply, f: SsoFailure, tenantName: string | null) => {
    if (wantsJson(req)) throw new ApiError(f.status, f.code, f.message);
    const q = new URLSearchParams({ sso_error: f.code, ...(tenantName ? { tenant: tenantName } : {}) });
    return reply.code(302).header('cache-control', 'no-store').redirect(`/signin?${q.toString()}`);
  };

  const oidcCookie = (reply: FastifyReply, value: string, maxAgeS: number, req: FastifyRequest) => {
    // SameSite=Lax: it must come back on the provider's top-level redirect to the callback.
    const attrs = [`${OIDC_COOKIE}=${value}`, 'Path=/api/v1/console/oidc', 'HttpOnly', 'SameSite=Lax', `Max-Age=${maxAgeS}`];
    if (secure(req)) attrs.push('Secure');
    reply.header('set-cookie', attrs.join('; '));
  };

  /** As a password sign-in: refused while the address (or the tenant's email) is locked out, slowed after failures. */
  const throttle = async (keys: { user?: string; ip: string }): Promise<void> => {
    const u = keys.user ? users.delayFor([keys.user]) : { locked: false, retryAfterS: 0, delayMs: 0 };
    const i = ips.delayFor([keys.ip]);
    if (u.locked || i.locked) throw new SsoFailure('too_many_attempts', 429, `too many failed sign-ins; try again in ${Math.max(u.retryAfterS, i.retryAfterS)} s`);
    const delay = Math.max(u.delayMs, i.delayMs);
    if (delay > 0) await new Promise<void>((r) => setTimeout(r, delay));
  };
  const locked = (keys: { ip: string }): SsoFailure | null => {
    const i = ips.delayFor([keys.ip]);
    return i.locked ? new SsoFailure('too_many_attempts', 429, `too many failed sign-ins; try again in ${i.retryAfterS} s`) : null;
  };

  app.get<{ Params: { tenant: string } }>(
    '/console/oidc/:tenant/start',
    { schema: { ...doc('Start a console sign-in with the tenant\'s OpenID Connect provider: redirects to it (authorization code, PKCE S256, state, nonce). A browser (Accept: text/html) comes back to /signin?sso_error=CODE on failure, other clients get the JSON error', {}, 'none'), params: tenantParams } },
    async (req, reply) => {
      const name = req.params.tenant;
      try {
        const lock = locked({ ip: req.ip });
        if (lock) throw lock;
        const t = await store.getTenantByName(name);
        const c = t ? await oidcRepo.getConfig(t.id) : undefined;
        // An unknown tenant answers as one without SSO.
        if (!t || !c || c.enabled !== 1) throw new SsoFailure('sso_not_configured', 404, `single sign-on is not set up for tenant "${name}"`);
        const redirect = redirectUri(req);
        if (!redirect) throw new SsoFailure('sso_no_redirect_uri', 400, 'the server has no public URL (--public-url / LARKTUN_PUBLIC_URL) and this request did not reach it on a loopback address', t);
        let meta: client.ServerMetadata;
        try {
          meta = await discovery.get(c.issuer);
        } catch (err) {
          log.warn({ tenant: name, issuer: c.issuer, err: err instanceof Error ? err.message : String(err) }, 'console: OIDC discovery failed');
          throw new SsoFailure('sso_provider_unreachable', 502, `the identity provider ${c.issuer} did not answer its discovery document: ${err instanceof Error ? err.message : String(err)}`, t);
        }
        const conf = clientConfig(meta, c);
        const state = client.randomState();
        const nonce = client.randomNonce();
        const verifier = client.randomPKCECodeVerifier();
        const browser = token();
        const now = Date.now();
        await oidcRepo.insertState({
          tenant_id: t.id, state_hash: hashSecret(state), browser_hash: hashSecret(browser), nonce, code_verifier: verifier,
          redirect_uri: redirect, created_at: new Date(now).toISOString(), expires_at: new Date(now + STATE_TTL_MS).toISOString(),
        });
        const url = client.buildAuthorizationUrl(conf, {
          redirect_uri: redirect, scope: 'openid email profile', state, nonce,
          code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
        });
        oidcCookie(reply, browser, Math.floor(STATE_TTL_MS / 1000), req);
        return reply.code(302).header('cache-control', 'no-store').redirect(url.toString());
      } catch (err) {
        if (err instanceof SsoFailure) return answerFailure(req, reply, err, name);
        throw err;
      }
    },
  );

  app.get<{ Querystring: Record<string, string> }>(
    '/console/oidc/callback',
    {
      schema: {
        ...doc('Where the provider sends the browser back: checks the state (single use, 10 min, bound to the browser that started), exchanges the code, verifies the ID token and nonce, matches the verified email to a console user of the tenant (or creates one), starts a console session and redirects to the console; failures go to /signin?sso_error=CODE', {}, 'none'),
        querystring: {
          type: 'object',
          properties: {
            state: { type: 'string', maxLength: 200 }, code: { type: 'string', maxLength: 4000 }, iss: { type: 'string', maxLength: 500 },
            error: { type: 'string', maxLength: 200 }, error_description: { type: 'string', maxLength: 1000 },
          },
        },
      },
    },
    async (req, reply) => {
      const q = req.query;
      let tenant: TenantRow | null = null;
      let email: string | null = null;
      try {
        await throttle({ ip: req.ip });
        if (typeof q.state !== 'string' || q.state === '') throw new SsoFailure('sso_state_invalid', 400, 'the sign-in has no state; start again');
        const st = await oidcRepo.takeState(hashSecret(q.state));
        if (!st || Date.parse(st.expires_at) <= Date.now()) throw new SsoFailure('sso_state_invalid', 400, 'this sign-in is unknown, was already used or has expired; start again');
        tenant = (await store.getTenant(st.tenant_id)) ?? null;
        const browser = cookieValue(req, OIDC_COOKIE);
        if (!browser || !secretMatches(browser, st.browser_hash)) {
          throw new SsoFailure('sso_state_invalid', 400, 'this sign-in was started in another browser; start again', tenant);
        }
        const c = await oidcRepo.getConfig(st.tenant_id);
        if (!tenant || !c || c.enabled !== 1) throw new SsoFailure('sso_not_configured', 404, 'single sign-on is no longer set up for this tenant', tenant);
        if (q.error !== undefined) throw new SsoFailure('sso_denied', 401, `the identity provider refused: ${q.error}${q.error_description ? ` (${q.error_description})` : ''}`, tenant);
        let meta: client.ServerMetadata;
        try {
          meta = await discovery.get(c.issuer);
        } catch (err) {
          throw new SsoFailure('sso_provider_unreachable', 502, `the identity provider ${c.issuer} did not answer: ${err instanceof Error ? err.message : String(err)}`, tenant);
        }
        const conf = clientConfig(meta, c);
        const current = new URL(st.redirect_uri);
        current.search = new URL(req.url, 'http://x').search;
        let claims: Record<string, unknown>;
        let accessToken: string;
        try {
          const tokens = await client.authorizationCodeGrant(conf, current, {
            pkceCodeVerifier: st.code_verifier, expectedState: q.state, expectedNonce: st.nonce, idTokenExpected: true,
          });
          claims = { ...(tokens.claims() ?? {}) };
          accessToken = tokens.access_token;
        } catch (err) {
          throw new SsoFailure('sso_exchange_failed', 401, `the sign-in could not be completed with the identity provider: ${err instanceof Error ? err.message : String(err)}`, tenant);
        }
        if (typeof claims.email !== 'string' && meta.userinfo_endpoint) {
          try {
            const info = await client.fetchUserInfo(conf, accessToken, claims.sub as string);
            claims = { ...info, ...claims, email: info.email, email_verified: info.email_verified };
          } catch (err) {
            throw new SsoFailure('sso_exchange_failed', 401, `the identity provider's userinfo failed: ${err instanceof Error ? err.message : String(err)}`, tenant);
          }
        }
        if (typeof claims.email !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(claims.email)) throw new SsoFailure('sso_no_email', 401, 'the identity provider did not give an email address', tenant);
        email = claims.email.toLowerCase();
        if (claims.email_verified === false || (claims.email_verified !== undefined && claims.email_verified !== true && claims.email_verified !== 'true')) {
          throw new SsoFailure('sso_email_unverified', 401, `the identity provider says ${email} is not verified`, tenant);
        }
        const domain = email.slice(email.lastIndexOf('@') + 1);
        const allowed = JSON.parse(c.allowed_domains) as string[];
        if (!allowed.includes(domain)) throw new SsoFailure('sso_domain_not_allowed', 403, `email addresses of ${domain} may not sign in to this tenant`, tenant);
        const userKey = `user:${tenant.name}/${email}`;
        await throttle({ user: userKey, ip: req.ip });

        let u = await consoleRepo.getUserByEmail(tenant.id, email);
        if (!u) {
          const role = c.new_user_role;
          if (role === null) throw new SsoFailure('sso_no_account', 403, `${email} has no console account in this tenant; ask an admin`, tenant);
          const username = usernameFromEmail(email);
          const t = tenant;
          const { result } = await store.write(t.id, 'sso', async (tx) => {
            const r = new ConsoleRepo(tx.transaction);
            if (await r.getUserByName(t.id, username)) return null;
            const nu = await r.insertUser(t.id, { username, email, source: 'sso', password_hash: '', role, created_at: nowIso(), created_by: 'sso' });
            await tx.audit('console_user.create', 'console_user', nu.id, null, {
              id: nu.id, username: nu.username, email: nu.email, source: nu.source, role: nu.role, created_by: 'sso', issuer: c.issuer,
            });
            return nu;
          });
          if (!result) throw new SsoFailure('sso_username_taken', 409, `a console user named "${username}" already exists without this email; an admin can set its email to link it`, tenant);
          u = result;
        }
        users.succeeded(userKey);
        const s = await startSession(store, { tenantId: tenant.id, userId: u.id });
        await consoleRepo.updateUser(tenant.id, u.id, { last_signin_at: nowIso() });
        await auditOnly(store, tenant.id, `user:${u.username}`, 'console.signin', 'console_user', u.id, { username: u.username, method: 'sso', email, ip: req.ip });
        setSessionCookie(reply, s.token, secure(req));
        // Both cookies: the session, and the spent binding cookie cleared.
        const attrs = [`${OIDC_COOKIE}=`, 'Path=/api/v1/console/oidc', 'HttpOnly', 'SameSite=Lax', 'Max-Age=0', ...(secure(req) ? ['Secure'] : [])];
        reply.header('set-cookie', [reply.getHeader('set-cookie') as string, attrs.join('; ')]);
        return reply.code(302).header('cache-control', 'no-store').redirect(`/${tenant.name}/machines`);
      } catch (err) {
        if (!(err instanceof SsoFailure)) throw err;
        if (err.code !== 'too_many_attempts') {
          ips.failed([req.ip]);
          if (tenant && email) users.failed([`user:${tenant.name}/${email}`]);
          if (tenant) {
            await auditOnly(store, tenant.id, 'anonymous', 'console.signin.failed', 'console_user', email ?? 'sso', { method: 'sso', reason: err.code, email, ip: req.ip });
          }
        }
        log.warn({ tenant: tenant?.name ?? null, email, reason: err.code, ip: req.ip }, 'console: failed SSO sign-in');
        return answerFailure(req, reply, err, tenant?.name ?? null);
      }
    },
  );

  return { discovery };
}
