// Console SSO pieces without a browser: pending sign-ins (migration
// 0010_console_oidc) on SQLite and PostgreSQL — single use, bounded per
// tenant, other tenants untouched, emails unique per tenant — and the provider
// discovery cache (TTL, bound, one fetch for concurrent look-ups, a timeout).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { backends, cleanup, tempDir } from '../control/harness.js';
import { openDatabase, type DbHandle } from '../../src/control/store/db.js';
import { ConsoleRepo, OidcRepo, OIDC_STATES_PER_TENANT } from '../../src/control/console/repo.js';
import { DiscoveryCache, isLoopbackHost, parsePublicUrl, usernameFromEmail, validateIssuer } from '../../src/control/console/oidc.js';

for (const b of backends()) {
  describe(`OIDC store (${b.name})`, () => {
    let dir = '';
    let h: DbHandle | null = null;
    let skip: string | false = false;
    const tenants: number[] = [];

    before(async () => {
      const spec = await b.setup();
      if (spec.startsWith('skip:')) {
        skip = spec.slice(5);
        return;
      }
      dir = tempDir('larktun-oidc-store-');
      h = await openDatabase(spec, dir);
      const now = new Date().toISOString();
      for (const name of ['acme', 'beta']) {
        const t = await h.db.insertInto('tenants').values({ name, pool4: '100.64.0.0/10', pool6: null, dns_base: `${name}.example`, max_nodes: 100, generation: 1, created_at: now, updated_at: now })
          .returning('id').executeTakeFirstOrThrow();
        tenants.push(t.id);
      }
    });
    after(async () => {
      await h?.close();
      if (dir) cleanup(dir);
      await b.teardown();
    });

    const state = (tenantId: number, i: number, created = new Date()) => ({
      tenant_id: tenantId, state_hash: `h-${tenantId}-${i}`, browser_hash: 'b', nonce: 'n', code_verifier: 'v', redirect_uri: 'http://127.0.0.1/cb',
      created_at: created.toISOString(), expires_at: new Date(created.getTime() + 600_000).toISOString(),
    });

    test('a pending sign-in is taken once; each tenant keeps at most its newest OIDC_STATES_PER_TENANT; expired ones go', async (t) => {
      if (skip) return t.skip(skip);
      const r = new OidcRepo(h!.db);
      const [acme, beta] = tenants as [number, number];
      await r.insertState(state(beta, 0));
      // An expired one of beta is dropped by the next insert.
      await r.insertState({ ...state(beta, 1), expires_at: new Date(Date.now() - 1000).toISOString() });
      const n = OIDC_STATES_PER_TENANT + 25;
      for (let i = 0; i < n; i++) await r.insertState(state(acme, i));
      assert.equal(await r.countStates(acme), OIDC_STATES_PER_TENANT, 'bounded per tenant');
      assert.equal(await r.countStates(beta), 1, 'another tenant\'s flood leaves beta\'s pending sign-in (its expired one dropped)');
      assert.equal(await r.takeState('h-' + acme + '-0'), undefined, 'the oldest were dropped');
      const newest = await r.takeState(`h-${acme}-${n - 1}`);
      assert.equal(newest?.tenant_id, acme);
      assert.equal(await r.takeState(`h-${acme}-${n - 1}`), undefined, 'single use');
      assert.equal((await r.takeState(`h-${beta}-0`))?.tenant_id, beta);
    });

    test('console user emails are unique per tenant, not across tenants', async (t) => {
      if (skip) return t.skip(skip);
      const c = new ConsoleRepo(h!.db);
      const [acme, beta] = tenants as [number, number];
      const base = { password_hash: '', role: 'auditor', created_at: new Date().toISOString(), created_by: 'sso', source: 'sso' as const };
      await c.insertUser(acme, { ...base, username: 'a@x.example', email: 'a@x.example' });
      await c.insertUser(beta, { ...base, username: 'a@x.example', email: 'a@x.example' });
      await assert.rejects(c.insertUser(acme, { ...base, username: 'other', email: 'a@x.example' }), 'a second user with the email in one tenant');
      await c.insertUser(acme, { ...base, username: 'p1', email: null, source: 'password' });
      await c.insertUser(acme, { ...base, username: 'p2', email: null, source: 'password' });
      assert.equal((await c.getUserByEmail(acme, 'a@x.example'))?.tenant_id, acme);
      assert.equal((await c.getUserByEmail(beta, 'a@x.example'))?.tenant_id, beta);
      assert.equal((await c.getUserByName(acme, 'p1'))?.source, 'password');
    });
  });
}

