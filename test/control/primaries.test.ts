// HA primaries are stored per tenant and elected in each change's transaction:
// the Admin API, the maps and every replica give one answer, and a healthy
// current primary is kept (anti-flap) — also by a replica that starts later.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client, SseReader, cleanup, freshPgSchema, registerNode, pgUnavailable, sleep, spawnServer, tempDir, type Json, type ServerProc } from './harness.js';

const ROUTE = '10.70.0.0/16';
const viaPeer = (m: Json): number | null => m.peers.find((p: Json) => p.allowed_ips.includes(ROUTE))?.id ?? null;

async function setupTenant(op: Client): Promise<{ adm: Client; nodes: Record<string, { id: number; token: string }> }> {
  await op.post('/api/v1/tenants', { name: 'ha' });
  const adm = op.as((await op.post('/api/v1/tenants/ha/apikeys', { role: 'admin' })).body.key);
  const pol = await adm.put('/api/v1/tenants/ha/policy', {
    policy: `{"tagOwners": {"tag:router": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
              "autoApprovers": {"routes": {"${ROUTE}": ["tag:router"]}}}`,
  });
  assert.equal(pol.status, 200, pol.text);
  const ak = (await adm.post('/api/v1/tenants/ha/authkeys', { tags: ['tag:router'], reusable: true })).body.key;
  const nodes: Record<string, { id: number; token: string }> = {};
  for (const [host, routes] of [['r1', [ROUTE]], ['r2', [ROUTE]], ['client', []]] as const) {
    const r = await registerNode(op.as(null), { auth_key: ak, hostname: host, routes });
    assert.equal(r.status, 201, r.text);
    nodes[host] = { id: r.body.node.id, token: r.body.token };
  }
  return { adm, nodes };
}

const primaryOf = async (adm: Client): Promise<number | null> => {
  const nodes = (await adm.get('/api/v1/tenants/ha/nodes')).body.nodes as Json[];
  const p = nodes.filter((n) => n.primary_routes.includes(ROUTE)).map((n) => n.id as number);
  assert.ok(p.length <= 1, `one primary at most: ${p}`);
  return p[0] ?? null;
};

async function until(pred: () => Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(50);
  }
}

