// Interactive node login (larktun up without an auth key) at the API level, on
// SQLite and PostgreSQL: a node proves its key and starts a login; a console
// user of the tenant (operator role or more) approves or rejects it; the node
// collects its token with its poll secret, once. Abuse: the URL alone never
// collects the token, a node token cannot approve, another tenant sees 404, an
// expired link is 410, tags the approver does not own are refused, pending
// logins are bounded per source address and per tenant.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { Client, backends, cleanup, dbExec, registerNode, spawnServer, tempDir, type Json, type ServerProc } from './harness.js';
import { generateNodeKey, nodeKeyFingerprint, signRegistration, type NodeKeyPair } from '../../src/control/nodekey.js';

const PW = 'console-password-1';

/** A JSON POST from a chosen loopback source address (the server tells sources apart by it). */
function postFrom(url: string, path: string, body: unknown, localAddress: string): Promise<{ status: number; body: Json }> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const u = new URL(path, url);
    const r = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', localAddress, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : null }));
    });
    r.on('error', reject);
    r.end(data);
  });
}

interface Started { status: number; body: Json; id: NodeKeyPair }

/** What larktund does: a nonce for the tenant, signed with the node key, then the login. */
async function startLogin(url: string, tenant: string, from: string, extra: Record<string, unknown> = {}, id: NodeKeyPair = generateNodeKey()): Promise<Started> {
  const ch = await postFrom(url, '/node/v1/login/challenge', { tenant }, from);
  if (ch.status !== 200) return { ...ch, id };
  const nonce = ch.body.nonce as string;
  const r = await postFrom(url, '/node/v1/login', {
    tenant, node_key: id.nodeKey, nonce, signature: signRegistration(id.privateKey, nonce, id.nodeKey, ch.body.tenant as string),
    hostname: 'laptop', os: 'linux', version: 'test', ...extra,
  }, from);
  return { ...r, id };
}

interface Signed { cookie: string; csrf: string }

