// Isolation: a key of tenant B tries every endpoint on tenant A's names and ids,
// and on its own tenant with A's ids. Every answer must be the plain 404 a
// missing object gets — never A's data, never a hint that it exists.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, backends, cleanup, registerNode, spawnServer, tempDir, type Json, type ServerProc } from './harness.js';

function isolationSuite(name: string, setup: () => Promise<string>, teardown: () => Promise<void>): void {
  describe(`cross-tenant isolation on ${name}`, () => {
    let skip: string | false = false;
    let dir = '';
    let srv: ServerProc;
    let a: Client;
    let b: Client;
    const ids: Record<string, number> = {};
    let aNodeToken = '';
    let relayToken = '';
    /** beta's console user (admin), signed in: a session must stay in its tenant as a key does. */
    let bs: Client;
    /** An id shaped like an interactive login's (43 base64url characters). */
    const loginId = 'A'.repeat(43);

    before(async () => {
      const db = await setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db });
      const op = new Client(srv.url, srv.operatorKey());
      for (const t of ['alpha', 'beta']) assert.equal((await op.post('/api/v1/tenants', { name: t, pool4: '10.9.0.0/16' })).status, 201);
      a = op.as((await op.post('/api/v1/tenants/alpha/apikeys', { role: 'admin' })).body.key);
      b = op.as((await op.post('/api/v1/tenants/beta/apikeys', { role: 'admin' })).body.key);
      ids['user'] = (await a.post('/api/v1/tenants/alpha/users', { name: 'secret-user' })).body.id;
      ids['apikey'] = (await a.post('/api/v1/tenants/alpha/apikeys', { role: 'auditor' })).body.id;
      const ak = await a.post('/api/v1/tenants/alpha/authkeys', { user: 'secret-user', reusable: true });
      ids['authkey'] = ak.body.id;
      const reg = await registerNode(op.as(null), { auth_key: ak.body.key, hostname: 'secret-node', routes: ['10.50.0.0/16'] });
      ids['node'] = reg.body.node.id;
      aNodeToken = reg.body.token;
      // beta has objects with other ids so "own tenant + foreign id" is meaningful
      await b.post('/api/v1/tenants/beta/users', { name: 'bob' });
      const rel = await op.post('/api/v1/relays', { name: 'alpha-relay', endpoints: ['192.0.2.9:18020'], tenant: 'alpha' });
      assert.equal(rel.status, 201, rel.text);
      ids['relay'] = rel.body.id;
      relayToken = rel.body.token;
      ids['console_user'] = (await a.post('/api/v1/tenants/alpha/console-users', { username: 'secret-admin', password: 'console-password-1', role: 'admin' })).body.id;
      assert.equal((await b.post('/api/v1/tenants/beta/console-users', { username: 'bea', password: 'console-password-1', role: 'admin' })).status, 201);
      bs = await consoleSession(srv.url, 'beta', 'bea', 'console-password-1');
    });
    after(async () => {
      if (skip) return;
      await srv.stop();
      cleanup(dir);
      await teardown();
    });

    const check = (r: { status: number; body: Json; text: string }, what: string) => {
      assert.equal(r.status, 404, `${what}: expected 404, got ${r.status} ${r.text}`);
      assert.equal(r.body.error.code, 'not_found', what);
      for (const leak of ['secret-user', 'secret-node', 'alpha', '10.50.0.0']) assert.ok(!r.text.includes(leak), `${what} leaks ${leak}: ${r.text}`);
    };

    const endpoints = (tenant: string): [string, string, unknown?][] => [
      ['GET', `/api/v1/tenants/${tenant}`],
      ['PATCH', `/api/v1/tenants/${tenant}`, { max_nodes: 1 }],
      ['DELETE', `/api/v1/tenants/${tenant}`],
      ['GET', `/api/v1/tenants/${tenant}/apikeys`],
      ['POST', `/api/v1/tenants/${tenant}/apikeys`, { role: 'admin' }],
      ['DELETE', `/api/v1/tenants/${tenant}/apikeys/${ids['apikey']}`],
      ['GET', `/api/v1/tenants/${tenant}/users`],
      ['POST', `/api/v1/tenants/${tenant}/users`, { name: 'mallory' }],
      ['DELETE', `/api/v1/tenants/${tenant}/users/${ids['user']}`],
      ['GET', `/api/v1/tenants/${tenant}/authkeys`],
      ['POST', `/api/v1/tenants/${tenant}/authkeys`, { user: String(ids['user']) }],
      ['DELETE', `/api/v1/tenants/${tenant}/authkeys/${ids['authkey']}`],
      ['GET', `/api/v1/tenants/${tenant}/nodes`],
      ['GET', `/api/v1/tenants/${tenant}/nodes/${ids['node']}`],
      ['PATCH', `/api/v1/tenants/${tenant}/nodes/${ids['node']}`, { name: 'pwned' }],
      ['PUT', `/api/v1/tenants/${tenant}/nodes/${ids['node']}/tags`, { tags: [] }],
      ['POST', `/api/v1/tenants/${tenant}/nodes/${ids['node']}/expire`, {}],
      ['DELETE', `/api/v1/tenants/${tenant}/nodes/${ids['node']}`],
      ['GET', `/api/v1/tenants/${tenant}/nodes/${ids['node']}/routes`],
      ['GET', `/api/v1/tenants/${tenant}/nodes/${ids['node']}/links`],
      ['POST', `/api/v1/tenants/${tenant}/nodes/${ids['node']}/links/rotate`, {}],
      ['POST', `/api/v1/tenants/${tenant}/nodes/${ids['node']}/routes`, { approved: ['10.50.0.0/16'] }],
      ['GET', `/api/v1/tenants/${tenant}/policy`],
      ['PUT', `/api/v1/tenants/${tenant}/policy`, { policy: '{}' }],
      ['GET', `/api/v1/tenants/${tenant}/policy/versions`],
      ['GET', `/api/v1/tenants/${tenant}/policy/versions/1`],
      ['POST', `/api/v1/tenants/${tenant}/policy/check`, { policy: '{}' }],
      ['GET', `/api/v1/tenants/${tenant}/audit`],
      ['GET', `/api/v1/tenants/${tenant}/audit/verify`],
      // console endpoints
      ['GET', `/api/v1/tenants/${tenant}/routes`],
      ['GET', `/api/v1/tenants/${tenant}/tags`],
      ['GET', `/api/v1/tenants/${tenant}/relays`],
      ['GET', `/api/v1/tenants/${tenant}/events`],
      ['POST', `/api/v1/tenants/${tenant}/policy/preview`, { policy: '{}', node: 'secret-node' }],
      ['GET', `/api/v1/tenants/${tenant}/console-users`],
      ['POST', `/api/v1/tenants/${tenant}/console-users`, { username: 'mallory', password: 'console-password-1', role: 'admin' }],
      ['PATCH', `/api/v1/tenants/${tenant}/console-users/${ids['console_user']}`, { role: 'auditor' }],
      ['DELETE', `/api/v1/tenants/${tenant}/console-users/${ids['console_user']}`],
      ['GET', `/api/v1/tenants/${tenant}/oidc`],
      ['PUT', `/api/v1/tenants/${tenant}/oidc`, { issuer: 'http://127.0.0.1:9/', client_id: 'x', allowed_domains: ['evil.example'], new_user_role: 'admin', enabled: true }],
      ['DELETE', `/api/v1/tenants/${tenant}/oidc`],
      ['GET', `/api/v1/tenants/${tenant}/node-logins/${loginId}`],
      ['POST', `/api/v1/tenants/${tenant}/node-logins/${loginId}/approve`, {}],
      ['POST', `/api/v1/tenants/${tenant}/node-logins/${loginId}/reject`, {}],
    ];

    it('every tenant-scoped operation of the OpenAPI document is in this suite', async (ctx) => {
      if (skip) return ctx.skip(skip);
      const doc = (await b.get('/api/v1/openapi.json')).body as Json;
      const covered = new Set(endpoints('{tenant}').map(([m, p]) => `${m} ${p.split('?')[0]!.replace(/\/(\d+|A{43})(?=\/|$)/g, '/{id}')}`));
      const missing: string[] = [];
      for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
        if (!path.startsWith('/api/v1/tenants/{tenant}')) continue;
        for (const m of Object.keys(ops)) {
          const key = `${m.toUpperCase()} ${path.replace(/\{[a-z_]+\}/g, (x) => (x === '{tenant}' ? x : '{id}'))}`;
          if (!covered.has(key)) missing.push(key);
        }
      }
      assert.deepEqual(missing, [], 'add these to endpoints() so another tenant is shown to get 404 on them');
    });

    it("another tenant's key gets 404 on every endpoint of the tenant", async (ctx) => {
      if (skip) return ctx.skip(skip);
      const list = endpoints('alpha');
      for (const [m, p, body] of list) check(await b.req(m, p, body), `${m} ${p}`);
      // and the same answer as for a tenant that does not exist
      for (const [m, p, body] of endpoints('gamma')) {
        const r = await b.req(m, p, body);
        assert.equal(r.status, 404, `${m} ${p}`);
      }
      assert.ok(list.length >= 27);
      // relays dedicated to alpha: beta's key gets the 404 of a missing relay
      for (const [m, p] of [['GET', `/api/v1/relays/${ids['relay']}`], ['DELETE', `/api/v1/relays/${ids['relay']}`], ['POST', `/api/v1/relays/${ids['relay']}/rotate`]] as const) {
        const r = await b.req(m, p, m === 'POST' ? {} : undefined);
        assert.equal(r.status, 404, `${m} ${p}: ${r.text}`);
        assert.ok(!r.text.includes('alpha-relay'), `${m} ${p} leaks`);
      }
      const lr = await b.get('/api/v1/relays');
      assert.ok(!lr.text.includes('alpha-relay'), lr.text);
      // alpha's dedicated relay sees alpha only, never beta
      const v = await b.as(relayToken).get('/relay/v1/map');
      assert.equal(v.status, 200, v.text);
      assert.deepEqual(v.body.tenants.map((t: Json) => t.tenant), ['alpha']);
      assert.ok(!v.text.includes('beta') && !v.text.includes('bob'));
    });

    it("another tenant's console session gets 404 on every endpoint of the tenant", async (ctx) => {
      if (skip) return ctx.skip(skip);
      for (const [m, p, body] of endpoints('alpha')) check(await bs.req(m, p, body), `session ${m} ${p}`);
      for (const [m, p, body] of endpoints('gamma')) assert.equal((await bs.req(m, p, body)).status, 404, `session ${m} ${p}`);
      // and its own tenant's pages work with the same session: the 404s above are the tenant check, not a broken session
      assert.equal((await bs.get('/api/v1/tenants/beta/console-users')).status, 200);
    });

    it("own tenant with the other tenant's ids gets 404 (never acts on them)", async (ctx) => {
      if (skip) return ctx.skip(skip);
      for (const [m, p, body] of endpoints('beta')) {
        if (!/\/(apikeys|users|authkeys|nodes|console-users)\/\d+/.test(p) && !p.endsWith('/authkeys')) continue;
        const r = await b.req(m, p, body);
        if (p.endsWith('/authkeys') && m === 'POST') {
          // user id of alpha → no such user in beta
          assert.equal(r.status, 400, r.text);
          assert.ok(!r.text.includes('secret-user'));
          continue;
        }
        if (m === 'GET' && p.endsWith('/authkeys')) continue;
        check(r, `${m} ${p}`);
      }
    });

    it("tenant A's objects are untouched afterwards", async (ctx) => {
      if (skip) return ctx.skip(skip);
      const n = await a.get(`/api/v1/tenants/alpha/nodes/${ids['node']}`);
      assert.equal(n.status, 200);
      assert.equal(n.body.name, 'secret-node');
      assert.equal(n.body.expired, false);
      assert.equal((await a.get(`/api/v1/relays/${ids['relay']}`)).status, 200, 'alpha\'s relay is still there');
      assert.equal((await a.get('/api/v1/tenants/alpha/users')).body.users.length, 1);
      assert.equal((await a.get('/api/v1/tenants/alpha/apikeys')).body.apikeys.length, 2);
      assert.equal((await a.get('/api/v1/tenants/alpha/policy')).body.version, 1);
      const cu = (await a.get('/api/v1/tenants/alpha/console-users')).body.console_users as Json[];
      assert.deepEqual(cu.map((u) => [u.username, u.role]), [['secret-admin', 'admin']]);
      assert.equal((await a.get('/api/v1/tenants/alpha/oidc')).body.oidc, null, 'no SSO provider was set on alpha');
      const audit = (await a.get('/api/v1/tenants/alpha/audit?limit=1000')).body.entries as Json[];
      assert.ok(audit.every((e) => !String(e.actor).includes('beta')));
      assert.equal((await a.get('/api/v1/tenants/alpha/audit/verify')).body.ok, true);
    });

    it("a node token only ever sees its own tenant; beta's nodes do not see alpha's", async (ctx) => {
      if (skip) return ctx.skip(skip);
      const bk = (await b.post('/api/v1/tenants/beta/authkeys', { user: 'bob', reusable: true })).body.key;
      const reg = await registerNode(b.as(null), { auth_key: bk, hostname: 'bnode' });
      assert.equal(reg.body.node.ipv4, '10.9.0.1', 'pools of different tenants may overlap');
      const m = await b.as(reg.body.token).get('/node/v1/map');
      assert.equal(m.status, 200);
      assert.equal(m.body.tenant, 'beta');
      assert.ok(!m.text.includes('secret-node'));
      const am = await b.as(aNodeToken).get('/node/v1/map');
      assert.equal(am.body.tenant, 'alpha');
      assert.ok(!am.text.includes('bnode'));
      // an alpha auth key never registers into beta, whatever the node says
      const akey = (await a.post('/api/v1/tenants/alpha/authkeys', { user: 'secret-user' })).body.key;
      const r2 = await registerNode(b.as(null), { auth_key: akey, hostname: 'x', tenant: 'beta' });
      assert.equal(r2.status, 400, 'unknown fields are rejected');
    });
  });
}

/** A client carrying a console session (cookie + CSRF token), as the browser does. */
async function consoleSession(url: string, tenant: string, username: string, password: string): Promise<Client> {
  const r = await fetch(`${url}/api/v1/console/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant, username, password }) });
  const body = (await r.json()) as Json;
  assert.equal(r.status, 200, JSON.stringify(body));
  const cookie = (r.headers.get('set-cookie') ?? '').split(';')[0] as string;
  const c = new Client(url, null);
  const req = c.req.bind(c);
  c.req = (method, path, b, headers = {}) => req(method, path, b, { ...headers, cookie, 'x-csrf-token': body.csrf as string });
  return c;
}

for (const b of backends()) isolationSuite(b.name, b.setup, b.teardown);