describe('OIDC discovery cache and checks', () => {
  let srv: Server;
  let base = '';
  const hits = new Map<string, number>();
  let slowMs = 0;

  before(async () => {
    srv = createServer((req, res) => {
      const m = /^(\/[a-z0-9]+)\/\.well-known\/openid-configuration$/.exec(req.url ?? '');
      if (!m) {
        res.statusCode = 404;
        res.end();
        return;
      }
      const prefix = m[1] as string;
      hits.set(prefix, (hits.get(prefix) ?? 0) + 1);
      const issuer = `${base}${prefix}`;
      const body = JSON.stringify({ issuer, authorization_endpoint: `${issuer}/auth`, token_endpoint: `${issuer}/token`, jwks_uri: `${issuer}/jwks`, response_types_supported: ['code'] });
      setTimeout(() => {
        res.setHeader('content-type', 'application/json');
        res.end(body);
      }, prefix === '/slow' ? slowMs : 0);
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
  });
  after(async () => {
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
  });

  test('cached for its TTL, bounded, one fetch for concurrent look-ups, a timeout for a slow provider', async () => {
    const cache = new DiscoveryCache(400, 2, 1);
    const [m1, m2] = await Promise.all([cache.get(`${base}/a`), cache.get(`${base}/a`)]);
    assert.equal(m1.issuer, `${base}/a`);
    assert.equal(m2.token_endpoint, `${base}/a/token`);
    assert.equal(hits.get('/a'), 1, 'concurrent look-ups share one fetch');
    await cache.get(`${base}/a`);
    assert.equal(hits.get('/a'), 1, 'cached');
    await cache.get(`${base}/b`);
    await cache.get(`${base}/c`);
    assert.equal(cache.size, 2, 'bounded');
    await cache.get(`${base}/a`);
    assert.equal(hits.get('/a'), 2, 'the oldest issuer was evicted');
    await new Promise((r) => setTimeout(r, 600));
    await cache.get(`${base}/a`);
    assert.equal(hits.get('/a'), 3, 'fetched again after the TTL');
    slowMs = 3000;
    const t0 = Date.now();
    await assert.rejects(cache.get(`${base}/slow`));
    const ms = Date.now() - t0;
    assert.ok(ms >= 900 && ms < 2900, `a 1 s timeout gave up after ${ms} ms`);
    await assert.rejects(cache.get(`${base}/no-such`), 'a missing discovery document is an error');
  });

  test('issuer, public URL and username rules', () => {
    assert.equal(validateIssuer('https://id.example.com/realms/acme'), 'https://id.example.com/realms/acme');
    assert.equal(validateIssuer('http://127.0.0.1:9000'), 'http://127.0.0.1:9000');
    assert.equal(validateIssuer('http://[::1]:9000'), 'http://[::1]:9000');
    for (const bad of ['http://id.example.com', 'http://127.0.0.1.evil.example', 'javascript:alert(1)', 'https://id.example.com/?x=1', 'https://id.example.com/#f', 'https://u:p@id.example.com']) {
      assert.throws(() => validateIssuer(bad), /must|not a URL/, bad);
    }
    assert.ok(isLoopbackHost('localhost') && isLoopbackHost('127.0.0.2') && isLoopbackHost('[::1]'));
    assert.ok(!isLoopbackHost('10.0.0.1') && !isLoopbackHost('localhost.evil.example') && !isLoopbackHost('::2'));
    assert.equal(parsePublicUrl('https://larktun.example.com').toString(), 'https://larktun.example.com/');
    assert.throws(() => parsePublicUrl('https://larktun.example.com/console'));
    assert.throws(() => parsePublicUrl('larktun.example.com'));
    assert.equal(usernameFromEmail('carol@acme.example'), 'carol@acme.example');
    assert.equal(usernameFromEmail('c+tag@acme.example'), 'c-tag@acme.example');
    assert.match(usernameFromEmail(`${'x'.repeat(80)}@acme.example`), /^[A-Za-z0-9._@-]{64}$/);
  });
});
