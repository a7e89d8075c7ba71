// A shared relay is created and deleted in one transaction over every tenant
// it serves (tenants locked in id order): the relay row, every tenant's links
// and one audit entry per tenant commit together or not at all, and each
// tenant's audit chain stays valid.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Client, backends, cleanup, registerNode, spawnServer, tempDir, type Json, type ServerProc } from './harness.js';
import { openDatabase } from '../../src/control/store/db.js';
import { Store } from '../../src/control/store/repo.js';
import { ensureLinks, RELAY_SELF_ID } from '../../src/control/relays.js';
import { verifyChain } from '../../src/control/audit.js';

const TENANTS = ['t1', 't2', 't3', 't4', 't5'];

function txnSuite(name: string, setup: () => Promise<string>, teardown: () => Promise<void>): void {
  describe(`shared relay create/delete in one transaction on ${name}`, () => {
    let skip: string | false = false;
    let dbSpec = '';
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    const admin: Record<string, Client> = {};
    const nodes: Record<string, number[]> = {};

    before(async () => {
      const db = await setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dbSpec = db;
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db });
      op = new Client(srv.url, srv.operatorKey());
      for (const t of TENANTS) {
        assert.equal((await op.post('/api/v1/tenants', { name: t })).status, 201);
        admin[t] = op.as((await op.post(`/api/v1/tenants/${t}/apikeys`, { role: 'admin' })).body.key);
        const pol = await admin[t]!.put(`/api/v1/tenants/${t}/policy`, { policy: '{"tagOwners": {"tag:n": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}' });
        assert.equal(pol.status, 200, pol.text);
        const ak = (await admin[t]!.post(`/api/v1/tenants/${t}/authkeys`, { tags: ['tag:n'], reusable: true })).body.key;
        nodes[t] = [];
        for (let i = 0; i < 3; i++) {
          const r = await registerNode(op.as(null), { auth_key: ak, hostname: `n${i}` });
          assert.equal(r.status, 201, r.text);
          nodes[t]!.push(r.body.node.id);
        }
      }
    });
    after(async () => {
      if (skip) return;
      await srv.stop();
      cleanup(dir);
      await teardown();
    });
    const t = (title: string, fn: () => Promise<void>) =>
      it(title, async (ctx) => {
        if (skip) return ctx.skip(skip);
        await fn();
      });

    const linksOf = async (tenant: string, id: number) => (await admin[tenant]!.get(`/api/v1/tenants/${tenant}/nodes/${id}/links`)).body.links as Json[];
    const audits = async (tenant: string, action: string) => (await admin[tenant]!.get(`/api/v1/tenants/${tenant}/audit?limit=1000&action=${action}`)).body.entries as Json[];

    t('after create every tenant has its links and one audit entry; after delete none', async () => {
      const r = await op.post('/api/v1/relays', { name: 'shared', endpoints: ['203.0.113.9:18020'] });
      assert.equal(r.status, 201, r.text);
      const ids = new Set<number>();
      for (const tn of TENANTS) {
        for (const id of nodes[tn]!) {
          const l = await linksOf(tn, id);
          assert.equal(l.length, 1, `${tn} node ${id} has its link`);
          assert.equal(l[0].relay, r.body.id);
          ids.add(l[0].link_id);
        }
        const a = await audits(tn, 'relay.create');
        assert.equal(a.length, 1, `${tn}: one relay.create entry`);
        assert.equal(a[0].after.links, 3);
        assert.equal((await admin[tn]!.get(`/api/v1/tenants/${tn}/audit/verify`)).body.ok, true);
      }
      assert.equal(ids.size, TENANTS.length * 3, 'link ids unique on the relay across tenants');
      const d = await op.del(`/api/v1/relays/${r.body.id}`);
      assert.equal(d.status, 200, d.text);
      for (const tn of TENANTS) {
        for (const id of nodes[tn]!) assert.deepEqual(await linksOf(tn, id), [], `${tn} node ${id}: no link left`);
        const a = await audits(tn, 'relay.delete');
        assert.equal(a.length, 1, `${tn}: one relay.delete entry`);
        assert.equal(a[0].before.links, 3);
        assert.equal((await admin[tn]!.get(`/api/v1/tenants/${tn}/audit/verify`)).body.ok, true);
      }
      assert.equal((await op.get(`/api/v1/relays/${r.body.id}`)).status, 404);
      assert.equal((await op.del(`/api/v1/relays/${r.body.id}`)).status, 404);
    });

    t('a failure halfway leaves nothing behind: no relay row, no links, no audit entry, no generation bump', async () => {
      const handle = await openDatabase(dbSpec, dir);
      const store = new Store(handle);
      try {
        const tenants = await store.listTenants();
        const before = await Promise.all(tenants.map(async (x) => ({ gen: x.generation, audit: (await store.tenant(x.id).allAudit()).length })));
        let visited = 0;
        await assert.rejects(store.writeTenants(tenants.map((x) => x.id).reverse(), 'operator', async (txs, relays) => {
          assert.deepEqual(txs.map((x) => x.tenantId), tenants.map((x) => x.id), 'tenants locked in ascending id order');
          const now = new Date().toISOString();
          const row = await relays.insertRelay({
            name: 'doomed', endpoints: '["203.0.113.10:1"]', tenant_id: null, self_id: RELAY_SELF_ID,
            token_prefix: randomBytes(6).toString('hex'), token_hash: 'x', generation: 1, created_at: now, updated_at: now,
          });
          for (const tx of txs) {
            if (visited === 3) throw new Error('crash halfway');
            const n = await ensureLinks(tx, [row]);
            assert.equal(n, 3);
            await tx.audit('relay.create', 'relay', row.id, null, { links: n });
            visited++;
          }
        }), /crash halfway/);
        assert.equal(visited, 3);
        assert.equal(await store.getRelayByName('doomed'), undefined, 'no relay row');
        const after = await store.listTenants();
        for (const [i, x] of after.entries()) {
          const repo = store.tenant(x.id);
          assert.deepEqual(await repo.listRelayLinks(), [], `${x.name}: no links`);
          const chain = await repo.allAudit();
          assert.equal(chain.length, before[i]!.audit, `${x.name}: no audit entry`);
          assert.equal(verifyChain(chain).ok, true);
          assert.equal(x.generation, before[i]!.gen, `${x.name}: generation unchanged`);
        }
      } finally {
        await store.close();
      }
    });
  });
}

for (const b of backends()) txnSuite(b.name, b.setup, b.teardown);
