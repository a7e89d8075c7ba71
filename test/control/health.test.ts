// Relay health is time-bounded: a relay's verdicts count only while it keeps
// reporting (LARKTUN_RELAY_HEALTH_TTL_MS, 1.5 s here); when it goes quiet a
// sweep lets them lapse and the nodes it kept offline come back. Reports write
// only what changed. Also: per-node relay RTT/last-seen in the Admin API and
// the route gauges.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import pg from 'pg';
import {
  Client, backends, SseReader, cleanup, freshPgSchema, registerNode, pgUnavailable, sleep, spawnServer, tempDir, type Json, type ServerProc,
} from './harness.js';

const ROUTE = '10.60.0.0/16';
const TTL = 1500;
const viaPeer = (m: Json): number | null => m.peers.find((p: Json) => p.allowed_ips.includes(ROUTE))?.id ?? null;
const POLICY = `{"tagOwners": {"tag:router": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
                 "autoApprovers": {"routes": {"${ROUTE}": ["tag:router"]}}}`;

/** Reads rows straight from the server's database (to see what a report wrote). */
function dbReader(dbSpec: string, dir: string): { rows(q: string): Promise<Json[]>; close(): Promise<void> } {
  if (dbSpec === 'sqlite') {
    const db = new BetterSqlite3(join(dir, 'larktun.db'), { readonly: true });
    return { rows: async (q) => db.prepare(q).all() as Json[], close: async () => { db.close(); } };
  }
  const c = new pg.Client({ connectionString: dbSpec });
  const ready = c.connect();
  return { rows: async (q) => { await ready; return (await c.query(q)).rows; }, close: () => c.end() };
}

interface Node { id: number; token: string; links: Record<string, number> }

async function setupTenant(op: Client): Promise<{ adm: Client; relay: Record<string, Client>; relayId: Record<string, number>; node: Record<string, Node> }> {
  assert.equal((await op.post('/api/v1/tenants', { name: 'ha' })).status, 201);
  const adm = op.as((await op.post('/api/v1/tenants/ha/apikeys', { role: 'admin' })).body.key);
  assert.equal((await adm.put('/api/v1/tenants/ha/policy', { policy: POLICY })).status, 200);
  const relay: Record<string, Client> = {};
  const relayId: Record<string, number> = {};
  for (const [name, port] of [['A', 1], ['B', 2]] as const) {
    const r = await op.post('/api/v1/relays', { name: `edge-${name.toLowerCase()}`, endpoints: [`192.0.2.10:${port}`] });
    assert.equal(r.status, 201, r.text);
    relay[name] = op.as(r.body.token);
    relayId[name] = r.body.id;
  }
  const ak = (await adm.post('/api/v1/tenants/ha/authkeys', { tags: ['tag:router'], reusable: true })).body.key;
  const node: Record<string, Node> = {};
  for (const [host, routes] of [['r1', [ROUTE]], ['r2', [ROUTE]], ['client', []]] as const) {
    const r = await registerNode(op.as(null), { auth_key: ak, hostname: host, routes });
    assert.equal(r.status, 201, r.text);
    const m = (await op.as(r.body.token).get('/node/v1/map')).body;
    const links: Record<string, number> = {};
    for (const k of ['A', 'B']) links[k] = m.relays.find((x: Json) => x.id === relayId[k]).link_id;
    node[host] = { id: r.body.node.id, token: r.body.token, links };
  }
  return { adm, relay, relayId, node };
}

