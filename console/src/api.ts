// The console's only way to the server: the Admin API under /api/v1, with the
// session cookie (HttpOnly, sent by the browser) and the CSRF token, which is
// held in memory only (never in storage or a URL).
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly details: unknown) {
    super(message);
  }
}

let csrfToken: string | null = null;
let onUnauthorized: (() => void) | null = null;

export function setCsrf(token: string | null): void {
  csrfToken = token;
}
export function setUnauthorizedHandler(fn: () => void): void {
  onUnauthorized = fn;
}

export async function api<T>(method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['x-csrf-token'] = csrfToken;
  const res = await fetch(`/api/v1${path}`, {
    method,
    headers,
    credentials: 'same-origin',
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const e = (data as { error?: { code?: string; message?: string; details?: unknown } } | null)?.error;
    const err = new ApiError(res.status, e?.code ?? 'http_error', e?.message ?? `${res.status} ${res.statusText}`, e?.details ?? null);
    if (res.status === 401 && !path.startsWith('/console/session')) onUnauthorized?.();
    throw err;
  }
  return data as T;
}

export const enc = encodeURIComponent;

// ---- shapes the pages use (as the Admin API returns them) ----------------------------

export interface Session {
  kind: 'user' | 'operator';
  actor: string;
  tenant: string | null;
  username: string | null;
  role: 'admin' | 'operator' | 'auditor' | null;
  csrf: string;
}

export interface NodeInfo {
  id: number;
  name: string;
  hostname: string;
  user: string | null;
  tags: string[];
  ipv4: string | null;
  ipv6: string | null;
  online: boolean;
  last_seen: string | null;
  relay_rtt_ms: number | null;
  announced_routes: string[];
  approved_routes: string[];
  primary_routes: string[];
  exit_node: boolean;
  hostinfo: Record<string, unknown>;
  expires_at: string | null;
  expired: boolean;
  created_at: string;
}

export interface RouteRouter {
  node_id: number;
  node: string;
  online: boolean;
  advertised: boolean;
  approved: boolean;
  state: 'primary' | 'standby' | 'not_approved' | 'offline' | 'not_advertised' | 'expired';
  relay_rtt_ms: number | null;
  last_seen: string | null;
}
export interface RouteEntry {
  prefix: string;
  primary: string | null;
  primary_node_id: number | null;
  primary_since: string | null;
  routers: RouteRouter[];
}
export interface ExitNodeEntry {
  node_id: number;
  node: string;
  online: boolean;
  advertised: string[];
  approved: boolean;
  relay_rtt_ms: number | null;
  last_seen: string | null;
}

export interface AuditEntry {
  seq: number;
  ts: string;
  actor: string;
  action: string;
  object_type: string;
  object_id: string;
  before: unknown;
  after: unknown;
}

export interface ConsoleUser {
  id: number;
  username: string;
  email: string | null;
  /** "password" or "sso" */
  source: string;
  role: string;
  created_at: string;
  created_by: string;
  last_signin_at: string | null;
}

export interface AuthKey {
  id: number;
  prefix: string;
  user: string | null;
  tags: string[];
  reusable: boolean;
  ephemeral: boolean;
  expires_at: string | null;
  used_count: number;
  usable: boolean;
  description: string;
  created_at: string;
}

export interface ApiKey {
  id: number;
  prefix: string;
  role: string;
  description: string;
  expires_at: string | null;
  created_at: string;
  last_used_at: string | null;
}

export interface TenantInfo {
  name: string;
  pool4: string;
  pool6: string | null;
  dns_base: string;
  max_nodes: number;
  created_at: string;
}

/** "policy.hujson:3:34: message" → {line, col, message}. */
export function parsePolicyError(s: string): { line: number; col: number; message: string } {
  const m = /^[^:]*:(\d+):(\d+):\s*(.*)$/s.exec(s);
  return m ? { line: Number(m[1]), col: Number(m[2]), message: m[3] as string } : { line: 1, col: 1, message: s };
}

// ---- pages: paged lists, tenants with counts, relays ---------------------------------

/** GET /tenants/{t}/nodes?limit=…: one page of the matches, their total, and the tenant's counts. */
export interface NodePage {
  nodes: NodeInfo[];
  total: number;
  counts: { all: number; online: number; offline: number };
}

export interface TenantWithCounts extends TenantInfo {
  nodes: number;
  online_nodes: number;
}

/** A relay as the operator sees it (GET /relays): with each tenant's links on it. */
export interface RelayInfo {
  id: number;
  name: string;
  endpoints: string[];
  tenant: string | null;
  live: boolean;
  last_report: string | null;
  created_at: string;
  tenants: { tenant: string | null; links: number; last_seen: string | null }[];
}

/** A relay serving a tenant (GET /tenants/{t}/relays): only that tenant's links. */
export interface TenantRelayInfo {
  id: number;
  name: string;
  endpoints: string[];
  tenant: string | null;
  dedicated: boolean;
  live: boolean;
  last_report: string | null;
  links: number;
  last_seen: string | null;
}

// ---- single sign-on (OpenID Connect) ------------------------------------------------------

export interface OidcConfig {
  issuer: string;
  client_id: string;
  client_secret_set: boolean;
  allowed_domains: string[];
  new_user_role: 'admin' | 'operator' | 'auditor' | null;
  enabled: boolean;
  updated_at: string;
  updated_by: string;
}

export interface OidcSettings {
  oidc: OidcConfig | null;
  /** The redirect URI to register at the provider (null: the server needs --public-url). */
  redirect_uri: string | null;
  start_path: string;
}

// ---- interactive node login (larktun up without an auth key) ---------------------------

export interface NodeLogin {
  login_id: string;
  tenant: string;
  state: 'pending' | 'approved' | 'rejected' | 'expired' | 'used';
  machine_name: string;
  requested_tags: string[];
  node_key: string;
  key_fingerprint: string;
  source_addr: string;
  os: string | null;
  version: string | null;
  routes: string[];
  created_at: string;
  expires_at: string;
  decided_by: string | null;
  decided_at: string | null;
  node: { id: number; name: string } | null;
}