describe('stored HA primaries', () => {
  it('SQLite: the Admin API and the maps agree; a healthy current primary is kept', async () => {
    const dir = tempDir();
    const srv = await spawnServer({ dataDir: dir, db: 'sqlite' });
    try {
      const op = new Client(srv.url, srv.operatorKey());
      const { adm, nodes } = await setupTenant(op);
      assert.equal(await primaryOf(adm), null, 'nobody online: nobody primary');
      const sc = await SseReader.open(`${srv.url}/node/v1/stream`, nodes['client']!.token);
      const s1 = await SseReader.open(`${srv.url}/node/v1/stream`, nodes['r1']!.token);
      await sc.waitMap((m) => viaPeer(m) === nodes['r1']!.id);
      assert.equal(await primaryOf(adm), nodes['r1']!.id);
      const s2 = await SseReader.open(`${srv.url}/node/v1/stream`, nodes['r2']!.token);
      await s2.waitMap(() => true);
      assert.equal(await primaryOf(adm), nodes['r1']!.id, 'r1 stays while healthy');
      s1.close();
      await sc.waitMap((m) => viaPeer(m) === nodes['r2']!.id);
      assert.equal(await primaryOf(adm), nodes['r2']!.id);
      const s1b = await SseReader.open(`${srv.url}/node/v1/stream`, nodes['r1']!.token);
      await sc.waitMap((m) => m.online.includes(nodes['r1']!.id));
      assert.equal(await primaryOf(adm), nodes['r2']!.id, 'no flap back to the lower id');
      const self2 = (await op.as(nodes['r2']!.token).get('/node/v1/map')).body.self;
      assert.deepEqual(self2.primary_routes, [ROUTE], 'the map says r2 is primary');
      const self1 = (await op.as(nodes['r1']!.token).get('/node/v1/map')).body.self;
      assert.deepEqual(self1.primary_routes, []);
      for (const s of [sc, s2, s1b]) s.close();
    } finally {
      await srv.stop();
      cleanup(dir);
    }
  });

  it('PostgreSQL: replicas share the primaries; a replica started later keeps the current one', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const schema = await freshPgSchema();
    const dirs = [tempDir(), tempDir(), tempDir()];
    const servers: ServerProc[] = [];
    try {
      servers.push(await spawnServer({ dataDir: dirs[0]!, db: schema.url }));
      servers.push(await spawnServer({ dataDir: dirs[1]!, db: schema.url }));
      const [a, b] = servers as [ServerProc, ServerProc];
      const opA = new Client(a.url, a.operatorKey());
      const { adm, nodes } = await setupTenant(opA);
      const admB = new Client(b.url, adm.key);
      const relayTok = (await opA.post('/api/v1/relays', { name: 'edge', endpoints: ['192.0.2.1:18020'] })).body.token as string;
      const rs = await SseReader.open(`${b.url}/relay/v1/stream`, relayTok); // the relay follows replica B
      const routesOf = (v: Json, id: number): string[] => v.tenants[0].links.find((l: Json) => l.node_id === id).routes;
      const first = await rs.next();
      assert.equal(first.event, 'map');
      // r1 streams from A; r2 and the client from B
      const s1 = await SseReader.open(`${a.url}/node/v1/stream`, nodes['r1']!.token);
      await s1.waitMap(() => true);
      const s2 = await SseReader.open(`${b.url}/node/v1/stream`, nodes['r2']!.token);
      const sc = await SseReader.open(`${b.url}/node/v1/stream`, nodes['client']!.token);
      await sc.waitMap((m) => viaPeer(m) === nodes['r1']!.id && m.online.includes(nodes['r2']!.id));
      assert.equal(await primaryOf(adm), nodes['r1']!.id);
      assert.equal(await primaryOf(admB), nodes['r1']!.id);
      for (;;) { // the relay on B hears of r1 being primary (a change made through A)
        const e = await rs.next(5000);
        if (e.event === 'map' && routesOf(e.data, nodes['r1']!.id).includes(ROUTE)) break;
      }
      s1.close(); // r1 leaves replica A
      await sc.waitMap((m) => viaPeer(m) === nodes['r2']!.id, 5000);
      for (;;) {
        const e = await rs.next(5000);
        if (e.event === 'map' && routesOf(e.data, nodes['r2']!.id).includes(ROUTE)) break;
      }
      rs.close();
      const s1b = await SseReader.open(`${a.url}/node/v1/stream`, nodes['r1']!.token); // and comes back
      await sc.waitMap((m) => m.online.includes(nodes['r1']!.id), 5000);
      await sleep(300);
      assert.equal(viaPeer(sc.state), nodes['r2']!.id, 'B keeps r2');
      assert.equal(await primaryOf(adm), nodes['r2']!.id, 'A\'s Admin API says r2');
      assert.equal(await primaryOf(admB), nodes['r2']!.id, 'B\'s Admin API says r2');
      // a third replica with a fresh compiler starts from the stored primaries
      servers.push(await spawnServer({ dataDir: dirs[2]!, db: schema.url }));
      const c = servers[2] as ServerProc;
      const sc2 = await SseReader.open(`${c.url}/node/v1/stream`, nodes['client']!.token);
      const m = await sc2.waitMap(() => true);
      assert.equal(viaPeer(m), nodes['r2']!.id, 'the new replica does not elect the lowest id');
      await until(async () => (await primaryOf(new Client(c.url, adm.key))) === nodes['r2']!.id);
      for (const s of [s2, sc, s1b, sc2]) s.close();
    } finally {
      for (const s of servers) await s.stop();
      for (const d of dirs) cleanup(d);
      await schema.drop();
    }
  });
});
