// The repository layer. Every query on a tenant's rows goes through TenantRepo,
// whose four primitives (sel/upd/del/ins) add `tenant_id = this.tenantId` — the
// one place where tenant scoping happens. Handlers never build queries.
//
// Writes run through Store.write(): one transaction that first bumps the tenant's
// generation (which also locks the tenant row on PostgreSQL, serialising that
// tenant's writers), then applies the change and appends the audit entries, and
// commits them together.
import {
  sql,
  type DeleteQueryBuilder, type DeleteResult, type ExpressionBuilder, type Insertable, type Kysely, type SelectQueryBuilder,
  type Transaction, type UpdateQueryBuilder, type UpdateResult, type Updateable,
} from 'kysely';
import type {
  ApiKeyRow, AuditRow, AuthKeyRow, Database, NodeRow, PolicyRow, RelayLinkRow, RelayRow, TenantRow, TenantTable, UserRow,
} from './schema.js';
import type { DbHandle } from './db.js';
import { auditHash, GENESIS_HASH, type ChainEntry } from '../audit.js';
import { ApiError, notFound } from '../errors.js';
import { electWithPrevious, type AclNode } from '../policy-engine.js';

/** Audit list filters: all exact matches except the time range (since inclusive, until exclusive). */
export interface AuditFilter { since?: string; until?: string; action?: string; actor?: string; objectType?: string; objectId?: string }

type Conn = Kysely<Database>; // a Transaction is a Kysely too

export const nowIso = (): string => new Date().toISOString();

/** Who made a change: "operator", "apikey:<prefix>", "node:<id>", "system". */
export type Actor = string;

/** What a relay last reported of a node: when it saw it, and the round-trip time then. */
export interface LinkHealth {
  lastSeenAt: string;
  rttMs: number | null;
}

/** Per node, the link a relay saw it on most recently (rows with last_seen_at set), added to `into`. */
function latestLinkByNode(
  rows: { node_id: number; last_seen_at: string | null; rtt_ms: number | null }[],
  into: Map<number, LinkHealth> = new Map(),
): Map<number, LinkHealth> {
  for (const r of rows) {
    const at = r.last_seen_at;
    if (at === null) continue;
    const cur = into.get(r.node_id);
    if (!cur || at > cur.lastSeenAt) into.set(r.node_id, { lastSeenAt: at, rttMs: r.rtt_ms });
  }
  return into;
}

export class TenantRepo {
  constructor(
    protected readonly db: Conn,
    readonly tenantId: number,
  ) {}

  // ---- the scoping primitives -------------------------------------------------
  // Generic builders are cast to one concrete table for the where() call: every
  // TenantTable has a tenant_id column, so the filter is valid for all of them.
  protected sel<T extends TenantTable>(t: T): SelectQueryBuilder<Database, T, {}> {
    const q = this.db.selectFrom(t) as unknown as SelectQueryBuilder<Database, 'nodes', {}>;
    return q.where('tenant_id', '=', this.tenantId) as unknown as SelectQueryBuilder<Database, T, {}>;
  }
  protected upd<T extends TenantTable>(t: T): UpdateQueryBuilder<Database, T, T, UpdateResult> {
    const q = this.db.updateTable(t) as unknown as UpdateQueryBuilder<Database, 'nodes', 'nodes', UpdateResult>;
    return q.where('tenant_id', '=', this.tenantId) as unknown as UpdateQueryBuilder<Database, T, T, UpdateResult>;
  }
  private del<T extends TenantTable>(t: T): DeleteQueryBuilder<Database, T, DeleteResult> {
    const q = this.db.deleteFrom(t) as unknown as DeleteQueryBuilder<Database, 'nodes', DeleteResult>;
    return q.where('tenant_id', '=', this.tenantId) as unknown as DeleteQueryBuilder<Database, T, DeleteResult>;
  }
  private ins<T extends TenantTable>(t: T, values: Omit<Insertable<Database[T]>, 'tenant_id'>) {
    const row = { ...values, tenant_id: this.tenantId } as unknown as Insertable<Database[T]>;
    return this.db.insertInto(t).values(row);
  }

  // ---- API keys ------------------------------------------------------------------
  listApiKeys(): Promise<ApiKeyRow[]> {
    return this.sel('api_keys').selectAll().orderBy('id').execute();
  }
  async getApiKey(id: number): Promise<ApiKeyRow | undefined> {
    return this.sel('api_keys').selectAll().where('id', '=', id).executeTakeFirst();
  }
  async insertApiKey(v: Omit<Insertable<Database['api_keys']>, 'tenant_id'>): Promise<ApiKeyRow> {
    return this.ins('api_keys', v).returningAll().executeTakeFirstOrThrow() as Promise<ApiKeyRow>;
  }
  async deleteApiKey(id: number): Promise<boolean> {
    const r = await this.del('api_keys').where('id', '=', id).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }
  async touchApiKey(id: number): Promise<void> {
    await this.upd('api_keys').set({ last_used_at: nowIso() }).where('id', '=', id).execute();
  }

