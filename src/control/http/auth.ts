// Bearer-key authentication and tenant resolution for the Admin API.
import type { FastifyRequest } from 'fastify';
import type { Store } from '../store/repo.js';
import type { TenantRow } from '../store/schema.js';
import { nowIso } from '../store/repo.js';
import { parseSecret, secretMatches } from '../secrets.js';
import { forbidden, notFound, unauthorized } from '../errors.js';
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

export async function authenticate(store: Store, req: FastifyRequest): Promise<Principal> {
  const token = bearer(req);
  if (!token) {
    // No bearer key: a console session cookie (CSRF-checked on state changes).
    const session = await sessionPrincipal(store, req);
    if (session) return session;
  }
  if (!token) throw unauthorized('missing credentials: send "Authorization: Bearer <API key>"');
  const parsed = parseSecret(token);
  if (parsed?.kind === 'lkop') {
    const row = await store.findOperatorKey(parsed.prefix);
    if (row && secretMatches(token, row.hash)) return { kind: 'operator', actor: `operator:${row.prefix}` };
  } else if (parsed?.kind === 'lkapi') {
    const row = await store.findApiKey(parsed.prefix);
    if (row && secretMatches(token, row.hash)) {
      if (row.expires_at !== null && row.expires_at <= nowIso()) throw unauthorized('this API key has expired');
      return { kind: 'apikey', actor: `apikey:${row.prefix}`, tenantId: row.tenant_id, role: row.role as Role, keyId: row.id };
    }
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
