// Issue 11: one tenant's policy must not stall the others. Tenant A stores the
// 20 000-host policy (about 750 KB) while its router has 1 024 approved /24
// routes and a connected node; meanwhile tenant B's API requests, /healthz and
// node maps are measured. Compilation runs in worker threads (src/control/compile),
// so B's p99 stays under 200 ms whether A's policy compiles or is refused
// for its budget; either way the outcome is plain in the API.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client, SseReader, cleanup, freshPgSchema, nodeKey, pgUnavailable, sleep, spawnServer, tempDir, type Json, registerNode } from './harness.js';
import { bigPolicy, routerRoutes } from './bigpolicy.js';

const p99 = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)] as number;
};

/**
 * One request, timed; then waits out the rest of a 25 ms period. Paced, not
 * back to back: tenant B is a tenant's normal traffic (three such loops make
 * about 120 requests/s), not a saturation test, whose p99 would measure the
 * queue the test itself builds on the server's one event loop.
 */
async function timed(c: Client, path: string, lat: number[], failures: string[]): Promise<void> {
  const t0 = performance.now();
  const r = await c.get(path);
  const ms = performance.now() - t0;
  lat.push(ms);
  if (r.status !== 200) failures.push(`${path}: ${r.status} ${r.text.slice(0, 200)}`);
  if (ms < 25) await sleep(25 - ms);
}

