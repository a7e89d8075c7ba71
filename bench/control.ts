// Control-server benchmark: 10 000 simulated nodes in one tenant, and 100
// tenants of 100 nodes. Measures registration rate, the time until every node
// has received its new map after a policy change, and the server's RSS.
// Prints one JSON line. LARKTUN_BENCH_NODES scales the node count (default
// 10000); LARKTUN_BENCH_DB=postgres://… runs on PostgreSQL (fresh schema).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { request } from 'node:http';
import pg from 'pg';
import { generateNodeKey, signRegistration } from '../src/control/nodekey.js';

const SELF = fileURLToPath(import.meta.url);

interface Server {
  url: string;
  proc: ChildProcess;
  dir: string;
  opKey: string;
}

async function startChild(db: string): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), 'larktun-bench-'));
  const proc = spawn(process.execPath, [...(process.env['LARKTUN_BENCH_PROF'] ? ['--cpu-prof', `--cpu-prof-dir=${process.env['LARKTUN_BENCH_PROF']}`] : []), '--import', 'tsx', SELF, '--server-child', dir, db], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let buf = '';
    proc.stdout?.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /READY (\S+)/.exec(buf);
      if (m) resolve(m[1] as string);
    });
    proc.on('exit', (c) => reject(new Error(`server exited ${c}`)));
  });
  return { url, proc, dir, opKey: readFileSync(join(dir, 'operator.key'), 'utf8').trim() };
}

function rssMiB(pid: number): { rss: number; peak: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0);
  return { rss: Math.round(kb('VmRSS') / 1024), peak: Math.round(kb('VmHWM') / 1024) };
}


