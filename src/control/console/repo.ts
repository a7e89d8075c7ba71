// Console rows: users and sessions. Every query on console_users names its
// tenant explicitly (the same rule TenantRepo enforces for the other tables);
// sessions are looked up only by the SHA-256 of their token.
import { sql, type Kysely } from 'kysely';
import type { ConsoleOidcRow, ConsoleOidcStateRow, ConsoleSessionRow, ConsoleUserRow, Database } from '../store/schema.js';
import { TenantRepo, type Store } from '../store/repo.js';

type Conn = Kysely<Database>;

export class ConsoleRepo {
  constructor(private readonly db: Conn) {}

  listUsers(tenantId: number): Promise<ConsoleUserRow[]> {
    return this.db.selectFrom('console_users').selectAll().where('tenant_id', '=', tenantId).orderBy('username').execute();
  }
  getUser(tenantId: number, id: number): Promise<ConsoleUserRow | undefined> {
    return this.db.selectFrom('console_users').selectAll().where('tenant_id', '=', tenantId).where('id', '=', id).executeTakeFirst();
  }
  getUserByName(tenantId: number, username: string): Promise<ConsoleUserRow | undefined> {
    return this.db.selectFrom('console_users').selectAll().where('tenant_id', '=', tenantId).where('username', '=', username).executeTakeFirst();
  }
  /** `email` lower-case. */
  getUserByEmail(tenantId: number, email: string): Promise<ConsoleUserRow | undefined> {
    return this.db.selectFrom('console_users').selectAll().where('tenant_id', '=', tenantId).where('email', '=', email).executeTakeFirst();
  }
  async insertUser(
    tenantId: number,
    v: { username: string; password_hash: string; role: string; created_at: string; created_by: string; email?: string | null; source?: 'password' | 'sso' },
  ): Promise<ConsoleUserRow> {
    return this.db.insertInto('console_users').values({ email: null, ...v, tenant_id: tenantId, last_signin_at: null }).returningAll().executeTakeFirstOrThrow();
  }
  async updateUser(tenantId: number, id: number, patch: { password_hash?: string; role?: string; last_signin_at?: string; email?: string | null }): Promise<void> {
    await this.db.updateTable('console_users').set(patch).where('tenant_id', '=', tenantId).where('id', '=', id).execute();
  }
  async deleteUser(tenantId: number, id: number): Promise<boolean> {
    const r = await this.db.deleteFrom('console_users').where('tenant_id', '=', tenantId).where('id', '=', id).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  // ---- sessions ----------------------------------------------------------------
  async insertSession(v: Omit<ConsoleSessionRow, 'id'>): Promise<void> {
    await this.db.insertInto('console_sessions').values(v).execute();
  }
  sessionByToken(tokenHash: string): Promise<ConsoleSessionRow | undefined> {
    return this.db.selectFrom('console_sessions').selectAll().where('token_hash', '=', tokenHash).executeTakeFirst();
  }
  async touchSession(id: number, at: string): Promise<void> {
    await this.db.updateTable('console_sessions').set({ last_seen_at: at }).where('id', '=', id).execute();
  }
  async deleteSession(id: number): Promise<void> {
    await this.db.deleteFrom('console_sessions').where('id', '=', id).execute();
  }
  async deleteUserSessions(userId: number): Promise<void> {
    await this.db.deleteFrom('console_sessions').where('user_id', '=', userId).execute();
  }
  async deleteExpired(now: string, idleBefore: string): Promise<void> {
    await this.db.deleteFrom('console_sessions').where((eb) => eb.or([eb('expires_at', '<=', now), eb('last_seen_at', '<', idleBefore)])).execute();
  }
  /** Keeps a user's (or the operator's) newest `keep` sessions. */
  async trimSessions(owner: { userId: number } | { operatorPrefix: string }, keep: number): Promise<void> {
    let q = this.db.selectFrom('console_sessions').select('id').orderBy('id', 'desc').offset(keep).limit(1000);
    q = 'userId' in owner ? q.where('user_id', '=', owner.userId) : q.where('operator_prefix', '=', owner.operatorPrefix);
    const old = await q.execute();
    if (old.length) await this.db.deleteFrom('console_sessions').where('id', 'in', old.map((r) => r.id)).execute();
  }
}

/** Pending SSO sign-ins kept per tenant at most (the oldest dropped first): /start needs no credentials. */
export const OIDC_STATES_PER_TENANT = 1000;

/** A tenant's OIDC provider and the pending sign-ins through it. */
export class OidcRepo {
  constructor(private readonly db: Conn) {}

  getConfig(tenantId: number): Promise<ConsoleOidcRow | undefined> {
    return this.db.selectFrom('console_oidc').selectAll().where('tenant_id', '=', tenantId).executeTakeFirst();
  }
  async putConfig(tenantId: number, v: Omit<ConsoleOidcRow, 'id' | 'tenant_id'>): Promise<void> {
    const updated = await this.db.updateTable('console_oidc').set(v).where('tenant_id', '=', tenantId).executeTakeFirst();
    if (Number(updated.numUpdatedRows) === 0) await this.db.insertInto('console_oidc').values({ ...v, tenant_id: tenantId }).execute();
  }
  async deleteConfig(tenantId: number): Promise<boolean> {
    await this.db.deleteFrom('console_oidc_states').where('tenant_id', '=', tenantId).execute();
    const r = await this.db.deleteFrom('console_oidc').where('tenant_id', '=', tenantId).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  /** Stores a pending sign-in; drops expired ones and keeps the tenant's newest OIDC_STATES_PER_TENANT. */
  async insertState(v: Omit<ConsoleOidcStateRow, 'id'>): Promise<void> {
    await this.db.deleteFrom('console_oidc_states').where('expires_at', '<=', v.created_at).execute();
    await this.db.insertInto('console_oidc_states').values(v).execute();
    const old = await this.db.selectFrom('console_oidc_states').select('id').where('tenant_id', '=', v.tenant_id)
      .orderBy('id', 'desc').offset(OIDC_STATES_PER_TENANT).limit(1000).execute();
    if (old.length) await this.db.deleteFrom('console_oidc_states').where('id', 'in', old.map((r) => r.id)).execute();
  }
  /** Takes (reads and deletes) a pending sign-in: a state works once. */
  async takeState(stateHash: string): Promise<ConsoleOidcStateRow | undefined> {
    return this.db.deleteFrom('console_oidc_states').where('state_hash', '=', stateHash).returningAll().executeTakeFirst();
  }
  async countStates(tenantId: number): Promise<number> {
    const r = await this.db.selectFrom('console_oidc_states').select((eb) => eb.fn.countAll<number>().as('n')).where('tenant_id', '=', tenantId).executeTakeFirstOrThrow();
    return Number(r.n);
  }
}

/**
 * Appends one audit entry without a change to the tenant's network (sign-in,
 * sign-out, failed sign-in): the tenant row is locked as Store.write locks it,
 * but its generation is not bumped, so no node map is recomputed or pushed.
 */
export async function auditOnly(
  store: Store, tenantId: number, actor: string, action: string, objectType: string, objectId: string | number, after: unknown,
): Promise<void> {
  await store.db.transaction().execute(async (trx) => {
    if (store.backend === 'postgres') await sql`select id from tenants where id = ${tenantId} for update`.execute(trx);
    await new TenantRepo(trx, tenantId).appendAudit(actor, action, objectType, objectId, null, after);
  });
}
