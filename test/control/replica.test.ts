// Replica correctness on PostgreSQL (real server processes):
//   - a replica whose database connection is cut for 10 s (a TCP proxy between
//     it and PostgreSQL drops every connection and refuses new ones) misses the
//     NOTIFY of a policy change made on another replica meanwhile; when the
//     connection comes back it re-syncs every tenant's generation, and its
//     nodes get the change within 1 s of the reconnect;
//   - kill -9 of a replica: the presence leases of the nodes streaming from it
//     are no longer renewed, so the surviving replica marks them offline and
//     the HA primary fails over, within 10 s;
//   - leases are renewed while streams stay open (no false expiry), on SQLite too.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import {
  Client, PG_BASE, SseReader, cleanup, freshPgSchema, pgUnavailable, registerNode, sleep, spawnServer, tempDir, type Json, type ServerProc,
} from './harness.js';

const ROUTE = '10.80.0.0/16';
const viaPeer = (m: Json): number | null => m.peers.find((p: Json) => p.allowed_ips.includes(ROUTE))?.id ?? null;

/** A TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones refused) and restored. */
class PgProxy {
  private server: Server | null = null;
  private readonly socks = new Set<Socket>();
  /** When a LISTEN statement went through (performance.now()). */
  readonly listens: number[] = [];
  port = 0;
  constructor(private readonly upstream: { host: string; port: number }) {}

  async start(port = 0): Promise<void> {
    const srv = createServer((client) => {
      const up = connect(this.upstream.port, this.upstream.host);
      this.socks.add(client);
      this.socks.add(up);
      const done = () => {
        client.destroy();
        up.destroy();
        this.socks.delete(client);
        this.socks.delete(up);
      };
      client.on('error', done).on('close', done);
      up.on('error', done).on('close', done);
      // The replica's LISTEN statement going by marks its change bus as connected again.
      client.on('data', (d: Buffer) => {
        if (d.includes('LISTEN larktun_')) this.listens.push(performance.now());
      });
      client.pipe(up);
      up.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', () => resolve());
    });
    this.server = srv;
    const a = srv.address();
    this.port = typeof a === 'object' && a ? a.port : port;
  }

  /** Drops every proxied connection and stops listening (connections are refused). */
  async cut(): Promise<void> {
    const srv = this.server;
    this.server = null;
    for (const s of this.socks) s.destroy();
    this.socks.clear();
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
  }

  async restore(): Promise<void> {
    await this.start(this.port);
  }

  /** A copy of `url` that connects through the proxy. */
  via(url: string): string {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(this.port);
    return u.toString();
  }
}

async function setupTenant(op: Client): Promise<{ adm: Client; nodes: Record<string, { id: number; token: string }> }> {
  assert.equal((await op.post('/api/v1/tenants', { name: 'rep' })).status, 201);
  const adm = op.as((await op.post('/api/v1/tenants/rep/apikeys', { role: 'admin' })).body.key);
  const pol = await adm.put('/api/v1/tenants/rep/policy', {
    policy: `{"tagOwners": {"tag:router": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
              "autoApprovers": {"routes": {"${ROUTE}": ["tag:router"]}}}`,
  });
  assert.equal(pol.status, 200, pol.text);
  const ak = (await adm.post('/api/v1/tenants/rep/authkeys', { tags: ['tag:router'], reusable: true })).body.key;
  const nodes: Record<string, { id: number; token: string }> = {};
  for (const [host, routes] of [['r1', [ROUTE]], ['r2', [ROUTE]], ['n1', []], ['n2', []]] as const) {
    const r = await registerNode(op.as(null), { auth_key: ak, hostname: host, routes });
    assert.equal(r.status, 201, r.text);
    nodes[host] = { id: r.body.node.id, token: r.body.token };
  }
  return { adm, nodes };
}

