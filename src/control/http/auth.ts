// Bearer-key authentication and tenant resolution for the Admin API.
import type { FastifyRequest } from 'fastify';
import type { Store } from '../store/repo.js';
import type { TenantRow } from '../store/schema.js';
import { nowIso } from '../store/repo.js';
import { parseSecret, secretMatches } from '../secrets.js';
import { ApiError, forbidden, notFound, unauthorized } from '../errors.js';
import type { FailureLimiter } from './auth-limiter.js';
import { sessionPrincipal } from '../console/sessions.js';

export type Role = 'admin' | 'operator' | 'auditor';
export const ROLES: readonly Role[] = ['admin', 'operator', 'auditor'];

export type Principal =
  | { kind: 'operator'; actor: string }
  // A tenant-scoped principal: an API key, or a console user's session
  // (keyId 0, sessionId set); one kind, so every tenant check covers both.
  | { kind: 'apikey'; actor: string; tenantId: number; role: Role; keyId: number; sessionId?: number };

/** What a request wants to do inside a tenant. */
export type Permission =
  | 'read' // users, nodes, routes, policy, auth keys
  | 'read-keys' // API keys
  | 'read-audit'
  | 'nodes' // change nodes and routes
  | 'admin'; // users, auth keys, API keys, policy

const GRANTS: Record<Role, ReadonlySet<Permission>> = {
  admin: new Set(['read', 'read-keys', 'read-audit', 'nodes', 'admin']),
  operator: new Set(['read', 'nodes']),
  auditor: new Set(['read', 'read-keys', 'read-audit']),
};

export function bearer(req: FastifyRequest): string | null {
  const h = req.headers.authorization;
  if (!h) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  return m ? (m[1] as string) : null;
}

/** api_keys.last_used_at is written at most this often per key (ms): a request does not write each time. */
export const API_KEY_TOUCH_MS = 60_000;

/** What a failed key attempt looked like, for counting and (rate-bounded) logging. */
export interface AuthFailure {
  ip: string;
  /** `<kind>:<prefix>` of a well-formed key, else null. */
  key: string | null;
  /** invalid: wrong or unknown key; expired: a right key past its expiry; limited: refused with 429. */
  result: 'invalid' | 'expired' | 'limited';
  /** This failure started a block of the client address or the key prefix. */
  blocked: boolean;
}

/** Slows repeated failures per client address and key prefix (see auth-limiter.ts). */
export interface AuthGuard {
  limiter: FailureLimiter;
  onFailure(f: AuthFailure): void;
  onError(err: unknown): void;
}

const guards = new WeakMap<Store, AuthGuard>();

/** Every `authenticate` against this store counts and limits failed key attempts through `guard`. */
export function guardAuthentication(store: Store, guard: AuthGuard): void {
  guards.set(store, guard);
}

function tooManyAttempts(ms: number): ApiError {
  const s = Math.max(1, Math.ceil(ms / 1000));
  return new ApiError(429, 'too_many_attempts', `too many failed API key attempts: retry in ${s} s`, { retry_after_seconds: s });
}

export async function authenticate(store: Store, req: FastifyRequest): Promise<Principal> {
  const token = bearer(req);
  if (!token) {
    // No bearer key: a console session cookie (CSRF-checked on state changes).
    const session = await sessionPrincipal(store, req);
    if (session) return session;
  }
  if (!token) throw unauthorized('missing credentials: send "Authorization: Bearer <API key>"');
  const guard = guards.get(store);
  const ip = `ip:${req.ip}`;
  const parsed = parseSecret(token);
  const keySubject = parsed ? `key:${parsed.kind}:${parsed.prefix}` : null;
  if (guard) {
    // a client address that kept failing is refused before any key check
    const wait = guard.limiter.blockedFor(ip);
    if (wait > 0) {
      guard.onFailure({ ip: req.ip, key: keySubject, result: 'limited', blocked: false });
      throw tooManyAttempts(wait);
    }
  }
  // a wrong secret for a prefix that exists: that key is being guessed
  let knownPrefix = false;
  if (parsed?.kind === 'lkop') {
    const row = await store.findOperatorKey(parsed.prefix);
    if (row && secretMatches(token, row.hash)) return { kind: 'operator', actor: `operator:${row.prefix}` };
    knownPrefix = row !== undefined;
  } else if (parsed?.kind === 'lkapi') {
    const row = await store.findApiKey(parsed.prefix);
    knownPrefix = row !== undefined;
    if (row && secretMatches(token, row.hash)) {
      if (row.expires_at !== null && row.expires_at <= nowIso()) {
        guard?.onFailure({ ip: req.ip, key: keySubject, result: 'expired', blocked: false });
        throw unauthorized('this API key has expired');
      }
      if (row.last_used_at === null || Date.parse(row.last_used_at) <= Date.now() - API_KEY_TOUCH_MS) {
        await store.tenant(row.tenant_id).touchApiKey(row.id).catch((err: unknown) => guard?.onError(err));
      }
      return { kind: 'apikey', actor: `apikey:${row.prefix}`, tenantId: row.tenant_id, role: row.role as Role, keyId: row.id };
    }
  }
  if (guard) {
    // A key prefix under attack answers 429 to wrong secrets only: a valid
    // key returned above, so another client's real key is never slowed.
    // Unknown prefixes are not remembered (nothing to protect; no churn).
    const keyWait = keySubject && knownPrefix ? guard.limiter.blockedFor(keySubject) : 0;
    let blocked = guard.limiter.fail(ip);
    if (keySubject && knownPrefix) blocked = guard.limiter.fail(keySubject) || blocked;
    const wait = Math.max(keyWait, guard.limiter.blockedFor(ip));
    guard.onFailure({ ip: req.ip, key: keySubject, result: wait > 0 ? 'limited' : 'invalid', blocked });
    if (wait > 0) throw tooManyAttempts(wait);
  }
  throw unauthorized('invalid API key');
}

export function requireOperator(p: Principal): void {
  if (p.kind !== 'operator') throw forbidden('this endpoint needs the operator key');
}

/**
 * The tenant named in the URL, if this principal may see it. A tenant key naming
 * any other tenant gets exactly the answer a missing tenant gets.
 */
export async function resolveTenant(store: Store, p: Principal, name: string, need: Permission): Promise<TenantRow> {
  const t = await store.getTenantByName(name);
  if (!t) throw notFound('tenant');
  if (p.kind === 'apikey') {
    if (t.id !== p.tenantId) throw notFound('tenant');
    if (!GRANTS[p.role].has(need)) throw forbidden(`the ${p.role} role may not do this (needs ${need})`);
  }
  return t;
}