function healthSuite(name: string, setup: () => Promise<string>, teardown: () => Promise<void>): void {
  describe(`relay health expiry on ${name}`, () => {
    let skip: string | false = false;
    let dir = '';
    let dbSpec = '';
    let srv: ServerProc;
    let op: Client;
    let adm: Client;
    let relay: Record<string, Client>;
    let relayId: Record<string, number>;
    let node: Record<string, Node>;
    const streams: SseReader[] = [];
    let sc: SseReader;

    before(async () => {
      const db = await setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dbSpec = db;
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db, env: { LARKTUN_RELAY_HEALTH_TTL_MS: String(TTL) } });
      op = new Client(srv.url, srv.operatorKey());
      ({ adm, relay, relayId, node } = await setupTenant(op));
      for (const h of ['r1', 'r2']) streams.push(await SseReader.open(`${srv.url}/node/v1/stream`, node[h]!.token));
      sc = await SseReader.open(`${srv.url}/node/v1/stream`, node['client']!.token);
      streams.push(sc);
    });
    after(async () => {
      if (skip) return;
      for (const s of streams) s.close();
      await srv.stop();
      cleanup(dir);
      await teardown();
    });
    const t = (title: string, fn: () => Promise<void>) =>
      it(title, async (ctx) => {
        if (skip) return ctx.skip(skip);
        await fn();
      });

    const report = (k: string, ago: Record<string, number | null>, rtt = 12) =>
      relay[k]!.post('/relay/v1/health', { links: Object.entries(ago).map(([h, ms]) => ({ link_id: node[h]!.links[k], last_seen_ms_ago: ms, rtt_ms: rtt })) });
    const nodeOf = async (h: string) => (await adm.get(`/api/v1/tenants/ha/nodes/${node[h]!.id}`)).body;
    const waitFor = async (what: string, pred: () => Promise<boolean>, ms: number, tick?: () => Promise<unknown>) => {
      const deadline = Date.now() + ms;
      for (;;) {
        if (await pred()) return;
        if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
        await tick?.();
        await sleep(100);
      }
    };

    t('a relay that goes quiet: its "unseen" lapses, the node comes back online (no flap of the primary)', async () => {
      let h = await report('A', { r1: 100, r2: 100, client: 100 });
      assert.equal(h.status, 200, h.text);
      await sc.waitMap((m) => viaPeer(m) === node['r1']!.id);
      h = await report('A', { r1: 3500, r2: 100, client: 100 });
      assert.equal(h.body.marked_offline, 1, h.text);
      await sc.waitMap((m) => viaPeer(m) === node['r2']!.id && !m.online.includes(node['r1']!.id));
      const t0 = Date.now();
      assert.equal((await nodeOf('r1')).online, false);
      await sleep(TTL / 2);
      assert.equal((await nodeOf('r1')).unseen_by_relays, true, 'a verdict still counts within the TTL');
      // relay A says nothing more: within TTL + a sweep the node is back
      const m = await sc.waitMap((x) => x.online.includes(node['r1']!.id), TTL * 3);
      const ms = Date.now() - t0;
      assert.ok(ms >= TTL - 200, `lapsed after ${ms} ms, not before the TTL`);
      assert.equal(viaPeer(m), node['r2']!.id, 'the healthy primary stays primary');
      const r1 = await nodeOf('r1');
      assert.equal(r1.online, true);
      assert.equal(r1.unseen_by_relays, false);
      const metrics = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${srv.operatorKey()}` } })).text();
      assert.match(metrics, /larktun_node_liveness_events_total\{event="relay_verdict_lapsed"\} 1/);
      process.stderr.write(`# verdict lapse on ${name}: node back ${ms} ms after the last report (TTL ${TTL} ms)\n`);
    });

    t('steady reports write nothing; flips and coarse last_seen/rtt updates do', async () => {
      const db = dbReader(dbSpec, dir);
      try {
        const links = async () => db.rows(`select node_id, last_seen_at, rtt_ms, reported_unseen from relay_links where relay_id = ${relayId['A']} order by node_id`);
        let h = await report('A', { r1: 100, r2: 100, client: 100 }, 12);
        assert.equal(h.status, 200);
        const before = await links();
        assert.deepEqual(before.map((l) => Number(l.reported_unseen)), [0, 0, 0]);
        const v0 = (await op.as(node['client']!.token).get('/node/v1/map')).body.version;
        for (const ago of [300, 700]) {
          await sleep(200);
          h = await report('A', { r1: ago, r2: ago, client: ago }, 30);
          assert.deepEqual([h.body.marked_offline, h.body.marked_online], [0, 0]);
        }
        assert.deepEqual(await links(), before, 'nothing written for reports that change no verdict within the persist interval');
        assert.equal((await op.as(node['client']!.token).get('/node/v1/map')).body.version, v0, 'no generation bump');
        h = await report('A', { r1: 100, r2: 100, client: 9000 }, 12);
        assert.equal(h.body.marked_offline, 1);
        const after = await links();
        assert.deepEqual(after.map((l) => Number(l.reported_unseen)), [0, 0, 1], 'the flipped verdict is stored');
        assert.deepEqual(after.slice(0, 2), before.slice(0, 2), 'the unchanged links are not');
        h = await report('A', { r1: 100, r2: 100, client: 100 }, 12);
        assert.equal(h.body.marked_online, 1);
        // a link the report leaves out loses its verdict
        await report('A', { r1: 100, r2: 100 });
        assert.equal((await links())[2].reported_unseen, null);
        // a relay that just started (never heard the node, had the link 500 ms) gives no verdict yet; later it does
        const fresh = (known: number) =>
          relay['A']!.post('/relay/v1/health', { links: [{ link_id: node['client']!.links['A'], last_seen_ms_ago: null, known_ms: known }] });
        h = await fresh(500);
        assert.equal(h.body.marked_offline, 0, h.text);
        assert.equal((await links())[2].reported_unseen, null);
        h = await fresh(5000);
        assert.equal(h.body.marked_offline, 1, h.text);
        h = await report('A', { r1: 100, r2: 100, client: 100 }, 12);
        assert.equal(h.body.marked_online, 1, h.text);
      } finally {
        await db.close();
      }
      // monitoring: the latest relay RTT and last-seen per node
      const r2 = await nodeOf('r2');
      assert.equal(r2.relay_rtt_ms, 12);
      assert.ok(Date.parse(r2.relay_last_seen) > Date.now() - 60_000, r2.relay_last_seen);
      assert.ok(r2.last_seen >= r2.relay_last_seen, 'last_seen is the latest sign of life');
      const list = (await adm.get('/api/v1/tenants/ha/nodes')).body.nodes;
      assert.ok(list.every((n: Json) => 'relay_rtt_ms' in n && 'relay_last_seen' in n));
      // the node's own measurement (keepalive echoes) replaces the relay's figure,
      // and a later relay report without an RTT keeps it
      const nc = op.as(node['r2']!.token);
      let lr = await nc.post('/node/v1/latency', { relays: [{ relay_id: relayId['A'], rtt_ms: 3.4 }] });
      assert.equal(lr.status, 200, lr.text);
      assert.equal(lr.body.updated, 1);
      assert.equal((await nodeOf('r2')).relay_rtt_ms, 3);
      await relay['A']!.post('/relay/v1/health', { links: [{ link_id: node['r2']!.links['A'], last_seen_ms_ago: 50 }] });
      assert.equal((await nodeOf('r2')).relay_rtt_ms, 3, 'a report without rtt_ms keeps the node\'s figure');
      lr = await nc.post('/node/v1/latency', { relays: [{ relay_id: 999_999, rtt_ms: 1 }] });
      assert.equal(lr.body.updated, 0, 'a relay the node has no link to changes nothing');
      lr = await nc.post('/node/v1/latency', { relays: [{ relay_id: relayId['A'], rtt_ms: -1 }] });
      assert.equal(lr.status, 400);
      assert.equal(typeof lr.body.error?.code, 'string', lr.text);
      lr = await op.as(null).post('/node/v1/latency', { relays: [] });
      assert.equal(lr.status, 401);
      // another node's token writes only its own link
      await op.as(node['client']!.token).post('/node/v1/latency', { relays: [{ relay_id: relayId['A'], rtt_ms: 40 }] });
      assert.equal((await nodeOf('r2')).relay_rtt_ms, 3);
      // per node in /metrics: online, last sign of life, relay RTT (capped series)
      const pm = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${srv.operatorKey()}` } })).text();
      assert.match(pm, /larktun_node_relay_rtt_seconds\{tenant="ha",node="r2"\} 0\.003\n/);
      assert.match(pm, /larktun_node_online\{tenant="ha",node="r1"\} 1\n/);
      const seenAt = Number(/larktun_node_last_seen_timestamp_seconds\{tenant="ha",node="r2"\} ([\d.e+]+)/.exec(pm)?.[1]);
      assert.ok(Math.abs(seenAt - Date.now() / 1000) < 120, `last seen ${seenAt}`);
      assert.match(pm, /larktun_node_series_omitted 0\n/);
      const metrics = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${srv.operatorKey()}` } })).text();
      assert.match(metrics, /larktun_routes\{tenant="ha",state="approved"\} 2/);
      assert.match(metrics, /larktun_routes\{tenant="ha",state="announced"\} 0/);
      assert.match(metrics, new RegExp(`larktun_route_primary\\{tenant="ha",prefix="10\\.60\\.0\\.0/16",node="r2"\\} 1`));
      assert.match(metrics, /larktun_routes_unserved\{tenant="ha"\} 0/);
      assert.match(metrics, /larktun_nodes_online\{tenant="ha"\} 3/);
    });

    t('a fresh "seen" outweighs "unseen"; when the "seen" relay goes quiet the other verdict decides; a deleted relay\'s verdicts go with it', async () => {
      let h = await report('B', { r1: 100 });
      h = await report('A', { r1: 5000 });
      assert.equal(h.body.marked_offline, 0, 'relay B saw r1 recently');
      assert.equal((await nodeOf('r1')).online, true);
      // B goes quiet; A keeps reporting r1 unseen → once B's verdict lapses, r1 is offline
      await waitFor('r1 offline after B lapsed', async () => (await nodeOf('r1')).unseen_by_relays === true, TTL * 3, () => report('A', { r1: 5000 }));
      await sc.waitMap((m) => !m.online.includes(node['r1']!.id), 3000);
      // B comes back: its "seen" counts again at once
      h = await report('B', { r1: 50 });
      assert.equal(h.body.marked_online, 1, h.text);
      // B reports unseen, A unseen: offline; deleting both relays clears it in the same transaction
      h = await report('B', { r1: 5000 });
      assert.equal(h.body.marked_offline, 1, h.text);
      assert.equal((await op.del(`/api/v1/relays/${relayId['B']}`)).status, 200);
      assert.equal((await nodeOf('r1')).unseen_by_relays, true, 'relay A still says unseen');
      assert.equal((await op.del(`/api/v1/relays/${relayId['A']}`)).status, 200);
      const r1 = await nodeOf('r1');
      assert.equal(r1.unseen_by_relays, false, 'no relay left to say so');
      assert.equal(r1.online, true);
      assert.equal((await adm.get('/api/v1/tenants/ha/audit/verify')).body.ok, true);
    });
  });
}

