// Relay failover: a relay is live while it reports health (within the TTL,
// 1.5 s here). Maps mark each relay live/dedicated; every node of a tenant homes
// on the same relay (live first, then the tenant's own, then the lowest id).
// When the home relay goes quiet the maps move every node to a live one; when a
// relay reports again it is live again. Both stores; the flip happens once.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, backends, SseReader, cleanup, registerNode, sleep, spawnServer, tempDir, type Json, type ServerProc } from './harness.js';
import { homeRelay } from '../../src/daemon/mapplan.js';

const TTL = 1500;

for (const be of backends()) {
  describe(`relay liveness and the home relay on ${be.name}`, () => {
    let skip: string | false = false;
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    const relay: Record<string, { id: number; c: Client }> = {};
    const node: Record<string, { token: string; stream: SseReader | null }> = {};

    before(async () => {
      const db = await be.setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db, env: { LARKTUN_RELAY_HEALTH_TTL_MS: String(TTL) } });
      op = new Client(srv.url, srv.operatorKey());
      for (const t of ['acme', 'beta']) assert.equal((await op.post('/api/v1/tenants', { name: t })).status, 201);
      for (const [name, port, tenant] of [['shared-a', 1, undefined], ['shared-b', 2, undefined], ['acme-own', 3, 'acme']] as const) {
        const r = await op.post('/api/v1/relays', { name, endpoints: [`192.0.2.10:${port}`], ...(tenant ? { tenant } : {}) });
        assert.equal(r.status, 201, r.text);
        relay[name] = { id: r.body.id, c: op.as(r.body.token) };
      }
      for (const t of ['acme', 'beta']) {
        const adm = op.as((await op.post(`/api/v1/tenants/${t}/apikeys`, { role: 'admin' })).body.key);
        assert.equal((await adm.post(`/api/v1/tenants/${t}/users`, { name: 'alice' })).status, 201);
        const ak = (await adm.post(`/api/v1/tenants/${t}/authkeys`, { user: 'alice', reusable: true })).body.key;
        const r = await registerNode(op.as(null), { auth_key: ak, hostname: `${t}-laptop`, routes: [] });
        assert.equal(r.status, 201, r.text);
        node[t] = { token: r.body.token, stream: null };
        node[t]!.stream = await SseReader.open(`${srv.url}/node/v1/stream`, r.body.token);
      }
    });
    after(async () => {
      if (skip) return;
      for (const n of Object.values(node)) n.stream?.close();
      await srv.stop();
      cleanup(dir);
      await be.teardown();
    });
    const t = (title: string, fn: () => Promise<void>) =>
      it(title, async (ctx) => {
        if (skip) return ctx.skip(skip);
        await fn();
      });
    const report = (name: string) => relay[name]!.c.post('/relay/v1/health', { links: [] });
    const home = (m: Json): string | null => homeRelay(m.relays)?.name ?? null;
    const live = (m: Json): Record<string, boolean> => Object.fromEntries(m.relays.map((r: Json) => [r.name, r.live]));

    t('no relay has reported: none is live; acme homes on its own relay, beta on the lowest shared id', async () => {
      const a = await node['acme']!.stream!.waitMap(() => true);
      assert.deepEqual(live(a), { 'shared-a': false, 'shared-b': false, 'acme-own': false });
      assert.deepEqual(a.relays.map((r: Json) => [r.name, r.dedicated]), [['shared-a', false], ['shared-b', false], ['acme-own', true]]);
      assert.equal(home(a), 'acme-own');
      const b = await node['beta']!.stream!.waitMap(() => true);
      assert.deepEqual(b.relays.map((r: Json) => r.name), ['shared-a', 'shared-b'], 'beta never sees acme\'s relay');
      assert.equal(home(b), 'shared-a');
    });

    t('a reporting relay turns live at once (every tenant it serves); the quiet dedicated relay loses to it', async () => {
      const t0 = Date.now();
      assert.equal((await report('shared-b')).status, 200);
      const a = await node['acme']!.stream!.waitMap((m) => live(m)['shared-b'] === true, 3000);
      const b = await node['beta']!.stream!.waitMap((m) => live(m)['shared-b'] === true, 3000);
      process.stderr.write(`# relay live → maps on ${be.name}: ${Date.now() - t0} ms\n`);
      assert.equal(home(a), 'shared-b', 'a live shared relay beats a quiet dedicated one');
      assert.equal(home(b), 'shared-b');
      const list = (await op.get('/api/v1/relays')).body.relays as Json[];
      const sb = list.find((r) => r.name === 'shared-b');
      assert.equal(sb.live, true);
      assert.ok(Date.parse(sb.last_report) > Date.now() - 10_000);
      assert.equal(list.find((r) => r.name === 'shared-a').live, false);
    });

    t('the dedicated relay reporting too: acme moves to it, beta stays', async () => {
      await report('shared-b');
      await report('acme-own');
      const a = await node['acme']!.stream!.waitMap((m) => live(m)['acme-own'] === true, 3000);
      assert.equal(home(a), 'acme-own');
      await sleep(300);
      assert.equal(node['beta']!.stream!.pending(), 0, 'beta\'s map does not change for acme\'s relay');
    });

    t('the home relay goes quiet: after the TTL the maps move every node to a live relay; back when it reports', async () => {
      // shared-b keeps reporting; acme-own reports once more, then stops.
      const tick = setInterval(() => void report('shared-b'), 300);
      try {
        const t0 = Date.now(); // the server stamps acme-own's last report at or after this
        assert.equal((await report('acme-own')).status, 200);
        const a = await node['acme']!.stream!.waitMap((m) => live(m)['acme-own'] === false, TTL * 4);
        const ms = Date.now() - t0;
        process.stderr.write(`# quiet home relay → acme moved on ${be.name}: ${ms} ms after its last report (TTL ${TTL} ms)\n`);
        assert.ok(ms >= TTL, `not before the TTL (${ms} ms)`);
        assert.equal(home(a), 'shared-b');
        const metrics = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${srv.operatorKey()}` } })).text();
        assert.match(metrics, /larktun_node_liveness_events_total\{event="relay_quiet"\} 1/);
        assert.match(metrics, /larktun_relay_live\{relay="acme-own",tenant="acme"\} 0\n/);
        assert.match(metrics, /larktun_relay_live\{relay="shared-b",tenant=""\} 1\n/);
        assert.match(metrics, /larktun_relay_live\{relay="shared-a",tenant=""\} 0\n/);
        assert.match(metrics, /larktun_relay_last_report_timestamp_seconds\{relay="shared-b",tenant=""\} \d/);
        assert.doesNotMatch(metrics, /larktun_relay_last_report_timestamp_seconds\{relay="shared-a"/, 'never reported: no timestamp');
        await report('acme-own');
        const back = await node['acme']!.stream!.waitMap((m) => live(m)['acme-own'] === true, 3000);
        assert.equal(home(back), 'acme-own');
      } finally {
        clearInterval(tick);
      }
    });
  });
}

describe('homeRelay (the node side of the choice)', () => {
  const R = (id: number, live: boolean | undefined, dedicated: boolean | undefined, endpoints = ['192.0.2.1:41642']) =>
    ({ id, name: `r${id}`, endpoints, link_id: 1, relay_link_id: 65535, psk: '00'.repeat(32), obfuscate: true, live, dedicated }) as Json;
  it('live, then dedicated, then lowest id; unusable endpoints never; old maps (no flags) by id', () => {
    assert.equal(homeRelay([R(1, true, false), R(2, true, true)])!.id, 2);
    assert.equal(homeRelay([R(1, true, false), R(2, false, true)])!.id, 1);
    assert.equal(homeRelay([R(3, false, false), R(2, false, false)])!.id, 2, 'none live: still one, by id');
    assert.equal(homeRelay([R(1, true, false, ['not an endpoint']), R(5, false, false)])!.id, 5);
    assert.equal(homeRelay([R(4, undefined, undefined), R(2, undefined, undefined)])!.id, 2);
    assert.equal(homeRelay([]), null);
  });
});
