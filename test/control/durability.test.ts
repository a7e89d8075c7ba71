// kill -9 in the middle of writes loses no acknowledged change and leaves no
// half change (every object has its audit entry and vice versa; the chain
// verifies); and two servers on one PostgreSQL fan changes out to each other's
// streaming nodes within a second.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client, SseReader, cleanup, freshPgSchema, registerNode, pgUnavailable, sleep, spawnServer, tempDir, type Json } from './harness.js';

async function killDuringWrites(db: string): Promise<void> {
  const dir = tempDir();
  try {
    let srv = await spawnServer({ dataDir: dir, db });
    const op = new Client(srv.url, srv.operatorKey());
    assert.equal((await op.post('/api/v1/tenants', { name: 'acme' })).status, 201);
    const key = (await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin' })).body.key as string;
    const admin = op.as(key);
    const acked = new Set<string>();
    let stop = false;
    const worker = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const name = `u${w}-${i}`;
        try {
          const r = await admin.post('/api/v1/tenants/acme/users', { name });
          if (r.status === 201) acked.add(name);
        } catch {
          return; // connection died with the server
        }
      }
    };
    const workers = Array.from({ length: 8 }, (_v, w) => worker(w));
    await sleep(800);
    await srv.kill9();
    stop = true;
    await Promise.all(workers);
    assert.ok(acked.size > 10, `some writes were acknowledged (${acked.size})`);

    srv = await spawnServer({ dataDir: dir, db });
    const a2 = new Client(srv.url, key);
    const users = new Set(((await a2.get('/api/v1/tenants/acme/users')).body.users as Json[]).map((u) => u.name as string));
    for (const n of acked) assert.ok(users.has(n), `acknowledged user ${n} survived`);
    const audit = (await a2.get('/api/v1/tenants/acme/audit?limit=10000&action=user.create')).body.entries as Json[];
    const audited = new Set(audit.map((e) => e.after.name as string));
    assert.deepEqual([...users].sort(), [...audited].sort(), 'every stored user has its audit entry and no audit entry lacks its user');
    const v = await a2.get('/api/v1/tenants/acme/audit/verify');
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
    assert.equal(await srv.stop(), 0);
  } finally {
    cleanup(dir);
  }
}

/**
 * kill -9 while a shared relay is being created: after the restart either
 * every tenant has its relay.create entry (and the relay exists) or none has
 * and the relay does not exist — never some tenants with and some without.
 */
async function killDuringSharedRelayCreate(db: string): Promise<void> {
  const dir = tempDir();
  try {
    let srv = await spawnServer({ dataDir: dir, db });
    const op = new Client(srv.url, srv.operatorKey());
    const names = Array.from({ length: 12 }, (_v, i) => `t${i}`);
    const keys: Record<string, string> = {};
    for (const t of names) {
      assert.equal((await op.post('/api/v1/tenants', { name: t })).status, 201);
      keys[t] = (await op.post(`/api/v1/tenants/${t}/apikeys`, { role: 'admin' })).body.key;
      await op.as(keys[t] as string).post(`/api/v1/tenants/${t}/users`, { name: 'u' });
      const ak = (await op.as(keys[t] as string).post(`/api/v1/tenants/${t}/authkeys`, { user: 'u', reusable: true })).body.key;
      await Promise.all(Array.from({ length: 8 }, (_v, i) => registerNode(op.as(null), { auth_key: ak, hostname: `n${i}` })));
    }
    const pending = op.post('/api/v1/relays', { name: 'shared', endpoints: ['203.0.113.1:1'] }).catch(() => null);
    await sleep(5 + Math.floor(Math.random() * 30));
    await srv.kill9();
    const acked = (await pending)?.status === 201;
    srv = await spawnServer({ dataDir: dir, db });
    const op2 = new Client(srv.url, srv.operatorKey());
    const exists = ((await op2.get('/api/v1/relays')).body.relays as Json[]).some((r) => r.name === 'shared');
    if (acked) assert.ok(exists, 'an acknowledged relay survived');
    for (const t of names) {
      const a = op2.as(keys[t] as string);
      const entries = (await a.get(`/api/v1/tenants/${t}/audit?action=relay.create`)).body.entries as Json[];
      assert.equal(entries.length, exists ? 1 : 0, `${t}: relay.create entry iff the relay exists (exists=${exists})`);
      if (exists) assert.equal(entries[0].after.links, 8, `${t}: its links were made with the relay`);
      assert.equal((await a.get(`/api/v1/tenants/${t}/audit/verify`)).body.ok, true);
    }
    process.stdout.write(`# kill -9 during shared relay create: relay ${exists ? 'committed' : 'rolled back'}\n`);
    assert.equal(await srv.stop(), 0);
  } finally {
    cleanup(dir);
  }
}