async function signIn(url: string, tenant: string, username: string): Promise<Client> {
  const r = await fetch(`${url}/api/v1/console/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant, username, password: PW }) });
  const body = (await r.json()) as Json;
  assert.equal(r.status, 200, JSON.stringify(body));
  const s: Signed = { cookie: (r.headers.get('set-cookie') as string).split(';')[0] as string, csrf: body.csrf as string };
  const c = new Client(url, null);
  const req = c.req.bind(c);
  c.req = (method, path, b, headers = {}) => req(method, path, b, { ...headers, cookie: s.cookie, 'x-csrf-token': s.csrf });
  return c;
}

const poll = (c: Client, loginId: string, secret: string, waitS = 0) => c.as(null).post('/node/v1/login/poll', { login_id: loginId, poll_secret: secret, wait_s: waitS });

for (const b of backends()) {
  describe(`interactive node login (${b.name})`, () => {
    let dir = '';
    let db = '';
    let srv: ServerProc;
    let op: Client;
    let skip: string | false = false;
    const sessions: Record<string, Client> = {};

    before(async () => {
      db = await b.setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dir = tempDir('larktun-nodelogin-');
      srv = await spawnServer({ dataDir: dir, db, env: { LARKTUN_NODE_LOGINS_PER_SOURCE: '8', LARKTUN_NODE_LOGINS_PER_TENANT: '5' } });
      op = new Client(srv.url, srv.operatorKey());
      for (const t of ['acme', 'beta', 'gamma', 'delta', 'eps']) assert.equal((await op.post('/api/v1/tenants', { name: t })).status, 201);
      for (const [t, u, role] of [['acme', 'alice', 'admin'], ['acme', 'oscar', 'operator'], ['acme', 'audrey', 'auditor'], ['beta', 'bob', 'admin']] as const) {
        assert.equal((await op.post(`/api/v1/tenants/${t}/console-users`, { username: u, password: PW, role })).status, 201);
        sessions[`${t}/${u}`] = await signIn(srv.url, t, u);
      }
      // alice owns tag:srv; oscar owns nothing
      const pol = await op.put('/api/v1/tenants/acme/policy', { policy: JSON.stringify({ tagOwners: { 'tag:srv': ['alice@'] }, acls: [{ action: 'accept', src: ['*'], dst: ['*:*'] }] }) });
      assert.equal(pol.status, 200, pol.text);
    });
    after(async () => {
      if (srv) await srv.stop();
      if (dir) cleanup(dir);
      await b.teardown();
    });

    test('approve: the console shows the machine, the node collects its token once and joins as the approving user', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.1', { hostname: 'build-box', routes: ['10.9.0.0/24'] });
      assert.equal(s.status, 201, JSON.stringify(s.body));
      const { login_id: loginId, poll_secret: secret, url } = s.body;
      assert.match(loginId, /^[A-Za-z0-9_-]{43}$/, '256-bit login id');
      assert.equal(url, `${srv.url}/login/${loginId}`);
      assert.ok(!url.includes(secret), 'the poll secret is not in the URL');
      const ttl = Date.parse(s.body.expires_at) - Date.now();
      assert.ok(ttl > 9 * 60_000 && ttl <= 10 * 60_000, `expires in 10 min (${ttl} ms)`);

      const oscar = sessions['acme/oscar']!;
      const view = await oscar.get(`/api/v1/tenants/acme/node-logins/${loginId}`);
      assert.equal(view.status, 200, view.text);
      assert.equal(view.body.machine_name, 'build-box');
      assert.deepEqual(view.body.requested_tags, []);
      assert.deepEqual(view.body.routes, ['10.9.0.0/24']);
      assert.equal(view.body.key_fingerprint, nodeKeyFingerprint(s.id.nodeKey));
      assert.match(view.body.key_fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
      assert.equal(view.body.source_addr, '127.0.0.1');
      assert.equal(view.body.state, 'pending');
      for (const k of ['poll_secret', 'poll_hash', 'nonce', 'signature', 'token']) assert.equal(view.body[k], undefined, `${k} is never shown`);

      assert.deepEqual((await poll(op, loginId, secret)).body, { state: 'pending', expires_at: s.body.expires_at });
      const ok = await oscar.post(`/api/v1/tenants/acme/node-logins/${loginId}/approve`, {});
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.state, 'approved');
      assert.equal(ok.body.decided_by, 'user:oscar');
      const got = await poll(op, loginId, secret);
      assert.equal(got.status, 200, got.text);
      assert.equal(got.body.state, 'approved');
      assert.equal(got.body.tenant, 'acme');
      assert.match(got.body.token, /^lknode_/);
      assert.equal(got.body.node.id, ok.body.node.id);
      // the token works as a node token (hostinfo), and the node is oscar's
      const hi = await op.as(got.body.token).post('/node/v1/hostinfo', { hostname: 'build-box' });
      assert.equal(hi.status, 200, hi.text);
      const nodes = (await op.get('/api/v1/tenants/acme/nodes')).body.nodes as Json[];
      const n = nodes.find((x) => x.id === got.body.node.id);
      assert.equal(n.user, 'oscar');
      assert.equal(n.name, 'build-box');
      assert.equal(n.node_key, s.id.nodeKey);
      // single use
      const again = await poll(op, loginId, secret);
      assert.equal(again.status, 410);
      assert.equal(again.body.error.code, 'login_used');
      const twice = await oscar.post(`/api/v1/tenants/acme/node-logins/${loginId}/approve`, {});
      assert.equal(twice.status, 409);
      assert.equal(twice.body.error.code, 'login_decided');
      // audited, attributed to the approving user
      const audit = (await op.get('/api/v1/tenants/acme/audit?action=node_login.approve')).body.entries as Json[];
      assert.equal(audit.length, 1);
      assert.equal(audit[0].actor, 'user:oscar');
      assert.equal(audit[0].after.user, 'oscar');
      const created = (await op.get('/api/v1/tenants/acme/audit?action=user.create')).body.entries as Json[];
      assert.ok(created.some((e) => e.actor === 'user:oscar' && e.after.name === 'oscar'), 'the tenant user for oscar was made, audited');
      assert.equal((await op.get('/api/v1/tenants/acme/audit?action=node_login.start')).body.entries.length >= 1, true);
    });

    test('a waiting poll returns as soon as the login is approved', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.2');
      assert.equal(s.status, 201);
      const t0 = Date.now();
      const waiting = poll(op, s.body.login_id, s.body.poll_secret, 25);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal((await sessions['acme/alice']!.post(`/api/v1/tenants/acme/node-logins/${s.body.login_id}/approve`, {})).status, 200);
      const got = await waiting;
      assert.equal(got.status, 200, got.text);
      assert.match(got.body.token, /^lknode_/);
      assert.ok(Date.now() - t0 < 15_000, `woke on approval, not at the 25 s bound (${Date.now() - t0} ms)`);
      process.stdout.write(`# node login (${b.name}): poll answered ${Date.now() - t0 - 300} ms after the approval was sent\n`);
    });

    test('reject: the node is told, nothing is made, the link cannot be approved afterwards', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.3', { hostname: 'intruder' });
      const before = (await op.get('/api/v1/tenants/acme/nodes')).body.nodes.length;
      const r = await sessions['acme/alice']!.post(`/api/v1/tenants/acme/node-logins/${s.body.login_id}/reject`, {});
      assert.equal(r.status, 200, r.text);
      assert.equal(r.body.state, 'rejected');
      const p = await poll(op, s.body.login_id, s.body.poll_secret);
      assert.equal(p.status, 403);
      assert.equal(p.body.error.code, 'login_rejected');
      assert.match(p.body.error.message, /user:alice/);
      const late = await sessions['acme/alice']!.post(`/api/v1/tenants/acme/node-logins/${s.body.login_id}/approve`, {});
      assert.equal(late.status, 409);
      assert.equal((await op.get('/api/v1/tenants/acme/nodes')).body.nodes.length, before);
      const audit = (await op.get('/api/v1/tenants/acme/audit?action=node_login.reject')).body.entries as Json[];
      assert.equal(audit.at(-1).actor, 'user:alice');
    });

    test('an expired link is 410 login_expired for the console and the node', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.4');
      await dbExec(db, dir, 'UPDATE node_logins SET expires_at = $1 WHERE login_id = $2', [new Date(Date.now() - 1000).toISOString(), s.body.login_id]);
      const alice = sessions['acme/alice']!;
      for (const r of [
        await alice.get(`/api/v1/tenants/acme/node-logins/${s.body.login_id}`),
        await alice.post(`/api/v1/tenants/acme/node-logins/${s.body.login_id}/approve`, {}),
        await alice.post(`/api/v1/tenants/acme/node-logins/${s.body.login_id}/reject`, {}),
        await poll(op, s.body.login_id, s.body.poll_secret),
      ]) {
        assert.equal(r.status, 410, r.text);
        assert.equal(r.body.error.code, 'login_expired');
      }
    });

    test('the URL alone never collects the token: polling needs the secret only the node has', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.5');
      const id = s.body.login_id as string;
      const guesses = [randomBytes(32).toString('base64url'), id];
      for (const g of guesses) {
        const r = await poll(op, id, g);
        assert.equal(r.status, 401);
        assert.equal(r.body.error.code, 'login_unknown');
      }
      assert.equal((await sessions['acme/alice']!.post(`/api/v1/tenants/acme/node-logins/${id}/approve`, {})).status, 200);
      for (const g of guesses) assert.equal((await poll(op, id, g)).status, 401, 'still nothing for the URL holder after approval');
      const unknownId = await poll(op, randomBytes(32).toString('base64url'), s.body.poll_secret);
      assert.equal(unknownId.status, 401, 'the secret is bound to its login');
      assert.equal((await poll(op, id, s.body.poll_secret)).status, 200, 'the node collects');
    });

    test('a node cannot approve itself: node tokens and poll secrets are not Admin API credentials', async (t) => {
      if (skip) return t.skip(skip);
      const key = (await op.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:srv'] })).body.key as string;
      const reg = await registerNode(op.as(null), { auth_key: key, hostname: 'old-node' });
      assert.equal(reg.status, 201, reg.text);
      const s = await startLogin(srv.url, 'acme', '127.0.0.6');
      for (const bearer of [reg.body.token as string, s.body.poll_secret as string]) {
        const r = await op.as(bearer).post(`/api/v1/tenants/acme/node-logins/${s.body.login_id}/approve`, {});
        assert.equal(r.status, 401, r.text);
        assert.equal((await op.as(bearer).get(`/api/v1/tenants/acme/node-logins/${s.body.login_id}`)).status, 401);
      }
      assert.equal((await poll(op, s.body.login_id, s.body.poll_secret)).body.state, 'pending');
    });

    test('another tenant gets 404; an auditor may look but not decide; an API key names the user', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.7');
      const path = `/api/v1/tenants/acme/node-logins/${s.body.login_id}`;
      const bob = sessions['beta/bob']!;
      assert.equal((await bob.get(path)).status, 404);
      assert.equal((await bob.post(`${path}/approve`, {})).status, 404);
      assert.equal((await bob.get(`/api/v1/tenants/beta/node-logins/${s.body.login_id}`)).status, 404, 'not under its own tenant either');
      assert.equal((await bob.post(`/api/v1/tenants/beta/node-logins/${s.body.login_id}/approve`, {})).status, 404);
      const audrey = sessions['acme/audrey']!;
      assert.equal((await audrey.get(path)).status, 200);
      assert.equal((await audrey.post(`${path}/approve`, {})).status, 403);
      assert.equal((await audrey.post(`${path}/reject`, {})).status, 403);
      const apikey = (await op.post('/api/v1/tenants/acme/apikeys', { role: 'operator' })).body.key as string;
      const noUser = await op.as(apikey).post(`${path}/approve`, {});
      assert.equal(noUser.status, 400, noUser.text);
      assert.equal((await op.as(apikey).post(`${path}/approve`, { user: 'nobody' })).status, 404);
      assert.equal((await op.post('/api/v1/tenants/acme/users', { name: 'carol' })).status, 201);
      const ok = await op.as(apikey).post(`${path}/approve`, { user: 'carol' });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.decided_by, `apikey:${apikey.split('_')[1]}`);
      const node = (await op.get('/api/v1/tenants/acme/nodes')).body.nodes.find((n: Json) => n.id === ok.body.node.id);
      assert.equal(node.user, 'carol');
    });

    test('requested tags: refused for an approver who does not own them, kept pending; an owner approves', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.8', { tags: ['tag:srv'], hostname: 'db1' });
      assert.equal(s.status, 201, JSON.stringify(s.body));
      const path = `/api/v1/tenants/acme/node-logins/${s.body.login_id}`;
      assert.deepEqual((await sessions['acme/oscar']!.get(path)).body.requested_tags, ['tag:srv']);
      const no = await sessions['acme/oscar']!.post(`${path}/approve`, {});
      assert.equal(no.status, 403, no.text);
      assert.equal(no.body.error.code, 'tags_not_allowed');
      assert.match(no.body.error.message, /tag "tag:srv" is not owned by user "oscar"/);
      assert.equal((await sessions['acme/oscar']!.get(path)).body.state, 'pending', 'a refused approval changes nothing');
      const yes = await sessions['acme/alice']!.post(`${path}/approve`, {});
      assert.equal(yes.status, 200, yes.text);
      const got = await poll(op, s.body.login_id, s.body.poll_secret);
      assert.deepEqual(got.body.node.tags, ['tag:srv']);
      const bad = await startLogin(srv.url, 'acme', '127.0.0.8', { tags: ['not-a-tag'] });
      assert.equal(bad.status, 400);
    });

    test('the same machine logs in again: its own user re-registers it; another user cannot take it', async (t) => {
      if (skip) return t.skip(skip);
      const id = generateNodeKey();
      const first = await startLogin(srv.url, 'acme', '127.0.0.9', { hostname: 'lap2' }, id);
      const a = await sessions['acme/oscar']!.post(`/api/v1/tenants/acme/node-logins/${first.body.login_id}/approve`, {});
      assert.equal(a.status, 200);
      const tok1 = (await poll(op, first.body.login_id, first.body.poll_secret)).body.token as string;
      const second = await startLogin(srv.url, 'acme', '127.0.0.9', { hostname: 'lap2' }, id);
      const taken = await sessions['acme/alice']!.post(`/api/v1/tenants/acme/node-logins/${second.body.login_id}/approve`, {});
      assert.equal(taken.status, 403, taken.text);
      assert.equal(taken.body.error.code, 'node_owned_by_other_user');
      const b2 = await sessions['acme/oscar']!.post(`/api/v1/tenants/acme/node-logins/${second.body.login_id}/approve`, {});
      assert.equal(b2.status, 200, b2.text);
      assert.equal(b2.body.node.id, a.body.node.id, 'the same node');
      const tok2 = (await poll(op, second.body.login_id, second.body.poll_secret)).body.token as string;
      assert.notEqual(tok2, tok1);
      assert.equal((await op.as(tok1).post('/node/v1/hostinfo', {})).status, 401, 'the old token is gone');
      assert.equal((await op.as(tok2).post('/node/v1/hostinfo', {})).status, 200);
    });

    test('proof: a bad signature, a registration nonce or another tenant\'s nonce do not start a login', async (t) => {
      if (skip) return t.skip(skip);
      const id = generateNodeKey();
      const from = '127.0.0.10';
      const ch = await postFrom(srv.url, '/node/v1/login/challenge', { tenant: 'acme' }, from);
      const other = generateNodeKey();
      const forged = await postFrom(srv.url, '/node/v1/login', { tenant: 'acme', node_key: id.nodeKey, nonce: ch.body.nonce, signature: signRegistration(other.privateKey, ch.body.nonce, id.nodeKey, 'acme'), hostname: 'x' }, from);
      assert.equal(forged.status, 401);
      assert.equal(forged.body.error.code, 'proof_invalid');
      const ch2 = await postFrom(srv.url, '/node/v1/login/challenge', { tenant: 'beta' }, from);
      const cross = await postFrom(srv.url, '/node/v1/login', { tenant: 'acme', node_key: id.nodeKey, nonce: ch2.body.nonce, signature: signRegistration(id.privateKey, ch2.body.nonce, id.nodeKey, 'acme'), hostname: 'x' }, from);
      assert.equal(cross.status, 401);
      assert.equal(cross.body.error.code, 'proof_nonce_invalid');
      const key = (await op.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:srv'] })).body.key as string;
      const rch = await op.as(null).post('/node/v1/register/challenge', { auth_key: key });
      const viaReg = await postFrom(srv.url, '/node/v1/login', { tenant: 'acme', node_key: id.nodeKey, nonce: rch.body.nonce, signature: signRegistration(id.privateKey, rch.body.nonce, id.nodeKey, 'acme'), hostname: 'x' }, from);
      assert.equal(viaReg.status, 401, 'a registration nonce is not a login nonce');
      // and a login nonce does not register
      const lch = await postFrom(srv.url, '/node/v1/login/challenge', { tenant: 'acme' }, from);
      const reg = await op.as(null).post('/node/v1/register', { auth_key: key, node_key: id.nodeKey, nonce: lch.body.nonce, signature: signRegistration(id.privateKey, lch.body.nonce, id.nodeKey, 'acme'), hostname: 'x' });
      assert.equal(reg.status, 401);
      assert.equal(reg.body.error.code, 'proof_nonce_invalid');
      assert.equal((await postFrom(srv.url, '/node/v1/login/challenge', { tenant: 'nope' }, from)).status, 404);
    });

    test('bounds: pending logins per source address and per tenant (429 too_many_logins)', async (t) => {
      if (skip) return t.skip(skip);
      // per tenant (5): from several addresses
      const gamma: string[] = [];
      for (let i = 0; i < 5; i++) {
        const s = await startLogin(srv.url, 'gamma', `127.0.1.${i + 1}`);
        assert.equal(s.status, 201);
        gamma.push(s.body.login_id as string);
      }
      const full = await startLogin(srv.url, 'gamma', '127.0.1.9');
      assert.equal(full.status, 429);
      assert.equal(full.body.error.code, 'too_many_logins');
      assert.match(full.body.error.message, /tenant "gamma"/);
      // per source (8): one address over two tenants
      for (let i = 0; i < 8; i++) assert.equal((await startLogin(srv.url, i < 4 ? 'delta' : 'eps', '127.0.2.1')).status, 201);
      const src = await startLogin(srv.url, 'eps', '127.0.2.1');
      assert.equal(src.status, 429);
      assert.match(src.body.error.message, /127\.0\.2\.1/);
      assert.equal((await startLogin(srv.url, 'eps', '127.0.2.2')).status, 201, 'another address still starts');
      // a decided login no longer counts (the operator key may decide too)
      assert.equal((await op.post(`/api/v1/tenants/gamma/node-logins/${gamma[0]}/reject`, {})).status, 200);
      assert.equal((await startLogin(srv.url, 'gamma', '127.0.1.10')).status, 201);
      assert.equal((await startLogin(srv.url, 'gamma', '127.0.1.11')).status, 429);
    });

    test('races: of two approvals one wins; of two collecting polls one gets the token', async (t) => {
      if (skip) return t.skip(skip);
      const s = await startLogin(srv.url, 'acme', '127.0.0.11');
      const path = `/api/v1/tenants/acme/node-logins/${s.body.login_id}`;
      const [a, b2] = await Promise.all([sessions['acme/alice']!.post(`${path}/approve`, {}), sessions['acme/oscar']!.post(`${path}/approve`, {})]);
      assert.deepEqual([a.status, b2.status].sort(), [200, 409], `${a.text} ${b2.text}`);
      const [p1, p2] = await Promise.all([poll(op, s.body.login_id, s.body.poll_secret), poll(op, s.body.login_id, s.body.poll_secret)]);
      assert.deepEqual([p1.status, p2.status].sort(), [200, 410], `${p1.text} ${p2.text}`);
      const won = p1.status === 200 ? p1 : p2;
      assert.equal((await op.as(won.body.token).post('/node/v1/hostinfo', {})).status, 200);
      const nodes = ((await op.get('/api/v1/tenants/acme/nodes')).body.nodes as Json[]).filter((n) => n.node_key === s.id.nodeKey);
      assert.equal(nodes.length, 1, 'one node');
    });

    test('OpenAPI documents the node-login endpoints', async (t) => {
      if (skip) return t.skip(skip);
      const doc = (await op.get('/api/v1/openapi.json')).body;
      for (const p of ['/api/v1/tenants/{tenant}/node-logins/{id}', '/api/v1/tenants/{tenant}/node-logins/{id}/approve', '/api/v1/tenants/{tenant}/node-logins/{id}/reject']) {
        assert.ok(doc.paths[p], `${p} in OpenAPI`);
      }
    });
  });
}