  // ---- users -------------------------------------------------------------------
  listUsers(): Promise<UserRow[]> {
    return this.sel('users').selectAll().orderBy('id').execute();
  }
  getUser(id: number): Promise<UserRow | undefined> {
    return this.sel('users').selectAll().where('id', '=', id).executeTakeFirst();
  }
  getUserByName(name: string): Promise<UserRow | undefined> {
    return this.sel('users').selectAll().where('name', '=', name).executeTakeFirst();
  }
  async insertUser(v: Omit<Insertable<Database['users']>, 'tenant_id'>): Promise<UserRow> {
    return this.ins('users', v).returningAll().executeTakeFirstOrThrow() as Promise<UserRow>;
  }
  async deleteUser(id: number): Promise<boolean> {
    const r = await this.del('users').where('id', '=', id).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  // ---- auth keys -----------------------------------------------------------------
  listAuthKeys(): Promise<AuthKeyRow[]> {
    return this.sel('auth_keys').selectAll().orderBy('id').execute();
  }
  getAuthKey(id: number): Promise<AuthKeyRow | undefined> {
    return this.sel('auth_keys').selectAll().where('id', '=', id).executeTakeFirst();
  }
  async insertAuthKey(v: Omit<Insertable<Database['auth_keys']>, 'tenant_id'>): Promise<AuthKeyRow> {
    return this.ins('auth_keys', v).returningAll().executeTakeFirstOrThrow() as Promise<AuthKeyRow>;
  }
  async deleteAuthKey(id: number): Promise<boolean> {
    const r = await this.del('auth_keys').where('id', '=', id).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }
  /**
   * Counts one use of an auth key, atomically refusing a second use of a
   * single-use key: one conditional UPDATE, so two registrations racing with
   * the same key (on any replica, either backend) cannot both count it. False:
   * the key is single-use and already used (or gone).
   */
  async consumeAuthKey(id: number): Promise<boolean> {
    const r = await this.upd('auth_keys').set((eb) => ({ used_count: eb('used_count', '+', 1) }))
      .where('id', '=', id).where((eb) => eb.or([eb('reusable', '=', 1), eb('used_count', '=', 0)])).executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  // ---- nodes ---------------------------------------------------------------------
  listNodes(): Promise<NodeRow[]> {
    return this.sel('nodes').selectAll().orderBy('id').execute();
  }
  getNode(id: number): Promise<NodeRow | undefined> {
    return this.sel('nodes').selectAll().where('id', '=', id).executeTakeFirst();
  }
  getNodeByKey(nodeKey: string): Promise<NodeRow | undefined> {
    return this.sel('nodes').selectAll().where('node_key', '=', nodeKey).executeTakeFirst();
  }
  getNodeByTokenPrefix(prefix: string): Promise<NodeRow | undefined> {
    return this.sel('nodes').selectAll().where('token_prefix', '=', prefix).executeTakeFirst();
  }
  getNodeByName(name: string): Promise<NodeRow | undefined> {
    return this.sel('nodes').selectAll().where('name', '=', name).executeTakeFirst();
  }
  nodeByAddress(family: 'ipv4' | 'ipv6', ip: string): Promise<{ id: number } | undefined> {
    return this.sel('nodes').select('id').where(family, '=', ip).executeTakeFirst();
  }
  async countNodes(): Promise<number> {
    const r = await this.sel('nodes').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow();
    return Number(r.n);
  }
  async usedAddresses(): Promise<{ ipv4: string | null; ipv6: string | null }[]> {
    return this.sel('nodes').select(['ipv4', 'ipv6']).execute();
  }
  async insertNode(v: Omit<Insertable<Database['nodes']>, 'tenant_id'>): Promise<NodeRow> {
    return this.ins('nodes', v).returningAll().executeTakeFirstOrThrow() as Promise<NodeRow>;
  }
  async updateNode(id: number, patch: Updateable<Database['nodes']>): Promise<NodeRow | undefined> {
    const { tenant_id: _drop, id: _id, ...rest } = patch;
    return this.upd('nodes').set({ ...rest, updated_at: nowIso() }).where('id', '=', id).returningAll().executeTakeFirst() as Promise<NodeRow | undefined>;
  }
  async deleteNode(id: number): Promise<boolean> {
    const r = await this.del('nodes').where('id', '=', id).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  // ---- policy --------------------------------------------------------------------
  currentPolicy(): Promise<PolicyRow | undefined> {
    return this.sel('policies').selectAll().orderBy('version', 'desc').limit(1).executeTakeFirst();
  }
  listPolicyVersions(): Promise<Omit<PolicyRow, 'text'>[]> {
    return this.sel('policies').select(['id', 'tenant_id', 'version', 'created_at', 'created_by']).orderBy('version', 'desc').execute();
  }
  getPolicyVersion(version: number): Promise<PolicyRow | undefined> {
    return this.sel('policies').selectAll().where('version', '=', version).executeTakeFirst();
  }
  async insertPolicy(text: string, by: Actor): Promise<PolicyRow> {
    const cur = await this.currentPolicy();
    const version = (cur?.version ?? 0) + 1;
    return this.ins('policies', { version, text, created_at: nowIso(), created_by: by }).returningAll().executeTakeFirstOrThrow() as Promise<PolicyRow>;
  }

  // ---- relay links (this tenant's links on any relay) ---------------------------------
  listRelayLinks(): Promise<RelayLinkRow[]> {
    return this.sel('relay_links').selectAll().orderBy('id').execute();
  }
  linksOfRelay(relayId: number): Promise<RelayLinkRow[]> {
    return this.sel('relay_links').selectAll().where('relay_id', '=', relayId).orderBy('id').execute();
  }
  linksOfNode(nodeId: number): Promise<RelayLinkRow[]> {
    return this.sel('relay_links').selectAll().where('node_id', '=', nodeId).orderBy('id').execute();
  }
  /** Per node: the link a relay saw it on most recently (last_seen_at, rtt_ms). */
  async relayHealthByNode(): Promise<Map<number, LinkHealth>> {
    const rows = await this.sel('relay_links').select(['node_id', 'last_seen_at', 'rtt_ms']).where('last_seen_at', 'is not', null).execute();
    return latestLinkByNode(rows);
  }
  /** Relays this tenant's nodes link to: shared ones and the tenant's own. */
  relaysServing(): Promise<RelayRow[]> {
    return this.db.selectFrom('relays').selectAll()
      .where((eb) => eb.or([eb('tenant_id', 'is', null), eb('tenant_id', '=', this.tenantId)]))
      .orderBy('id').execute() as Promise<RelayRow[]>;
  }
  async insertRelayLink(v: Omit<Insertable<Database['relay_links']>, 'tenant_id'>): Promise<void> {
    await this.ins('relay_links', v).execute();
  }
  async rotateRelayLink(id: number, psk: string, prevPsk: string, prevUntil: string, now: string): Promise<void> {
    await this.upd('relay_links').set({ psk, prev_psk: prevPsk, prev_psk_until: prevUntil, rotated_at: now }).where('id', '=', id).execute();
  }
  async deleteLinksOfRelay(relayId: number): Promise<number> {
    const r = await this.del('relay_links').where('relay_id', '=', relayId).executeTakeFirst();
    return Number(r.numDeletedRows);
  }

  // ---- HA primaries (kept by Store.reelect in every change transaction) -------------------
  async listPrimaries(): Promise<Map<string, number>> {
    const rows = await this.sel('primaries').select(['prefix', 'node_id']).execute();
    return new Map(rows.map((r) => [r.prefix, r.node_id]));
  }

  // ---- audit ---------------------------------------------------------------------
  listAudit(opts: AuditFilter & { limit?: number; afterSeq?: number; beforeSeq?: number; newestFirst?: boolean; offset?: number }): Promise<AuditRow[]> {
    let q = this.auditWhere(this.sel('audit').selectAll(), opts);
    if (opts.afterSeq !== undefined) q = q.where('seq', '>', opts.afterSeq);
    if (opts.beforeSeq !== undefined) q = q.where('seq', '<', opts.beforeSeq);
    q = q.orderBy('seq', opts.newestFirst ? 'desc' : 'asc').limit(opts.limit ?? 100);
    if (opts.offset) q = q.offset(opts.offset);
    return q.execute();
  }
  /** How many entries match the filter (for a paged, newest-first listing). */
  async countAudit(opts: AuditFilter): Promise<number> {
    const r = await this.auditWhere(this.sel('audit').select((eb) => eb.fn.countAll<number | string>().as('n')), opts).executeTakeFirst();
    return Number(r?.n ?? 0);
  }
  private auditWhere<O>(q: SelectQueryBuilder<Database, 'audit', O>, f: AuditFilter): SelectQueryBuilder<Database, 'audit', O> {
    if (f.since) q = q.where('ts', '>=', f.since);
    if (f.until) q = q.where('ts', '<', f.until);
    if (f.action) q = q.where('action', '=', f.action);
    if (f.actor) q = q.where('actor', '=', f.actor);
    if (f.objectType) q = q.where('object_type', '=', f.objectType);
    if (f.objectId !== undefined) q = q.where('object_id', '=', f.objectId);
    return q;
  }
  allAudit(): Promise<AuditRow[]> {
    return this.sel('audit').selectAll().orderBy('seq').execute();
  }
  lastAudit(): Promise<AuditRow | undefined> {
    return this.sel('audit').selectAll().orderBy('seq', 'desc').limit(1).executeTakeFirst();
  }
  /** Appends one entry to the tenant's chain (call only inside Store.write). */
  async appendAudit(actor: Actor, action: string, objectType: string, objectId: string | number, before: unknown, after: unknown): Promise<void> {
    const last = await this.lastAudit();
    const f = {
      tenant_id: this.tenantId,
      seq: (last?.seq ?? 0) + 1,
      ts: nowIso(),
      actor,
      action,
      object_type: objectType,
      object_id: String(objectId),
      before: before === undefined || before === null ? null : JSON.stringify(before),
      after: after === undefined || after === null ? null : JSON.stringify(after),
    };
    const prev_hash = last?.hash ?? GENESIS_HASH;
    const entry: Omit<ChainEntry, 'tenant_id'> = { ...f, prev_hash, hash: auditHash(prev_hash, f) };
    const { tenant_id: _t, ...rest } = { ...entry, tenant_id: 0 };
    await this.ins('audit', rest).execute();
  }
}

/** A TenantRepo inside a write transaction, with its actor bound for auditing. */
export class TenantTx extends TenantRepo {
  private readonly relayRows: RelayTx;
  constructor(
    db: Transaction<Database>,
    tenantId: number,
    readonly actor: Actor,
    readonly generation: number,
  ) {
    super(db, tenantId);
    this.relayRows = new RelayTx(db);
  }
  audit(action: string, objectType: string, objectId: string | number, before: unknown, after: unknown): Promise<void> {
    return this.appendAudit(this.actor, action, objectType, objectId, before, after);
  }
  /** The change's transaction, for modules with their own tables (the console's users) to commit with it. */
  get transaction(): Transaction<Database> {
    return this.db as Transaction<Database>;
  }
  /**
   * Locks a relay row (PostgreSQL: row lock; every writer takes the tenant lock
   * first, then relays) and bumps its generation; undefined when it is gone.
   */
  lockRelay(relayId: number): Promise<RelayRow | undefined> {
    return this.relayRows.lockRelay(relayId);
  }
  /**
   * Re-derives `unseen` for the tenant's nodes marked unseen (after links
   * went away with their verdicts) and stores the changes; the surrounding
   * Store.write re-elects primaries. Returns how many nodes came back.
   */
  async refreshUnseen(ttlMs: number): Promise<number> {
    const ids = (await this.sel('nodes').select('id').where('unseen', '=', 1).execute()).map((r) => r.id);
    const changes = await deriveUnseen(this.db, this.tenantId, ids, ttlMs);
    for (const c of changes) await this.upd('nodes').set({ unseen: c.unseen ? 1 : 0 }).where('id', '=', c.nodeId).execute();
    return changes.length;
  }
  /**
   * Link ids already used on a relay, by every tenant it serves. Link ids are a
   * per-relay namespace, so this is the one read across tenants: only the ids.
   */
  async usedLinkIds(relayId: number): Promise<Set<number>> {
    const rows = await this.db.selectFrom('relay_links').select('link_id').where('relay_id', '=', relayId).execute();
    return new Set(rows.map((r) => r.link_id));
  }
}

/** Relay rows inside a Store.writeTenants transaction (after the tenant locks). */
export class RelayTx {
  constructor(private readonly db: Transaction<Database>) {}
  insertRelay(v: Omit<Insertable<Database['relays']>, 'id'>): Promise<RelayRow> {
    return this.db.insertInto('relays').values(v).returningAll().executeTakeFirstOrThrow() as Promise<RelayRow>;
  }
  /** Row lock and generation bump; undefined when the relay is gone. */
  lockRelay(relayId: number): Promise<RelayRow | undefined> {
    return this.db.updateTable('relays').set((eb) => ({ generation: eb('generation', '+', 1) }))
      .where('id', '=', relayId).returningAll().executeTakeFirst() as Promise<RelayRow | undefined>;
  }
  /** Flips `live` when it differs (quiet only if not reported since `cutoff`); true when this call flipped it. */
  async setLive(relayId: number, live: boolean, cutoff: string | null): Promise<boolean> {
    let q = this.db.updateTable('relays').set({ live: live ? 1 : 0 }).where('id', '=', relayId)
      .where((eb) => (live ? eb.or([eb('live', 'is', null), eb('live', '!=', 1)]) : eb('live', '=', 1)));
    if (!live && cutoff !== null) q = q.where((eb) => eb.or([eb('reported_at', 'is', null), eb('reported_at', '<=', cutoff)]));
    const r = await q.executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }
  /** Deletes a relay row (its links go with it). */
  async deleteRelayRow(relayId: number): Promise<boolean> {
    const r = await this.db.deleteFrom('relays').where('id', '=', relayId).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }
}

export interface WriteResult<T> {
  result: T;
  generation: number;
}

export class Store {
  readonly db: Kysely<Database>;
  /** Called after every committed tenant change (tenant id, new generation). */
  onCommit: ((tenantId: number, generation: number) => void) | null = null;
  /**
   * Runs inside every change transaction, just before commit (PostgreSQL: the
   * NOTIFY to other replicas, so it is sent if and only if the change commits,
   * and costs no extra commit).
   */
  inTransaction: ((trx: Transaction<Database>, tenantId: number, generation: number) => Promise<void>) | null = null;

  private async announce(trx: Transaction<Database>, tenantId: number, generation: number): Promise<void> {
    if (this.inTransaction) await this.inTransaction(trx, tenantId, generation);
  }

  /**
   * Re-elects the tenant's HA primaries from its routers' current state, with
   * the stored primaries as the previous ones (a healthy current primary is
   * kept), and stores any change — inside the change's transaction, so every
   * replica, the Admin API and the maps read one answer.
   */
  private async reelect(trx: Transaction<Database>, tenantId: number): Promise<void> {
    const now = nowIso();
    const routers = await trx.selectFrom('nodes')
      .select(['id', 'name', 'online', 'unseen', 'announced_routes', 'approved_routes', 'expires_at', 'ipv4', 'ipv6'])
      .where('tenant_id', '=', tenantId).where('approved_routes', '!=', '[]').execute();
    const list = (s: string): string[] => {
      try {
        const v: unknown = JSON.parse(s);
        return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
      } catch {
        return [];
      }
    };
    const nodes: AclNode[] = routers
      .filter((n) => n.expires_at === null || n.expires_at > now)
      .map((n) => ({
        id: n.id, name: n.name, user: null, tags: [], ipv4: n.ipv4, ipv6: n.ipv6,
        announced_routes: list(n.announced_routes), approved_routes: list(n.approved_routes),
        online: n.online === 1 && n.unseen !== 1,
      }));
    const prevRows = await trx.selectFrom('primaries').select(['prefix', 'node_id']).where('tenant_id', '=', tenantId).execute();
    const prev = new Map(prevRows.map((r) => [r.prefix, r.node_id]));
    const next = electWithPrevious(nodes, prev);
    for (const [prefix, nodeId] of prev) {
      if (next.get(prefix) === nodeId) continue;
      await trx.deleteFrom('primaries').where('tenant_id', '=', tenantId).where('prefix', '=', prefix).execute();
    }
    for (const [prefix, nodeId] of next) {
      if (prev.get(prefix) === nodeId) continue;
      await trx.insertInto('primaries').values({ tenant_id: tenantId, prefix, node_id: nodeId, elected_at: now }).execute();
    }
  }

  constructor(readonly handle: DbHandle) {
    this.db = handle.db;
  }

  get backend(): DbHandle['backend'] {
    return this.handle.backend;
  }

  /** Read-only access to one tenant's rows (outside a transaction). */
  tenant(tenantId: number): TenantRepo {
    return new TenantRepo(this.db, tenantId);
  }

  /** Runs `fn` in one transaction with the tenant locked; audit entries commit with it. */
  async write<T>(tenantId: number, actor: Actor, fn: (tx: TenantTx) => Promise<T>): Promise<WriteResult<T>> {
    const out = await this.db.transaction().execute(async (trx) => {
      const g = await trx
        .updateTable('tenants')
        .set((eb) => ({ generation: eb('generation', '+', 1) }))
        .where('id', '=', tenantId)
        .returning('generation')
        .executeTakeFirst();
      if (!g) throw notFound('tenant');
      const result = await fn(new TenantTx(trx, tenantId, actor, g.generation));
      await this.reelect(trx, tenantId);
      await this.announce(trx, tenantId, g.generation);
      return { result, generation: g.generation };
    });
    this.onCommit?.(tenantId, out.generation);
    return out;
  }

  /**
   * One transaction over several tenants (a shared relay's creation or
   * deletion): locks each tenant row in ascending id order (the order every
   * multi-tenant writer uses; a single-tenant writer holds one tenant and then
   * relays, so no cycle), bumps each generation, runs `fn` with one TenantTx
   * per tenant (audit entries go to each tenant's own chain) and the relay
   * operations, then re-elects and announces per tenant and commits all at
   * once. Tenants deleted meanwhile are skipped.
   */
  async writeTenants<T>(tenantIds: number[], actor: Actor, fn: (txs: TenantTx[], relays: RelayTx) => Promise<T>): Promise<T> {
    const ids = [...new Set(tenantIds)].sort((a, b) => a - b);
    const out = await this.db.transaction().execute(async (trx) => {
      const txs: TenantTx[] = [];
      for (const id of ids) {
        const g = await trx.updateTable('tenants').set((eb) => ({ generation: eb('generation', '+', 1) }))
          .where('id', '=', id).returning('generation').executeTakeFirst();
        if (g) txs.push(new TenantTx(trx, id, actor, g.generation));
      }
      const result = await fn(txs, new RelayTx(trx));
      for (const tx of txs) {
        await this.reelect(trx, tx.tenantId);
        await this.announce(trx, tx.tenantId, tx.generation);
      }
      return { result, gens: txs.map((tx) => [tx.tenantId, tx.generation] as const) };
    });
    for (const [t, g] of out.gens) this.onCommit?.(t, g);
    return out.result;
  }

  // ---- tenants (operator scope) ------------------------------------------------
  listTenants(): Promise<TenantRow[]> {
    return this.db.selectFrom('tenants').selectAll().orderBy('id').execute();
  }
  /** Per tenant id: its node count and how many are online (one grouped query for all tenants). */
  async nodeCountsByTenant(): Promise<Map<number, { nodes: number; online: number }>> {
    const rows = await this.db.selectFrom('nodes')
      .select((eb) => [
        'tenant_id',
        eb.fn.countAll<number | string>().as('nodes'),
        eb.fn.sum<number | string | null>(sql<number>`case when online = 1 and coalesce(unseen, 0) <> 1 then 1 else 0 end`).as('online'),
      ])
      .groupBy('tenant_id').execute();
    return new Map(rows.map((r) => [r.tenant_id, { nodes: Number(r.nodes), online: Number(r.online ?? 0) }]));
  }
  /** Per relay id: each tenant's link count on it and when the relay last saw one of them (one grouped query; `tenantId` limits it to one tenant). */
  async linkCountsByRelay(tenantId?: number): Promise<Map<number, { tenant_id: number; links: number; last_seen: string | null }[]>> {
    let q = this.db.selectFrom('relay_links')
      .select((eb) => [
        'relay_id', 'tenant_id',
        eb.fn.countAll<number | string>().as('links'),
        eb.fn.max<string | null>('last_seen_at').as('last_seen'),
      ])
      .groupBy(['relay_id', 'tenant_id']);
    if (tenantId !== undefined) q = q.where('tenant_id', '=', tenantId);
    const out = new Map<number, { tenant_id: number; links: number; last_seen: string | null }[]>();
    for (const r of await q.orderBy('relay_id').orderBy('tenant_id').execute()) {
      const list = out.get(r.relay_id) ?? [];
      list.push({ tenant_id: r.tenant_id, links: Number(r.links), last_seen: r.last_seen ?? null });
      out.set(r.relay_id, list);
    }
    return out;
  }
  getTenantByName(name: string): Promise<TenantRow | undefined> {
    return this.db.selectFrom('tenants').selectAll().where('name', '=', name).executeTakeFirst();
  }
  getTenant(id: number): Promise<TenantRow | undefined> {
    return this.db.selectFrom('tenants').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /** Creates a tenant with its initial policy; audited as the tenant's first entries. */
  async createTenant(
    v: { name: string; pool4: string; pool6: string | null; dns_base: string; max_nodes: number },
    actor: Actor,
    initialPolicy: string,
  ): Promise<TenantRow> {
    const row = await this.db.transaction().execute(async (trx) => {
      const exists = await trx.selectFrom('tenants').select('id').where('name', '=', v.name).executeTakeFirst();
      if (exists) throw new ApiError(409, 'conflict', `tenant "${v.name}" already exists`);
      const now = nowIso();
      const t = (await trx
        .insertInto('tenants')
        .values({ ...v, generation: 1, created_at: now, updated_at: now })
        .returningAll()
        .executeTakeFirstOrThrow()) as TenantRow;
      const tx = new TenantTx(trx, t.id, actor, 1);
      await tx.audit('tenant.create', 'tenant', t.name, null, publicTenantFields(t));
      await tx.insertPolicy(initialPolicy, actor);
      await tx.audit('policy.set', 'policy', 1, null, { version: 1 });
      await this.announce(trx, t.id, t.generation);
      return t;
    });
    this.onCommit?.(row.id, row.generation);
    return row;
  }

  async updateTenant(id: number, actor: Actor, patch: { pool4?: string; pool6?: string | null; dns_base?: string; max_nodes?: number }): Promise<TenantRow> {
    const { result } = await this.write(id, actor, async (tx) => {
      const before = await this.getTenantIn(tx, id);
      const after = (await (tx as unknown as { db: Transaction<Database> }).db
        .updateTable('tenants').set({ ...patch, updated_at: nowIso() }).where('id', '=', id)
        .returningAll().executeTakeFirstOrThrow()) as TenantRow;
      await tx.audit('tenant.update', 'tenant', after.name, before ? publicTenantFields(before) : null, publicTenantFields(after));
      return after;
    });
    return result;
  }

  private async getTenantIn(tx: TenantTx, id: number): Promise<TenantRow | undefined> {
    return (tx as unknown as { db: Transaction<Database> }).db.selectFrom('tenants').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /** Deletes the tenant and every row it owns (cascade). Its audit chain goes with it. */
  async deleteTenant(id: number): Promise<boolean> {
    const ok = await this.db.transaction().execute(async (trx) => {
      for (const t of ['audit', 'policies', 'relay_links', 'primaries', 'nodes', 'auth_keys', 'users', 'api_keys'] as const) {
        await trx.deleteFrom(t).where('tenant_id', '=', id).execute();
      }
      await trx.deleteFrom('relays').where('tenant_id', '=', id).execute(); // its dedicated relays
      const r = await trx.deleteFrom('tenants').where('id', '=', id).executeTakeFirst();
      const deleted = Number(r.numDeletedRows) > 0;
      if (deleted) await this.announce(trx, id, -1);
      return deleted;
    });
    if (ok) this.onCommit?.(id, -1);
    return ok;
  }

  // ---- relays (operator scope) ------------------------------------------------------
  listRelays(): Promise<RelayRow[]> {
    return this.db.selectFrom('relays').selectAll().orderBy('id').execute();
  }
  getRelay(id: number): Promise<RelayRow | undefined> {
    return this.db.selectFrom('relays').selectAll().where('id', '=', id).executeTakeFirst();
  }
  getRelayByName(name: string): Promise<RelayRow | undefined> {
    return this.db.selectFrom('relays').selectAll().where('name', '=', name).executeTakeFirst();
  }
  /** Relays whose links a tenant's nodes get: shared ones and the tenant's own. */
  relaysServing(tenantId: number): Promise<RelayRow[]> {
    return this.db.selectFrom('relays').selectAll()
      .where((eb) => eb.or([eb('tenant_id', 'is', null), eb('tenant_id', '=', tenantId)]))
      .orderBy('id').execute();
  }
  findRelayByToken(prefix: string): Promise<RelayRow | undefined> {
    return this.db.selectFrom('relays').selectAll().where('token_prefix', '=', prefix).executeTakeFirst();
  }

  // ---- credential lookups (by the public prefix, before the tenant is known) ----
  findOperatorKey(prefix: string) {
    return this.db.selectFrom('operator_keys').selectAll().where('prefix', '=', prefix).executeTakeFirst();
  }
  async hasOperatorKey(): Promise<boolean> {
    return (await this.db.selectFrom('operator_keys').select('id').limit(1).executeTakeFirst()) !== undefined;
  }
  async addOperatorKey(prefix: string, hash: string): Promise<void> {
    await this.db.insertInto('operator_keys').values({ prefix, hash, created_at: nowIso() }).execute();
  }
  /** Nodes of a tenant that have an expiry (id, expires_at): what the stream expiry watch re-arms from. */
  nodeExpiries(tenantId: number): Promise<{ id: number; expires_at: string | null }[]> {
    return this.db.selectFrom('nodes').select(['id', 'expires_at']).where('tenant_id', '=', tenantId).where('expires_at', 'is not', null).execute();
  }
  findApiKey(prefix: string): Promise<ApiKeyRow | undefined> {
    return this.db.selectFrom('api_keys').selectAll().where('prefix', '=', prefix).executeTakeFirst();
  }
  findAuthKey(prefix: string): Promise<AuthKeyRow | undefined> {
    return this.db.selectFrom('auth_keys').selectAll().where('prefix', '=', prefix).executeTakeFirst();
  }
  findNodeByToken(prefix: string): Promise<NodeRow | undefined> {
    return this.db.selectFrom('nodes').selectAll().where('token_prefix', '=', prefix).executeTakeFirst();
  }

  // ---- registration nonces (node identity proofs) -------------------------------------
  /**
   * Stores a registration nonce for an auth key. Bounded: expired nonces are
   * dropped first; an auth key keeps about `perKey` pending nonces (its
   * oldest go); false when `total` nonces are pending (the caller refuses).
   */
  async issueRegisterNonce(v: { nonce: string; tenantId: number; ttlMs: number } & ({ authKeyId: number } | { nodeId: number } | { login: true }), limits: { perKey: number; total: number }): Promise<boolean> {
    // Single statements, no transaction: no lock is held while waiting for
    // another. The total bound is soft by the few challenges in flight at once;
    // the per-key bound is exact once they finish (trimmed after the insert).
    const now = new Date();
    await this.db.deleteFrom('register_nonces').where('expires_at', '<=', now.toISOString()).execute();
    const total = Number((await this.db.selectFrom('register_nonces').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n);
    if (total >= limits.total) return false;
    // An interactive login's nonce (node_login.ts) has neither: it is bound to its tenant only.
    const owner = 'authKeyId' in v ? { auth_key_id: v.authKeyId, node_id: null } : 'nodeId' in v ? { auth_key_id: null, node_id: v.nodeId } : { auth_key_id: null, node_id: null };
    await this.db.insertInto('register_nonces').values({
      nonce: v.nonce, tenant_id: v.tenantId, ...owner,
      expires_at: new Date(now.getTime() + v.ttlMs).toISOString(), created_at: now.toISOString(),
    }).execute();
    // Trim after inserting, so the bound per key holds whatever runs
    // concurrently: every insert precedes its own trim, hence precedes the
    // last trim, which keeps only the newest perKey nonces of this owner.
    const overflow = await (owner.auth_key_id !== null
      ? this.db.selectFrom('register_nonces').select('nonce').where('auth_key_id', '=', owner.auth_key_id)
      : owner.node_id !== null ? this.db.selectFrom('register_nonces').select('nonce').where('node_id', '=', owner.node_id)
        : this.db.selectFrom('register_nonces').select('nonce').where('tenant_id', '=', v.tenantId).where('auth_key_id', 'is', null).where('node_id', 'is', null))
      .orderBy('created_at', 'desc').orderBy('nonce').offset(limits.perKey).limit(1000).execute();
    if (overflow.length) await this.db.deleteFrom('register_nonces').where('nonce', 'in', overflow.map((m) => m.nonce)).execute();
    return true;
  }

  /** Takes a nonce (single-use: one DELETE … RETURNING, so of two concurrent takers one gets it); undefined when unknown, used or expired. */
  async takeRegisterNonce(nonce: string): Promise<{ tenant_id: number; auth_key_id: number | null; node_id: number | null } | undefined> {
    return this.db.deleteFrom('register_nonces').where('nonce', '=', nonce).where('expires_at', '>', nowIso())
      .returning(['tenant_id', 'auth_key_id', 'node_id']).executeTakeFirst();
  }

  /**
   * Appends one audit entry without changing anything else (a refused
   * registration): the tenant row is locked for the chain but the generation
   * is not bumped, so no map is recomputed.
   */
  async auditOnly(tenantId: number, actor: Actor, action: string, objectType: string, objectId: string | number, before: unknown, after: unknown): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      if (!(await lockTenant(trx, this.backend, tenantId))) return;
      await new TenantRepo(trx, tenantId).appendAudit(actor, action, objectType, objectId, before, after);
    });
  }

  /** Online/offline is state, not configuration: it bumps the generation but is not audited. */
  async setPresence(tenantId: number, nodeId: number, online: boolean): Promise<void> {
    const gen = await this.db.transaction().execute(async (trx) => {
      const g = await trx
        .updateTable('tenants')
        .set((eb) => ({ generation: eb('generation', '+', 1) }))
        .where('id', '=', tenantId)
        .returning('generation')
        .executeTakeFirst();
      if (!g) return null;
      await trx.updateTable('nodes').set({ online: online ? 1 : 0, last_seen: nowIso(), ...(online ? { lease_until: this.leaseUntil() } : {}) })
        .where('tenant_id', '=', tenantId).where('id', '=', nodeId).execute();
      await this.reelect(trx, tenantId);
      await this.announce(trx, tenantId, g.generation);
      return g.generation;
    });
    if (gen !== null) this.onCommit?.(tenantId, gen);
  }

  /** Marks several nodes of one tenant offline in one transaction (shutdown of a replica). */
  async setOffline(tenantId: number, nodeIds: number[]): Promise<void> {
    if (nodeIds.length === 0) return;
    const gen = await this.db.transaction().execute(async (trx) => {
      const g = await trx
        .updateTable('tenants')
        .set((eb) => ({ generation: eb('generation', '+', 1) }))
        .where('id', '=', tenantId)
        .returning('generation')
        .executeTakeFirst();
      if (!g) return null;
      for (let i = 0; i < nodeIds.length; i += 500) {
        await trx.updateTable('nodes').set({ online: 0, last_seen: nowIso() })
          .where('tenant_id', '=', tenantId).where('id', 'in', nodeIds.slice(i, i + 500)).execute();
      }
      await this.reelect(trx, tenantId);
      await this.announce(trx, tenantId, g.generation);
      return g.generation;
    });
    if (gen !== null) this.onCommit?.(tenantId, gen);
  }

  // ---- presence leases -------------------------------------------------------------------
  /** How long a node's presence lease lasts after a renewal (ms); the server sets it. */
  leaseTtlMs = 6000;

  private leaseUntil(now = Date.now()): string {
    return new Date(now + this.leaseTtlMs).toISOString();
  }

  /**
   * Renews the presence leases of nodes streaming from this replica (per
   * tenant, its node ids). Nodes found offline although they stream here (their
   * lease lapsed while this replica could not reach the database, or another
   * replica's stream of the same node closed) are brought back online, one
   * transaction per tenant (generation bumped, primaries re-elected, announced).
   * `connectedNow` (nodes streaming here now, as "tenant:node") re-checks the
   * candidates just before they are brought back. Returns how many leases were
   * renewed and which nodes came back.
   */
  async renewLeases(
    byTenant: ReadonlyMap<number, readonly number[]>,
    connectedNow: () => ReadonlySet<string>,
  ): Promise<{ renewed: number; restored: { tenantId: number; nodeIds: number[] }[] }> {
    const until = this.leaseUntil();
    let renewed = 0;
    const restored: { tenantId: number; nodeIds: number[] }[] = [];
    for (const [tenantId, ids] of byTenant) {
      const off: number[] = [];
      for (let i = 0; i < ids.length; i += 500) {
        const part = ids.slice(i, i + 500);
        const r = await this.db.updateTable('nodes').set({ lease_until: until })
          .where('tenant_id', '=', tenantId).where('id', 'in', part).where('online', '=', 1).executeTakeFirst();
        renewed += Number(r.numUpdatedRows);
        if (Number(r.numUpdatedRows) === part.length) continue;
        const rows = await this.db.selectFrom('nodes').select('id')
          .where('tenant_id', '=', tenantId).where('id', 'in', part).where('online', '=', 0).execute();
        for (const o of rows) off.push(o.id);
      }
      if (off.length === 0) continue;
      const here = connectedNow();
      const lapsed = off.filter((id) => here.has(`${tenantId}:${id}`));
      if (lapsed.length === 0) continue;
      const gen = await this.db.transaction().execute(async (trx) => {
        const g = await trx.updateTable('tenants').set((eb) => ({ generation: eb('generation', '+', 1) }))
          .where('id', '=', tenantId).returning('generation').executeTakeFirst();
        if (!g) return null;
        const now = nowIso();
        for (let i = 0; i < lapsed.length; i += 500) {
          await trx.updateTable('nodes').set({ online: 1, last_seen: now, lease_until: this.leaseUntil() })
            .where('tenant_id', '=', tenantId).where('id', 'in', lapsed.slice(i, i + 500)).execute();
        }
        await this.reelect(trx, tenantId);
        await this.announce(trx, tenantId, g.generation);
        return g.generation;
      });
      if (gen === null) continue;
      this.onCommit?.(tenantId, gen);
      restored.push({ tenantId, nodeIds: lapsed });
    }
    return { renewed, restored };
  }

  /**
   * Marks offline every online node whose lease ended before now (its replica
   * crashed, hung or lost the database): per tenant one transaction under the
   * tenant lock that re-elects primaries and announces; a tenant with nothing
   * expired is not written. Safe on several replicas at once (the conditional
   * update flips each node once; a lease renewed meanwhile is not touched).
   * Returns the expired nodes.
   */
  async expireLeases(now = Date.now()): Promise<{ tenantId: number; nodeIds: number[] }[]> {
    const cutoff = new Date(now).toISOString();
    const expired = (eb: ExpressionBuilder<Database, 'nodes'>) => eb.or([eb('lease_until', 'is', null), eb('lease_until', '<', cutoff)]);
    const tenants = await this.db.selectFrom('nodes').select('tenant_id').distinct()
      .where('online', '=', 1).where(expired).execute();
    const out: { tenantId: number; nodeIds: number[] }[] = [];
    for (const { tenant_id: tenantId } of tenants) {
      const r = await this.db.transaction().execute(async (trx) => {
        if (!(await lockTenant(trx, this.backend, tenantId))) return null;
        const rows = await trx.updateTable('nodes').set({ online: 0 })
          .where('tenant_id', '=', tenantId).where('online', '=', 1).where(expired).returning('id').execute();
        if (rows.length === 0) return null;
        const g = await trx.updateTable('tenants').set((eb) => ({ generation: eb('generation', '+', 1) }))
          .where('id', '=', tenantId).returning('generation').executeTakeFirst();
        if (!g) return null;
        await this.reelect(trx, tenantId);
        await this.announce(trx, tenantId, g.generation);
        return { gen: g.generation, ids: rows.map((x) => x.id) };
      }).catch(() => null); // tenant deleted meanwhile
      if (r === null) continue;
      this.onCommit?.(tenantId, r.gen);
      out.push({ tenantId, nodeIds: r.ids });
    }
    return out;
  }

  /**
   * Every link of one relay, of every tenant it serves (the relay is
   * authenticated; only what its health report needs).
   */
  linksOfRelayAll(relayId: number): Promise<RelayLinkHealth[]> {
    return this.db.selectFrom('relay_links').select(['id', 'tenant_id', 'node_id', 'link_id', 'last_seen_at', 'rtt_ms', 'reported_unseen'])
      .where('relay_id', '=', relayId).execute();
  }

  /**
   * linksOfRelayAll, and per link whether its node is a router (has approved
   * routes): routers are judged unseen sooner (ROUTER_UNSEEN_MS).
   */
  async linksOfRelayWithRole(relayId: number): Promise<(RelayLinkHealth & { router: boolean })[]> {
    const rows = await this.db.selectFrom('relay_links').innerJoin('nodes', 'nodes.id', 'relay_links.node_id')
      .select([
        'relay_links.id as id', 'relay_links.tenant_id as tenant_id', 'relay_links.node_id as node_id', 'relay_links.link_id as link_id',
        'relay_links.last_seen_at as last_seen_at', 'relay_links.rtt_ms as rtt_ms', 'relay_links.reported_unseen as reported_unseen',
        sql<number>`case when nodes.approved_routes = '[]' then 0 else 1 end`.as('router'),
      ])
      .where('relay_links.relay_id', '=', relayId).execute();
    return rows.map((r) => ({ ...r, router: Number(r.router) === 1 }));
  }

  /**
   * A node's own measurement of its round-trip time to relays (keepalive echoes):
   * sets rtt_ms on the node's links to those relays; returns how many links it set.
   * Not audited (telemetry, like the relays' last_seen_at).
   */
  async setNodeRelayRtt(tenantId: number, nodeId: number, rtts: { relayId: number; rttMs: number }[]): Promise<number> {
    let n = 0;
    for (const r of rtts) {
      const res = await this.db.updateTable('relay_links').set({ rtt_ms: Math.round(r.rttMs) })
        .where('tenant_id', '=', tenantId).where('node_id', '=', nodeId).where('relay_id', '=', r.relayId).executeTakeFirst();
      n += Number(res.numUpdatedRows);
    }
    return n;
  }

  /** Records that a relay reported now; returns its previous report time (null: never). */
  async relayReported(relayId: number, at: string): Promise<string | null> {
    const prev = await this.db.selectFrom('relays').select('reported_at').where('id', '=', relayId).executeTakeFirst();
    await this.db.updateTable('relays').set({ reported_at: at }).where('id', '=', relayId).execute();
    return prev?.reported_at ?? null;
  }

  /**
   * Applies one relay's health report to one tenant's links, writing only what
   * changed: a link's verdict (seen/unseen) when it flips (or is dropped: a
   * link the report leaves out loses its verdict), and its last_seen_at/rtt at
   * most every `opts.persistMs` (in one statement per few thousand links).
   * Then re-derives `unseen` for the nodes whose verdict changed (every
   * reported node when `opts.recheck`: the relay had gone quiet) — see
   * deriveUnseen. Only a change of `unseen` bumps the generation, re-elects
   * primaries and notifies. Returns the nodes whose state changed.
   */
  async applyRelayHealth(
    tenantId: number,
    relayId: number,
    reports: ReadonlyMap<number, LinkReport>,
    opts: { ttlMs: number; persistMs: number; recheck: boolean },
  ): Promise<{ changes: { nodeId: number; unseen: boolean }[]; written: number }> {
    const out = await this.db.transaction().execute(async (trx) => {
      // Serialise with the tenant's other writers (PostgreSQL row lock; SQLite
      // transactions are serial) without bumping the generation for reports that change nothing.
      if (!(await lockTenant(trx, this.backend, tenantId))) return { changes: [], gen: null as number | null, written: 0 };
      const rows = await trx.selectFrom('relay_links').select(['id', 'node_id', 'link_id', 'last_seen_at', 'rtt_ms', 'reported_unseen'])
        .where('tenant_id', '=', tenantId).where('relay_id', '=', relayId).execute();
      const writes: LinkWrite[] = [];
      const recheck = new Set<number>();
      for (const row of rows) {
        const rep = reports.get(row.link_id);
        if (!rep) {
          if (row.reported_unseen !== null) {
            writes.push({ id: row.id, last_seen_at: row.last_seen_at, rtt_ms: row.rtt_ms, reported_unseen: null });
            recheck.add(row.node_id);
          }
          continue;
        }
        const verdict = rep.unseen ? 1 : 0;
        const flipped = row.reported_unseen !== verdict;
        const due = rep.lastSeenAt !== null && (row.last_seen_at === null || Date.parse(rep.lastSeenAt) - Date.parse(row.last_seen_at) >= opts.persistMs);
        if (flipped || due || (rep.rtt !== null && row.rtt_ms === null)) {
          writes.push({ id: row.id, last_seen_at: rep.lastSeenAt ?? row.last_seen_at, rtt_ms: rep.rtt ?? row.rtt_ms, reported_unseen: verdict });
        }
        if (flipped || opts.recheck) recheck.add(row.node_id);
      }
      await writeLinkHealth(trx, tenantId, writes);
      const changes = await deriveUnseen(trx, tenantId, [...recheck], opts.ttlMs);
      if (changes.length === 0) return { changes, gen: null as number | null, written: writes.length };
      const gen = await this.commitUnseen(trx, tenantId, changes);
      return { changes, gen, written: writes.length };
    });
    if (out.gen !== null) this.onCommit?.(tenantId, out.gen);
    return { changes: out.changes, written: out.written };
  }

  /** Bumps the generation, stores the new `unseen` bits, re-elects and announces (inside trx). */
  private async commitUnseen(trx: Transaction<Database>, tenantId: number, changes: { nodeId: number; unseen: boolean }[]): Promise<number | null> {
    const g = await trx.updateTable('tenants').set((eb) => ({ generation: eb('generation', '+', 1) }))
      .where('id', '=', tenantId).returning('generation').executeTakeFirst();
    if (!g) return null;
    for (const unseen of [1, 0]) {
      const ids = changes.filter((c) => (c.unseen ? 1 : 0) === unseen).map((c) => c.nodeId);
      for (let i = 0; i < ids.length; i += 500) {
        await trx.updateTable('nodes').set({ unseen }).where('tenant_id', '=', tenantId).where('id', 'in', ids.slice(i, i + 500)).execute();
      }
    }
    await this.reelect(trx, tenantId);
    await this.announce(trx, tenantId, g.generation);
    return g.generation;
  }

  /**
   * Lets the verdicts of relays that have not reported for `ttlMs` lapse:
   * clears them and re-derives `unseen` for the nodes concerned (a change
   * re-elects primaries and refreshes maps and relays like any presence
   * change). Idempotent and safe on several replicas at once: each tenant is
   * re-checked under its lock, and a cleared verdict is not cleared again.
   * Returns how many tenants changed and how many nodes flipped.
   */
  async sweepRelayHealth(ttlMs: number): Promise<{ tenants: number; flipped: number }> {
    const cutoff = new Date(Date.now() - ttlMs).toISOString();
    const quiet = (await this.db.selectFrom('relays').select('id')
      .where((eb) => eb.or([eb('reported_at', 'is', null), eb('reported_at', '<=', cutoff)])).execute()).map((r) => r.id);
    if (quiet.length === 0) return { tenants: 0, flipped: 0 };
    const tenants = await this.db.selectFrom('relay_links').select('tenant_id').distinct()
      .where('relay_id', 'in', quiet).where('reported_unseen', 'is not', null).execute();
    let changedTenants = 0;
    let flipped = 0;
    for (const { tenant_id: tenantId } of tenants) {
      const out = await this.db.transaction().execute(async (trx) => {
        if (!(await lockTenant(trx, this.backend, tenantId))) return { changes: [], gen: null as number | null };
        const lapsed = await trx.selectFrom('relay_links').innerJoin('relays', 'relays.id', 'relay_links.relay_id')
          .select(['relay_links.id as id', 'relay_links.node_id as node_id'])
          .where('relay_links.tenant_id', '=', tenantId).where('relay_links.reported_unseen', 'is not', null)
          .where((eb) => eb.or([eb('relays.reported_at', 'is', null), eb('relays.reported_at', '<=', cutoff)]))
          .execute();
        if (lapsed.length === 0) return { changes: [], gen: null as number | null };
        for (let i = 0; i < lapsed.length; i += 500) {
          await trx.updateTable('relay_links').set({ reported_unseen: null })
            .where('tenant_id', '=', tenantId).where('id', 'in', lapsed.slice(i, i + 500).map((l) => l.id)).execute();
        }
        const changes = await deriveUnseen(trx, tenantId, [...new Set(lapsed.map((l) => l.node_id))], ttlMs);
        if (changes.length === 0) return { changes, gen: null as number | null };
        return { changes, gen: await this.commitUnseen(trx, tenantId, changes) };
      }).catch(() => ({ changes: [], gen: null as number | null })); // tenant deleted meanwhile
      if (out.gen !== null) {
        this.onCommit?.(tenantId, out.gen);
        changedTenants++;
        flipped += out.changes.length;
      }
    }
    return { tenants: changedTenants, flipped };
  }

  /**
   * Flips a relay's liveness (once: a conditional update, so of several
   * replicas one does it) and bumps the generation of every tenant it serves,
   * in one transaction, so their nodes' maps say which relays are live.
   * Going quiet needs `cutoff`: only a relay that has not reported since then
   * is marked quiet. Returns whether this call flipped it.
   */
  async setRelayLive(relayId: number, live: boolean, cutoff: string | null = null): Promise<boolean> {
    const relay = await this.db.selectFrom('relays').select(['tenant_id', 'live']).where('id', '=', relayId).executeTakeFirst();
    if (!relay || (relay.live === 1) === live) return false;
    const tenants = relay.tenant_id !== null ? [relay.tenant_id] : (await this.listTenants()).map((t) => t.id);
    return this.writeTenants(tenants, 'system:relay-health', async (_txs, relays) => relays.setLive(relayId, live, cutoff));
  }

  /** Live relays that have not reported since `cutoff` (the sweep marks them quiet). */
  async relaysGoneQuiet(cutoff: string): Promise<number[]> {
    return (await this.db.selectFrom('relays').select('id').where('live', '=', 1)
      .where((eb) => eb.or([eb('reported_at', 'is', null), eb('reported_at', '<=', cutoff)])).execute()).map((r) => r.id);
  }

  /**
   * The first `limit` nodes of all tenants (by tenant and node name) with what
   * the per-node metrics show: online, the latest sign of life, and the RTT of
   * the link a relay saw most recently; `total` counts every node.
   */
  async nodeSummary(limit: number): Promise<{
    total: number;
    nodes: { tenant: string; id: number; name: string; online: boolean; last_seen: string | null; relay_last_seen: string | null; rtt_ms: number | null }[];
  }> {
    const total = Number((await this.db.selectFrom('nodes').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirst())?.n ?? 0);
    const rows = await this.db.selectFrom('nodes').innerJoin('tenants', 'tenants.id', 'nodes.tenant_id')
      .select(['tenants.name as tenant', 'nodes.id as id', 'nodes.name as name', 'nodes.online as online', 'nodes.unseen as unseen', 'nodes.last_seen as last_seen'])
      .orderBy('tenants.name').orderBy('nodes.name').limit(limit).execute();
    const latest = new Map<number, LinkHealth>();
    const ids = rows.map((r) => r.id);
    for (let i = 0; i < ids.length; i += 500) {
      const links = await this.db.selectFrom('relay_links').select(['node_id', 'last_seen_at', 'rtt_ms'])
        .where('node_id', 'in', ids.slice(i, i + 500)).where('last_seen_at', 'is not', null).execute();
      latestLinkByNode(links, latest);
    }
    return {
      total,
      nodes: rows.map((r) => {
        const h = latest.get(r.id);
        return {
          tenant: r.tenant, id: r.id, name: r.name, online: r.online === 1 && r.unseen === 0,
          last_seen: r.last_seen, relay_last_seen: h?.lastSeenAt ?? null, rtt_ms: h?.rttMs ?? null,
        };
      }),
    };
  }

  /** Every tenant's routers (nodes announcing or approved for routes) and stored primaries, for the metrics. */
  async routeSummary(): Promise<{
    routers: { tenant: string; id: number; name: string; announced_routes: string; approved_routes: string }[];
    primaries: { tenant: string; prefix: string; node: string }[];
  }> {
    const routers = await this.db.selectFrom('nodes').innerJoin('tenants', 'tenants.id', 'nodes.tenant_id')
      .select(['tenants.name as tenant', 'nodes.id as id', 'nodes.name as name', 'nodes.announced_routes as announced_routes', 'nodes.approved_routes as approved_routes'])
      .where((eb) => eb.or([eb('nodes.announced_routes', '!=', '[]'), eb('nodes.approved_routes', '!=', '[]')]))
      .orderBy('tenants.name').orderBy('nodes.id').execute();
    const primaries = await this.db.selectFrom('primaries').innerJoin('tenants', 'tenants.id', 'primaries.tenant_id')
      .innerJoin('nodes', 'nodes.id', 'primaries.node_id')
      .select(['tenants.name as tenant', 'primaries.prefix as prefix', 'nodes.name as node'])
      .orderBy('tenants.name').orderBy('primaries.prefix').execute();
    return { routers, primaries };
  }

  /** Marks every node offline (on startup of a single-replica SQLite server). */
  async resetOnline(): Promise<void> {
    await this.db.updateTable('nodes').set({ online: 0 }).where('online', '=', 1).execute();
    await this.db.deleteFrom('primaries').execute(); // nobody online: nobody primary
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

export function publicTenantFields(t: TenantRow): Record<string, unknown> {
  return { name: t.name, pool4: t.pool4, pool6: t.pool6, dns_base: t.dns_base, max_nodes: t.max_nodes };
}

/** One link's entry of a relay health report, as the server reads it. */
export interface LinkReport {
  /** When the relay last saw the node on this link (null: never). */
  lastSeenAt: string | null;
  rtt: number | null;
  /** The relay's verdict: it has not seen the node recently. */
  unseen: boolean;
}

export type RelayLinkHealth = Pick<RelayLinkRow, 'id' | 'tenant_id' | 'node_id' | 'link_id' | 'last_seen_at' | 'rtt_ms' | 'reported_unseen'>;

interface LinkWrite {
  id: number;
  last_seen_at: string | null;
  rtt_ms: number | null;
  reported_unseen: number | null;
}

/** Locks the tenant row for this transaction (PostgreSQL; SQLite transactions are serial). False when it is gone. */
async function lockTenant(trx: Transaction<Database>, backend: DbHandle['backend'], tenantId: number): Promise<boolean> {
  const q = trx.selectFrom('tenants').select('id').where('id', '=', tenantId);
  return (await (backend === 'postgres' ? q.forUpdate() : q).executeTakeFirst()) !== undefined;
}

/**
 * Writes link health rows of one tenant: one UPDATE … FROM (VALUES …) per
 * chunk of links (SQLite ≥ 3.33 and PostgreSQL alike).
 */
async function writeLinkHealth(trx: Transaction<Database>, tenantId: number, writes: LinkWrite[]): Promise<void> {
  const CHUNK = 2000; // 4 parameters each: well below both backends' limits
  for (let i = 0; i < writes.length; i += CHUNK) {
    const part = writes.slice(i, i + CHUNK);
    const values = sql.join(part.map((w) => sql`(cast(${w.id} as integer), cast(${w.last_seen_at} as text), cast(${w.rtt_ms} as integer), cast(${w.reported_unseen} as integer))`));
    await sql`update relay_links set last_seen_at = v.column2, rtt_ms = v.column3, reported_unseen = v.column4
      from (values ${values}) as v where relay_links.id = v.column1 and relay_links.tenant_id = ${tenantId}`.execute(trx);
  }
}

/**
 * Re-derives `unseen` for some nodes of a tenant from their links' verdicts:
 * a node is unseen while at least one relay that reported within `ttlMs`
 * says it is unseen and no such relay says it is seen. Returns the nodes whose
 * stored bit differs (the caller stores them).
 */
export async function deriveUnseen(trx: Kysely<Database>, tenantId: number, nodeIds: number[], ttlMs: number): Promise<{ nodeId: number; unseen: boolean }[]> {
  if (nodeIds.length === 0) return [];
  const cutoff = new Date(Date.now() - ttlMs).toISOString();
  const changes: { nodeId: number; unseen: boolean }[] = [];
  for (let i = 0; i < nodeIds.length; i += 500) {
    const ids = nodeIds.slice(i, i + 500);
    const [verdicts, nodes] = await Promise.all([
      trx.selectFrom('relay_links').innerJoin('relays', 'relays.id', 'relay_links.relay_id')
        .select(['relay_links.node_id as node_id', 'relay_links.reported_unseen as v'])
        .where('relay_links.tenant_id', '=', tenantId).where('relay_links.node_id', 'in', ids)
        .where('relay_links.reported_unseen', 'is not', null).where('relays.reported_at', '>', cutoff)
        .execute(),
      trx.selectFrom('nodes').select(['id', 'unseen']).where('tenant_id', '=', tenantId).where('id', 'in', ids).execute(),
    ]);
    const says = new Map<number, { seen: boolean; unseen: boolean }>();
    for (const r of verdicts) {
      const s = says.get(r.node_id) ?? { seen: false, unseen: false };
      if (r.v === 1) s.unseen = true;
      else s.seen = true;
      says.set(r.node_id, s);
    }
    for (const n of nodes) {
      const s = says.get(n.id);
      const unseen = s !== undefined && s.unseen && !s.seen;
      if ((n.unseen === 1) !== unseen) changes.push({ nodeId: n.id, unseen });
    }
  }
  return changes;
}
