// Relays: registry, per-(node, relay) links with server-made PSKs in node maps,
// the relay's own view and stream, key rotation (on demand and periodic), and
// isolation (a dedicated relay sees only its tenant; other tenants' keys get 404).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, backends, SseReader, cleanup, registerNode, sleep, spawnServer, tempDir, type Json, type ServerProc } from './harness.js';

const HEX64 = /^[0-9a-f]{64}$/;

function relaySuite(name: string, setup: () => Promise<string>, teardown: () => Promise<void>): void {
  describe(`relays on ${name}`, () => {
    let skip: string | false = false;
    let dbSpec = '';
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    let a: Client; // alpha admin
    let b: Client; // beta admin
    const tok: Record<string, string> = {};
    const nid: Record<string, number> = {};
    let shared: Json;
    let dedicated: Json;

    const register = async (tenant: Client, t: string, host: string, extra: Record<string, unknown> = {}) => {
      const ak = await tenant.post(`/api/v1/tenants/${t}/authkeys`, { tags: ['tag:router'] });
      assert.equal(ak.status, 201, ak.text);
      const r = await registerNode(op.as(null), { auth_key: ak.body.key, hostname: host, ...extra });
      assert.equal(r.status, 201, r.text);
      tok[host] = r.body.token;
      nid[host] = r.body.node.id;
    };
    const mapOf = async (host: string) => (await op.as(tok[host] as string).get('/node/v1/map')).body;
    const policy = `{
      "tagOwners": {"tag:router": []},
      "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
      "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}},
    }`;

    before(async () => {
      const db = await setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dbSpec = db;
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db, env: { LARKTUN_PSK_GRACE_MS: '600000' } });
      op = new Client(srv.url, srv.operatorKey());
      for (const t of ['alpha', 'beta']) assert.equal((await op.post('/api/v1/tenants', { name: t, pool4: '10.9.0.0/16' })).status, 201);
      a = op.as((await op.post('/api/v1/tenants/alpha/apikeys', { role: 'admin' })).body.key);
      b = op.as((await op.post('/api/v1/tenants/beta/apikeys', { role: 'admin' })).body.key);
      for (const [c, t] of [[a, 'alpha'], [b, 'beta']] as const) assert.equal((await c.put(`/api/v1/tenants/${t}/policy`, { policy })).status, 200);
      await register(a, 'alpha', 'a1', { routes: ['10.50.0.0/16'] }); // registered before any relay exists
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

    t('create relays: token shown once, validated, operator only', async () => {
      const r = await op.post('/api/v1/relays', { name: 'edge-1', endpoints: ['203.0.113.5:18020'] });
      assert.equal(r.status, 201, r.text);
      assert.match(r.body.token, /^lkrelay_/);
      assert.equal(r.body.tenant, null);
      assert.equal(r.body.relay_link_id, 65535);
      shared = r.body;
      const d = await op.post('/api/v1/relays', { name: 'beta-only', endpoints: ['198.51.100.7:18020', '[2001:db8::7]:18020'], tenant: 'beta' });
      assert.equal(d.status, 201, d.text);
      assert.equal(d.body.tenant, 'beta');
      dedicated = d.body;
      assert.equal((await op.post('/api/v1/relays', { name: 'edge-1', endpoints: ['203.0.113.6:1'] })).status, 409);
      assert.equal((await op.post('/api/v1/relays', { name: 'bad', endpoints: ['nope'] })).status, 400);
      assert.equal((await op.post('/api/v1/relays', { name: 'bad', endpoints: ['1.2.3.4:5'], tenant: 'nosuch' })).status, 400);
      assert.equal((await a.post('/api/v1/relays', { name: 'mine', endpoints: ['1.2.3.4:5'], tenant: 'alpha' })).status, 403);
      const list = await op.get('/api/v1/relays');
      assert.deepEqual(list.body.relays.map((x: Json) => x.name), ['edge-1', 'beta-only']);
      assert.ok(!/psk|lkrelay_|token/.test(list.text), `list shows no secrets: ${list.text}`);
    });

    t('node maps carry their relay links; link ids are unique per relay across tenants', async () => {
      await register(a, 'alpha', 'a2');
      await register(b, 'beta', 'b1');
      const m1 = await mapOf('a1');
      assert.equal(m1.relays.length, 1, JSON.stringify(m1.relays));
      const l = m1.relays[0];
      assert.equal(l.id, shared.id);
      assert.equal(l.name, 'edge-1');
      assert.deepEqual(l.endpoints, ['203.0.113.5:18020']);
      assert.equal(l.relay_link_id, 65535);
      assert.equal(l.obfuscate, true);
      assert.match(l.psk, HEX64);
      assert.ok(l.link_id >= 1 && l.link_id < 65535);
      const mb = await mapOf('b1');
      assert.deepEqual(mb.relays.map((x: Json) => x.name).sort(), ['beta-only', 'edge-1']);
      const ids = [m1, await mapOf('a2'), mb].map((m) => m.relays.find((x: Json) => x.id === shared.id).link_id);
      assert.equal(new Set(ids).size, 3, `distinct link ids on the shared relay: ${ids}`);
      const psks = [m1, await mapOf('a2'), mb].map((m) => m.relays.find((x: Json) => x.id === shared.id).psk);
      assert.equal(new Set(psks).size, 3);
      const links = await a.get(`/api/v1/tenants/alpha/nodes/${nid['a1']}/links`);
      assert.equal(links.status, 200, links.text);
      assert.equal(links.body.links[0].link_id, l.link_id);
      assert.ok(!links.text.includes(l.psk), 'the links listing never shows a key');
    });

    t('the relay view: links, allowed_src, primary routes, global filter; a dedicated relay sees one tenant', async () => {
      const rs = op.as(shared.token);
      // a1 routes 10.50.0.0/16; it is primary for it only while online (its stream open)
      const off = (await rs.get('/relay/v1/map')).body.tenants.find((x: Json) => x.tenant === 'alpha').links.find((x: Json) => x.node_id === nid['a1']);
      assert.deepEqual(off.routes, [], 'an offline router is nobody\'s primary');
      const ns = await SseReader.open(`${srv.url}/node/v1/stream`, tok['a1'] as string);
      await ns.waitMap(() => true);
      await sleep(150);
      const v = await rs.get('/relay/v1/map');
      ns.close();
      assert.equal(v.status, 200, v.text);
      assert.equal(v.body.relay.name, 'edge-1');
      assert.deepEqual(v.body.tenants.map((x: Json) => x.tenant).sort(), ['alpha', 'beta']);
      const alpha = v.body.tenants.find((x: Json) => x.tenant === 'alpha');
      const m1 = await mapOf('a1');
      const link = alpha.links.find((x: Json) => x.node_id === nid['a1']);
      assert.equal(link.link_id, m1.relays[0].link_id);
      assert.equal(link.psk, m1.relays[0].psk);
      assert.deepEqual(link.allowed_src, m1.self.addresses);
      assert.deepEqual(link.routes, ['10.50.0.0/16'], 'approved + primary route of a1');
      assert.deepEqual(alpha.online, [nid['a1']]);
      assert.ok(Array.isArray(alpha.packet_filter) && alpha.packet_filter.length > 0, 'global filter');
      const dv = await op.as(dedicated.token).get('/relay/v1/map');
      assert.equal(dv.status, 200, dv.text);
      assert.deepEqual(dv.body.tenants.map((x: Json) => x.tenant), ['beta']);
      assert.ok(!dv.text.includes('alpha') && !dv.text.includes(m1.relays[0].psk), 'no trace of alpha');
      assert.equal((await op.as('lkrelay_000000000000_' + 'A'.repeat(43)).get('/relay/v1/map')).status, 401);
      assert.equal((await op.as(tok['a1'] as string).get('/relay/v1/map')).status, 401, 'a node token is not a relay token');
    });

    t('the relay view: exit_link_id per link follows use_exit_node and the policy (autogroup:internet)', async () => {
      assert.equal((await op.post('/api/v1/tenants', { name: 'gamma', pool4: '10.7.0.0/16' })).status, 201);
      const g = op.as((await op.post('/api/v1/tenants/gamma/apikeys', { role: 'admin' })).body.key);
      const pol = `{
        "tagOwners": {"tag:exit": [], "tag:client": [], "tag:other": []},
        "acls": [
          {"action": "accept", "src": ["tag:client"], "dst": ["autogroup:internet:*", "tag:exit:*"]},
          {"action": "accept", "src": ["tag:other"], "dst": ["tag:exit:*"]},
        ],
        "autoApprovers": {"exitNode": ["tag:exit"]},
      }`;
      assert.equal((await g.put('/api/v1/tenants/gamma/policy', { policy: pol })).status, 200);
      const reg = async (host: string, tag: string, extra: Record<string, unknown> = {}) => {
        const ak = await g.post('/api/v1/tenants/gamma/authkeys', { tags: [tag] });
        assert.equal(ak.status, 201, ak.text);
        const r = await registerNode(op.as(null), { auth_key: ak.body.key, hostname: host, ...extra });
        assert.equal(r.status, 201, r.text);
        return { id: r.body.node.id as number, token: r.body.token as string, approved: r.body.node.approved_routes as string[] };
      };
      const exit = await reg('gx', 'tag:exit', { exit_node: true });
      assert.deepEqual(exit.approved, ['0.0.0.0/0', '::/0'], 'exit routes auto-approved by autoApprovers.exitNode');
      const c1 = await reg('gc1', 'tag:client');
      const c2 = await reg('gc2', 'tag:other');
      const c3 = await reg('gc3', 'tag:client');
      for (const c of [c1, c2]) assert.equal((await op.as(c.token).post('/node/v1/hostinfo', { use_exit_node: 'gx' })).status, 200);
      assert.equal((await op.as(c3.token).post('/node/v1/hostinfo', { use_exit_node: String(exit.id) })).status, 200, 'by id');
      await sleep(100);
      const v = await op.as(shared.token).get('/relay/v1/map');
      assert.equal(v.status, 200, v.text);
      const gamma = v.body.tenants.find((x: Json) => x.tenant === 'gamma');
      const linkOf = (id: number) => gamma.links.find((x: Json) => x.node_id === id);
      const exitLink = linkOf(exit.id).link_id as number;
      assert.ok(exitLink >= 1);
      assert.equal(linkOf(c1.id).exit_link_id, exitLink, 'c1 may use gx (autogroup:internet)');
      assert.equal(linkOf(c3.id).exit_link_id, exitLink, 'use_exit_node by id');
      assert.equal(linkOf(c2.id).exit_link_id, null, 'the policy does not grant c2 autogroup:internet');
      assert.equal(linkOf(exit.id).exit_link_id, null, 'the exit node uses no exit');
      // other tenants' links carry the field too
      for (const tn of v.body.tenants) for (const l of tn.links) assert.ok('exit_link_id' in l, JSON.stringify(l));
      // agrees with the nodes' own maps
      assert.equal((await op.as(c1.token).get('/node/v1/map')).body.exit_node, exit.id);
      assert.equal((await op.as(c2.token).get('/node/v1/map')).body.exit_node, null);
      // a cleared wish clears it; a wish for a non-exit node gives null
      assert.equal((await op.as(c1.token).post('/node/v1/hostinfo', { use_exit_node: null })).status, 200);
      assert.equal((await op.as(c3.token).post('/node/v1/hostinfo', { use_exit_node: 'gc1' })).status, 200);
      await sleep(100);
      const v2 = (await op.as(shared.token).get('/relay/v1/map')).body.tenants.find((x: Json) => x.tenant === 'gamma');
      assert.equal(v2.links.find((x: Json) => x.node_id === c1.id).exit_link_id, null);
      assert.equal(v2.links.find((x: Json) => x.node_id === c3.id).exit_link_id, null);
      assert.equal((await op.del('/api/v1/tenants/gamma')).status, 200);
    });

    t('relay stream: pushes on changes of a served tenant only; resume gets "unchanged"', async () => {
      const ds = await SseReader.open(`${srv.url}/relay/v1/stream`, dedicated.token);
      assert.equal(ds.status, 200);
      const first = await ds.next();
      assert.equal(first.event, 'map');
      assert.deepEqual(first.data.tenants.map((x: Json) => x.tenant), ['beta']);
      await register(a, 'alpha', 'a3'); // alpha: not this relay's business
      await sleep(400);
      assert.equal(ds.pending(), 0, 'no push for another tenant');
      await register(b, 'beta', 'b2');
      const e = await ds.next();
      assert.equal(e.event, 'map');
      const beta = e.data.tenants[0];
      assert.ok(beta.links.some((x: Json) => x.node_id === nid['b2']));
      ds.close();
      const again = await SseReader.open(`${srv.url}/relay/v1/stream`, dedicated.token, e.id as string);
      assert.equal((await again.next()).event, 'unchanged');
      again.close();
    });

    t('rotation: on demand per relay and per node; nodes get the new key, the relay keeps the old one for the grace period', async () => {
      const ns = await SseReader.open(`${srv.url}/node/v1/stream`, tok['a1'] as string);
      const m0 = await ns.waitMap(() => true);
      const old = m0.relays[0].psk;
      const r = await op.post(`/api/v1/relays/${shared.id}/rotate`);
      assert.equal(r.status, 200, r.text);
      assert.ok(r.body.rotated >= 5, r.text);
      const m1 = await ns.waitMap((m) => m.relays[0].psk !== old);
      assert.match(m1.relays[0].psk, HEX64);
      const v = await op.as(shared.token).get('/relay/v1/map');
      const link = v.body.tenants.find((x: Json) => x.tenant === 'alpha').links.find((x: Json) => x.node_id === nid['a1']);
      assert.equal(link.psk, m1.relays[0].psk);
      assert.equal(link.previous_psk, old);
      assert.ok(Date.parse(link.previous_psk_valid_until) > Date.now() + 500_000);
      const pn = await a.post(`/api/v1/tenants/alpha/nodes/${nid['a1']}/links/rotate`);
      assert.equal(pn.status, 200, pn.text);
      assert.equal(pn.body.rotated, 1);
      await ns.waitMap((m) => m.relays[0].psk !== m1.relays[0].psk);
      ns.close();
      const audit = await a.get('/api/v1/tenants/alpha/audit?limit=1000');
      const actions = audit.body.entries.map((x: Json) => x.action);
      for (const x of ['relay.create', 'relay.rotate', 'node.links.rotate']) assert.ok(actions.includes(x), `${x} audited`);
      assert.ok(!audit.text.includes(old), 'keys never enter the audit trail');
      assert.equal((await a.get('/api/v1/tenants/alpha/audit/verify')).body.ok, true);
    });

    t('isolation: another tenant\'s key gets 404 on relay objects it does not own', async () => {
      const notFound = (r: { status: number; body: Json; text: string }, what: string) => {
        assert.equal(r.status, 404, `${what}: ${r.status} ${r.text}`);
        assert.ok(!r.text.includes('beta-only') && !r.text.includes('edge-1'), `${what} leaks: ${r.text}`);
      };
      notFound(await a.get(`/api/v1/relays/${dedicated.id}`), 'get dedicated');
      notFound(await a.del(`/api/v1/relays/${dedicated.id}`), 'delete dedicated');
      notFound(await a.post(`/api/v1/relays/${dedicated.id}/rotate`), 'rotate dedicated');
      notFound(await a.get(`/api/v1/relays/${shared.id}`), 'get shared');
      notFound(await a.post(`/api/v1/relays/${shared.id}/rotate`), 'rotate shared');
      notFound(await a.get(`/api/v1/relays/999999`), 'missing');
      notFound(await a.get(`/api/v1/tenants/beta/nodes/${nid['b1']}/links`), 'other tenant links');
      notFound(await a.post(`/api/v1/tenants/beta/nodes/${nid['b1']}/links/rotate`), 'other tenant rotate');
      notFound(await a.get(`/api/v1/tenants/alpha/nodes/${nid['b1']}/links`), 'foreign node id');
      const la = await a.get('/api/v1/relays');
      assert.deepEqual(la.body.relays, []);
      const lb = await b.get('/api/v1/relays');
      assert.deepEqual(lb.body.relays.map((x: Json) => x.name), ['beta-only']);
      assert.equal((await b.get(`/api/v1/relays/${dedicated.id}`)).status, 200);
    });

    t('deleting a relay removes it from maps and ends its stream', async () => {
      const ds = await SseReader.open(`${srv.url}/relay/v1/stream`, dedicated.token);
      assert.equal((await ds.next()).event, 'map');
      const r = await b.del(`/api/v1/relays/${dedicated.id}`);
      assert.equal(r.status, 200, r.text);
      assert.equal((await ds.next()).event, 'end');
      assert.deepEqual((await mapOf('b1')).relays.map((x: Json) => x.name), ['edge-1']);
      assert.equal((await op.as(dedicated.token).get('/relay/v1/map')).status, 401);
      assert.equal((await op.get(`/api/v1/relays/${dedicated.id}`)).status, 404);
      const audit = await b.get('/api/v1/tenants/beta/audit?action=relay.delete');
      assert.equal(audit.body.entries.length, 1);
    });

    t('restart keeps relays, links and keys', async () => {
      const before = await mapOf('a1');
      await srv.stop();
      srv = await spawnServer({ dataDir: dir, db: dbSpec, env: { LARKTUN_PSK_GRACE_MS: '600000' } });
      op = new Client(srv.url, srv.operatorKey());
      const after = await mapOf('a1');
      assert.deepEqual(after.relays, before.relays);
      assert.equal((await op.as(shared.token).get('/relay/v1/map')).status, 200);
    });
  });
}

for (const b of backends()) relaySuite(b.name, b.setup, b.teardown);
