// Table shapes of the control server's database. The same schema is used on
// SQLite and PostgreSQL: timestamps are ISO-8601 text (UTC), booleans are 0/1
// integers and lists/objects are JSON text, so both backends read back alike.
import type { Generated, Insertable, Selectable, Updateable } from 'kysely';

export interface TenantsTable {
  id: Generated<number>;
  name: string;
  pool4: string;
  pool6: string | null;
  dns_base: string;
  max_nodes: number;
  /** Bumped by every change; doubles as the tenant's network-map version. */
  generation: number;
  created_at: string;
  updated_at: string;
}

export interface OperatorKeysTable {
  id: Generated<number>;
  prefix: string;
  hash: string;
  created_at: string;
}

export interface ApiKeysTable {
  id: Generated<number>;
  tenant_id: number;
  prefix: string;
  hash: string;
  role: string;
  description: string;
  expires_at: string | null;
  created_at: string;
  last_used_at: string | null;
}

export interface UsersTable {
  id: Generated<number>;
  tenant_id: number;
  name: string;
  email: string | null;
  display_name: string | null;
  created_at: string;
}

export interface AuthKeysTable {
  id: Generated<number>;
  tenant_id: number;
  prefix: string;
  hash: string;
  user_id: number | null;
  /** JSON string[] */
  tags: string;
  reusable: number;
  ephemeral: number;
  expires_at: string | null;
  used_count: number;
  description: string;
  created_at: string;
}

export interface NodesTable {
  id: Generated<number>;
  tenant_id: number;
  name: string;
  hostname: string;
  node_key: string;
  token_prefix: string;
  token_hash: string;
  user_id: number | null;
  /** JSON string[] */
  tags: string;
  ipv4: string | null;
  ipv6: string | null;
  /** JSON string[] (canonical prefixes) */
  announced_routes: string;
  /** JSON string[] (canonical prefixes) */
  approved_routes: string;
  exit_node_wish: number;
  /** JSON string[] of host:port */
  endpoints: string;
  /** JSON object: everything else the node reported */
  hostinfo: string;
  online: number;
  /** 1 while the node's relays report it unseen (> 3 s): offline though its stream is open. */
  unseen: Generated<number>;
  last_seen: string | null;
  /** Presence lease: while online, the replica streaming the node renews this; once it passes, the node is offline. */
  lease_until: Generated<string | null>;
  ephemeral: number;
  auth_key_id: number | null;
  expires_at: string | null;
  created_at: string;
  updated_at: string;
  /** When the node last proved possession of node_key (null: registered before keys were proven). */
  key_proven_at: Generated<string | null>;
}

/** A nonce for a node-key proof: single-use, short-lived, bound to one auth key (registration) or one node (a new key proven with the node's token). */
export interface RegisterNoncesTable {
  /** 32 random bytes, base64url */
  nonce: string;
  tenant_id: number;
  auth_key_id: number | null;
  node_id: number | null;
  expires_at: string;
  created_at: string;
}

export interface PoliciesTable {
  id: Generated<number>;
  tenant_id: number;
  version: number;
  text: string;
  created_at: string;
  created_by: string;
}

export interface AuditTable {
  id: Generated<number>;
  tenant_id: number;
  seq: number;
  ts: string;
  actor: string;
  action: string;
  object_type: string;
  object_id: string;
  /** JSON or null */
  before: string | null;
  /** JSON or null */
  after: string | null;
  prev_hash: string;
  hash: string;
}

/** A relay (a larktund hub). tenant_id null: shared by every tenant. */
export interface RelaysTable {
  id: Generated<number>;
  name: string;
  /** JSON string[] of host:port (public UDP endpoints) */
  endpoints: string;
  tenant_id: number | null;
  /** The relay's own id on each of its links (never a node's link id). */
  self_id: number;
  token_prefix: string;
  token_hash: string;
  /** Bumped by every change to the relay or its links. */
  generation: number;
  created_at: string;
  updated_at: string;
  /** When the relay last sent a health report (its verdicts lapse when this gets old). */
  reported_at: Generated<string | null>;
  /** 1 while the relay reports (within the health TTL); 0 or null when quiet or never heard. Nodes home on a live relay. */
  live: Generated<number | null>;
}

/** One (node, relay) link: a relay-local link id and its pre-shared key. */
export interface RelayLinksTable {
  id: Generated<number>;
  tenant_id: number;
  relay_id: number;
  node_id: number;
  /** 1..65535, unique per relay (the node's key_id on the link). */
  link_id: number;
  /** 32 bytes, hex */
  psk: string;
  /** The key before the last rotation, valid until prev_psk_until. */
  prev_psk: string | null;
  prev_psk_until: string | null;
  rotated_at: string;
  created_at: string;
  /** When the relay last saw the node on this link (from its health reports; persisted coarsely). */
  last_seen_at: string | null;
  rtt_ms: number | null;
  /** The relay's verdict in its last report: 1 unseen, 0 seen, null none (or lapsed). */
  reported_unseen: Generated<number | null>;
}

/** The current HA primary of each routed prefix of a tenant (shared by every replica). */
export interface PrimariesTable {
  id: Generated<number>;
  tenant_id: number;
  prefix: string;
  node_id: number;
  elected_at: string;
}

