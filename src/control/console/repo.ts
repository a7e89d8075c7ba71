// Console rows: users and sessions. Every query on console_users names its
// tenant explicitly (the same rule TenantRepo enforces for the other tables);
// sessions are looked up only by the SHA-256 of their token.
import { sql, type Kysely } from 'kysely';
import type { ConsoleSessionRow, ConsoleUserRow, Database } from '../store/schema.js';
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
  async insertUser(tenantId: number, v: { username: string; password_hash: string; role: string; created_at: string; created_by: string }): Promise<ConsoleUserRow> {
    return this.db.insertInto('console_users').values({ ...v, tenant_id: tenantId, last_signin_at: null }).returningAll().executeTakeFirstOrThrow();
  }
  async updateUser(tenantId: number, id: number, patch: { password_hash?: string; role?: string; last_signin_at?: string }): Promise<void> {
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