for (const b of backends()) healthSuite(b.name, b.setup, b.teardown);

describe('relay health expiry with two servers on one PostgreSQL', () => {
  it('both sweep; the lapse is applied once', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const s = await freshPgSchema();
    const d1 = tempDir();
    const d2 = tempDir();
    const env = { LARKTUN_RELAY_HEALTH_TTL_MS: String(TTL) };
    try {
      const a = await spawnServer({ dataDir: d1, db: s.url, env });
      const b = await spawnServer({ dataDir: d2, db: s.url, env });
      try {
        const op = new Client(a.url, a.operatorKey());
        const { adm, relay, node } = await setupTenant(op);
        const st = await SseReader.open(`${b.url}/node/v1/stream`, node['r1']!.token);
        const sc = await SseReader.open(`${a.url}/node/v1/stream`, node['client']!.token);
        await sc.waitMap((m) => m.online.includes(node['r1']!.id));
        const h = await relay['A']!.post('/relay/v1/health', { links: [{ link_id: node['r1']!.links['A'], last_seen_ms_ago: 4000 }] });
        assert.equal(h.body.marked_offline, 1, h.text);
        await sc.waitMap((m) => !m.online.includes(node['r1']!.id));
        await sc.waitMap((m) => m.online.includes(node['r1']!.id), TTL * 4);
        await sleep(TTL); // both replicas have swept at least once more
        const lapsed = async (url: string) => {
          // one operator key per database: replica b has no key file of its own
          const m = /larktun_node_liveness_events_total\{event="relay_verdict_lapsed"\} (\d+)/.exec(await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${a.operatorKey()}` } })).text());
          return Number(m?.[1] ?? 0);
        };
        assert.equal((await lapsed(a.url)) + (await lapsed(b.url)), 1, 'one replica applied the lapse, the other found nothing to do');
        assert.equal((await new Client(b.url, adm.key).get(`/api/v1/tenants/ha/nodes/${node['r1']!.id}`)).body.online, true);
        st.close();
        sc.close();
      } finally {
        await a.stop();
        await b.stop();
      }
    } finally {
      cleanup(d1);
      cleanup(d2);
      await s.drop();
    }
  });
});
