// Node identity (issue 11): registration proves possession of the node key, a
// node stays its user's, single-use auth keys are single-use, and nodes from
// before node keys were proven move to a proven key with their token. On SQLite
// and PostgreSQL, against a real server process.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Client, backends, cleanup, dbExec, nodeIdentity, registerNode, registerProof, sleep, spawnServer, tempDir, type Json, type ServerProc,
} from './harness.js';
import { assertError } from './api-suite.js';
import { signRegistration } from '../../src/control/nodekey.js';

const NONCE_TTL_MS = 3000;
const POLICY = `{
  "tagOwners": { "tag:server": ["alice@acme.test"], "tag:db": [] },
  "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
}`;

function proofOf(p: Awaited<ReturnType<typeof registerProof>>): { nonce: string; signature: string } {
  assert.ok(!('status' in p), `challenge refused: ${'text' in p ? p.text : ''}`);
  return p as { nonce: string; signature: string };
}

for (const backend of backends()) {
  describe(`node identity on ${backend.name}`, () => {
    let skip: string | false = false;
    let dbSpec = '';
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    let anon: Client;
    let admin: Client;
    let aliceKey = '';
    let malloryKey = '';
    let tagKey = '';

    before(async () => {
      const r = await backend.setup();
      if (r.startsWith('skip:')) {
        skip = r.slice(5);
        return;
      }
      dbSpec = r;
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db: dbSpec, env: { LARKTUN_REGISTER_NONCE_TTL_MS: String(NONCE_TTL_MS) } });
      op = new Client(srv.url, srv.operatorKey());
      anon = op.as(null);
      assert.equal((await op.post('/api/v1/tenants', { name: 'acme' })).status, 201);
      admin = op.as((await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin' })).body.key);
      for (const u of ['alice', 'mallory']) assert.equal((await admin.post('/api/v1/tenants/acme/users', { name: u, email: `${u}@acme.test` })).status, 201);
      assert.equal((await admin.put('/api/v1/tenants/acme/policy', { policy: POLICY })).status, 200);
      aliceKey = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key;
      malloryKey = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'mallory', reusable: true })).body.key;
      tagKey = (await admin.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:db'], reusable: true })).body.key;
    });
    after(async () => {
      if (skip) return;
      await srv?.stop();
      cleanup(dir);
      await backend.teardown();
    });
    const t = (name: string, fn: () => Promise<void>) =>
      it(name, async (ctx) => {
        if (skip) return ctx.skip(skip);
        await fn();
      });

    const nodeById = async (id: number): Promise<Json> => {
      const r = await admin.get(`/api/v1/tenants/acme/nodes/${id}`);
      assert.equal(r.status, 200, r.text);
      return r.body;
    };
    const refusals = async (): Promise<Json[]> =>
      ((await admin.get('/api/v1/tenants/acme/audit?action=node.register.refused&limit=1000')).body.entries as Json[]);

    t("another user's key cannot take over a node by its node_key; the owner's node and token are untouched", async () => {
      const victimId = nodeIdentity();
      const v = await registerNode(anon, { auth_key: aliceKey, hostname: 'alice-laptop', routes: ['10.40.0.0/24'] }, victimId);
      assert.equal(v.status, 201, v.text);
      const victimToken = v.body.token as string;
      assert.equal(v.body.node.tags.length, 0);
      assert.equal((await admin.post(`/api/v1/tenants/acme/nodes/${v.body.node.id}/routes`, { approved: ['10.40.0.0/24'] })).status, 200);
      const before = await nodeById(v.body.node.id);
      assert.equal(before.key_proven, true);

      // Mallory joins with his own key and reads the victim's node_key from his map.
      const m = await registerNode(anon, { auth_key: malloryKey, hostname: 'mallory-pc' });
      assert.equal(m.status, 201, m.text);
      const map = await anon.as(m.body.token).get('/node/v1/map');
      const seen = (map.body.peers as Json[]).find((p) => p.id === v.body.node.id);
      assert.equal(seen?.node_key, victimId.nodeKey, 'the node key is public: every peer sees it');

      // 1. The attack as reported: his reusable key and the victim's node_key, no proof.
      const plain = await anon.post('/node/v1/register', { auth_key: malloryKey, node_key: victimId.nodeKey, hostname: 'alice-laptop' });
      assertError(plain, 401, 'proof_required');
      // 2. With a nonce for his key, signed with his own key pair.
      const mine = nodeIdentity();
      const forged = proofOf(await registerProof(anon, malloryKey, mine));
      assertError(await anon.post('/node/v1/register', { auth_key: malloryKey, node_key: victimId.nodeKey, hostname: 'x', ...forged }), 401, 'proof_invalid');
      // 3. Even holding the victim's private key, his key is not the node's user's.
      const stolen = await registerNode(anon, { auth_key: malloryKey, hostname: 'alice-laptop' }, victimId);
      assertError(stolen, 403, 'node_owned_by_other_user');
      // 4. Nor does a key without a user (tags only) take a user's node.
      assertError(await registerNode(anon, { auth_key: tagKey, hostname: 'alice-laptop' }, victimId), 403, 'node_owned_by_other_user');

      // The owner's node is as it was, and her token still works.
      const after = await nodeById(v.body.node.id);
      for (const k of ['user', 'tags', 'ipv4', 'ipv6', 'node_key', 'approved_routes', 'name']) assert.deepEqual(after[k], before[k], k);
      assert.equal(after.user, 'alice');
      const own = await anon.as(victimToken).get('/node/v1/map');
      assert.equal(own.status, 200, own.text);
      assert.equal(own.body.self.id, v.body.node.id);
      assert.equal((await anon.as(victimToken).post('/node/v1/hostinfo', {})).status, 200);

      // Refused, audited in the tenant (no key material), counted.
      const refused = (await refusals()).filter((e) => e.object_id === String(v.body.node.id));
      assert.deepEqual(refused.map((e) => e.after.reason), ['proof_required', 'proof_invalid', 'takeover', 'takeover']);
      assert.ok(refused.every((e) => String(e.actor).startsWith('authkey:')));
      assert.equal((await admin.get('/api/v1/tenants/acme/audit/verify')).body.ok, true, 'the chain stays intact');
      const metrics = (await op.get('/metrics')).text;
      assert.match(metrics, /larktun_node_identity_refusals_total\{reason="takeover"\} 2/);
      assert.match(metrics, /larktun_node_identity_refusals_total\{reason="proof_invalid"\} [1-9]/);
    });

    t('a nonce is single-use, expires, and belongs to the auth key it was issued for; a wrong signature is refused', async () => {
      const id = nodeIdentity();
      const p = proofOf(await registerProof(anon, aliceKey, id));
      const first = await anon.post('/node/v1/register', { auth_key: aliceKey, node_key: id.nodeKey, hostname: 'replay', ...p });
      assert.equal(first.status, 201, first.text);
      // Replayed: the same nonce and signature again.
      assertError(await anon.post('/node/v1/register', { auth_key: aliceKey, node_key: id.nodeKey, hostname: 'replay', ...p }), 401, 'proof_nonce_invalid');
      // Replayed concurrently: of five identical requests with one fresh nonce, one succeeds.
      const p2 = proofOf(await registerProof(anon, aliceKey, id));
      const burst = await Promise.all(Array.from({ length: 5 }, () => anon.post('/node/v1/register', { auth_key: aliceKey, node_key: id.nodeKey, hostname: 'replay', ...p2 })));
      assert.deepEqual(burst.map((r) => r.status).sort(), [201, 401, 401, 401, 401]);
      // A nonce issued for another auth key (of another user).
      const other = nodeIdentity();
      const pm = proofOf(await registerProof(anon, malloryKey, other));
      assertError(await anon.post('/node/v1/register', { auth_key: aliceKey, node_key: other.nodeKey, hostname: 'x', ...pm }), 401, 'proof_nonce_invalid');
      // Wrong signatures (each on a fresh nonce): another key's, another tenant's message, a flipped bit.
      const ch = (await anon.post('/node/v1/register/challenge', { auth_key: aliceKey })).body;
      assert.equal(ch.tenant, 'acme');
      assert.equal(ch.label, 'larktun-v1-node-register');
      const good = signRegistration(id.privateKey, ch.nonce, id.nodeKey, 'acme');
      const wrong: ((nonce: string) => string)[] = [
        (nonce) => signRegistration(other.privateKey, nonce, id.nodeKey, 'acme'),
        (nonce) => signRegistration(id.privateKey, nonce, id.nodeKey, 'other-tenant'),
        (nonce) => {
          const b = Buffer.from(signRegistration(id.privateKey, nonce, id.nodeKey, 'acme'), 'base64url');
          b[10] = (b[10] as number) ^ 1;
          return b.toString('base64url');
        },
      ];
      for (const sign of wrong) {
        const c = (await anon.post('/node/v1/register/challenge', { auth_key: aliceKey })).body;
        assertError(await anon.post('/node/v1/register', { auth_key: aliceKey, node_key: id.nodeKey, hostname: 'replay', nonce: c.nonce, signature: sign(c.nonce) }), 401, 'proof_invalid');
      }
      // A key that is not an Ed25519 node key cannot be proven.
      const c2 = (await anon.post('/node/v1/register/challenge', { auth_key: aliceKey })).body;
      assertError(await anon.post('/node/v1/register', { auth_key: aliceKey, node_key: 'QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=', hostname: 'x', nonce: c2.nonce, signature: good }), 401, 'proof_invalid');
      // Expired: valid NONCE_TTL_MS.
      const late = proofOf(await registerProof(anon, aliceKey, id));
      await sleep(NONCE_TTL_MS + 300);
      assertError(await anon.post('/node/v1/register', { auth_key: aliceKey, node_key: id.nodeKey, hostname: 'replay', ...late }), 401, 'proof_nonce_invalid');
      // The node itself still re-registers with a fresh proof.
      assert.equal((await registerNode(anon, { auth_key: aliceKey, hostname: 'replay' }, id)).status, 201);
    });

    t('the nonce store is bounded per auth key: the oldest pending nonce of a key goes', async () => {
      const key = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key as string;
      const id = nodeIdentity();
      const oldest = proofOf(await registerProof(anon, key, id));
      for (let i = 0; i < 1000; i += 50) {
        await Promise.all(Array.from({ length: 50 }, async () => assert.equal((await anon.post('/node/v1/register/challenge', { auth_key: key })).status, 200)));
      }
      assertError(await anon.post('/node/v1/register', { auth_key: key, node_key: id.nodeKey, hostname: 'bounded', ...oldest }), 401, 'proof_nonce_invalid');
      assert.equal((await registerNode(anon, { auth_key: key, hostname: 'bounded' }, id)).status, 201, 'a fresh nonce works');
    });

    t('a single-use key registers once: not again for the same node, and not twice concurrently', async () => {
      const once = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice' })).body;
      const id = nodeIdentity();
      const r = await registerNode(anon, { auth_key: once.key, hostname: 'once' }, id);
      assert.equal(r.status, 201, r.text);
      // The same node again (it holds its key): the key is spent.
      const p = await registerProof(anon, once.key, id);
      assert.ok('status' in p, 'no nonce for a spent key');
      assertError(p as { status: number; body: Json; text: string }, 401, 'unauthorized');
      assertError(await registerNode(anon, { auth_key: once.key, hostname: 'twice' }), 401, 'unauthorized');

      // Concurrent: five nodes get nonces while the key is unused, then register at once.
      const race = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice' })).body;
      const ids = Array.from({ length: 5 }, () => nodeIdentity());
      const proofs: { nonce: string; signature: string }[] = [];
      for (const i of ids) proofs.push(proofOf(await registerProof(anon, race.key, i)));
      const results = await Promise.all(ids.map((i, n) => anon.post('/node/v1/register', { auth_key: race.key, node_key: i.nodeKey, hostname: `race${n}`, ...proofs[n] })));
      assert.deepEqual(results.map((x) => x.status).sort(), [201, 401, 401, 401, 401], results.map((x) => x.text).join('\n'));
      for (const x of results.filter((y) => y.status === 401)) assert.match(x.body.error.message, /already been used/);
      const keys = (await admin.get('/api/v1/tenants/acme/authkeys')).body.authkeys as Json[];
      const row = keys.find((k) => k.id === race.id);
      assert.equal(row.used_count, 1);
      const nodes = (await admin.get('/api/v1/tenants/acme/nodes')).body.nodes as Json[];
      assert.equal(nodes.filter((n) => String(n.name).startsWith('race')).length, 1);
    });

    t('re-registering keeps the node, its user and its tags; admin changes stay', async () => {
      const id = nodeIdentity();
      const r1 = await registerNode(anon, { auth_key: aliceKey, hostname: 'srv', tags: ['tag:server'], routes: ['10.41.0.0/24'] }, id);
      assert.equal(r1.status, 201, r1.text);
      assert.deepEqual(r1.body.node.tags, ['tag:server']);
      const nid = r1.body.node.id as number;
      // An admin changes the tags and approves the route.
      assert.equal((await admin.put(`/api/v1/tenants/acme/nodes/${nid}/tags`, { tags: ['tag:db'] })).status, 200);
      assert.equal((await admin.post(`/api/v1/tenants/acme/nodes/${nid}/routes`, { approved: ['10.41.0.0/24'] })).status, 200);
      const before = await nodeById(nid);
      // The owner's node registers again (asking for its old tag): same node, admin's tags kept.
      const r2 = await registerNode(anon, { auth_key: aliceKey, hostname: 'srv', tags: ['tag:server'], routes: ['10.41.0.0/24'] }, id);
      assert.equal(r2.status, 201, r2.text);
      assert.equal(r2.body.node.id, nid);
      assert.deepEqual(r2.body.node.tags, ['tag:db']);
      assert.match(r2.body.warning, /keeps its tags tag:db/);
      // Without tags: no warning, still the admin's tags.
      const r3 = await registerNode(anon, { auth_key: aliceKey, hostname: 'srv', routes: ['10.41.0.0/24'] }, id);
      assert.equal(r3.status, 201, r3.text);
      assert.equal(r3.body.warning, undefined);
      const after = await nodeById(nid);
      for (const k of ['user', 'tags', 'ipv4', 'ipv6', 'node_key', 'approved_routes', 'name']) assert.deepEqual(after[k], before[k], k);
      assert.equal(after.user, 'alice');
      // The new token works, the ones it replaced do not.
      assert.equal((await anon.as(r3.body.token).get('/node/v1/map')).status, 200);
      assert.equal((await anon.as(r1.body.token).get('/node/v1/map')).status, 401);
      assert.equal((await anon.as(r2.body.token).get('/node/v1/map')).status, 401);
      // A tagged node without a user is re-registered by a key without a user, not by a user's key.
      const tid = nodeIdentity();
      const tg = await registerNode(anon, { auth_key: tagKey, hostname: 'db1' }, tid);
      assert.equal(tg.status, 201, tg.text);
      assert.equal((await registerNode(anon, { auth_key: tagKey, hostname: 'db1' }, tid)).body.node?.id, tg.body.node.id);
      assertError(await registerNode(anon, { auth_key: aliceKey, hostname: 'db1' }, tid), 403, 'node_owned_by_other_user');
      const audit = (await admin.get('/api/v1/tenants/acme/audit?action=node.reregister&limit=1000')).body.entries as Json[];
      assert.ok(audit.filter((e) => e.object_id === String(nid)).every((e) => e.before.user_id === e.after.user_id && JSON.stringify(e.after.tags) === '["tag:db"]'));
    });

    t('a node from before 0007 keeps working with its token and moves to a proven key with it; nobody else can', async () => {
      const id = nodeIdentity();
      const r = await registerNode(anon, { auth_key: aliceKey, hostname: 'old-node' }, id);
      assert.equal(r.status, 201, r.text);
      const nid = r.body.node.id as number;
      // What 0007 leaves of a node registered earlier: an X25519 public key nobody can prove, never proven.
      const legacyKey = `nodekey:${'ab'.repeat(32)}`;
      await dbExec(dbSpec, dir, 'update nodes set node_key = $1, key_proven_at = null where id = $2', [legacyKey, nid]);
      const old = await nodeById(nid);
      assert.equal(old.key_proven, false);
      assert.equal(old.node_key, legacyKey);
      assert.equal((await anon.as(r.body.token).get('/node/v1/map')).status, 200, 'its token keeps working');

      // Nobody proves the legacy key; mallory cannot take the node, not even with its token.
      assertError(await anon.post('/node/v1/register', { auth_key: malloryKey, node_key: legacyKey, hostname: 'old-node' }), 401, 'proof_required');
      const mp = proofOf(await registerProof(anon, malloryKey, id));
      assertError(await anon.post('/node/v1/register', { auth_key: malloryKey, node_key: legacyKey, hostname: 'old-node', ...mp }), 401, 'proof_invalid');
      const mallorysNew = nodeIdentity();
      const withToken = proofOf(await registerProof(anon, malloryKey, mallorysNew));
      const t1 = await anon.as(r.body.token).post('/node/v1/register', { auth_key: malloryKey, node_key: mallorysNew.nodeKey, hostname: 'old-node', ...withToken });
      assertError(t1, 403, 'node_owned_by_other_user');
      assert.equal((await nodeById(nid)).node_key, legacyKey);

      // The node itself: a new key, proven, plus its token: same node, now proven.
      const fresh = nodeIdentity();
      const p = proofOf(await registerProof(anon, aliceKey, fresh));
      const up = await anon.as(r.body.token).post('/node/v1/register', { auth_key: aliceKey, node_key: fresh.nodeKey, hostname: 'old-node', ...p });
      assert.equal(up.status, 201, up.text);
      assert.equal(up.body.node.id, nid);
      assert.equal(up.body.node.ipv4, r.body.node.ipv4);
      const now = await nodeById(nid);
      assert.equal(now.key_proven, true);
      assert.equal(now.node_key, fresh.nodeKey);
      assert.equal((await anon.as(r.body.token).get('/node/v1/map')).status, 401, 'the old token was replaced');
      const moved = (await admin.get('/api/v1/tenants/acme/audit?action=node.key.prove')).body.entries as Json[];
      assert.deepEqual(moved.map((e) => [e.object_id, e.before.node_key, e.after.node_key]), [[String(nid), legacyKey, fresh.nodeKey]]);
      // Once proven, a token no longer moves it to another key: that registers a new node.
      const another = nodeIdentity();
      const p2 = proofOf(await registerProof(anon, aliceKey, another));
      const n2 = await anon.as(up.body.token).post('/node/v1/register', { auth_key: aliceKey, node_key: another.nodeKey, hostname: 'old-node', ...p2 });
      assert.equal(n2.status, 201, n2.text);
      assert.notEqual(n2.body.node.id, nid);
      assert.equal((await nodeById(nid)).node_key, fresh.nodeKey);
    });

    t('a node from before 0007 proves a new key with its token alone (no auth key): same node, same token', async () => {
      const r = await registerNode(anon, { auth_key: aliceKey, hostname: 'older-node' });
      assert.equal(r.status, 201, r.text);
      const nid = r.body.node.id as number;
      const token = r.body.token as string;
      const legacyKey = `nodekey:${'ef'.repeat(32)}`;
      await dbExec(dbSpec, dir, 'update nodes set node_key = $1, key_proven_at = null where id = $2', [legacyKey, nid]);
      const node = anon.as(token);
      const fresh = nodeIdentity();
      // A proven node gets no such nonce.
      const proven = await registerNode(anon, { auth_key: aliceKey, hostname: 'proven' });
      assertError(await anon.as(proven.body.token).post('/node/v1/key/challenge', {}), 409, 'key_already_proven');
      assertError(await anon.post('/node/v1/key/challenge', {}), 401, 'unauthorized');
      // Nonces do not cross over: the node's nonce does not register, an auth key's nonce does not prove.
      const c1 = (await node.post('/node/v1/key/challenge', {})).body;
      assert.equal(c1.tenant, 'acme');
      assertError(await anon.post('/node/v1/register', { auth_key: aliceKey, node_key: fresh.nodeKey, hostname: 'x', nonce: c1.nonce, signature: signRegistration(fresh.privateKey, c1.nonce, fresh.nodeKey, 'acme') }), 401, 'proof_nonce_invalid');
      const ak = proofOf(await registerProof(anon, aliceKey, fresh));
      assertError(await node.post('/node/v1/key', { node_key: fresh.nodeKey, ...ak }), 401, 'proof_nonce_invalid');
      // A wrong signature, then the right one.
      const c2 = (await node.post('/node/v1/key/challenge', {})).body;
      assertError(await node.post('/node/v1/key', { node_key: fresh.nodeKey, nonce: c2.nonce, signature: signRegistration(nodeIdentity().privateKey, c2.nonce, fresh.nodeKey, 'acme') }), 401, 'proof_invalid');
      const c3 = (await node.post('/node/v1/key/challenge', {})).body;
      const proof = { node_key: fresh.nodeKey, nonce: c3.nonce, signature: signRegistration(fresh.privateKey, c3.nonce, fresh.nodeKey, 'acme') };
      const ok = await node.post('/node/v1/key', proof);
      assert.equal(ok.status, 200, ok.text);
      assert.deepEqual(ok.body, { node_key: fresh.nodeKey, key_proven: true });
      assertError(await node.post('/node/v1/key', proof), 401, 'proof_nonce_invalid');
      const after = await nodeById(nid);
      assert.equal(after.key_proven, true);
      assert.equal(after.node_key, fresh.nodeKey);
      assert.equal(after.ipv4, r.body.node.ipv4);
      assert.equal((await node.get('/node/v1/map')).status, 200, 'the same token');
      assertError(await node.post('/node/v1/key/challenge', {}), 409, 'key_already_proven');
      const moved = (await admin.get('/api/v1/tenants/acme/audit?action=node.key.prove')).body.entries as Json[];
      const mine = moved.filter((e) => e.object_id === String(nid));
      assert.deepEqual(mine.map((e) => [e.actor, e.before.node_key, e.after.node_key]), [[`node:${nid}`, legacyKey, fresh.nodeKey]]);
    });
  });
}