/** A metric's value from a server's /metrics (0 when absent). */
let operatorKey = '';
async function metric(srv: ServerProc, line: RegExp): Promise<number> {
  const r = await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${operatorKey}` }, signal: AbortSignal.timeout(2000) });
  const m = line.exec(await r.text());
  return m ? Number(m[1]) : 0;
}

/** The one port rule of the changed policy: n1/n2 see it in their packet filter. */
const MARK_PORT = 4711;
const hasMark = (m: Json): boolean => JSON.stringify(m.packet_filter).includes(String(MARK_PORT));

describe('replicas on PostgreSQL', () => {
  it('a replica cut from the database for 10 s re-syncs on reconnect: a change made meanwhile on the other replica reaches its nodes within 1 s', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const schema = await freshPgSchema();
    const pgu = new URL(PG_BASE);
    const proxy = new PgProxy({ host: pgu.hostname, port: Number(pgu.port || 5432) });
    await proxy.start();
    const dirs = [tempDir(), tempDir()];
    const servers: ServerProc[] = [];
    const streams: SseReader[] = [];
    try {
      // Long leases here: nothing but the re-sync may bring the change to A's nodes
      // (a lease lapsing during the cut would be a change of its own on reconnect).
      const env = { LARKTUN_NODE_LEASE_TTL_MS: '60000' };
      servers.push(await spawnServer({ dataDir: dirs[0]!, db: proxy.via(schema.url), env }));
      servers.push(await spawnServer({ dataDir: dirs[1]!, db: schema.url, env }));
      const [a, b] = servers as [ServerProc, ServerProc];
      operatorKey = a.operatorKey();
      const opB = new Client(b.url, a.operatorKey());
      const { adm, nodes } = await setupTenant(opB);
      const s1 = await SseReader.open(`${a.url}/node/v1/stream`, nodes['n1']!.token);
      const s2 = await SseReader.open(`${b.url}/node/v1/stream`, nodes['n2']!.token);
      streams.push(s1, s2);
      await s1.waitMap((m) => m.online.includes(nodes['n2']!.id));
      await s2.waitMap((m) => m.online.includes(nodes['n1']!.id));
      assert.ok(!hasMark(s1.state) && !hasMark(s2.state));
      // Let A's refreshes settle: a refresh that fails during the cut is retried,
      // and a retry after the restore would carry the change without the re-sync.
      await sleep(1500);

      await proxy.cut();
      const cutAt = Date.now();
      await sleep(500);
      // The change lands on B while A cannot hear of it.
      const pol = await adm.put('/api/v1/tenants/rep/policy', {
        policy: `{"tagOwners": {"tag:router": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]},
                  {"action": "accept", "src": ["*"], "dst": ["*:${MARK_PORT}"]}],
                  "autoApprovers": {"routes": {"${ROUTE}": ["tag:router"]}}}`,
      });
      assert.equal(pol.status, 200, pol.text);
      await s2.waitMap(hasMark, 3000);
      // A's node does not get it while A is cut off (nothing else may carry it).
      const seen: string[] = [];
      await assert.rejects((async () => {
        for (;;) {
          const e = await s1.next(Math.max(1, 10_000 - (Date.now() - cutAt)));
          seen.push(`${e.event} ${JSON.stringify(e.data).slice(0, 100)}`);
          if (e.state && hasMark(e.state)) return;
        }
      })(), (err: Error) => {
        assert.match(err.message, /no event within/, `A's node stream: ${err.message}; events: ${seen.join(' | ')}`);
        return true;
      });
      assert.ok(!s1.closed, 'A kept its node streams open through the outage');

      await proxy.restore();
      const restoredAt = performance.now();
      const m1 = await s1.waitMap(hasMark, 10_000);
      const gotAt = performance.now();
      assert.ok(hasMark(m1));
      // A's LISTEN going through the proxy again is the reconnect.
      const relisten = proxy.listens.filter((t) => t >= restoredAt);
      assert.equal(relisten.length, 1, 'A re-issued LISTEN once');
      const fromReconnect = gotAt - relisten[0]!;
      const fromRestore = gotAt - restoredAt;
      process.stderr.write(`# bus cut 10 s: LISTEN again ${(relisten[0]! - restoredAt).toFixed(0)} ms after the restore; change on A's node ${fromReconnect.toFixed(0)} ms after the reconnect (${fromRestore.toFixed(0)} ms after the restore)\n`);
      ctx.diagnostic(`reconnect→change ${fromReconnect.toFixed(0)} ms`);
      assert.ok(fromReconnect < 1000, `the change reached A's node ${fromReconnect.toFixed(0)} ms after the reconnect`);
      // the reconnect backoff is capped at 1 s
      assert.ok(relisten[0]! - restoredAt < 1500, 'A reconnected within the backoff cap');
      assert.ok((await metric(a, /^larktun_change_bus_reconnects_total\{result="ok"\} (\d+)/m)) >= 1);
      assert.ok((await metric(a, /^larktun_change_bus_resyncs_total (\d+)/m)) >= 1);
      assert.ok((await metric(a, /^larktun_change_bus_resync_stale_tenants_total (\d+)/m)) >= 1, 'the re-sync found the tenant behind');
      // B, never cut, needed no re-sync.
      assert.equal(await metric(b, /^larktun_change_bus_resyncs_total (\d+)/m), 0);
    } finally {
      for (const s of streams) s.close();
      for (const s of servers) await s.stop();
      await proxy.cut();
      for (const d of dirs) cleanup(d);
      await schema.drop();
    }
  });

  it('a replica cut from the database longer than the lease: its nodes go offline on the other replica, and come back online after the reconnect', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const schema = await freshPgSchema();
    const pgu = new URL(PG_BASE);
    const proxy = new PgProxy({ host: pgu.hostname, port: Number(pgu.port || 5432) });
    await proxy.start();
    const dirs = [tempDir(), tempDir()];
    const servers: ServerProc[] = [];
    const streams: SseReader[] = [];
    const TTL = 1500;
    try {
      const env = { LARKTUN_NODE_LEASE_TTL_MS: String(TTL) };
      servers.push(await spawnServer({ dataDir: dirs[0]!, db: proxy.via(schema.url), env, extra: ['--log-level', 'info'] }));
      servers.push(await spawnServer({ dataDir: dirs[1]!, db: schema.url, env }));
      const [a, b] = servers as [ServerProc, ServerProc];
      let aLog = '';
      a.proc.stdout?.on('data', (d: Buffer) => (aLog += d.toString()));
      operatorKey = a.operatorKey();
      const { nodes } = await setupTenant(new Client(b.url, operatorKey));
      const s1 = await SseReader.open(`${a.url}/node/v1/stream`, nodes['n1']!.token);
      const s2 = await SseReader.open(`${b.url}/node/v1/stream`, nodes['n2']!.token);
      streams.push(s1, s2);
      await s2.waitMap((m) => m.online.includes(nodes['n1']!.id));
      await proxy.cut();
      const t0 = performance.now();
      await s2.waitMap((m) => !m.online.includes(nodes['n1']!.id), TTL * 4);
      const offMs = performance.now() - t0;
      await sleep(1000);
      await proxy.restore();
      const t1 = performance.now();
      await s2.waitMap((m) => m.online.includes(nodes['n1']!.id), 5000).catch(async (err: Error) => {
        const hz = await fetch(`${a.url}/healthz`, { signal: AbortSignal.timeout(1000) }).then((r) => r.status, (e: Error) => e.message);
        const mt = await fetch(`${a.url}/metrics`, { signal: AbortSignal.timeout(3000) }).then((r) => r.text(), (e: Error) => e.message);
        throw new Error(`${err.message}: A's node not back online on B; A healthz ${hz}; A metrics: ${mt.split('\n').filter((l) => /liveness|change_bus|notifications/.test(l)).join(' | ')}; A's log:\n${aLog.slice(-4000)}\nstderr: ${a.stderr().slice(-1000)}`);
      });
      const backMs = performance.now() - t1;
      process.stderr.write(`# database cut longer than the lease (${TTL} ms): A's node offline on B after ${offMs.toFixed(0)} ms; online again ${backMs.toFixed(0)} ms after the restore\n`);
      assert.ok(offMs < TTL + 1500, `offline after ${offMs.toFixed(0)} ms`);
      assert.ok(!s1.closed, 'the node kept its stream on A');
      assert.ok((await metric(a, /^larktun_node_liveness_events_total\{event="lease_restored"\} (\d+)/m)) >= 1);
      assert.ok((await metric(b, /^larktun_node_liveness_events_total\{event="lease_expired"\} (\d+)/m)) >= 1);
    } finally {
      for (const s of streams) s.close();
      for (const s of servers) await s.stop();
      await proxy.cut();
      for (const d of dirs) cleanup(d);
      await schema.drop();
    }
  });

  it('kill -9 of a replica: its nodes go offline on the surviving replica and HA fails over within 10 s', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip(why);
    const schema = await freshPgSchema();
    const dirs = [tempDir(), tempDir()];
    const servers: ServerProc[] = [];
    const streams: SseReader[] = [];
    try {
      servers.push(await spawnServer({ dataDir: dirs[0]!, db: schema.url }));
      servers.push(await spawnServer({ dataDir: dirs[1]!, db: schema.url }));
      const [a, b] = servers as [ServerProc, ServerProc];
      operatorKey = a.operatorKey();
      const opB = new Client(b.url, a.operatorKey());
      const { adm, nodes } = await setupTenant(opB);
      const admB = new Client(b.url, adm.key);
      // r1 (the primary) and n1 stream from A; r2 and n2 from B.
      const s1 = await SseReader.open(`${a.url}/node/v1/stream`, nodes['r1']!.token);
      await s1.waitMap(() => true);
      const sn1 = await SseReader.open(`${a.url}/node/v1/stream`, nodes['n1']!.token);
      const s2 = await SseReader.open(`${b.url}/node/v1/stream`, nodes['r2']!.token);
      const sn2 = await SseReader.open(`${b.url}/node/v1/stream`, nodes['n2']!.token);
      streams.push(s1, sn1, s2, sn2);
      await sn2.waitMap((m) => viaPeer(m) === nodes['r1']!.id && m.online.includes(nodes['r2']!.id) && m.online.includes(nodes['n1']!.id));
      const nodesOnB = async (): Promise<Json[]> => (await admB.get('/api/v1/tenants/rep/nodes')).body.nodes as Json[];
      const primary = async (): Promise<number | null> => (await nodesOnB()).find((n) => n.primary_routes.includes(ROUTE))?.id ?? null;
      assert.equal(await primary(), nodes['r1']!.id);

      const t0 = performance.now();
      await a.kill9();
      let offlineMs = 0;
      let failoverMs = 0;
      let primaries: (number | null)[] = [];
      while (performance.now() - t0 < 15_000 && (offlineMs === 0 || failoverMs === 0)) {
        const list = await nodesOnB();
        const on = (id: number) => list.find((n) => n.id === id)?.online === true;
        const p = list.find((n) => n.primary_routes.includes(ROUTE))?.id ?? null;
        if (primaries[primaries.length - 1] !== p) primaries.push(p);
        if (offlineMs === 0 && !on(nodes['r1']!.id) && !on(nodes['n1']!.id)) offlineMs = performance.now() - t0;
        if (failoverMs === 0 && p === nodes['r2']!.id) failoverMs = performance.now() - t0;
        await sleep(50);
      }
      const m = await sn2.waitMap((x) => viaPeer(x) === nodes['r2']!.id && !x.online.includes(nodes['r1']!.id) && !x.online.includes(nodes['n1']!.id), 2000);
      const mapMs = performance.now() - t0;
      process.stderr.write(`# kill -9 of a replica: nodes offline on the survivor after ${offlineMs.toFixed(0)} ms, primary moved after ${failoverMs.toFixed(0)} ms, client map by ${mapMs.toFixed(0)} ms\n`);
      assert.ok(offlineMs > 0 && offlineMs < 10_000, `its nodes offline after ${offlineMs.toFixed(0)} ms`);
      assert.ok(failoverMs > 0 && failoverMs < 10_000, `failover after ${failoverMs.toFixed(0)} ms`);
      assert.deepEqual(primaries, [nodes['r1']!.id, nodes['r2']!.id], 'the primary moved once, to r2');
      assert.ok(m.online.includes(nodes['r2']!.id));
      assert.ok((await metric(b, /^larktun_node_liveness_events_total\{event="lease_expired"\} (\d+)/m)) >= 2);
    } finally {
      for (const s of streams) s.close();
      for (const s of servers) await s.stop();
      for (const d of dirs) cleanup(d);
      await schema.drop();
    }
  });
});