async function scenario(db: string): Promise<void> {
  const dir = tempDir();
  const srv = await spawnServer({ dataDir: dir, db });
  const streams: SseReader[] = [];
  try {
    const op = new Client(srv.url, srv.operatorKey());
    const anon = op.as(null);
    const setup = async (name: string) => {
      assert.equal((await op.post('/api/v1/tenants', { name })).status, 201);
      const adm = op.as((await op.post(`/api/v1/tenants/${name}/apikeys`, { role: 'admin' })).body.key);
      await adm.post(`/api/v1/tenants/${name}/users`, { name: 'u' });
      const ak = (await adm.post(`/api/v1/tenants/${name}/authkeys`, { user: 'u', reusable: true })).body.key as string;
      return { adm, ak };
    };
    const a = await setup('a');
    const b = await setup('b');

    // Tenant A: a router with 1 024 approved /24 routes, streaming its map, and a client.
    const routes = routerRoutes();
    const router = (await registerNode(anon, { auth_key: a.ak, hostname: 'router', routes })).body;
    const appr = await a.adm.post(`/api/v1/tenants/a/nodes/${router.node.id}/routes`, { approved: routes });
    assert.equal(appr.status, 200, appr.text);
    assert.equal(appr.body.approved.length, 1024);
    const aClient = (await registerNode(anon, { auth_key: a.ak, hostname: 'client' })).body;
    const ra = await SseReader.open(`${srv.url}/node/v1/stream`, router.token);
    streams.push(ra);
    const firstA = await ra.waitMap(() => true, 10_000);
    const oldPolicy = (await a.adm.get('/api/v1/tenants/a/policy')).body;

    // Tenant B: three streaming nodes.
    const bNodes: Json[] = [];
    for (let i = 0; i < 3; i++) bNodes.push((await registerNode(anon, { auth_key: b.ak, hostname: `b${i}` })).body);
    const bs: SseReader[] = [];
    for (const n of bNodes) {
      const s = await SseReader.open(`${srv.url}/node/v1/stream`, n.token);
      streams.push(s);
      bs.push(s);
      await s.waitMap((m) => m.peers.length === 2, 10_000);
    }
    const bNode = anon.as(bNodes[0].token);

    // A stores the big policy; B is measured until A's outcome is known and a second after.
    const text = bigPolicy();
    assert.ok(text.length > 700_000 && text.length < 800_000, `policy is ${text.length} bytes`);
    const lat: number[] = [];
    const mapLat: number[] = [];
    const failures: string[] = [];
    let done = false;
    const t0 = performance.now();
    // Measured until 1.5 s after A's outcome, and for at least 5 s (a faster
    // compiler must not leave too few samples for a p99).
    const put = a.adm.req('PUT', '/api/v1/tenants/a/policy', text, { 'content-type': 'text/plain' }).finally(() => {
      setTimeout(() => { done = true; }, Math.max(1500, 5000 - (performance.now() - t0)));
    });
    const loops = [
      (async () => { while (!done) await timed(anon, '/healthz', lat, failures); })(),
      (async () => { while (!done) await timed(b.adm, '/api/v1/tenants/b/nodes', lat, failures); })(),
      (async () => { while (!done) await timed(bNode, '/node/v1/map', lat, failures); })(),
      (async () => {
        // B changes a node's name; its peers' streams must see it promptly.
        for (let i = 0; !done; i++) {
          const name = `renamed-${i}`;
          const m0 = performance.now();
          const r = await b.adm.patch(`/api/v1/tenants/b/nodes/${bNodes[1].node.id}`, { name });
          if (r.status !== 200) failures.push(`rename: ${r.status}`);
          await bs[0]!.waitMap((m) => m.peers.some((p: Json) => p.name === name), 5000);
          mapLat.push(performance.now() - m0);
          await sleep(100);
        }
      })(),
    ];
    const res = await put;
    const putMs = performance.now() - t0;
    // An accepted policy reaches A's router (its filter now lists A's hosts).
    let aMapMs = -1;
    if (res.status === 200) {
      await ra.waitMap((m) => m.version > firstA.version && JSON.stringify(m.packet_filter).includes('10.0.0.2'), 30_000);
      aMapMs = performance.now() - t0;
    }
    await Promise.all(loops);

    // The server's own event-loop delay over its life (prom-client's default metrics), for the record.
    const metrics = (await op.get('/metrics')).text; // the operator key: /metrics lists every tenant
    const lag = (q: string) => Number(new RegExp(`^larktun_server_nodejs_eventloop_lag_${q}_seconds (\\S+)`, 'm').exec(metrics)?.[1] ?? NaN) * 1000;
    process.stderr.write(`# server event-loop delay: p99 ${lag('p99').toFixed(1)} ms, max ${lag('max').toFixed(1)} ms\n`);
    assert.deepEqual(failures, []);
    assert.ok(lat.length >= 200, `only ${lat.length} requests measured`);
    const p = p99(lat);
    const pm = p99(mapLat);
    process.stderr.write(`# ${db.startsWith('postgres') ? 'PostgreSQL' : 'SQLite'}: A's PUT ${res.status} in ${putMs.toFixed(0)} ms${aMapMs >= 0 ? `, A's router map after ${aMapMs.toFixed(0)} ms` : ''}; B: ${lat.length} requests p99 ${p.toFixed(1)} ms (max ${Math.max(...lat).toFixed(1)}), ${mapLat.length} map updates p99 ${pm.toFixed(1)} ms\n`);
    assert.ok(p < 200, `tenant B's p99 was ${p.toFixed(1)} ms while A's policy compiled`);
    assert.ok(mapLat.length >= 3 && pm < 1000, `tenant B's maps: ${mapLat.map((x) => x.toFixed(0)).join(', ')} ms`);

    // A's outcome is clear through the API.
    const now = (await a.adm.get('/api/v1/tenants/a/policy')).body;
    if (res.status === 200) {
      assert.equal(now.version, res.body.version);
      assert.equal(now.policy, text);
      assert.equal(now.compile.state, 'ok');
      const m = await anon.as(aClient.token).get('/node/v1/map');
      assert.equal(m.status, 200);
    } else {
      assert.equal(res.status, 422, res.text);
      assert.equal(res.body.error.code, 'policy_over_budget');
      assert.equal(res.body.error.details.limit, 'compile_time_ms');
      assert.match(res.body.error.message, /did not compile within the \d+ ms budget.*live policy is unchanged/);
      assert.equal(now.version, oldPolicy.version);
      assert.equal(now.policy, oldPolicy.policy);
    }
  } finally {
    for (const s of streams) s.close();
    await srv.stop();
    cleanup(dir);
  }
}

describe('tenant isolation under a 20 000-host policy', () => {
  it('on SQLite: B stays under 200 ms p99 and gets its maps while A stores the policy', async () => {
    await scenario('sqlite');
  });
  // On a quiet 2-vCPU Xeon: B's p99 28–34 ms (PostgreSQL), 20–114 ms (SQLite).
  // Under heavy outside load (load average 12–19 from other builds) the
  // PostgreSQL p99 rose to 230–446 ms: each of B's requests makes several
  // round trips to PostgreSQL server processes that wait for a CPU; the
  // server's own event loop stayed under 100 ms p99.
  it('on PostgreSQL: the same', async (ctx) => {
    const why = await pgUnavailable();
    if (why) {
      ctx.skip(why);
      return;
    }
    const schema = await freshPgSchema();
    try {
      await scenario(schema.url);
    } finally {
      await schema.drop();
    }
  });
});
