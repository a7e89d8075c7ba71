// Console endpoints of the Admin API, on SQLite and PostgreSQL: sign-in (same
// answer for every wrong credential), the session cookie's attributes, CSRF on
// every change, a session confined to its tenant and role, sign-out and
// password changes ending sessions server-side, audit attribution, the
// tenant-wide routes view (primary/standby), OpenAPI, and how the console's
// files are served without shadowing any other path. Also the limiter alone.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, SseReader, backends, cleanup, nodeKey, spawnServer, tempDir, type Json, type ServerProc, registerNode } from '../control/harness.js';
import { SigninLimiter } from '../../src/control/console/sessions.js';

const PW = 'console-password-1';

interface Signed { cookie: string; csrf: string; setCookie: string }

async function signIn(url: string, body: Record<string, string>): Promise<{ status: number; body: Json; signed: Signed | null }> {
  const r = await fetch(`${url}/api/v1/console/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = (await r.json()) as Json;
  const set = r.headers.get('set-cookie');
  return { status: r.status, body: json, signed: set ? { cookie: set.split(';')[0] as string, csrf: json.csrf as string, setCookie: set } : null };
}

/** A client that sends the session cookie (and the CSRF token unless told not to). */
function sessionClient(url: string, s: Signed, csrf: string | null = s.csrf): Client {
  const c = new Client(url, null);
  const req = c.req.bind(c);
  c.req = (method, path, body, headers = {}) => req(method, path, body, { ...headers, cookie: s.cookie, ...(csrf ? { 'x-csrf-token': csrf } : {}) });
  return c;
}

for (const b of backends()) {
  describe(`console API (${b.name})`, () => {
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    let skip: string | false = false;
    const streams: SseReader[] = [];

    before(async () => {
      const db = await b.setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dir = tempDir('larktun-console-api-');
      srv = await spawnServer({ dataDir: dir, db });
      op = new Client(srv.url, srv.operatorKey());
      for (const t of ['acme', 'beta']) assert.equal((await op.post('/api/v1/tenants', { name: t })).status, 201);
      for (const [t, u, role] of [['acme', 'alice', 'admin'], ['acme', 'oscar', 'operator'], ['acme', 'audrey', 'auditor'], ['beta', 'bob', 'admin']] as const) {
        const r = await op.post(`/api/v1/tenants/${t}/console-users`, { username: u, password: PW, role });
        assert.equal(r.status, 201, r.text);
        assert.equal(r.body.password_hash, undefined, 'the hash is never returned');
      }
    });
    after(async () => {
      for (const s of streams) s.close();
      if (srv) await srv.stop();
      if (dir) cleanup(dir);
      await b.teardown();
    });

    test('wrong tenant, user or password get one answer; a right one gets an HttpOnly, SameSite=Strict cookie', async (t) => {
      if (skip) return t.skip(skip);
      for (const body of [
        { tenant: 'nope', username: 'alice', password: PW },
        { tenant: 'acme', username: 'nobody', password: PW },
        { tenant: 'beta', username: 'alice', password: PW },
        { tenant: 'acme', username: 'alice', password: 'wrong-password' },
      ]) {
        const r = await signIn(srv.url, body);
        assert.equal(r.status, 401);
        assert.equal(r.body.error.code, 'invalid_credentials');
        assert.equal(r.signed, null);
      }
      const ok = await signIn(srv.url, { tenant: 'acme', username: 'alice', password: PW });
      assert.equal(ok.status, 200);
      assert.deepEqual({ ...ok.body, csrf: undefined }, { kind: 'user', actor: 'user:alice', tenant: 'acme', username: 'alice', role: 'admin', csrf: undefined });
      assert.match(ok.signed!.setCookie, /^larktun_session=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
      const me = await sessionClient(srv.url, ok.signed!).get('/api/v1/console/session');
      assert.equal(me.body.csrf, ok.signed!.csrf, 'a reload gets the same CSRF token');
      const failed = await op.get('/api/v1/tenants/acme/audit?action=console.signin.failed');
      assert.equal(failed.body.entries.length, 2, 'failures against an existing tenant are audited in it');
      const beta = await op.get('/api/v1/tenants/beta/audit?action=console.signin.failed');
      assert.equal(beta.body.entries.length, 1);
    });

    test('CSRF: every change with a session needs its token; bearer keys are unaffected', async (t) => {
      if (skip) return t.skip(skip);
      const s = (await signIn(srv.url, { tenant: 'acme', username: 'alice', password: PW })).signed!;
      for (const csrf of [null, 'x'.repeat(43), (await signIn(srv.url, { tenant: 'acme', username: 'alice', password: PW })).signed!.csrf]) {
        const r = await sessionClient(srv.url, s, csrf).post('/api/v1/tenants/acme/users', { name: 'mallory' });
        assert.equal(r.status, 403, r.text);
        assert.equal(r.body.error.code, 'csrf_token_invalid');
      }
      assert.equal((await sessionClient(srv.url, s).post('/api/v1/tenants/acme/users', { name: 'carol' })).status, 201);
      const key = (await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin' })).body.key as string;
      assert.equal((await op.as(key).req('POST', '/api/v1/tenants/acme/users', { name: 'dave' }, { cookie: s.cookie })).status, 201, 'a bearer key needs no CSRF token');
      const audit = await op.get('/api/v1/tenants/acme/audit?action=user.create');
      assert.deepEqual(audit.body.entries.map((e: Json) => e.actor), ['user:alice', `apikey:${key.split('_')[1]}`]);
    });

    test('a session stays in its tenant and role', async (t) => {
      if (skip) return t.skip(skip);
      const alice = sessionClient(srv.url, (await signIn(srv.url, { tenant: 'acme', username: 'alice', password: PW })).signed!);
      for (const p of ['/api/v1/tenants/beta', '/api/v1/tenants/beta/nodes', '/api/v1/tenants/beta/routes', '/api/v1/tenants/beta/console-users', '/api/v1/tenants/beta/audit', '/api/v1/tenants/beta/policy']) {
        const r = await alice.get(p);
        assert.equal(r.status, 404, `${p}: ${r.text}`);
      }
      assert.equal((await alice.post('/api/v1/tenants/beta/console-users', { username: 'x', password: PW, role: 'admin' })).status, 404);
      assert.equal((await alice.get('/api/v1/tenants')).status, 403);
      assert.equal((await alice.post('/api/v1/tenants', { name: 'gamma' })).status, 403);
      const oscar = sessionClient(srv.url, (await signIn(srv.url, { tenant: 'acme', username: 'oscar', password: PW })).signed!);
      assert.equal((await oscar.post('/api/v1/tenants/acme/console-users', { username: 'x', password: PW, role: 'admin' })).status, 403);
      assert.equal((await oscar.put('/api/v1/tenants/acme/policy', { policy: '{}' })).status, 403);
      assert.equal((await oscar.get('/api/v1/tenants/acme/audit')).status, 403);
      const audrey = sessionClient(srv.url, (await signIn(srv.url, { tenant: 'acme', username: 'audrey', password: PW })).signed!);
      assert.equal((await audrey.get('/api/v1/tenants/acme/audit')).status, 200);
      assert.equal((await audrey.post('/api/v1/tenants/acme/users', { name: 'zed' })).status, 403);
    });

    test('sign-out, a new password and deletion end sessions on the server', async (t) => {
      if (skip) return t.skip(skip);
      const s1 = (await signIn(srv.url, { tenant: 'acme', username: 'oscar', password: PW })).signed!;
      const c1 = sessionClient(srv.url, s1);
      assert.equal((await c1.del('/api/v1/console/session')).status, 200);
      assert.equal((await c1.get('/api/v1/tenants/acme/nodes')).status, 401);
      const s2 = sessionClient(srv.url, (await signIn(srv.url, { tenant: 'acme', username: 'oscar', password: PW })).signed!);
      const id = (await op.get('/api/v1/tenants/acme/console-users')).body.console_users.find((u: Json) => u.username === 'oscar').id as number;
      assert.equal((await op.patch(`/api/v1/tenants/acme/console-users/${id}`, { password: 'another-password' })).status, 200);
      assert.equal((await s2.get('/api/v1/tenants/acme/nodes')).status, 401);
      assert.equal((await signIn(srv.url, { tenant: 'acme', username: 'oscar', password: PW })).status, 401);
      const s3 = sessionClient(srv.url, (await signIn(srv.url, { tenant: 'acme', username: 'oscar', password: 'another-password' })).signed!);
      assert.equal((await op.del(`/api/v1/tenants/acme/console-users/${id}`)).status, 200);
      assert.equal((await s3.get('/api/v1/tenants/acme/nodes')).status, 401);
      const actions = (await op.get('/api/v1/tenants/acme/audit?limit=1000')).body.entries.map((e: Json) => `${e.actor} ${e.action}`);
      for (const a of ['user:oscar console.signout', 'user:oscar console.signin']) assert.ok(actions.includes(a), a);
      assert.ok(actions.some((a: string) => /^operator:\S+ console_user.password$/.test(a)));
      assert.ok(actions.some((a: string) => /^operator:\S+ console_user.delete$/.test(a)));
    });

    test('operator sessions see every tenant; a bad operator key is refused', async (t) => {
      if (skip) return t.skip(skip);
      assert.equal((await signIn(srv.url, { operator_key: 'lkop_000000000000_' + 'a'.repeat(43) })).status, 401);
      const s = await signIn(srv.url, { operator_key: srv.operatorKey() });
      assert.equal(s.status, 200);
      assert.equal(s.body.kind, 'operator');
      const o = sessionClient(srv.url, s.signed!);
      assert.equal((await o.get('/api/v1/tenants')).body.tenants.length, 2);
      assert.equal((await o.get('/api/v1/tenants/beta/console-users')).body.console_users.length, 1);
    });

    test('GET /tenants/{t}/routes: each prefix with its primary and standbys, and the exit nodes', async (t) => {
      if (skip) return t.skip(skip);
      await op.put('/api/v1/tenants/acme/policy', { policy: '{"tagOwners":{"tag:router":[]},"autoApprovers":{"routes":{"10.9.0.0/16":["tag:router"]}}}' });
      const key = (await op.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:router'], reusable: true })).body.key as string;
      const node = op.as(null);
      const ids: number[] = [];
      for (const h of ['r1', 'r2']) {
        const r = await registerNode(node, { auth_key: key, hostname: h, routes: ['10.9.0.0/16', '172.20.0.0/24'], exit_node: h === 'r2' });
        assert.equal(r.status, 201, r.text);
        ids.push(r.body.node.id as number);
        streams.push(await SseReader.open(`${srv.url}/node/v1/stream`, r.body.token as string));
      }
      const alice = sessionClient(srv.url, (await signIn(srv.url, { tenant: 'acme', username: 'alice', password: PW })).signed!);
      let v: Json = null;
      // Both streams must have been seen (each router's presence is written when its stream attaches):
      // wait for r1 primary and r2 online, not only for a primary.
      for (let i = 0; i < 100; i++) {
        v = (await alice.get('/api/v1/tenants/acme/routes')).body;
        if (v.routes[0]?.primary && v.routes[0].routers.every((x: Json) => x.state !== 'offline')) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(v.routes.map((r: Json) => r.prefix), ['10.9.0.0/16', '172.20.0.0/24']);
      const auto = v.routes[0];
      assert.equal(auto.primary, 'r1');
      assert.ok(auto.primary_since);
      assert.deepEqual(auto.routers.map((x: Json) => [x.node, x.state]), [['r1', 'primary'], ['r2', 'standby']]);
      assert.deepEqual(v.routes[1].routers.map((x: Json) => x.state), ['not_approved', 'not_approved']);
      assert.deepEqual(v.exit_nodes.map((x: Json) => [x.node, x.approved, x.advertised]), [['r2', false, ['0.0.0.0/0', '::/0']]]);
      assert.deepEqual((await sessionClient(srv.url, (await signIn(srv.url, { tenant: 'beta', username: 'bob', password: PW })).signed!).get('/api/v1/tenants/beta/routes')).body, { routes: [], exit_nodes: [] });
    });

    test('GET /tenants/{t}/events: a change of the tenant arrives as an event; other tenants get 404', async (t) => {
      if (skip) return t.skip(skip);
      const s = (await signIn(srv.url, { tenant: 'acme', username: 'alice', password: PW })).signed!;
      assert.equal((await sessionClient(srv.url, s).get('/api/v1/tenants/beta/events')).status, 404);
      const ctrl = new AbortController();
      const res = await fetch(`${srv.url}/api/v1/tenants/acme/events`, { headers: { cookie: s.cookie }, signal: ctrl.signal });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      let text = '';
      const until = async (re: RegExp) => {
        const deadline = Date.now() + 5000;
        while (!re.test(text) && Date.now() < deadline) {
          const { value, done } = await reader.read();
          if (done) break;
          text += new TextDecoder().decode(value);
        }
        assert.match(text, re);
      };
      await until(/event: hello/);
      await op.post('/api/v1/tenants/acme/users', { name: 'live-check' });
      await until(/event: changed\ndata: \{"generation":\d+\}/);
      ctrl.abort();
    });

        test('OpenAPI documents the console endpoints', async (t) => {
      if (skip) return t.skip(skip);
      const d = (await op.get('/api/v1/openapi.json')).body;
      assert.ok(d.paths['/api/v1/tenants/{tenant}/routes'].get);
      assert.ok(d.paths['/api/v1/console/session'].post);
      assert.deepEqual(d.paths['/api/v1/console/session'].post.security, []);
      assert.ok(d.paths['/api/v1/tenants/{tenant}/console-users'].post.requestBody);
      assert.ok(d.paths['/api/v1/tenants/{tenant}/console-users/{id}'].delete);
    });

    test('deleting a tenant removes its console users and ends their sessions', async (t) => {
      if (skip) return t.skip(skip);
      await op.post('/api/v1/tenants', { name: 'gone' });
      await op.post('/api/v1/tenants/gone/console-users', { username: 'gina', password: PW, role: 'admin' });
      const g = sessionClient(srv.url, (await signIn(srv.url, { tenant: 'gone', username: 'gina', password: PW })).signed!);
      assert.equal((await g.get('/api/v1/tenants/gone/nodes')).status, 200);
      assert.equal((await op.del('/api/v1/tenants/gone')).status, 200);
      assert.equal((await g.get('/api/v1/tenants/gone/nodes')).status, 401);
      await op.post('/api/v1/tenants', { name: 'gone' });
      assert.equal((await signIn(srv.url, { tenant: 'gone', username: 'gina', password: PW })).status, 401, 'a new tenant of the same name has no such user');
    });

        test('the console is served at / without shadowing the API, node, relay or metrics paths', async (t) => {
      if (skip) return t.skip(skip);
      const idx = await fetch(`${srv.url}/`);
      const html = await idx.text();
      if (idx.status === 503) return t.skip('console not built');
      assert.equal(idx.status, 200);
      assert.equal(idx.headers.get('cache-control'), 'no-store');
      const csp = idx.headers.get('content-security-policy') ?? '';
      assert.match(csp, /script-src 'self'(;|$)/);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
      const nonce = /'nonce-([^']+)'/.exec(csp)?.[1];
      assert.ok(nonce && html.includes(`content="${nonce}"`), 'the page carries the nonce of its CSP');
      assert.notEqual(/'nonce-([^']+)'/.exec((await fetch(`${srv.url}/acme/routes`)).headers.get('content-security-policy') ?? '')?.[1], nonce, 'a fresh nonce per response');
      assert.doesNotMatch(html.replace(/<script type="module" crossorigin src="\/assets\/[^"]+"><\/script>/g, ''), /<script/i, 'no inline script');
      const asset = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1] as string;
      const a = await fetch(`${srv.url}${asset}`, { headers: { 'accept-encoding': 'gzip' } });
      assert.equal(a.status, 200);
      assert.equal(a.headers.get('cache-control'), 'public, max-age=31536000, immutable');
      assert.match(a.headers.get('content-type') ?? '', /^text\/javascript/);
      const etag = a.headers.get('etag') as string;
      assert.equal((await fetch(`${srv.url}${asset}`, { headers: { 'if-none-match': etag } })).status, 304);
      for (const p of ['/acme/machines', '/beta/logs', '/signin', '/tenants']) assert.equal((await fetch(`${srv.url}${p}`)).status, 200, p);
      for (const [p, code] of [['/healthz', 200], ['/readyz', 200], ['/metrics', 401], ['/api/v1/nope', 404], ['/node/v1/nope', 404], ['/relay/v1/nope', 404], ['/acme/nope', 404], ['/assets/nope.js', 404], ['/a/b/c', 404]] as const) {
        const r = await fetch(`${srv.url}${p}`);
        assert.equal(r.status, code, p);
        if (code >= 400) assert.match(r.headers.get('content-type') ?? '', /json/, `${p} stays a JSON ${code} (/metrics needs the operator key)`);
      }
    });
  });
}

test('the sign-in limiter slows each failure more, locks out, forgets and stays bounded', () => {
  const l = new SigninLimiter({ maxKeys: 3, windowMs: 1000, maxFailures: 4, baseDelayMs: 250, maxDelayMs: 4000 });
  assert.deepEqual(l.delayFor(['a'], 0), { delayMs: 0, locked: false, retryAfterS: 0 });
  l.failed(['a'], 0);
  assert.equal(l.delayFor(['a'], 1).delayMs, 250);
  l.failed(['a'], 1);
  l.failed(['a'], 2);
  assert.equal(l.delayFor(['a', 'b'], 3).delayMs, 1000);
  l.failed(['a'], 3);
  assert.equal(l.delayFor(['a'], 4).locked, true);
  assert.equal(l.delayFor(['a'], 1004).locked, false, 'forgotten after the window');
  for (const k of ['b', 'c', 'd', 'e']) l.failed([k], 5);
  assert.equal(l.size, 3, 'at most maxKeys keys');
  l.succeeded('e');
  assert.equal(l.delayFor(['e'], 6).delayMs, 0);
  const ip = new SigninLimiter({ freeFailures: 2, maxFailures: 10 });
  ip.failed(['x'], 0);
  ip.failed(['x'], 0);
  assert.equal(ip.delayFor(['x'], 0).delayMs, 0, 'free failures cost nothing');
  ip.failed(['x'], 0);
  assert.equal(ip.delayFor(['x'], 0).delayMs, 250);
});