export interface Database {
  tenants: TenantsTable;
  operator_keys: OperatorKeysTable;
  api_keys: ApiKeysTable;
  users: UsersTable;
  auth_keys: AuthKeysTable;
  nodes: NodesTable;
  policies: PoliciesTable;
  audit: AuditTable;
  relays: RelaysTable;
  relay_links: RelayLinksTable;
  primaries: PrimariesTable;
  register_nonces: RegisterNoncesTable;
  console_users: ConsoleUsersTable;
  console_sessions: ConsoleSessionsTable;
  console_oidc: ConsoleOidcTable;
  console_oidc_states: ConsoleOidcStatesTable;
  node_logins: NodeLoginsTable;
}

/** Tables whose rows belong to a tenant (everything but tenants and operator keys). */
export type TenantTable = 'api_keys' | 'users' | 'auth_keys' | 'nodes' | 'policies' | 'audit' | 'relay_links' | 'primaries';

export type TenantRow = Selectable<TenantsTable>;
export type ApiKeyRow = Selectable<ApiKeysTable>;
export type UserRow = Selectable<UsersTable>;
export type AuthKeyRow = Selectable<AuthKeysTable>;
export type NodeRow = Selectable<NodesTable>;
export type PolicyRow = Selectable<PoliciesTable>;
export type AuditRow = Selectable<AuditTable>;
export type NewNode = Insertable<NodesTable>;
export type NodeUpdate = Updateable<NodesTable>;
export type RelayRow = Selectable<RelaysTable>;
export type RelayLinkRow = Selectable<RelayLinksTable>;

// ---- web console (migration 0009_console) ----------------------------------------

/** A person who signs in to the web console of one tenant (username + password). */
export interface ConsoleUsersTable {
  id: Generated<number>;
  tenant_id: number;
  username: string;
  /** "scrypt$N$r$p$salt$hash" (salt and hash base64url). */
  password_hash: string;
  /** admin | operator | auditor, as API-key roles. */
  role: string;
  created_at: string;
  created_by: string;
  last_signin_at: string | null;
  /** Lower-case email (0010_console_oidc), unique in the tenant; SSO users are matched by it. */
  email: string | null;
  /** "password" or "sso" (an SSO user has no password: password_hash is ''). */
  source: Generated<string>;
}

/** A console session: the cookie carries the token; only its SHA-256 is stored. */
export interface ConsoleSessionsTable {
  id: Generated<number>;
  token_hash: string;
  /** SHA-256 of the CSRF token the client sends back in X-CSRF-Token. */
  csrf_hash: string;
  /** null for an operator session. */
  tenant_id: number | null;
  /** null for an operator session. */
  user_id: number | null;
  /** The operator key's prefix for an operator session, else null. */
  operator_prefix: string | null;
  created_at: string;
  last_seen_at: string;
  expires_at: string;
}

export type ConsoleUserRow = Selectable<ConsoleUsersTable>;
export type ConsoleSessionRow = Selectable<ConsoleSessionsTable>;

// ---- console single sign-on (migration 0010_console_oidc) --------------------------

/** A tenant's OpenID Connect provider for console sign-in. */
export interface ConsoleOidcTable {
  id: Generated<number>;
  tenant_id: number;
  issuer: string;
  client_id: string;
  /** Sent to the provider's token endpoint; never returned by the API. null: a public client. */
  client_secret: string | null;
  /** JSON array of lower-case email domains. */
  allowed_domains: string;
  /** Role of console users created at their first SSO sign-in; null: only existing users. */
  new_user_role: string | null;
  enabled: number;
  updated_at: string;
  updated_by: string;
}

/** A sign-in between /start and the callback: single use, expires after ~10 min. */
export interface ConsoleOidcStatesTable {
  id: Generated<number>;
  tenant_id: number;
  /** SHA-256 of the state parameter. */
  state_hash: string;
  /** SHA-256 of the browser-binding cookie set by /start. */
  browser_hash: string;
  nonce: string;
  code_verifier: string;
  redirect_uri: string;
  created_at: string;
  expires_at: string;
}

// ---- interactive node login (migration 0011_node_login) ---------------------------

/** A pending (or decided) interactive node login: `larktun up` without an auth key. */
export interface NodeLoginsTable {
  /** 32 random bytes, base64url: the id in the approval URL. */
  login_id: string;
  tenant_id: number;
  /** SHA-256 (hex) of the poll secret only the node holds. */
  poll_hash: string;
  node_key: string;
  /** The proof the node gave at start: the nonce and its Ed25519 signature. */
  nonce: string;
  signature: string;
  hostname: string;
  /** JSON string[]: the tags the node asks for. */
  tags: string;
  /** JSON: routes, exit_node, endpoints, os, version, use_exit_node as the node sent them. */
  hostinfo: string;
  source_addr: string;
  /** pending | approved | rejected | expired | used */
  state: string;
  /** Actor that approved or rejected. */
  approved_by: string | null;
  decided_at: string | null;
  /** The node made on approval. */
  node_id: number | null;
  created_at: string;
  expires_at: string;
}

export type ConsoleOidcRow = Selectable<ConsoleOidcTable>;
export type ConsoleOidcStateRow = Selectable<ConsoleOidcStatesTable>;
export type NodeLoginRow = Selectable<NodeLoginsTable>;
