// The Admin + node API suite, run against a real server process on each backend.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { Client, SseReader, cleanup, registerNode, sleep, spawnServer, tempDir, type Backend, type Json, type ServerProc } from './harness.js';

export function assertError(r: { status: number; body: Json; text: string }, status: number, code?: string): void {
  assert.equal(r.status, status, `expected ${status}, got ${r.status}: ${r.text}`);
  assert.equal(typeof r.body?.error?.code, 'string', `error body: ${r.text}`);
  assert.equal(typeof r.body.error.message, 'string');
  assert.ok('details' in r.body.error, 'details present');
  assert.ok(!/\bat .+\.(ts|js):\d+/.test(r.text), `no stack trace: ${r.text}`);
  if (code) assert.equal(r.body.error.code, code, r.text);
}

export function apiSuite(backend: Backend): void {
  describe(`control API on ${backend.name}`, () => {
    let db = '';
    let skip: string | false = false;
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    let admin: Client;
    let adminKeyId = 0;

    before(async () => {
      const r = await backend.setup();
      if (r.startsWith('skip:')) {
        skip = r.slice(5);
        return;
      }
      db = r;
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db });
      op = new Client(srv.url, srv.operatorKey());
    });
    after(async () => {
      if (skip) return;
      await srv?.stop();
      cleanup(dir);
      await backend.teardown();
    });

    const t = (name: string, fn: () => Promise<void>) =>
      it(name, async (ctx) => {
        if (skip) {
          ctx.skip(skip);
          return;
        }
        await fn();
      });

    t('operator key file is 0600 and health endpoints answer', async () => {
      assert.equal(statSync(join(dir, 'operator.key')).mode & 0o777, 0o600);
      assert.match(srv.stderr(), /operator key written to .*operator\.key/);
      const anon = op.as(null);
      assert.equal((await anon.get('/healthz')).status, 200);
      const ready = await anon.get('/readyz');
      assert.equal(ready.status, 200);
      assert.equal(ready.body.status, 'ready');
      // /metrics lists every tenant: the operator key only on this listener
      assertError(await anon.get('/metrics'), 401, 'unauthorized');
      assertError(await op.as('lkop_000000000000_' + 'A'.repeat(43)).get('/metrics'), 401, 'unauthorized');
      const m = await op.get('/metrics');
      assert.equal(m.status, 200);
      assert.match(m.text, /larktun_api_request_duration_seconds/);
    });

    t('OpenAPI document is generated from the route schemas', async () => {
      const r = await op.as(null).get('/api/v1/openapi.json');
      assert.equal(r.status, 200);
      assert.equal(r.body.openapi, '3.1.0');
      const paths = r.body.paths as Record<string, Record<string, Json>>;
      for (const p of ['/api/v1/tenants', '/api/v1/tenants/{tenant}', '/api/v1/tenants/{tenant}/apikeys', '/api/v1/tenants/{tenant}/users',
        '/api/v1/tenants/{tenant}/authkeys', '/api/v1/tenants/{tenant}/nodes', '/api/v1/tenants/{tenant}/nodes/{id}/routes',
        '/api/v1/tenants/{tenant}/policy', '/api/v1/tenants/{tenant}/policy/versions', '/api/v1/tenants/{tenant}/policy/check',
        '/api/v1/tenants/{tenant}/audit']) {
        assert.ok(paths[p], `missing ${p}`);
      }
      const create = paths['/api/v1/tenants']?.['post'];
      assert.deepEqual(create.requestBody.content['application/json'].schema.required, ['name']);
      const routes = paths['/api/v1/tenants/{tenant}/nodes/{id}/routes']?.['post'];
      assert.deepEqual(routes.parameters.map((x: Json) => x.name), ['tenant', 'id']);
    });

    t('authentication failures are JSON errors', async () => {
      assertError(await op.as(null).get('/api/v1/tenants'), 401, 'unauthorized');
      assertError(await op.as('nonsense').get('/api/v1/tenants'), 401, 'unauthorized');
      assertError(await op.as('lkapi_000000000000_' + 'A'.repeat(43)).get('/api/v1/tenants'), 401, 'unauthorized');
      assertError(await op.get('/api/v1/nope'), 404, 'not_found');
    });

    t('tenants: create, validate, list, get, patch', async () => {
      const c = await op.post('/api/v1/tenants', { name: 'acme' });
      assert.equal(c.status, 201, c.text);
      assert.equal(c.body.pool4, '100.64.0.0/10');
      assertError(await op.post('/api/v1/tenants', { name: 'acme' }), 409, 'conflict');
      const bad = await op.post('/api/v1/tenants', { name: 'Bad Name!', bogus: 1 });
      assertError(bad, 400, 'invalid_request');
      assert.ok(Array.isArray(bad.body.error.details) && bad.body.error.details.length >= 2, 'every error reported');
      assertError(await op.post('/api/v1/tenants', { name: 'x1', pool4: '10.0.0.1/8' }), 400, 'invalid_request');
      assertError(await op.post('/api/v1/tenants', { name: 'x2', pool4: 'fd00::/64' }), 400, 'invalid_request');
      assertError(await op.req('POST', '/api/v1/tenants', '{"name":', { 'content-type': 'application/json' }), 400);
      const small = await op.post('/api/v1/tenants', { name: 'small', pool4: '192.168.6.0/24', pool6: null, max_nodes: 2, dns_base: 'small.example' });
      assert.equal(small.status, 201, small.text);
      const list = await op.get('/api/v1/tenants');
      assert.deepEqual(list.body.tenants.map((x: Json) => x.name), ['acme', 'small']);
      const p = await op.patch('/api/v1/tenants/acme', { max_nodes: 500 });
      assert.equal(p.status, 200, p.text);
      assert.equal(p.body.max_nodes, 500);
      assertError(await op.get('/api/v1/tenants/missing'), 404, 'not_found');
    });

    t('API keys: shown once, hashed, roles enforced, expiry', async () => {
      const k = await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin', description: 'ci' });
      assert.equal(k.status, 201, k.text);
      assert.match(k.body.key, /^lkapi_/);
      adminKeyId = k.body.id;
      admin = op.as(k.body.key);
      const list = await admin.get('/api/v1/tenants/acme/apikeys');
      assert.equal(list.status, 200);
      assert.ok(!list.text.includes(k.body.key), 'key never listed');
      assert.ok(!('hash' in list.body.apikeys[0]));
      assertError(await admin.get('/api/v1/tenants'), 403, 'forbidden');
      assert.equal((await admin.get('/api/v1/tenants/acme')).status, 200);

      const aud = op.as((await admin.post('/api/v1/tenants/acme/apikeys', { role: 'auditor' })).body.key);
      const opr = op.as((await admin.post('/api/v1/tenants/acme/apikeys', { role: 'operator' })).body.key);
      assertError(await aud.post('/api/v1/tenants/acme/users', { name: 'x' }), 403, 'forbidden');
      assert.equal((await aud.get('/api/v1/tenants/acme/audit')).status, 200);
      assertError(await opr.get('/api/v1/tenants/acme/audit'), 403, 'forbidden');
      assertError(await opr.put('/api/v1/tenants/acme/policy', { policy: '{}' }), 403, 'forbidden');
      assert.equal((await opr.get('/api/v1/tenants/acme/nodes')).status, 200);
      assertError(await admin.post('/api/v1/tenants/acme/apikeys', { role: 'root' }), 400, 'invalid_request');
      assertError(await admin.post('/api/v1/tenants/acme/apikeys', { role: 'admin', expires_at: '2001-01-01T00:00:00Z' }), 400);

      const soon = new Date(Date.now() + 1500).toISOString();
      const exp = op.as((await admin.post('/api/v1/tenants/acme/apikeys', { role: 'admin', expires_at: soon })).body.key);
      assert.equal((await exp.get('/api/v1/tenants/acme/users')).status, 200);
      await sleep(1700);
      assertError(await exp.get('/api/v1/tenants/acme/users'), 401, 'unauthorized');

      const tmp = await admin.post('/api/v1/tenants/acme/apikeys', { role: 'auditor' });
      assert.equal((await admin.del(`/api/v1/tenants/acme/apikeys/${tmp.body.id}`)).status, 200);
      assertError(await op.as(tmp.body.key).get('/api/v1/tenants/acme'), 401);
    });

    t('users and auth keys', async () => {
      const u = await admin.post('/api/v1/tenants/acme/users', { name: 'alice', email: 'alice@example.com' });
      assert.equal(u.status, 201, u.text);
      assertError(await admin.post('/api/v1/tenants/acme/users', { name: 'alice' }), 409, 'conflict');
      assertError(await admin.post('/api/v1/tenants/acme/users', { name: 'bob', email: 'not-an-email' }), 400, 'invalid_request');
      const bob = await admin.post('/api/v1/tenants/acme/users', { name: 'bob' });
      assert.equal((await admin.get('/api/v1/tenants/acme/users')).body.users.length, 2);
      assert.equal((await admin.del(`/api/v1/tenants/acme/users/${bob.body.id}`)).status, 200);
      assertError(await admin.del(`/api/v1/tenants/acme/users/${bob.body.id}`), 404, 'not_found');

      assertError(await admin.post('/api/v1/tenants/acme/authkeys', {}), 400, 'invalid_request');
      assertError(await admin.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:server'] }), 400, 'invalid_request');
      assertError(await admin.post('/api/v1/tenants/acme/authkeys', { user: 'nobody' }), 400, 'invalid_request');
      const k = await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice' });
      assert.equal(k.status, 201, k.text);
      assert.match(k.body.key, /^lkauth_/);
      const l = await admin.get('/api/v1/tenants/acme/authkeys');
      assert.ok(!l.text.includes(k.body.key));
      assert.equal(l.body.authkeys[0].user, 'alice');
    });

    t('policy: put validates and keeps the live policy on failure; versions; check', async () => {
      const g = await admin.get('/api/v1/tenants/acme/policy');
      assert.equal(g.status, 200);
      assert.equal(g.body.version, 1);
      const bad = await admin.put('/api/v1/tenants/acme/policy', { policy: '{ "acls": [ }' });
      assertError(bad, 400, 'invalid_policy');
      assert.ok(bad.body.error.details.errors.length >= 1);
      assert.equal((await admin.get('/api/v1/tenants/acme/policy')).body.version, 1);
      const good = `{
        // servers belong to alice
        "tagOwners": { "tag:server": ["alice@example.com"], "tag:router": ["alice@example.com"] },
        "autoApprovers": { "routes": { "10.0.0.0/8": ["tag:router"] }, "exitNode": ["tag:router"] },
        "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
      }`;
      const ok = await admin.put('/api/v1/tenants/acme/policy', { policy: good });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.version, 2);
      const raw = await admin.req('PUT', '/api/v1/tenants/acme/policy', good, { 'content-type': 'application/hujson' });
      assert.equal(raw.status, 200, raw.text);
      assert.equal(raw.body.version, 3);
      const v = await admin.get('/api/v1/tenants/acme/policy/versions');
      assert.deepEqual(v.body.versions.map((x: Json) => x.version), [3, 2, 1]);
      assert.match((await admin.get('/api/v1/tenants/acme/policy/versions/1')).body.policy, /acls/);
      const chk = await admin.post('/api/v1/tenants/acme/policy/check', { policy: '{"bogus": 1}' });
      assert.equal(chk.status, 200);
      assert.equal(chk.body.valid, false);
      assert.equal((await admin.post('/api/v1/tenants/acme/policy/check', { policy: good })).body.valid, true);
      assertError(await admin.put('/api/v1/tenants/acme/policy', { text: good }), 400, 'invalid_request');
    });

    let routerToken = '';
    let routerId = 0;
    t('nodes: register, tags, addresses, limits', async () => {
      const key = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key as string;
      const node = op.as(null);
      const r1 = await registerNode(node, { auth_key: key, hostname: 'Laptop One' });
      assert.equal(r1.status, 201, r1.text);
      assert.match(r1.body.token, /^lknode_/);
      assert.equal(r1.body.node.name, 'laptop-one');
      assert.equal(r1.body.node.ipv4, '100.64.0.1');
      const r2 = await registerNode(node, { auth_key: key, hostname: 'router', tags: ['tag:router'], routes: ['10.1.0.0/16', '192.168.0.0/24'], exit_node: true });
      assert.equal(r2.status, 201, r2.text);
      routerToken = r2.body.token;
      routerId = r2.body.node.id;
      assert.deepEqual(r2.body.node.approved_routes, ['0.0.0.0/0', '10.1.0.0/16', '::/0'], 'auto-approved on register');
      const notOwned = await registerNode(node, { auth_key: key, hostname: 'x', tags: ['tag:db'] });
      assertError(notOwned, 403, 'tags_not_allowed');
      assertError(await registerNode(node, { auth_key: 'lkauth_bad', hostname: 'x' }), 401, 'unauthorized');
      assertError(await node.post('/node/v1/register', { auth_key: key, node_key: 'short', hostname: 'x' }), 400, 'invalid_request');

      const once = (await admin.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:server'] })).body.key as string;
      const s1 = await registerNode(node, { auth_key: once, hostname: 'srv' });
      assert.equal(s1.status, 201, s1.text);
      assert.deepEqual(s1.body.node.tags, ['tag:server']);
      assertError(await registerNode(node, { auth_key: once, hostname: 'srv2' }), 401, 'unauthorized');

      // custom pool and node limit
      const sk = (await op.post('/api/v1/tenants/small/apikeys', { role: 'admin' })).body.key as string;
      const sa = op.as(sk);
      await sa.post('/api/v1/tenants/small/users', { name: 'carol' });
      const skey = (await sa.post('/api/v1/tenants/small/authkeys', { user: 'carol', reusable: true })).body.key as string;
      const a = await registerNode(node, { auth_key: skey, hostname: 'a' });
      assert.equal(a.body.node.ipv4, '192.168.6.1');
      assert.equal(a.body.node.ipv6, null);
      const b = await registerNode(node, { auth_key: skey, hostname: 'a' });
      assert.equal(b.body.node.ipv4, '192.168.6.2');
      assert.equal(b.body.node.name, 'a-2');
      assertError(await registerNode(node, { auth_key: skey, hostname: 'c' }), 409, 'limit_reached');

      const list = await admin.get('/api/v1/tenants/acme/nodes');
      assert.equal(list.body.nodes.length, 3);
      const rn = list.body.nodes.find((n: Json) => n.id === routerId);
      assert.deepEqual(rn.tags, ['tag:router']);
      assert.equal(rn.online, false);
      assert.deepEqual(rn.primary_routes, [], 'offline nodes are not primary');
    });

    t('hostinfo announce auto-approves; admin approves routes (exit routes in pairs)', async () => {
      const node = op.as(routerToken);
      const h = await node.post('/node/v1/hostinfo', { routes: ['10.2.0.0/16', '172.16.0.0/12'], endpoints: ['198.51.100.1:41641'] });
      assert.equal(h.status, 200, h.text);
      assert.ok(h.body.approved_routes.includes('10.2.0.0/16'));
      assert.ok(!h.body.approved_routes.includes('172.16.0.0/12'));
      assertError(await node.post('/node/v1/hostinfo', { endpoints: ['nope'] }), 400);
      assertError(await node.as('lknode_bad').post('/node/v1/hostinfo', {}), 401);
      const r = await admin.post(`/api/v1/tenants/acme/nodes/${routerId}/routes`, { approved: ['172.16.0.0/12', '0.0.0.0/0'] });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.approved, ['0.0.0.0/0', '172.16.0.0/12', '::/0']);
      assertError(await admin.post(`/api/v1/tenants/acme/nodes/${routerId}/routes`, { approved: ['10.0.0.1/8'] }), 400, 'invalid_request');
      const g = await admin.get(`/api/v1/tenants/acme/nodes/${routerId}/routes`);
      assert.deepEqual(g.body.announced, ['0.0.0.0/0', '10.2.0.0/16', '172.16.0.0/12', '::/0']);
    });

    t('node admin: rename, tags only from tagOwners, expire, delete', async () => {
      const nodes = (await admin.get('/api/v1/tenants/acme/nodes')).body.nodes as Json[];
      const lap = nodes.find((n) => n.name === 'laptop-one');
      const rn = await admin.patch(`/api/v1/tenants/acme/nodes/${lap.id}`, { name: 'laptop' });
      assert.equal(rn.body.name, 'laptop');
      assertError(await admin.patch(`/api/v1/tenants/acme/nodes/${lap.id}`, { name: 'router' }), 409, 'conflict');
      assertError(await admin.put(`/api/v1/tenants/acme/nodes/${lap.id}/tags`, { tags: ['tag:undefined'] }), 400, 'invalid_request');
      assert.deepEqual((await admin.put(`/api/v1/tenants/acme/nodes/${lap.id}/tags`, { tags: ['tag:server'] })).body.tags, ['tag:server']);
      assert.deepEqual((await admin.put(`/api/v1/tenants/acme/nodes/${lap.id}/tags`, { tags: [] })).body.tags, []);
      const srv = nodes.find((n) => n.name === 'srv');
      assert.equal((await admin.post(`/api/v1/tenants/acme/nodes/${srv.id}/expire`)).body.expired, true);
      assert.equal((await admin.del(`/api/v1/tenants/acme/nodes/${srv.id}`)).status, 200);
      assertError(await admin.get(`/api/v1/tenants/acme/nodes/${srv.id}`), 404, 'not_found');
      assertError(await admin.get('/api/v1/tenants/acme/nodes/abc'), 400, 'invalid_request');
    });

    t('map stream: first map, pushes on change, presence, resume', async () => {
      const key = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key as string;
      const reg = await registerNode(op.as(null), { auth_key: key, hostname: 'phone' });
      const tok = reg.body.token as string;
      const s = await SseReader.open(`${srv.url}/node/v1/stream`, tok);
      assert.equal(s.status, 200);
      const first = await s.next();
      assert.equal(first.event, 'map');
      assert.deepEqual(first.data.self.addresses.length, 2);
      assert.ok(first.data.peers.some((p: Json) => p.id === routerId));
      assert.match(first.data.self.dns_name, /^phone\.acme\.larktun\.internal$/);
      const lastId = first.id as string;

      // router comes online → its routes become primary and the phone's map changes
      const rs = await SseReader.open(`${srv.url}/node/v1/stream`, routerToken);
      await rs.next();
      const m2 = await s.waitMap((m) => m.peers.some((p: Json) => p.id === routerId && m.online.includes(routerId) && p.allowed_ips.includes('172.16.0.0/12')));
      assert.ok(m2.version > first.data.version);
      const nodes = (await admin.get('/api/v1/tenants/acme/nodes')).body.nodes as Json[];
      const rn = nodes.find((n) => n.id === routerId);
      assert.equal(rn.online, true);
      assert.ok(rn.primary_routes.includes('172.16.0.0/12'));

      // an admin change pushes promptly
      const t0 = Date.now();
      await admin.patch(`/api/v1/tenants/acme/nodes/${routerId}`, { name: 'gw' });
      await s.waitMap((m) => m.peers.some((p: Json) => p.name === 'gw'), 2000);
      assert.ok(Date.now() - t0 < 2000);

      // a policy change that leaves the peers alone arrives as a patch without them
      const pol = (await admin.get('/api/v1/tenants/acme/policy')).body.policy as string;
      const narrowed = pol.replace('"dst": ["*:*"]', '"dst": ["*:22,443"]');
      assert.notEqual(narrowed, pol);
      // (re-applying the policy re-runs auto-approval: the router's 10.2.0.0/16 comes back)
      assert.equal((await admin.put('/api/v1/tenants/acme/policy', { policy: pol })).status, 200);
      await s.waitMap((m) => m.peers.some((p: Json) => p.id === routerId && p.allowed_ips.includes('10.2.0.0/16')));
      assert.equal((await admin.put('/api/v1/tenants/acme/policy', { policy: narrowed })).status, 200);
      let patch: Json = null;
      for (let i = 0; i < 10 && !patch; i++) {
        const e = await s.next(3000);
        if (e.event === 'patch') patch = e;
        else assert.notEqual(e.event, 'map', 'peers unchanged: no full map');
      }
      assert.ok(patch, 'got a patch');
      assert.ok('packet_filter' in patch.data && !('peers' in patch.data), JSON.stringify(Object.keys(patch.data)));
      assert.match(JSON.stringify(patch.state.packet_filter), /443/);
      assert.equal((await admin.put('/api/v1/tenants/acme/policy', { policy: pol })).status, 200);
      await s.waitMap((m) => !JSON.stringify(m.packet_filter).includes('443'));

      // resume with the last id when nothing changed for this node → "unchanged"
      s.close();
      const cur = await SseReader.open(`${srv.url}/node/v1/stream`, tok);
      const c1 = await cur.next();
      cur.close();
      const again = await SseReader.open(`${srv.url}/node/v1/stream`, tok, c1.id as string);
      const u = await again.next();
      assert.equal(u.event, 'unchanged');
      again.close();
      void lastId;

      rs.close();
      // router offline → listed offline soon
      for (let i = 0; i < 50; i++) {
        const n = (await admin.get(`/api/v1/tenants/acme/nodes/${routerId}`)).body;
        if (!n.online) break;
        await sleep(50);
      }
      assert.equal((await admin.get(`/api/v1/tenants/acme/nodes/${routerId}`)).body.online, false);
    });

    t('ephemeral nodes are removed when they go offline', async () => {
      const key = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice', ephemeral: true })).body.key as string;
      const reg = await registerNode(op.as(null), { auth_key: key, hostname: 'ci-runner' });
      assert.equal(reg.status, 201);
      const s = await SseReader.open(`${srv.url}/node/v1/stream`, reg.body.token);
      await s.next();
      s.close();
      let gone = false;
      for (let i = 0; i < 60 && !gone; i++) {
        gone = (await admin.get(`/api/v1/tenants/acme/nodes/${reg.body.node.id}`)).status === 404;
        if (!gone) await sleep(50);
      }
      assert.ok(gone, 'ephemeral node deleted');
    });

    t('audit: every change recorded with actor, chain verifies, filters', async () => {
      const all = await admin.get('/api/v1/tenants/acme/audit?limit=1000');
      assert.equal(all.status, 200);
      const entries = all.body.entries as Json[];
      const actions = new Set(entries.map((e) => e.action));
      for (const a of ['tenant.create', 'apikey.create', 'user.create', 'user.delete', 'authkey.create', 'policy.set', 'node.register', 'node.routes.autoapprove', 'node.routes.approve', 'node.rename', 'node.tags', 'node.expire', 'node.delete', 'node.hostinfo', 'node.delete.ephemeral']) {
        assert.ok(actions.has(a), `audit has ${a}`);
      }
      assert.deepEqual(entries.map((e) => e.seq), entries.map((_e, i) => i + 1));
      const ren = entries.find((e) => e.action === 'node.rename');
      assert.match(ren.actor, /^apikey:/);
      assert.deepEqual(ren.after, { name: 'laptop' });
      assert.ok(entries.some((e) => e.actor.startsWith('authkey:')));
      assert.ok(entries.some((e) => e.actor.startsWith('node:')));
      const f = await admin.get('/api/v1/tenants/acme/audit?action=policy.set');
      assert.ok(f.body.entries.length >= 3 && f.body.entries.every((e: Json) => e.action === 'policy.set'));
      const future = await admin.get(`/api/v1/tenants/acme/audit?since=${encodeURIComponent(new Date(Date.now() + 60000).toISOString())}`);
      assert.equal(future.body.entries.length, 0);
      assertError(await admin.get('/api/v1/tenants/acme/audit?limit=abc'), 400, 'invalid_request');
      const v = await admin.get('/api/v1/tenants/acme/audit/verify');
      assert.equal(v.body.ok, true, JSON.stringify(v.body));
      assert.equal(v.body.entries, entries.length);
    });

    t('restart keeps everything; SIGTERM exits cleanly', async () => {
      const before = {
        nodes: (await admin.get('/api/v1/tenants/acme/nodes')).body.nodes.map((n: Json) => [n.id, n.name, n.ipv4, n.approved_routes]),
        audit: (await admin.get('/api/v1/tenants/acme/audit?limit=10000')).body.entries.length,
        policy: (await admin.get('/api/v1/tenants/acme/policy')).body,
      };
      const opKey = srv.operatorKey();
      assert.equal(await srv.stop(), 0);
      srv = await spawnServer({ dataDir: dir, db });
      assert.doesNotMatch(srv.stderr(), /operator key written/);
      assert.equal(srv.operatorKey(), opKey);
      admin = new Client(srv.url, admin.key);
      op = new Client(srv.url, opKey);
      const after = {
        nodes: (await admin.get('/api/v1/tenants/acme/nodes')).body.nodes.map((n: Json) => [n.id, n.name, n.ipv4, n.approved_routes]),
        audit: (await admin.get('/api/v1/tenants/acme/audit?limit=10000')).body.entries.length,
        policy: (await admin.get('/api/v1/tenants/acme/policy')).body,
      };
      assert.deepEqual(after, before);
      assert.equal((await op.get('/api/v1/tenants')).status, 200);
      assert.equal((await admin.get('/api/v1/tenants/acme/audit/verify')).body.ok, true);
      void adminKeyId;
    });

    t('deleting a tenant removes it', async () => {
      assert.equal((await op.del('/api/v1/tenants/small')).status, 200);
      assertError(await op.get('/api/v1/tenants/small'), 404);
    });
  });
}
