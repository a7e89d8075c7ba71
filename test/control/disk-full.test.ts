// A full disk is reported as what it is: 507 storage_full to the client and
// "database disk is full" with the database path in the log (it was a 500
// logged as "cannot rollback - no transaction is active").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { sql } from 'kysely';
import { pino } from 'pino';
import { startServer, type RunningServer } from '../../src/control/index.js';
import { cleanup, tempDir } from './harness.js';

function logSink(): { lines: string[]; stream: Writable } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  return { lines, stream };
}

async function fillUntilFull(srv: RunningServer, op: string, max: number): Promise<{ status: number; body: Record<string, any> }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const h = { authorization: `Bearer ${op}` };
  for (let i = 0; i < max; i++) {
    const r = await srv.app.inject({ method: 'POST', url: '/api/v1/tenants/acme/users', headers: h, payload: { name: `u${i}`, display_name: 'x'.repeat(200) } });
    if (r.statusCode !== 201) return { status: r.statusCode, body: r.json() };
  }
  throw new Error(`the database never filled up in ${max} writes`);
}

function assertFullReported(res: { status: number; body: Record<string, any> }, lines: string[], file: string): void { // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.equal(res.status, 507, JSON.stringify(res.body));
  assert.equal(res.body['error'].code, 'storage_full');
  assert.match(res.body['error'].message, /storage is full/);
  const full = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === 'database disk is full');
  assert.ok(full.length >= 1, lines.join('\n'));
  assert.equal(full[0]?.['path'], file);
  assert.ok(!lines.some((l) => /cannot rollback/.test(l)), 'the real cause, not the failed rollback');
}

test('SQLite at max_page_count: 507 storage_full, logged as disk full; works again once there is room', async () => {
  const dir = tempDir();
  const { lines, stream } = logSink();
  const srv = await startServer({ listen: '127.0.0.1:0', dataDir: dir, logger: pino({ level: 'info' }, stream) });
  try {
    const op = readFileSync(path.join(dir, 'operator.key'), 'utf8').trim();
    assert.equal((await srv.app.inject({ method: 'POST', url: '/api/v1/tenants', headers: { authorization: `Bearer ${op}` }, payload: { name: 'acme' } })).statusCode, 201);
    const pages = Number((await sql<{ page_count: number }>`pragma page_count`.execute(srv.store.db)).rows[0]?.page_count);
    await sql.raw(`pragma max_page_count = ${pages + 4}`).execute(srv.store.db);
    assertFullReported(await fillUntilFull(srv, op, 500), lines, path.join(dir, 'larktun.db'));
    await sql.raw('pragma max_page_count = 1073741823').execute(srv.store.db);
    const ok = await srv.app.inject({ method: 'POST', url: '/api/v1/tenants/acme/users', headers: { authorization: `Bearer ${op}` }, payload: { name: 'after' } });
    assert.equal(ok.statusCode, 201, ok.body);
  } finally {
    await srv.close();
    cleanup(dir);
  }
});

const mountSkip = (() => {
  if (process.getuid?.() !== 0) return 'needs root to mount a small tmpfs';
  const probe = tempDir('larktun-tmpfs-probe-');
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]);
  if (r.status !== 0) {
    cleanup(probe);
    return `cannot mount tmpfs: ${r.stderr.toString().trim()}`;
  }
  spawnSync('umount', [probe]);
  cleanup(probe);
  return false;
})();

test('a full tmpfs (the commit fails, SQLite rolls back by itself): 507 storage_full with the real cause', { skip: mountSkip }, async () => {
  const mnt = tempDir('larktun-tmpfs-');
  assert.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt]).status, 0);
  const dir = path.join(mnt, 'data');
  mkdirSync(dir);
  const { lines, stream } = logSink();
  let srv: RunningServer | null = null;
  try {
    srv = await startServer({ listen: '127.0.0.1:0', dataDir: dir, logger: pino({ level: 'info' }, stream) });
    const op = readFileSync(path.join(dir, 'operator.key'), 'utf8').trim();
    assert.equal((await srv.app.inject({ method: 'POST', url: '/api/v1/tenants', headers: { authorization: `Bearer ${op}` }, payload: { name: 'acme' } })).statusCode, 201);
    // leave little room: a filler file takes most of what is left
    const df = spawnSync('df', ['-B1', '--output=avail', mnt]).stdout.toString().trim().split('\n').pop() as string;
    writeFileSync(path.join(mnt, 'filler'), Buffer.alloc(Math.max(0, Number(df) - 96 * 1024)));
    assertFullReported(await fillUntilFull(srv, op, 2000), lines, path.join(dir, 'larktun.db'));
    // room again: writes work (the failed transaction left nothing half-done)
    rmSync(path.join(mnt, 'filler'));
    const ok = await srv.app.inject({ method: 'POST', url: '/api/v1/tenants/acme/users', headers: { authorization: `Bearer ${op}` }, payload: { name: 'after' } });
    assert.equal(ok.statusCode, 201, ok.body);
  } finally {
    await srv?.close().catch(() => undefined);
    spawnSync('umount', [mnt]);
    cleanup(mnt);
  }
});
