// Opening the database: embedded SQLite (WAL) in the data directory, or
// PostgreSQL from a postgres:// URL. Both get the same migrations.
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import pg from 'pg';
import { Kysely, PostgresDialect, SqliteDialect, sql, type SqliteDatabase } from 'kysely';
import type { Database } from './schema.js';
import { migrateToLatest, type Backend } from './migrations.js';

export interface DbHandle {
  db: Kysely<Database>;
  backend: Backend;
  /** Connection string for PostgreSQL (used by LISTEN/NOTIFY), null on SQLite. */
  pgUrl: string | null;
  /** SQLite file path, null on PostgreSQL. */
  file: string | null;
  close(): Promise<void>;
}

export function isPostgresUrl(spec: string): boolean {
  return /^postgres(ql)?:\/\//i.test(spec);
}

/**
 * `spec` is "sqlite" (file larktun.db in dataDir), "sqlite:PATH", or a
 * postgres:// URL. Runs migrations before returning.
 */
export async function openDatabase(spec: string, dataDir: string): Promise<DbHandle> {
  let handle: DbHandle;
  // The data directory holds the operator key and the SQLite file (relay link
  // keys): owner only, also when it existed before with looser modes.
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o700);
  if (isPostgresUrl(spec)) {
    // keepAlive: a connection cut silently (a partition that drops packets) fails in
    // about a minute instead of TCP's quarter of an hour; a connect gives up after 10 s.
    const pool = new pg.Pool({ connectionString: spec, max: 10, keepAlive: true, connectionTimeoutMillis: 10_000 });
    // An idle client erroring (server restart) must not crash the process.
    pool.on('error', () => undefined);
    // Nor may one that is checked out when its connection drops (the database
    // restarts or a partition cuts it mid-query): the pool listens only to idle
    // clients, and pg emits 'error' on the client as well as failing its query.
    pool.on('connect', (client) => client.on('error', () => undefined));
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    handle = { db, backend: 'postgres', pgUrl: spec, file: null, close: () => db.destroy() };
  } else if (spec === 'sqlite' || spec.startsWith('sqlite:')) {
    const file = spec === 'sqlite' ? join(dataDir, 'larktun.db') : spec.slice('sqlite:'.length);
    // Created 0600 (SQLite would use 0644 under the usual umask); an existing
    // file and its WAL/SHM files are tightened to 0600. SQLite gives the WAL
    // and SHM files it creates later the mode of the database file.
    closeSync(openSync(file, 'a', 0o600));
    restrictSqliteFiles(file);
    const raw = new BetterSqlite3(file);
    raw.pragma('journal_mode = WAL');
    restrictSqliteFiles(file);
    // NORMAL in WAL mode: a committed transaction survives a crash of the process
    // (kill -9); only an OS crash/power loss can lose the last commits.
    raw.pragma('synchronous = NORMAL');
    raw.pragma('foreign_keys = ON');
    raw.pragma('busy_timeout = 5000');
    const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: cachingStatements(raw) }) });
    handle = { db, backend: 'sqlite', pgUrl: null, file, close: () => db.destroy() };
  } else {
    throw new Error(`--db "${spec}" is not understood: use "sqlite" or a postgres://user@host:port/db URL`);
  }
  try {
    await migrateToLatest(handle.db as unknown as Kysely<unknown>, handle.backend);
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
  return handle;
}

/** chmod 0600 the SQLite file and, where present, its -wal and -shm files. */
export function restrictSqliteFiles(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    if (existsSync(f)) chmodSync(f, 0o600);
  }
}

/**
 * True when `err` says the database storage is full: SQLite's SQLITE_FULL
 * (disk full, or max_page_count reached) or PostgreSQL's disk_full (53100).
 */
export function isStorageFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'SQLITE_FULL' || code === '53100';
}

export async function pingDatabase(db: Kysely<Database>): Promise<void> {
  await sql`select 1`.execute(db);
}

/**
 * better-sqlite3 compiles a statement on every prepare(); Kysely prepares per
 * query. Caching prepared statements by SQL text removes that cost (statements
 * are reusable, and better-sqlite3 is synchronous, so no two uses overlap).
 */
function cachingStatements(raw: BetterSqlite3.Database): SqliteDatabase {
  const cache = new Map<string, BetterSqlite3.Statement>();
  // SQLite rolls a transaction back by itself when its COMMIT fails with
  // SQLITE_FULL (or IOERR, NOMEM); Kysely's ROLLBACK after that failed with
  // "cannot rollback - no transaction is active", and that error replaced the
  // real one. A ROLLBACK with no transaction open is a no-op here, so the
  // caller sees the real cause.
  const rollback = raw.prepare('rollback');
  const rollbackIfActive = {
    reader: false,
    run: () => (raw.inTransaction ? rollback.run() : { changes: 0, lastInsertRowid: 0 }),
  };
  return {
    close: () => {
      cache.clear();
      raw.close();
    },
    prepare: (sqlText: string) => {
      if (sqlText === 'rollback') return rollbackIfActive as unknown as ReturnType<SqliteDatabase['prepare']>;
      let st = cache.get(sqlText);
      if (!st) {
        st = raw.prepare(sqlText);
        if (cache.size >= 500) cache.delete(cache.keys().next().value as string);
        cache.set(sqlText, st);
      }
      return st as unknown as ReturnType<SqliteDatabase['prepare']>;
    },
  };
}