async function call(base: string, key: string | null, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(base + path, {
    method,
    headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const j = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(j)}`);
  return j;
}

async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (i < items.length) await fn(items[i++] as T);
  }));
}

const POLICY_A = `{
  "tagOwners": { "tag:server": [], "tag:client": [] },
  "acls": [ { "action": "accept", "src": ["tag:client"], "dst": ["tag:server:22"] } ],
}`;
const POLICY_B = `{
  "tagOwners": { "tag:server": [], "tag:client": [] },
  "acls": [
    { "action": "accept", "src": ["tag:client"], "dst": ["tag:server:22,443"] },
    { "action": "accept", "src": ["tag:server"], "dst": ["tag:client:*"] },
  ],
}`;

interface Stream {
  maps: number;
  lastVersion: number;
  waiter: (() => void) | null;
  target: number;
}

/** A minimal SSE client on node:http (10 000 of them in one process). */
function openStream(url: string, token: string, st: Stream): Promise<void> {
  return new Promise((resolve, reject) => {
    const u = new URL(`${url}/node/v1/stream`);
    const req = request({ host: u.hostname, port: u.port, path: u.pathname, headers: { authorization: `Bearer ${token}` }, agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`stream ${res.statusCode}`));
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (block.includes('event: map') || block.includes('event: patch')) {
            st.maps++;
            const m = /^id: (\d+)\./m.exec(block);
            if (m) st.lastVersion = Number(m[1]);
            if (st.maps === 1) resolve();
            if (st.waiter && st.maps >= st.target) {
              const w = st.waiter;
              st.waiter = null;
              w();
            }
          }
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

async function scenario(db: string, tenants: number, perTenant: number): Promise<Record<string, number>> {
  // LARKTUN_BENCH_ONLY=one|many runs a single scenario
  if (process.env['LARKTUN_BENCH_ONLY'] === 'many' && tenants === 1) return {};
  if (process.env['LARKTUN_BENCH_ONLY'] === 'one' && tenants > 1) return {};
  const srv = await startChild(db);
  try {
    const tokens: { tenant: string; token: string }[] = [];
    const admins = new Map<string, string>();
    const authKeys: { tenant: string; server: string; client: string }[] = [];
    for (let t = 0; t < tenants; t++) {
      const name = `t${t}`;
      await call(srv.url, srv.opKey, 'POST', '/api/v1/tenants', { name, max_nodes: perTenant + 10 });
      const key = (await call(srv.url, srv.opKey, 'POST', `/api/v1/tenants/${name}/apikeys`, { role: 'admin' }))['key'] as string;
      admins.set(name, key);
      await call(srv.url, key, 'PUT', `/api/v1/tenants/${name}/policy`, { policy: POLICY_A });
      const server = (await call(srv.url, key, 'POST', `/api/v1/tenants/${name}/authkeys`, { tags: ['tag:server'], reusable: true }))['key'] as string;
      const client = (await call(srv.url, key, 'POST', `/api/v1/tenants/${name}/authkeys`, { tags: ['tag:client'], reusable: true }))['key'] as string;
      authKeys.push({ tenant: name, server, client });
    }
    // 1 % servers, the rest clients
    const jobs: { tenant: string; key: string; i: number }[] = [];
    for (const k of authKeys) for (let i = 0; i < perTenant; i++) jobs.push({ tenant: k.tenant, key: i % 100 === 0 ? k.server : k.client, i });
    const t0 = performance.now();
    await pool(jobs, 64, async (j) => {
      const id = generateNodeKey();
      const ch = await call(srv.url, null, 'POST', '/node/v1/register/challenge', { auth_key: j.key });
      const nonce = ch['nonce'] as string;
      const signature = signRegistration(id.privateKey, nonce, id.nodeKey, ch['tenant'] as string);
      const r = await call(srv.url, null, 'POST', '/node/v1/register', { auth_key: j.key, node_key: id.nodeKey, nonce, signature, hostname: `n${j.i}` });
      tokens.push({ tenant: j.tenant, token: r['token'] as string });
    });
    const regSeconds = (performance.now() - t0) / 1000;

    const streams = tokens.map(() => ({ maps: 0, lastVersion: 0, waiter: null, target: 0 }) as Stream);
    const c0 = performance.now();
    await pool(tokens.map((t, i) => ({ ...t, i })), 256, async (x) => openStream(srv.url, x.token, streams[x.i] as Stream));
    const connectSeconds = (performance.now() - c0) / 1000;
    // let the connect burst settle: no map arrives for 1 s
    for (let quiet = 0; quiet < 10; ) {
      const before = streams.reduce((a, s) => a + s.maps, 0);
      await new Promise((r) => setTimeout(r, 100));
      quiet = streams.reduce((a, s) => a + s.maps, 0) === before ? quiet + 1 : 0;
    }
    const rssConnected = rssMiB(srv.proc.pid as number);

    // policy change in every tenant; time until every node has a new map
    const waits = streams.map((s) => new Promise<void>((resolve) => {
      s.target = s.maps + 1;
      s.waiter = resolve;
    }));
    const p0 = performance.now();
    await Promise.all([...admins].map(([name, key]) => call(srv.url, key, 'PUT', `/api/v1/tenants/${name}/policy`, { policy: POLICY_B })));
    await Promise.all(waits);
    const propagateMs = performance.now() - p0;
    const rss = rssMiB(srv.proc.pid as number);
    return {
      nodes: tokens.length,
      registrations_per_s: Math.round(tokens.length / regSeconds),
      register_seconds: Number(regSeconds.toFixed(2)),
      stream_connect_seconds: Number(connectSeconds.toFixed(2)),
      policy_change_all_maps_ms: Math.round(propagateMs),
      rss_connected_mib: rssConnected.rss,
      rss_mib: rss.rss,
      rss_peak_mib: rss.peak,
    };
  } finally {
    const exited = new Promise((r) => srv.proc.once('exit', r));
    srv.proc.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    srv.proc.kill('SIGKILL');
    rmSync(srv.dir, { recursive: true, force: true });
  }
}

/** A database for one scenario: SQLite, or a fresh PostgreSQL schema. */
async function freshDb(): Promise<{ db: string; drop: () => Promise<void> }> {
  const base = process.env['LARKTUN_BENCH_DB'];
  if (!base) return { db: 'sqlite', drop: async () => {} };
  const schema = `lkbench_${randomBytes(4).toString('hex')}`;
  const c = new pg.Client({ connectionString: base });
  await c.connect();
  await c.query(`create schema ${schema}`);
  await c.end();
  return {
    db: `${base}${base.includes('?') ? '&' : '?'}options=${encodeURIComponent(`-c search_path=${schema}`)}`,
    drop: async () => {
      const d = new pg.Client({ connectionString: base });
      await d.connect();
      await d.query(`drop schema ${schema} cascade`);
      await d.end();
    },
  };
}

async function withDb(tenants: number, perTenant: number): Promise<Record<string, number>> {
  const d = await freshDb();
  try {
    return await scenario(d.db, tenants, perTenant);
  } finally {
    await d.drop();
  }
}

async function main(): Promise<void> {
  const n = Number(process.env['LARKTUN_BENCH_NODES'] ?? 10000);
  const one = await withDb(1, n);
  const many = await withDb(100, Math.max(1, Math.round(n / 100)));
  process.stdout.write(`${JSON.stringify({
    bench: 'control',
    db: process.env['LARKTUN_BENCH_DB'] ? 'postgres' : 'sqlite',
    one_tenant: one,
    hundred_tenants: many,
    targets: { policy_change_all_maps_ms: 5000, rss_mib: 1024 },
  })}\n`);
  // open client sockets to the (stopped) servers must not keep the bench alive
  process.exit(0);
}

if (process.argv[2] === '--server-child') {
  const { startServer } = await import('../src/control/index.js');
  const srv = await startServer({ listen: '127.0.0.1:0', dataDir: process.argv[3] as string, db: process.argv[4] as string, logLevel: 'warn' });
  process.stdout.write(`READY ${srv.url}\n`);
  process.on('SIGTERM', () => void srv.close().then(() => process.exit(0)));
} else {
  await main();
}