describe('crash safety (kill -9 during a shared relay create)', () => {
  it('SQLite', async () => {
    await killDuringSharedRelayCreate('sqlite');
  });
  it('PostgreSQL', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const s = await freshPgSchema();
    try {
      await killDuringSharedRelayCreate(s.url);
    } finally {
      await s.drop();
    }
  });
});

describe('crash safety (kill -9 during writes)', () => {
  it('SQLite', async () => {
    await killDuringWrites('sqlite');
  });
  it('PostgreSQL', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const s = await freshPgSchema();
    try {
      await killDuringWrites(s.url);
    } finally {
      await s.drop();
    }
  });
});

describe('two servers on one PostgreSQL', () => {
  it('a policy change made on one reaches a node streaming from the other within 1 s', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const s = await freshPgSchema();
    const d1 = tempDir();
    const d2 = tempDir();
    try {
      const a = await spawnServer({ dataDir: d1, db: s.url });
      const b = await spawnServer({ dataDir: d2, db: s.url });
      try {
        assert.match(b.stderr(), /listening/);
        const opA = new Client(a.url, a.operatorKey());
        await opA.post('/api/v1/tenants', { name: 'acme' });
        const adminA = opA.as((await opA.post('/api/v1/tenants/acme/apikeys', { role: 'admin' })).body.key);
        const adminB = new Client(b.url, adminA.key);
        await adminA.post('/api/v1/tenants/acme/users', { name: 'alice', email: 'alice@example.com' });
        const ak = (await adminA.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key;
        const n1 = await registerNode(opA.as(null), { auth_key: ak, hostname: 'one' });
        const n2 = await registerNode(opA.as(null), { auth_key: ak, hostname: 'two' });
        // node one streams from server B
        const st = await SseReader.open(`${b.url}/node/v1/stream`, n1.body.token);
        const first = await st.next();
        assert.equal(first.event, 'map');
        assert.ok(first.data.peers.some((p: Json) => p.id === n2.body.node.id));

        // policy change on A: nobody may reach anybody → node one loses its peer
        const t0 = performance.now();
        const put = await adminA.put('/api/v1/tenants/acme/policy', { policy: '{"acls": []}' });
        assert.equal(put.status, 200, put.text);
        const m = await st.waitMap((x) => x.peers.length === 0, 3000);
        const ms = performance.now() - t0;
        assert.ok(ms < 1000, `took ${ms.toFixed(0)} ms`);
        assert.ok(m.version > first.data.version);

        // and an admin change on B is seen by a node streaming from A
        const st2 = await SseReader.open(`${a.url}/node/v1/stream`, n2.body.token);
        await st2.next();
        const t1 = performance.now();
        await adminB.put('/api/v1/tenants/acme/policy', { policy: '{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}' });
        await st2.waitMap((x) => x.peers.some((p: Json) => p.id === n1.body.node.id), 3000);
        assert.ok(performance.now() - t1 < 1000);
        const metrics = await new Client(b.url, a.operatorKey()).get('/metrics');
        assert.match(metrics.text, /larktun_change_notifications_total\{direction="received"\} [1-9]/);
        // stopping B marks the nodes that streamed from it offline (seen through A)
        assert.equal((await adminA.get(`/api/v1/tenants/acme/nodes/${n1.body.node.id}`)).body.online, true);
        assert.equal(await b.stop(), 0);
        assert.equal((await adminA.get(`/api/v1/tenants/acme/nodes/${n1.body.node.id}`)).body.online, false);
        assert.equal((await adminA.get(`/api/v1/tenants/acme/nodes/${n2.body.node.id}`)).body.online, true);
        st.close();
        st2.close();
        process.stdout.write(`# cross-replica policy propagation: ${ms.toFixed(1)} ms\n`);
      } finally {
        await a.stop();
        await b.stop();
      }
    } finally {
      cleanup(d1);
      cleanup(d2);
      await s.drop();
    }
  });
});
