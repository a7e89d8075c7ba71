// The data directory and the SQLite files hold secrets (operator key, relay
// link keys): 0700 / 0600, also when they existed before with looser modes.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { openDatabase } from '../../src/control/store/db.js';

const root = mkdtempSync(path.join(tmpdir(), 'larktun-modes-'));
after(() => rmSync(root, { recursive: true, force: true }));
const mode = (p: string) => statSync(p).mode & 0o777;

test('an existing 0755 data dir with a 0644 database (and -wal/-shm) is tightened to 0700/0600 at start', async () => {
  const dir = path.join(root, 'existing');
  const old = process.umask(0o022);
  try {
    // what an earlier version left: dir 0755, files 0644, WAL/SHM still there
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
    const file = path.join(dir, 'larktun.db');
    const raw = new BetterSqlite3(file);
    raw.pragma('journal_mode = WAL');
    raw.exec('create table t (x integer)');
    for (const f of [file, `${file}-wal`, `${file}-shm`]) chmodSync(f, 0o644);
    raw.close();
    writeFileSync(`${file}-wal`, '', { mode: 0o644 });
    chmodSync(`${file}-wal`, 0o644);
    assert.equal(mode(dir), 0o755);
    assert.equal(mode(file), 0o644);

    const h = await openDatabase('sqlite', dir);
    try {
      assert.equal(mode(dir), 0o700, 'data dir');
      assert.equal(mode(file), 0o600, 'database file');
      for (const f of [`${file}-wal`, `${file}-shm`]) {
        assert.ok(existsSync(f), `${f} exists in WAL mode`);
        assert.equal(mode(f), 0o600, f);
      }
    } finally {
      await h.close();
    }
  } finally {
    process.umask(old);
  }
});

test('a new data dir and database are 0700/0600 under a 022 umask', async () => {
  const dir = path.join(root, 'fresh');
  const old = process.umask(0o022);
  try {
    const h = await openDatabase('sqlite', dir);
    try {
      const file = path.join(dir, 'larktun.db');
      assert.equal(mode(dir), 0o700);
      assert.equal(mode(file), 0o600);
      for (const f of [`${file}-wal`, `${file}-shm`]) if (existsSync(f)) assert.equal(mode(f), 0o600, f);
    } finally {
      await h.close();
    }
  } finally {
    process.umask(old);
  }
});
