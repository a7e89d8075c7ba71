// Console sessions: an HttpOnly, SameSite=Strict cookie carrying a random token
// (only its SHA-256 is stored, in console_sessions), plus a CSRF token the
// client holds in memory and sends back as X-CSRF-Token on every state change.
// A session resolves to the same Principal shape an API key does, so every
// Admin API check (tenant isolation, roles) applies to it unchanged.
import { createHmac, randomBytes } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Store } from '../store/repo.js';
import { nowIso } from '../store/repo.js';
import type { ConsoleSessionRow } from '../store/schema.js';
import { ApiError, unauthorized } from '../errors.js';
import { hashSecret, secretMatches } from '../secrets.js';
import type { Principal, Role } from '../http/auth.js';
import { ConsoleRepo } from './repo.js';

export const SESSION_COOKIE = 'larktun_session';
export const CSRF_HEADER = 'x-csrf-token';
/** A session ends this long after sign-in, whatever happens. */
export const SESSION_MAX_MS = 12 * 3600_000;
/** ... or after this long without a request. */
export const SESSION_IDLE_MS = 60 * 60_000;
/** Sessions kept per user (older ones end when a new one starts). */
export const SESSIONS_PER_USER = 20;

export function cookieValue(req: FastifyRequest, name: string): string | null {
  const h = req.headers.cookie;
  if (!h) return null;
  for (const part of h.split(';')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    if (part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return null;
}

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

export interface SessionInfo {
  row: ConsoleSessionRow;
  principal: Principal;
  /** Set for a tenant user's session. */
  user: { id: number; username: string; role: Role; tenantId: number } | null;
}

/**
 * The session the request's cookie names, or null without a cookie. A cookie
 * naming no live session is a 401 (so the console shows its sign-in page). On
 * a state change (any method but GET/HEAD/OPTIONS) the CSRF header must match.
 */
export async function sessionFromRequest(store: Store, req: FastifyRequest, opts: { csrf: boolean } = { csrf: true }): Promise<SessionInfo | null> {
  const token = cookieValue(req, SESSION_COOKIE);
  if (token === null || token === '') return null;
  if (!/^[A-Za-z0-9_-]{43}$/.test(token)) throw unauthorized('the console session is not valid; sign in again');
  const repo = new ConsoleRepo(store.db);
  const row = await repo.sessionByToken(hashSecret(token));
  const now = Date.now();
  if (!row || Date.parse(row.expires_at) <= now || Date.parse(row.last_seen_at) + SESSION_IDLE_MS <= now) {
    if (row) await repo.deleteSession(row.id);
    throw unauthorized('the console session has ended; sign in again');
  }
  if (opts.csrf && !SAFE.has(req.method)) {
    const sent = req.headers[CSRF_HEADER];
    if (typeof sent !== 'string' || !secretMatches(sent, row.csrf_hash)) {
      throw new ApiError(403, 'csrf_token_invalid', `a change made with a console session needs the session's CSRF token in the ${CSRF_HEADER} header`);
    }
  }
  if (now - Date.parse(row.last_seen_at) > 60_000) await repo.touchSession(row.id, new Date(now).toISOString());
  if (row.operator_prefix !== null) {
    return { row, principal: { kind: 'operator', actor: `operator:${row.operator_prefix}` }, user: null };
  }
  if (row.tenant_id === null || row.user_id === null) throw unauthorized('the console session is not valid; sign in again');
  const u = await repo.getUser(row.tenant_id, row.user_id);
  if (!u) {
    await repo.deleteSession(row.id);
    throw unauthorized('the console user of this session no longer exists');
  }
  const role = u.role as Role;
  return {
    row,
    principal: { kind: 'apikey', actor: `user:${u.username}`, tenantId: u.tenant_id, role, keyId: 0, sessionId: row.id },
    user: { id: u.id, username: u.username, role, tenantId: u.tenant_id },
  };
}

/** For http/auth.ts: the principal of the request's console session, or null. */
export async function sessionPrincipal(store: Store, req: FastifyRequest): Promise<Principal | null> {
  return (await sessionFromRequest(store, req))?.principal ?? null;
}

export interface NewSession {
  token: string;
  csrf: string;
}

export async function startSession(
  store: Store, who: { tenantId: number; userId: number } | { operatorPrefix: string },
): Promise<NewSession> {
  const repo = new ConsoleRepo(store.db);
  const token = randomBytes(32).toString('base64url');
  const csrf = csrfFor(token);
  const now = new Date();
  await repo.deleteExpired(now.toISOString(), new Date(now.getTime() - SESSION_IDLE_MS).toISOString());
  await repo.insertSession({
    token_hash: hashSecret(token),
    csrf_hash: hashSecret(csrf),
    tenant_id: 'tenantId' in who ? who.tenantId : null,
    user_id: 'userId' in who ? who.userId : null,
    operator_prefix: 'operatorPrefix' in who ? who.operatorPrefix : null,
    created_at: now.toISOString(),
    last_seen_at: now.toISOString(),
    expires_at: new Date(now.getTime() + SESSION_MAX_MS).toISOString(),
  });
  await repo.trimSessions('userId' in who ? { userId: who.userId } : { operatorPrefix: who.operatorPrefix }, SESSIONS_PER_USER);
  return { token, csrf };
}

/**
 * The CSRF token of a session, derived from its (secret, HttpOnly) token, so a
 * reloaded page gets the same one from GET /console/session without the
 * server keeping it in clear; only its hash is stored and compared.
 */
export function csrfFor(token: string): string {
  return createHmac('sha256', token).update('larktun-console-csrf').digest('base64url');
}

/** The CSRF token of the request's own session cookie. */
export function csrfOfRequest(req: FastifyRequest): string | null {
  const token = cookieValue(req, SESSION_COOKIE);
  return token ? csrfFor(token) : null;
}

export function setSessionCookie(reply: FastifyReply, token: string, secure: boolean): void {
  const attrs = [`${SESSION_COOKIE}=${token}`, 'Path=/', 'HttpOnly', 'SameSite=Strict', `Max-Age=${Math.floor(SESSION_MAX_MS / 1000)}`];
  if (secure) attrs.push('Secure');
  reply.header('set-cookie', attrs.join('; '));
}

export function clearSessionCookie(reply: FastifyReply, secure: boolean): void {
  const attrs = [`${SESSION_COOKIE}=`, 'Path=/', 'HttpOnly', 'SameSite=Strict', 'Max-Age=0'];
  if (secure) attrs.push('Secure');
  reply.header('set-cookie', attrs.join('; '));
}

// ---- failed sign-ins -------------------------------------------------------------

interface Failures {
  count: number;
  last: number;
}

export interface LimiterOptions {
  /** Keys remembered at most (the oldest forgotten first). */
  maxKeys: number;
  /** A key is forgotten this long after its last failure. */
  windowMs: number;
  /** Failures of a key that cost no delay (a shared address's typos). */
  freeFailures: number;
  /** From this many failures on, the key is refused (429) until the window passes. */
  maxFailures: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

/**
 * Slows repeated failed sign-ins: once a key (a tenant's username, or a client
 * address) has more than `freeFailures` failures, each attempt waits
 * `baseDelayMs` doubling per further failure up to `maxDelayMs` before its
 * password is checked; from `maxFailures` on the key is refused until
 * `windowMs` after its last failure. Bounded to `maxKeys` keys.
 */
export class SigninLimiter {
  private readonly map = new Map<string, Failures>();
  readonly o: LimiterOptions;
  constructor(opts: Partial<LimiterOptions> = {}) {
    this.o = { maxKeys: 10_000, windowMs: 15 * 60_000, freeFailures: 0, maxFailures: 20, baseDelayMs: 250, maxDelayMs: 4000, ...opts };
  }

  private get(key: string, now: number): Failures | null {
    const f = this.map.get(key);
    if (!f) return null;
    if (now - f.last > this.o.windowMs) {
      this.map.delete(key);
      return null;
    }
    return f;
  }

  /** The delay before checking, or null when the key is locked out. */
  delayFor(keys: string[], now = Date.now()): { delayMs: number; locked: boolean; retryAfterS: number } {
    let worst = 0;
    let locked = false;
    let retry = 0;
    for (const k of keys) {
      const f = this.get(k, now);
      if (!f) continue;
      worst = Math.max(worst, f.count - this.o.freeFailures);
      if (f.count >= this.o.maxFailures) {
        locked = true;
        retry = Math.max(retry, Math.ceil((f.last + this.o.windowMs - now) / 1000));
      }
    }
    const delayMs = worst <= 0 ? 0 : Math.min(this.o.maxDelayMs, this.o.baseDelayMs * 2 ** (worst - 1));
    return { delayMs, locked, retryAfterS: retry };
  }

  failed(keys: string[], now = Date.now()): void {
    for (const k of keys) {
      const f = this.get(k, now) ?? { count: 0, last: now };
      f.count++;
      f.last = now;
      this.map.delete(k);
      this.map.set(k, f);
      while (this.map.size > this.o.maxKeys) this.map.delete(this.map.keys().next().value as string);
    }
  }

  succeeded(key: string): void {
    this.map.delete(key);
  }

  get size(): number {
    return this.map.size;
  }
}