describe('interactive node login: a link expires by itself', () => {
  test('a waiting poll ends with 410 login_expired at the expiry, and the console gets 410', async () => {
    const dir = tempDir('larktun-nodelogin-ttl-');
    const srv = await spawnServer({ dataDir: dir, db: 'sqlite', env: { LARKTUN_NODE_LOGIN_TTL_MS: '2000' } });
    try {
      const op = new Client(srv.url, srv.operatorKey());
      assert.equal((await op.post('/api/v1/tenants', { name: 'acme' })).status, 201);
      const s = await startLogin(srv.url, 'acme', '127.0.0.1');
      assert.equal(s.status, 201);
      const ttl = Date.parse(s.body.expires_at) - Date.now();
      assert.ok(ttl <= 2000 && ttl > 0, `${ttl}`);
      const t0 = Date.now();
      const p = await poll(op, s.body.login_id, s.body.poll_secret, 25);
      assert.equal(p.status, 410, p.text);
      assert.equal(p.body.error.code, 'login_expired');
      assert.ok(Date.now() - t0 < 12_000, `ended at the expiry, not at the 25 s bound (${Date.now() - t0} ms)`);
      const v = await op.get(`/api/v1/tenants/acme/node-logins/${s.body.login_id}`);
      assert.equal(v.status, 410);
      assert.equal(v.body.error.code, 'login_expired');
    } finally {
      await srv.stop();
      cleanup(dir);
    }
  });
});
