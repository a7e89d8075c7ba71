// Schema migrations, shared by SQLite and PostgreSQL. Kysely's Migrator records
// applied migrations and holds a lock, so several servers starting at once on
// one PostgreSQL database apply each migration exactly once.
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';

export type Backend = 'sqlite' | 'postgres';

// Migrations receive a Kysely<unknown>; the schema builder is untyped by design.
type Db = Kysely<unknown>;

function migrations(backend: Backend): Record<string, Migration> {
  const id = (t: ReturnType<Db['schema']['createTable']>) =>
    backend === 'postgres'
      ? t.addColumn('id', 'serial', (c) => c.primaryKey())
      : t.addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement());
  const tenantRef = (t: ReturnType<Db['schema']['createTable']>) =>
    t.addColumn('tenant_id', 'integer', (c) => c.notNull().references('tenants.id').onDelete('cascade'));

  return {
    '0001_initial': {
      async up(db: Db): Promise<void> {
        await id(db.schema.createTable('tenants'))
          .addColumn('name', 'text', (c) => c.notNull().unique())
          .addColumn('pool4', 'text', (c) => c.notNull())
          .addColumn('pool6', 'text')
          .addColumn('dns_base', 'text', (c) => c.notNull())
          .addColumn('max_nodes', 'integer', (c) => c.notNull())
          .addColumn('generation', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();

        await id(db.schema.createTable('operator_keys'))
          .addColumn('prefix', 'text', (c) => c.notNull().unique())
          .addColumn('hash', 'text', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .execute();

        await tenantRef(id(db.schema.createTable('api_keys')))
          .addColumn('prefix', 'text', (c) => c.notNull().unique())
          .addColumn('hash', 'text', (c) => c.notNull())
          .addColumn('role', 'text', (c) => c.notNull())
          .addColumn('description', 'text', (c) => c.notNull().defaultTo(''))
          .addColumn('expires_at', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('last_used_at', 'text')
          .execute();
        await db.schema.createIndex('api_keys_tenant').on('api_keys').column('tenant_id').execute();

        await tenantRef(id(db.schema.createTable('users')))
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('email', 'text')
          .addColumn('display_name', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addUniqueConstraint('users_tenant_name', ['tenant_id', 'name'])
          .execute();

        await tenantRef(id(db.schema.createTable('auth_keys')))
          .addColumn('prefix', 'text', (c) => c.notNull().unique())
          .addColumn('hash', 'text', (c) => c.notNull())
          .addColumn('user_id', 'integer', (c) => c.references('users.id').onDelete('cascade'))
          .addColumn('tags', 'text', (c) => c.notNull().defaultTo('[]'))
          .addColumn('reusable', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('ephemeral', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('expires_at', 'text')
          .addColumn('used_count', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('description', 'text', (c) => c.notNull().defaultTo(''))
          .addColumn('created_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('auth_keys_tenant').on('auth_keys').column('tenant_id').execute();

        await tenantRef(id(db.schema.createTable('nodes')))
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('hostname', 'text', (c) => c.notNull())
          .addColumn('node_key', 'text', (c) => c.notNull())
          .addColumn('token_prefix', 'text', (c) => c.notNull().unique())
          .addColumn('token_hash', 'text', (c) => c.notNull())
          .addColumn('user_id', 'integer', (c) => c.references('users.id').onDelete('set null'))
          .addColumn('tags', 'text', (c) => c.notNull().defaultTo('[]'))
          .addColumn('ipv4', 'text')
          .addColumn('ipv6', 'text')
          .addColumn('announced_routes', 'text', (c) => c.notNull().defaultTo('[]'))
          .addColumn('approved_routes', 'text', (c) => c.notNull().defaultTo('[]'))
          .addColumn('exit_node_wish', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('endpoints', 'text', (c) => c.notNull().defaultTo('[]'))
          .addColumn('hostinfo', 'text', (c) => c.notNull().defaultTo('{}'))
          .addColumn('online', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('last_seen', 'text')
          .addColumn('ephemeral', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('auth_key_id', 'integer', (c) => c.references('auth_keys.id').onDelete('set null'))
          .addColumn('expires_at', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .addUniqueConstraint('nodes_tenant_name', ['tenant_id', 'name'])
          .addUniqueConstraint('nodes_tenant_key', ['tenant_id', 'node_key'])
          .addUniqueConstraint('nodes_tenant_ipv4', ['tenant_id', 'ipv4'])
          .addUniqueConstraint('nodes_tenant_ipv6', ['tenant_id', 'ipv6'])
          .execute();

        await tenantRef(id(db.schema.createTable('policies')))
          .addColumn('version', 'integer', (c) => c.notNull())
          .addColumn('text', 'text', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('created_by', 'text', (c) => c.notNull())
          .addUniqueConstraint('policies_tenant_version', ['tenant_id', 'version'])
          .execute();

        await tenantRef(id(db.schema.createTable('audit')))
          .addColumn('seq', 'integer', (c) => c.notNull())
          .addColumn('ts', 'text', (c) => c.notNull())
          .addColumn('actor', 'text', (c) => c.notNull())
          .addColumn('action', 'text', (c) => c.notNull())
          .addColumn('object_type', 'text', (c) => c.notNull())
          .addColumn('object_id', 'text', (c) => c.notNull())
          .addColumn('before', 'text')
          .addColumn('after', 'text')
          .addColumn('prev_hash', 'text', (c) => c.notNull())
          .addColumn('hash', 'text', (c) => c.notNull())
          .addUniqueConstraint('audit_tenant_seq', ['tenant_id', 'seq'])
          .execute();
      },
      async down(db: Db): Promise<void> {
        for (const t of ['audit', 'policies', 'nodes', 'auth_keys', 'users', 'api_keys', 'operator_keys', 'tenants']) {
          await db.schema.dropTable(t).ifExists().execute();
        }
      },
    },
    '0002_relays': {
      async up(db: Db): Promise<void> {
        await id(db.schema.createTable('relays'))
          .addColumn('name', 'text', (c) => c.notNull().unique())
          .addColumn('endpoints', 'text', (c) => c.notNull().defaultTo('[]'))
          .addColumn('tenant_id', 'integer', (c) => c.references('tenants.id').onDelete('cascade'))
          .addColumn('self_id', 'integer', (c) => c.notNull())
          .addColumn('token_prefix', 'text', (c) => c.notNull().unique())
          .addColumn('token_hash', 'text', (c) => c.notNull())
          .addColumn('generation', 'integer', (c) => c.notNull().defaultTo(1))
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();
        await tenantRef(id(db.schema.createTable('relay_links')))
          .addColumn('relay_id', 'integer', (c) => c.notNull().references('relays.id').onDelete('cascade'))
          .addColumn('node_id', 'integer', (c) => c.notNull().references('nodes.id').onDelete('cascade'))
          .addColumn('link_id', 'integer', (c) => c.notNull())
          .addColumn('psk', 'text', (c) => c.notNull())
          .addColumn('prev_psk', 'text')
          .addColumn('prev_psk_until', 'text')
          .addColumn('rotated_at', 'text', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addUniqueConstraint('relay_links_relay_link', ['relay_id', 'link_id'])
          .addUniqueConstraint('relay_links_relay_node', ['relay_id', 'node_id'])
          .execute();
        await db.schema.createIndex('relay_links_tenant').on('relay_links').column('tenant_id').execute();
        await db.schema.createIndex('relay_links_node').on('relay_links').column('node_id').execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropTable('relay_links').ifExists().execute();
        await db.schema.dropTable('relays').ifExists().execute();
      },
    },
    '0003_relay_health': {
      async up(db: Db): Promise<void> {
        await db.schema.alterTable('nodes').addColumn('unseen', 'integer', (c) => c.notNull().defaultTo(0)).execute();
        await db.schema.alterTable('relay_links').addColumn('last_seen_at', 'text').execute();
        await db.schema.alterTable('relay_links').addColumn('rtt_ms', 'integer').execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.alterTable('relay_links').dropColumn('rtt_ms').execute();
        await db.schema.alterTable('relay_links').dropColumn('last_seen_at').execute();
        await db.schema.alterTable('nodes').dropColumn('unseen').execute();
      },
    },
    '0004_primaries': {
      async up(db: Db): Promise<void> {
        await tenantRef(id(db.schema.createTable('primaries')))
          .addColumn('prefix', 'text', (c) => c.notNull())
          .addColumn('node_id', 'integer', (c) => c.notNull().references('nodes.id').onDelete('cascade'))
          .addColumn('elected_at', 'text', (c) => c.notNull())
          .addUniqueConstraint('primaries_tenant_prefix', ['tenant_id', 'prefix'])
          .execute();
        // the election reads a tenant's routers on every change: index just those
        await db.schema.createIndex('nodes_routers').on('nodes').column('tenant_id')
          .where(sql.ref('approved_routes'), '!=', '[]').execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropTable('primaries').ifExists().execute();
      },
    },
    '0005_relay_health_ttl': {
      // Relay verdicts expire: a relay's report time (relays.reported_at) and,
      // per link, the verdict of its last report (relay_links.reported_unseen:
      // 1 unseen, 0 seen, null none). nodes.unseen is derived from the verdicts
      // of relays that reported recently; verdicts from before this migration
      // have no report time, so they have lapsed.
      async up(db: Db): Promise<void> {
        await db.schema.alterTable('relays').addColumn('reported_at', 'text').execute();
        await db.schema.alterTable('relay_links').addColumn('reported_unseen', 'integer').execute();
        // the expiry sweep looks for verdicts of relays that went quiet
        await db.schema.createIndex('relay_links_verdicts').on('relay_links').column('relay_id')
          .where(sql.ref('reported_unseen'), 'is not', null).execute();
        await sql`update nodes set unseen = 0 where unseen = 1`.execute(db);
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropIndex('relay_links_verdicts').ifExists().execute();
        await db.schema.alterTable('relay_links').dropColumn('reported_unseen').execute();
        await db.schema.alterTable('relays').dropColumn('reported_at').execute();
      },
    },
    '0006_relay_live': {
      // Relay liveness as a state that flips (1: reporting, 0 or null: quiet or
      // never reported), so a flip is done once, bumps the generation of every
      // tenant the relay serves, and the nodes' maps move to a live relay.
      async up(db: Db): Promise<void> {
        await db.schema.alterTable('relays').addColumn('live', 'integer').execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.alterTable('relays').dropColumn('live').execute();
      },
    },
    '0007_node_identity': {
      // Node keys are proven (src/control/nodekey.ts). nodes.key_proven_at: when
      // the node last proved possession of its node_key (null: registered before
      // this migration, never proven; such a node keeps working with its token,
      // and moves to a proven key by registering with that token). Registration
      // nonces live in the database so that any replica can check a nonce another
      // issued, and taking one (DELETE … RETURNING) is single-use on both backends.
      async up(db: Db): Promise<void> {
        await db.schema.alterTable('nodes').addColumn('key_proven_at', 'text').execute();
        await db.schema.createTable('register_nonces')
          .addColumn('nonce', 'text', (c) => c.primaryKey())
          .addColumn('tenant_id', 'integer', (c) => c.notNull().references('tenants.id').onDelete('cascade'))
          // issued for a registration with this auth key, or (node_id) for a node proving a new key with its token
          .addColumn('auth_key_id', 'integer', (c) => c.references('auth_keys.id').onDelete('cascade'))
          .addColumn('node_id', 'integer', (c) => c.references('nodes.id').onDelete('cascade'))
          .addColumn('expires_at', 'text', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('register_nonces_expiry').on('register_nonces').column('expires_at').execute();
        await db.schema.createIndex('register_nonces_key').on('register_nonces').columns(['auth_key_id', 'created_at']).execute();
        await db.schema.createIndex('register_nonces_node').on('register_nonces').columns(['node_id', 'created_at']).execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropTable('register_nonces').ifExists().execute();
        await db.schema.alterTable('nodes').dropColumn('key_proven_at').execute();
      },
    },
    '0008_node_lease': {
      // Node presence as a lease: the replica a node streams from renews
      // nodes.lease_until (every TTL/3); a node whose lease lapsed (its replica
      // crashed or lost the database) is marked offline by whichever replica
      // sweeps first, which re-elects its primaries. Nodes online before this
      // migration have no lease: the first sweep takes them offline unless a
      // replica streaming them renews first.
      async up(db: Db): Promise<void> {
        await db.schema.alterTable('nodes').addColumn('lease_until', 'text').execute();
        await db.schema.createIndex('nodes_lease').on('nodes').column('lease_until')
          .where(sql.ref('online'), '=', 1).execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropIndex('nodes_lease').ifExists().execute();
        await db.schema.alterTable('nodes').dropColumn('lease_until').execute();
      },
    },
    '0009_console': {
      // Web console: its users (per tenant, password hashed with scrypt) and
      // server-side sessions (token and CSRF token stored as SHA-256 only).
      // Sessions of a tenant go with it; an operator session has no tenant.
      async up(db: Db): Promise<void> {
        await tenantRef(id(db.schema.createTable('console_users')))
          .addColumn('username', 'text', (c) => c.notNull())
          .addColumn('password_hash', 'text', (c) => c.notNull())
          .addColumn('role', 'text', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('created_by', 'text', (c) => c.notNull())
          .addColumn('last_signin_at', 'text')
          .addUniqueConstraint('console_users_tenant_username', ['tenant_id', 'username'])
          .execute();
        await id(db.schema.createTable('console_sessions'))
          .addColumn('token_hash', 'text', (c) => c.notNull().unique())
          .addColumn('csrf_hash', 'text', (c) => c.notNull())
          .addColumn('tenant_id', 'integer', (c) => c.references('tenants.id').onDelete('cascade'))
          .addColumn('user_id', 'integer', (c) => c.references('console_users.id').onDelete('cascade'))
          .addColumn('operator_prefix', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('last_seen_at', 'text', (c) => c.notNull())
          .addColumn('expires_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('console_sessions_user').on('console_sessions').column('user_id').execute();
        await db.schema.createIndex('console_sessions_expires').on('console_sessions').column('expires_at').execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropTable('console_sessions').ifExists().execute();
        await db.schema.dropTable('console_users').ifExists().execute();
      },
    },
    '0010_console_oidc': {
      // Console single sign-on with OpenID Connect: one provider per tenant
      // (its client secret is kept for the token request and never returned by
      // the API), an optional email on console users (unique in a tenant; SSO
      // users are matched by it) with their source ("password" or "sso": an
      // SSO user has no password, password_hash is ''), and the pending
      // sign-ins between /start and the callback (state and browser binding
      // stored as SHA-256, single use, ~10 min).
      async up(db: Db): Promise<void> {
        await tenantRef(id(db.schema.createTable('console_oidc')))
          .addColumn('issuer', 'text', (c) => c.notNull())
          .addColumn('client_id', 'text', (c) => c.notNull())
          .addColumn('client_secret', 'text')
          .addColumn('allowed_domains', 'text', (c) => c.notNull())
          .addColumn('new_user_role', 'text')
          .addColumn('enabled', 'integer', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .addColumn('updated_by', 'text', (c) => c.notNull())
          .addUniqueConstraint('console_oidc_tenant', ['tenant_id'])
          .execute();
        await db.schema.alterTable('console_users').addColumn('email', 'text').execute();
        await db.schema.alterTable('console_users').addColumn('source', 'text', (c) => c.notNull().defaultTo('password')).execute();
        await db.schema.createIndex('console_users_tenant_email').on('console_users').columns(['tenant_id', 'email']).unique().execute();
        await tenantRef(id(db.schema.createTable('console_oidc_states')))
          .addColumn('state_hash', 'text', (c) => c.notNull().unique())
          .addColumn('browser_hash', 'text', (c) => c.notNull())
          .addColumn('nonce', 'text', (c) => c.notNull())
          .addColumn('code_verifier', 'text', (c) => c.notNull())
          .addColumn('redirect_uri', 'text', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('expires_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('console_oidc_states_expires').on('console_oidc_states').column('expires_at').execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropTable('console_oidc_states').ifExists().execute();
        await db.schema.dropIndex('console_users_tenant_email').ifExists().execute();
        await db.schema.alterTable('console_users').dropColumn('source').execute();
        await db.schema.alterTable('console_users').dropColumn('email').execute();
        await db.schema.dropTable('console_oidc').ifExists().execute();
      },
    },
    '0011_node_login': {
      // Interactive node login (larktun up without an auth key): a node that
      // proved its key starts a login; a console user of the tenant approves or
      // rejects it at /login/<login_id>. login_id (256 bits, in the URL) only
      // names the login; the node polls with a separate secret (poll_hash:
      // SHA-256) that never leaves it. node_id is the node made on approval,
      // until the node collects its token (state used).
      async up(db: Db): Promise<void> {
        await tenantRef(db.schema.createTable('node_logins').addColumn('login_id', 'text', (c) => c.primaryKey()))
          .addColumn('poll_hash', 'text', (c) => c.notNull())
          .addColumn('node_key', 'text', (c) => c.notNull())
          .addColumn('nonce', 'text', (c) => c.notNull())
          .addColumn('signature', 'text', (c) => c.notNull())
          .addColumn('hostname', 'text', (c) => c.notNull())
          .addColumn('tags', 'text', (c) => c.notNull())
          .addColumn('hostinfo', 'text', (c) => c.notNull())
          .addColumn('source_addr', 'text', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('approved_by', 'text')
          .addColumn('decided_at', 'text')
          .addColumn('node_id', 'integer', (c) => c.references('nodes.id').onDelete('set null'))
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('expires_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('node_logins_tenant').on('node_logins').columns(['tenant_id', 'state', 'expires_at']).execute();
        await db.schema.createIndex('node_logins_source').on('node_logins').columns(['source_addr', 'state', 'expires_at']).execute();
        await db.schema.createIndex('node_logins_expiry').on('node_logins').column('expires_at').execute();
      },
      async down(db: Db): Promise<void> {
        await db.schema.dropTable('node_logins').ifExists().execute();
      },
    },
  };
}

class InlineProvider implements MigrationProvider {
  constructor(private readonly backend: Backend) {}
  async getMigrations(): Promise<Record<string, Migration>> {
    return migrations(this.backend);
  }
}

/** Applies every pending migration; throws with the failing migration's name. */
export async function migrateToLatest(db: Kysely<unknown>, backend: Backend): Promise<string[]> {
  if (backend === 'sqlite') await sql`PRAGMA foreign_keys = ON`.execute(db);
  // On PostgreSQL the migration bookkeeping lives in the current schema, named
  // explicitly: Kysely otherwise finds its tables in *any* schema of the
  // database and skips creating them in ours.
  let migrationTableSchema: string | undefined;
  if (backend === 'postgres') {
    const r = await sql<{ s: string | null }>`select current_schema() as s`.execute(db);
    migrationTableSchema = r.rows[0]?.s ?? undefined;
  }
  const migrator = new Migrator({ db, provider: new InlineProvider(backend), ...(migrationTableSchema ? { migrationTableSchema } : {}) });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === 'Error');
  if (error) {
    const what = failed ? ` (migration ${failed.migrationName})` : '';
    throw new Error(`database migration failed${what}: ${error instanceof Error ? error.message : String(error)}`);
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}
