// The Admin API behind the console's Machines, Tenants, Logs and Relays pages,
// on SQLite and PostgreSQL: the tenants list with node and online counts (one
// grouped query, however many tenants), tenant edits (operator only, audited),
// the nodes list paged/searched/filtered on the server (and unchanged for
// clients that pass no limit), a node's tags limited to the policy's tagOwners,
// the audit filters (actor, object, time range) and newest-first paging, and
// the relays a tenant sees: the shared ones and its own, with only its own
// links — never another tenant's relay or link counts.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely';
import { Client, SseReader, backends, cleanup, spawnServer, tempDir, type Json, type ServerProc, registerNode } from '../control/harness.js';
import { openDatabase } from '../../src/control/store/db.js';
import { Store } from '../../src/control/store/repo.js';

const POLICY = '{"tagOwners":{"tag:web":[],"tag:db":[]},"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}';

/** Counts the statements a Kysely instance runs. */
class CountQueries implements KyselyPlugin {
  n = 0;
  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    this.n++;
    return args.node;
  }
  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result;
  }
}

for (const b of backends()) {
  describe(`console pages API (${b.name})`, () => {
    let dir = '';
    let db = '';
    let srv: ServerProc;
    let op: Client;
    let skip: string | false = false;
    const streams: SseReader[] = [];
    const ids: Record<string, number> = {};
    const keys: Record<string, string> = {};

    before(async () => {
      db = await b.setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dir = tempDir('larktun-pages-api-');
      srv = await spawnServer({ dataDir: dir, db });
      op = new Client(srv.url, srv.operatorKey());
      for (const t of ['acme', 'beta', 'gamma']) assert.equal((await op.post('/api/v1/tenants', { name: t })).status, 201);
      assert.equal((await op.put('/api/v1/tenants/acme/policy', { policy: POLICY })).status, 200);
      for (const [t, role] of [['acme', 'admin'], ['acme', 'auditor'], ['acme', 'operator'], ['beta', 'admin']] as const) {
        keys[`${t}-${role}`] = (await op.post(`/api/v1/tenants/${t}/apikeys`, { role })).body.key as string;
      }
      await op.post('/api/v1/tenants/acme/users', { name: 'alice' });
      const ak = (await op.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key as string;
      const tk = (await op.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:web'], reusable: true })).body.key as string;
      await op.post('/api/v1/tenants/beta/users', { name: 'bob' });
      const bk = (await op.post('/api/v1/tenants/beta/authkeys', { user: 'bob', reusable: true })).body.key as string;
      const reg = async (key: string, hostname: string, online: boolean, extra: Record<string, unknown> = {}) => {
        const r = await registerNode(op.as(null), { auth_key: key, hostname, ...extra });
        assert.equal(r.status, 201, r.text);
        ids[hostname] = r.body.node.id as number;
        if (online) streams.push(await SseReader.open(`${srv.url}/node/v1/stream`, r.body.token as string));
      };
      // acme: 7 nodes, 3 online; beta: 2 nodes, none online; gamma: none.
      await reg(ak, 'zulu', true);
      await reg(ak, 'alpha', false);
      await reg(ak, 'mike', true, { routes: ['10.30.0.0/16'] });
      await reg(tk, 'web-1', true);
      await reg(tk, 'web-2', false);
      await reg(ak, 'bravo', false);
      await reg(ak, 'charlie', false);
      await reg(bk, 'beta-1', false);
      await reg(bk, 'beta-2', false);
      // A stream's presence is written after it attaches: wait until all three are seen,
      // so the tests read settled counts (under load PostgreSQL once showed 2 of 3).
      for (let i = 0; ; i++) {
        const t = ((await op.get('/api/v1/tenants')).body.tenants as Json[]).find((x) => x.name === 'acme');
        if (t?.online_nodes === 3) break;
        assert.ok(i < 200, `acme shows ${t?.online_nodes} online nodes after 10 s, expected 3`);
        await new Promise((r) => setTimeout(r, 50));
      }
    });
    after(async () => {
      for (const s of streams) s.close();
      if (srv) await srv.stop();
      if (dir) cleanup(dir);
      await b.teardown();
    });
    const t = (name: string, fn: () => Promise<void>) => test(name, async (c) => {
      if (skip) return c.skip(skip);
      await fn();
    });

    t('GET /tenants: each tenant with its node count and online nodes; operator only', async () => {
      const r = await op.get('/api/v1/tenants');
      assert.equal(r.status, 200);
      const by = new Map<string, Json>(r.body.tenants.map((x: Json) => [x.name, x]));
      assert.deepEqual([by.get('acme').nodes, by.get('acme').online_nodes], [7, 3]);
      assert.deepEqual([by.get('beta').nodes, by.get('beta').online_nodes], [2, 0]);
      assert.deepEqual([by.get('gamma').nodes, by.get('gamma').online_nodes], [0, 0]);
      assert.equal((await op.as(keys['acme-admin']!).get('/api/v1/tenants')).status, 403);
    });

    t('the counts are one grouped query however many tenants there are', async () => {
      const handle = await openDatabase(db, dir);
      const counter = new CountQueries();
      const store = new Store({ ...handle, db: handle.db.withPlugin(counter) });
      try {
        const counts = await store.nodeCountsByTenant();
        assert.equal(counter.n, 1, 'one statement');
        const tenants = await store.listTenants();
        const acme = tenants.find((x) => x.name === 'acme')!;
        assert.deepEqual(counts.get(acme.id), { nodes: 7, online: 3 });
        counter.n = 0;
        await store.linkCountsByRelay();
        assert.equal(counter.n, 1, 'relay link counts: one statement');
      } finally {
        await handle.close();
      }
    });

    t('PATCH /tenants/{t}: the operator edits pools, DNS base and limits (audited); tenant keys and bad pools are refused', async () => {
      const r = await op.patch('/api/v1/tenants/gamma', { max_nodes: 25, dns_base: 'gamma.example.net', pool6: null });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual([r.body.max_nodes, r.body.dns_base, r.body.pool6], [25, 'gamma.example.net', null]);
      const a = (await op.get('/api/v1/tenants/gamma/audit?action=tenant.update')).body.entries;
      assert.equal(a.length, 1);
      assert.equal(a[0].before.max_nodes, 10000);
      assert.equal(a[0].after.max_nodes, 25);
      assert.match(a[0].actor, /^operator:/);
      const bad = await op.patch('/api/v1/tenants/gamma', { pool4: '100.64.0.0/31' });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.code, 'invalid_request');
      assert.equal((await op.patch('/api/v1/tenants/gamma', { max_nodes: 0 })).status, 400);
      assert.equal((await op.patch('/api/v1/tenants/gamma', { name: 'renamed' })).status, 400, 'the name cannot change');
      assert.equal((await op.as(keys['acme-admin']!).patch('/api/v1/tenants/acme', { max_nodes: 1 })).status, 403);
      assert.equal((await op.as(keys['acme-admin']!).patch('/api/v1/tenants/beta', { max_nodes: 1 })).status, 404);
      assert.equal((await op.get('/api/v1/tenants/acme')).body.max_nodes, 10000, 'refused edits changed nothing');
    });

    t('GET /tenants/{t}/nodes: without limit every node as before; with limit a page by name, total and counts', async () => {
      const admin = op.as(keys['acme-operator']!);
      const all = await admin.get('/api/v1/tenants/acme/nodes');
      assert.equal(all.status, 200);
      assert.equal(all.body.nodes.length, 7);
      assert.deepEqual(all.body.counts, { all: 7, online: 3, offline: 4 });
      const names: string[] = [];
      for (let off = 0; off < 7; off += 3) {
        const p = await admin.get(`/api/v1/tenants/acme/nodes?limit=3&offset=${off}`);
        assert.equal(p.status, 200);
        assert.equal(p.body.total, 7);
        assert.ok(p.body.nodes.length <= 3);
        names.push(...p.body.nodes.map((n: Json) => n.name as string));
      }
      assert.deepEqual(names, ['alpha', 'bravo', 'charlie', 'mike', 'web-1', 'web-2', 'zulu'], 'pages cover every node once, by name');
      const on = await admin.get('/api/v1/tenants/acme/nodes?limit=50&status=online');
      assert.deepEqual(on.body.nodes.map((n: Json) => n.name), ['mike', 'web-1', 'zulu']);
      assert.equal(on.body.total, 3);
      assert.deepEqual(on.body.counts, { all: 7, online: 3, offline: 4 }, 'counts are the tenant\'s, not the filter\'s');
      const off = await admin.get('/api/v1/tenants/acme/nodes?limit=50&status=offline&q=WEB');
      assert.deepEqual(off.body.nodes.map((n: Json) => n.name), ['web-2'], 'search is case-insensitive and combines with status');
      const byTag = await admin.get(`/api/v1/tenants/acme/nodes?limit=50&q=${encodeURIComponent('tag:web')}`);
      assert.deepEqual(byTag.body.nodes.map((n: Json) => n.name), ['web-1', 'web-2']);
      const byRoute = await admin.get('/api/v1/tenants/acme/nodes?limit=50&q=10.30.');
      assert.deepEqual(byRoute.body.nodes.map((n: Json) => n.name), ['mike']);
      for (const q of ['%', "' or 1=1 --", '.*']) {
        const r = await admin.get(`/api/v1/tenants/acme/nodes?limit=50&q=${encodeURIComponent(q)}`);
        assert.deepEqual([r.status, r.body.total], [200, 0], `q=${q} is a plain substring`);
      }
      const past = await admin.get('/api/v1/tenants/acme/nodes?limit=50&offset=100');
      assert.deepEqual([past.body.nodes.length, past.body.total], [0, 7]);
      // abuse: out-of-range and unknown parameters are refused, another tenant sees nothing
      for (const q of ['limit=0', 'limit=1001', 'offset=-1', 'status=gone', `q=${'x'.repeat(201)}`, 'limit=abc', 'sort=name']) {
        const r = await admin.get(`/api/v1/tenants/acme/nodes?${q}`);
        assert.equal(r.status, 400, q);
        assert.equal(r.body.error.code, 'invalid_request', q);
      }
      assert.equal((await op.as(keys['beta-admin']!).get('/api/v1/tenants/acme/nodes?limit=5')).status, 404);
    });

    t('node tags: GET /tenants/{t}/tags lists the policy\'s tags; PUT …/tags accepts only those, audited as the caller', async () => {
      const admin = op.as(keys['acme-admin']!);
      assert.deepEqual((await admin.get('/api/v1/tenants/acme/tags')).body, { tags: ['tag:db', 'tag:web'] });
      assert.deepEqual((await op.get('/api/v1/tenants/gamma/tags')).body, { tags: [] });
      const r = await admin.put(`/api/v1/tenants/acme/nodes/${ids['alpha']}/tags`, { tags: ['tag:web', 'tag:db', 'tag:web'] });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.tags, ['tag:db', 'tag:web']);
      const undef = await admin.put(`/api/v1/tenants/acme/nodes/${ids['alpha']}/tags`, { tags: ['tag:web', 'tag:nope'] });
      assert.equal(undef.status, 400);
      assert.deepEqual(undef.body.error.details.undefined_tags, ['tag:nope']);
      assert.equal((await admin.put(`/api/v1/tenants/acme/nodes/${ids['alpha']}/tags`, { tags: ['web'] })).status, 400, 'not a tag');
      assert.equal((await op.as(keys['acme-auditor']!).put(`/api/v1/tenants/acme/nodes/${ids['alpha']}/tags`, { tags: [] })).status, 403);
      assert.equal((await op.as(keys['beta-admin']!).put(`/api/v1/tenants/acme/nodes/${ids['alpha']}/tags`, { tags: [] })).status, 404);
      assert.equal((await op.as(keys['beta-admin']!).get('/api/v1/tenants/acme/tags')).status, 404);
      assert.deepEqual((await admin.get(`/api/v1/tenants/acme/nodes/${ids['alpha']}`)).body.tags, ['tag:db', 'tag:web'], 'refused changes left the tags');
      const a = (await admin.get(`/api/v1/tenants/acme/audit?action=node.tags&object=node:${ids['alpha']}`)).body.entries;
      assert.equal(a.length, 1);
      assert.deepEqual([a[0].before.tags, a[0].after.tags], [[], ['tag:db', 'tag:web']]);
      assert.equal(a[0].actor, `apikey:${keys['acme-admin']!.split('_')[1]}`);
      // back to no tags (the next tests count alpha as alice's)
      assert.equal((await admin.put(`/api/v1/tenants/acme/nodes/${ids['alpha']}/tags`, { tags: [] })).status, 200);
    });

    t('audit: filters by actor, object (type or type:id) and time range; order=desc pages newest first with total', async () => {
      const admin = op.as(keys['acme-admin']!);
      const actor = `apikey:${keys['acme-admin']!.split('_')[1]}`;
      await admin.patch(`/api/v1/tenants/acme/nodes/${ids['bravo']}`, { name: 'bravo-2' });
      const asc = (await admin.get('/api/v1/tenants/acme/audit?limit=10000')).body;
      assert.equal(asc.total, undefined, 'the default listing is unchanged: oldest first, no total');
      const seqs = asc.entries.map((e: Json) => e.seq as number);
      assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y));
      const n = seqs.length;
      const mine = (await admin.get(`/api/v1/tenants/acme/audit?actor=${encodeURIComponent(actor)}`)).body.entries;
      assert.deepEqual(mine.map((e: Json) => e.action), ['node.tags', 'node.tags', 'node.rename']);
      assert.ok(mine.every((e: Json) => e.actor === actor));
      const nodeOnly = (await admin.get(`/api/v1/tenants/acme/audit?object=node:${ids['bravo']}`)).body.entries;
      assert.ok(nodeOnly.length >= 2 && nodeOnly.every((e: Json) => e.object_type === 'node' && e.object_id === String(ids['bravo'])));
      assert.equal(nodeOnly.at(-1).action, 'node.rename');
      const anyNode = (await admin.get('/api/v1/tenants/acme/audit?object=node&limit=10000')).body.entries;
      assert.ok(anyNode.length > nodeOnly.length && anyNode.every((e: Json) => e.object_type === 'node'));
      const cut = asc.entries[Math.floor(n / 2)].ts as string;
      const before = (await admin.get(`/api/v1/tenants/acme/audit?limit=10000&until=${encodeURIComponent(cut)}`)).body.entries;
      const after = (await admin.get(`/api/v1/tenants/acme/audit?limit=10000&since=${encodeURIComponent(cut)}`)).body.entries;
      assert.equal(before.length + after.length, n, 'until (exclusive) and since (inclusive) split the trail');
      assert.ok(before.every((e: Json) => e.ts < cut) && after.every((e: Json) => e.ts >= cut));
      const p1 = (await admin.get('/api/v1/tenants/acme/audit?order=desc&limit=4')).body;
      const p2 = (await admin.get('/api/v1/tenants/acme/audit?order=desc&limit=4&offset=4')).body;
      assert.equal(p1.total, n);
      assert.deepEqual([...p1.entries, ...p2.entries].map((e: Json) => e.seq), [n, n - 1, n - 2, n - 3, n - 4, n - 5, n - 6, n - 7]);
      const f = (await admin.get(`/api/v1/tenants/acme/audit?order=desc&limit=1&actor=${encodeURIComponent(actor)}`)).body;
      assert.deepEqual([f.total, f.entries.length, f.entries[0].action], [3, 1, 'node.rename'], 'total counts the matches');
      const older = (await admin.get(`/api/v1/tenants/acme/audit?order=desc&before=${n - 1}&limit=2`)).body.entries;
      assert.deepEqual(older.map((e: Json) => e.seq), [n - 2, n - 3]);
      // Filters are values, never query text.
      for (const q of [`actor=${encodeURIComponent("' or 1=1 --")}`, `object=${encodeURIComponent("node:1' or '1'='1")}`, `action=${encodeURIComponent('%')}`]) {
        const r = await admin.get(`/api/v1/tenants/acme/audit?order=desc&${q}`);
        assert.equal(r.status, 200, q);
        assert.deepEqual([r.body.total, r.body.entries.length], [0, 0], q);
      }
      for (const q of ['order=up', 'until=yesterday', `actor=${'a'.repeat(201)}`, 'before=0', 'offset=-2']) {
        assert.equal((await admin.get(`/api/v1/tenants/acme/audit?${q}`)).status, 400, q);
      }
      assert.equal((await op.as(keys['acme-operator']!).get('/api/v1/tenants/acme/audit?order=desc')).status, 403);
      assert.equal((await op.as(keys['beta-admin']!).get('/api/v1/tenants/acme/audit?order=desc')).status, 404);
    });

    t('relays: a tenant sees the shared relays and its own, with only its own links; the operator sees links per tenant', async () => {
      const shared = await op.post('/api/v1/relays', { name: 'edge-1', endpoints: ['203.0.113.5:18020'] });
      assert.equal(shared.status, 201, shared.text);
      const own = await op.post('/api/v1/relays', { name: 'acme-relay', endpoints: ['198.51.100.7:18020'], tenant: 'acme' });
      const other = await op.post('/api/v1/relays', { name: 'beta-relay', endpoints: ['198.51.100.8:18020'], tenant: 'beta' });
      assert.equal(own.status, 201);
      assert.equal(other.status, 201);
      const acme = op.as(keys['acme-auditor']!);
      let v = (await acme.get('/api/v1/tenants/acme/relays')).body.relays;
      assert.deepEqual(v.map((r: Json) => [r.name, r.dedicated, r.links, r.live, r.last_report, r.last_seen]), [
        ['edge-1', false, 7, false, null, null],
        ['acme-relay', true, 7, false, null, null],
      ]);
      assert.ok(v.every((r: Json) => r.token === undefined && r.psk === undefined), 'no secrets');
      const beta = (await op.as(keys['beta-admin']!).get('/api/v1/tenants/beta/relays')).body.relays;
      assert.deepEqual(beta.map((r: Json) => [r.name, r.links]), [['edge-1', 2], ['beta-relay', 2]], 'beta counts only its own links on the shared relay');
      assert.equal((await op.as(keys['beta-admin']!).get('/api/v1/tenants/acme/relays')).status, 404);
      // The shared relay reports: it is live and has seen one of acme's nodes.
      const link = (await acme.get(`/api/v1/tenants/acme/nodes/${ids['zulu']}/links`)).body.links.find((l: Json) => l.relay === shared.body.id);
      const h = await op.as(shared.body.token as string).post('/relay/v1/health', { links: [{ link_id: link.link_id, last_seen_ms_ago: 200, rtt_ms: 4 }] });
      assert.equal(h.status, 200, h.text);
      v = (await acme.get('/api/v1/tenants/acme/relays')).body.relays;
      const e1 = v.find((r: Json) => r.name === 'edge-1');
      assert.equal(e1.live, true);
      assert.ok(e1.last_report && Date.now() - Date.parse(e1.last_report) < 60_000);
      assert.ok(e1.last_seen && Date.now() - Date.parse(e1.last_seen) < 60_000);
      assert.equal(v.find((r: Json) => r.name === 'acme-relay').live, false);
      // The operator: every relay, each with its links per tenant.
      const all = (await op.get('/api/v1/relays')).body.relays;
      const by = new Map<string, Json>(all.map((r: Json) => [r.name, r]));
      assert.deepEqual(by.get('edge-1').tenants.map((x: Json) => [x.tenant, x.links]), [['acme', 7], ['beta', 2]]);
      assert.deepEqual(by.get('beta-relay').tenants.map((x: Json) => [x.tenant, x.links]), [['beta', 2]]);
      assert.equal(by.get('beta-relay').tenant, 'beta');
      // A tenant key on /relays: its dedicated relay only, and only its links.
      const mine = (await op.as(keys['beta-admin']!).get('/api/v1/relays')).body.relays;
      assert.deepEqual(mine.map((r: Json) => [r.name, r.tenants.map((x: Json) => x.tenant)]), [['beta-relay', ['beta']]]);
    });

    t('the Relays pages are console pages: /relays and /{tenant}/relays serve the app; other paths keep their 404', async () => {
      for (const path of ['/relays', '/acme/relays']) {
        const r = await fetch(`${srv.url}${path}`);
        assert.equal(r.status, 200, path);
        assert.equal(r.headers.get('cache-control'), 'no-store', path);
        assert.match(await r.text(), /<div id="root">/, path);
      }
      for (const path of ['/relays/1', '/acme/relayz', '/ACME/relays']) assert.equal((await fetch(`${srv.url}${path}`)).status, 404, path);
    });

    t('OpenAPI lists the new endpoints and parameters', async () => {
      const d = (await op.get('/api/v1/openapi.json')).body;
      assert.ok(d.paths['/api/v1/tenants/{tenant}/relays']?.get);
      assert.ok(d.paths['/api/v1/tenants/{tenant}/tags']?.get);
      const q = (p: string) => (d.paths[p].get.parameters as Json[]).filter((x) => x.in === 'query').map((x) => x.name).sort();
      assert.deepEqual(q('/api/v1/tenants/{tenant}/nodes'), ['limit', 'offset', 'q', 'status']);
      for (const name of ['actor', 'object', 'until', 'order', 'offset', 'before']) assert.ok(q('/api/v1/tenants/{tenant}/audit').includes(name), name);
    });
  });
}