describe('presence leases are renewed while streams stay open', () => {
  for (const be of ['sqlite', 'postgres'] as const) {
    it(`${be}: nodes stay online for several lease TTLs; a closed stream still goes offline at once`, async (ctx) => {
      let db = 'sqlite';
      let drop = async () => {};
      if (be === 'postgres') {
        const why = await pgUnavailable();
        if (why) return ctx.skip(why);
        const schema = await freshPgSchema();
        db = schema.url;
        drop = () => schema.drop();
      }
      const dir = tempDir();
      const TTL = 900;
      const srv = await spawnServer({ dataDir: dir, db, env: { LARKTUN_NODE_LEASE_TTL_MS: String(TTL) } });
      try {
        operatorKey = srv.operatorKey();
      const op = new Client(srv.url, operatorKey);
        const { adm, nodes } = await setupTenant(op);
        const s1 = await SseReader.open(`${srv.url}/node/v1/stream`, nodes['n1']!.token);
        const s2 = await SseReader.open(`${srv.url}/node/v1/stream`, nodes['n2']!.token);
        await s2.waitMap((m) => m.online.includes(nodes['n1']!.id));
        const onlineIds = async () => ((await adm.get('/api/v1/tenants/rep/nodes')).body.nodes as Json[]).filter((n) => n.online).map((n) => n.id as number).sort();
        const both = [nodes['n1']!.id, nodes['n2']!.id].sort();
        // n2's own presence may commit just after its first map: wait for both first
        for (let i = 0; JSON.stringify(await onlineIds()) !== JSON.stringify(both); i++) {
          assert.ok(i < 50, 'both nodes online');
          await sleep(100);
        }
        const t0 = Date.now();
        while (Date.now() - t0 < TTL * 4) {
          assert.deepEqual(await onlineIds(), both, `online at +${Date.now() - t0} ms`);
          await sleep(100);
        }
        assert.equal(await metric(srv, /^larktun_node_liveness_events_total\{event="lease_expired"\} (\d+)/m), 0, 'no lease lapsed');
        s1.close();
        await s2.waitMap((m) => !m.online.includes(nodes['n1']!.id), 2000);
        s2.close();
      } finally {
        await srv.stop();
        cleanup(dir);
        await drop();
      }
    });
  }
});
