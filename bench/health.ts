// Relay health-report benchmark: one tenant of LARKTUN_BENCH_LINKS nodes
// (default 10 000) linked to one shared relay, on SQLite (or
// LARKTUN_BENCH_DB=postgres://… on a fresh schema). Times POST /relay/v1/health
// covering every link: the first report, steady reports (nothing changed but
// the relay's clocks), and a report that flips 1 % of the nodes to unseen.
// Prints one JSON line.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { startServer } from '../src/control/server.js';

const LINKS = Number(process.env['LARKTUN_BENCH_LINKS'] ?? 10000);

async function call(base: string, key: string, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const j = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(j)}`);
  return j;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'larktun-bench-health-'));
  let dbSpec = 'sqlite';
  let dropSchema: (() => Promise<void>) | null = null;
  const pgBase = process.env['LARKTUN_BENCH_DB'];
  if (pgBase) {
    const schema = `lkbench_${randomBytes(5).toString('hex')}`;
    const c = new pg.Client({ connectionString: pgBase });
    await c.connect();
    await c.query(`create schema ${schema}`);
    await c.end();
    dbSpec = `${pgBase}${pgBase.includes('?') ? '&' : '?'}options=${encodeURIComponent(`-c search_path=${schema}`)}`;
    dropSchema = async () => {
      const d = new pg.Client({ connectionString: pgBase });
      await d.connect();
      await d.query(`drop schema if exists ${schema} cascade`);
      await d.end();
    };
  }
  const srv = await startServer({ listen: '127.0.0.1:0', dataDir: dir, db: dbSpec, logLevel: 'silent' });
  try {
    const { readFileSync } = await import('node:fs');
    const op = readFileSync(join(dir, 'operator.key'), 'utf8').trim();
    await call(srv.url, op, 'POST', '/api/v1/tenants', { name: 'bench', pool4: '10.0.0.0/8' });
    const t = await srv.store.getTenantByName('bench');
    if (!t) throw new Error('no tenant');
    // Nodes go straight into the database (registration is not what is measured).
    const now = new Date().toISOString();
    const rows = Array.from({ length: LINKS }, (_, i) => ({
      tenant_id: t.id, name: `n${i}`, hostname: `n${i}`, node_key: randomBytes(32).toString('base64'),
      token_prefix: `bench${i}`, token_hash: 'x', user_id: null, tags: '[]',
      ipv4: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${(i & 255) + 1}`, ipv6: null,
      announced_routes: '[]', approved_routes: '[]', exit_node_wish: 0, endpoints: '[]', hostinfo: '{}',
      online: 1, last_seen: now, ephemeral: 0, auth_key_id: null, expires_at: null, created_at: now, updated_at: now,
    }));
    for (let i = 0; i < rows.length; i += 500) await srv.store.db.insertInto('nodes').values(rows.slice(i, i + 500)).execute();
    const relay = await call(srv.url, op, 'POST', '/api/v1/relays', { name: 'edge', endpoints: ['203.0.113.1:18020'] });
    const token = String(relay['token']);
    const view = await call(srv.url, token, 'GET', '/relay/v1/map');
    const linkIds = ((view['tenants'] as { links: { link_id: number }[] }[])[0]?.links ?? []).map((l) => l.link_id);
    if (linkIds.length !== LINKS) throw new Error(`expected ${LINKS} links, got ${linkIds.length}`);

    const report = (unseen: (i: number) => boolean) => ({
      links: linkIds.map((link_id, i) => ({ link_id, last_seen_ms_ago: unseen(i) ? 5000 : Math.floor(Math.random() * 900), rtt_ms: 20 + Math.random() * 5 })),
    });
    const time = async (body: unknown): Promise<number> => {
      const t0 = performance.now();
      await call(srv.url, token, 'POST', '/relay/v1/health', body);
      return performance.now() - t0;
    };
    const first = await time(report(() => false));
    const steady: number[] = [];
    for (let k = 0; k < 10; k++) steady.push(await time(report(() => false)));
    const flip = await time(report((i) => i % 100 === 0));
    const back = await time(report(() => false));
    process.stdout.write(`${JSON.stringify({
      bench: 'health', backend: srv.store.backend, links: LINKS,
      first_report_ms: Math.round(first), steady_report_ms: Math.round(median(steady)),
      flip_1pct_unseen_ms: Math.round(flip), flip_back_ms: Math.round(back),
    })}\n`);
  } finally {
    await srv.close();
    rmSync(dir, { recursive: true, force: true });
    await dropSchema?.();
  }
}

await main();
