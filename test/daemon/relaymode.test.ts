// larktund relay mode against a real control server process (SQLite): the relay
// receives its view over /relay/v1/stream, reports health (a node that sends
// keepalives is online, one that does not is unseen), keeps forwarding with its
// saved view when the server is gone, and a restarted relay loads relay-view.json.
// Also: "end" (relay deleted) and a refused token stop the relay talking to the server.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Client, SseReader, cleanup, registerNode, sleep, spawnServer, tempDir, type Json, type ServerProc } from '../control/harness.js';
import { runRelay } from '../../src/daemon/relaymode.js';
import { udp } from '../dataplane/packets.js';
import { WireRx, WireTx, RxCode } from '../../src/wire/index.js';

const RELAY_ID = 65535;

class SimNode {
  readonly sock = dgram.createSocket('udp4');
  readonly got: string[] = [];
  tx!: WireTx;
  rx!: WireRx;
  addr = '';
  relayPort = 0;
  constructor(readonly host: string) {
    this.sock.on('message', (m) => {
      const out = Buffer.alloc(2048);
      if (this.rx.open(m, m.length, out) === RxCode.Accept && !this.rx.keepalive) this.got.push(out.subarray(28, this.rx.plaintextLen).toString());
    });
  }
  setLink(linkId: number, pskHex: string): void {
    const psk = Buffer.from(pskHex, 'hex');
    this.tx = new WireTx({ psk, from: linkId, to: RELAY_ID, obfuscate: true });
    this.rx = new WireRx({ psk, from: RELAY_ID, to: linkId, obfuscate: true });
  }
  bind(): Promise<void> {
    return new Promise((r) => this.sock.bind(0, '127.0.0.1', () => r()));
  }
  private seal(pkt: Buffer, keepalive: boolean): Buffer {
    const out = Buffer.alloc(2048);
    return Buffer.from(out.subarray(0, this.tx.seal(pkt, 0, pkt.length, out, keepalive)));
  }
  keepalive(): void {
    this.sock.send(this.seal(Buffer.alloc(0), true), this.relayPort, '127.0.0.1');
  }
  send(to: SimNode, body: string): void {
    this.sock.send(this.seal(udp(this.addr, to.addr, 40000, 9999, body), false), this.relayPort, '127.0.0.1');
  }
}

async function waitFor<T>(what: string, fn: () => T | Promise<T>, ms = 8000): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  let last: T | undefined;
  for (;;) {
    last = await fn();
    if (last) return last as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe('relay mode against a control server (SQLite)', () => {
  let dir = '';
  let stateDir = '';
  let srv: ServerProc;
  let op: Client;
  let adm: Client;
  let relayToken = '';
  const logs: string[] = [];
  const log = (m: string) => logs.push(m);
  const n1 = new SimNode('n1');
  const n2 = new SimNode('n2');
  const info: Record<string, { id: number; token: string; link: number }> = {};
  const streams: SseReader[] = [];
  let relay: Awaited<ReturnType<typeof runRelay>> | null = null;

  before(async () => {
    dir = tempDir();
    stateDir = tempDir('larktun-relay-state-');
    srv = await spawnServer({ dataDir: dir, db: 'sqlite' });
    op = new Client(srv.url, srv.operatorKey());
    assert.equal((await op.post('/api/v1/tenants', { name: 'alpha', pool4: '10.9.0.0/16' })).status, 201);
    adm = op.as((await op.post('/api/v1/tenants/alpha/apikeys', { role: 'admin' })).body.key);
    const pol = await adm.put('/api/v1/tenants/alpha/policy', { policy: '{"tagOwners": {"tag:node": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}' });
    assert.equal(pol.status, 200, pol.text);
    const rel = await op.post('/api/v1/relays', { name: 'edge', endpoints: ['127.0.0.1:18020'] });
    assert.equal(rel.status, 201, rel.text);
    relayToken = rel.body.token;
    const akr = await adm.post('/api/v1/tenants/alpha/authkeys', { tags: ['tag:node'], reusable: true });
    assert.equal(akr.status, 201, akr.text);
    const ak = akr.body.key;
    for (const n of [n1, n2]) {
      const r = await registerNode(op.as(null), { auth_key: ak, hostname: n.host });
      assert.equal(r.status, 201, r.text);
      const m = (await op.as(r.body.token).get('/node/v1/map')).body;
      const link = m.relays[0];
      info[n.host] = { id: r.body.node.id, token: r.body.token, link: link.link_id };
      n.setLink(link.link_id, link.psk);
      n.addr = (m.self.addresses as string[]).find((a) => !a.includes(':'))!.split('/')[0]!;
      await n.bind();
      // the node's own control stream: online as far as the server's streams go
      streams.push(await SseReader.open(`${srv.url}/node/v1/stream`, r.body.token));
    }
  });

  after(async () => {
    for (const s of streams) s.close();
    await relay?.stop();
    await srv.stop();
    n1.sock.close();
    n2.sock.close();
    cleanup(dir);
    cleanup(stateDir);
  });

  const nodeView = async (host: string): Promise<Json> => (await adm.get(`/api/v1/tenants/alpha/nodes/${info[host]!.id}`)).body;

  it('receives its view, reports health: a node sending keepalives is online, a silent one unseen', async () => {
    relay = await runRelay({ server: srv.url, token: relayToken, listenPorts: [0], stateDir, bindHost4: '127.0.0.1', bindHost6: null, healthIntervalMs: 250, log });
    const port = relay.engine.boundAddresses()[0]!.port;
    n1.relayPort = port;
    n2.relayPort = port;
    const view = await waitFor('the relay view', () => relay!.engine.view);
    const alpha = view.tenants.find((t) => t.tenant === 'alpha')!;
    assert.deepEqual(alpha.links.map((l) => l.link_id).sort(), [info['n1']!.link, info['n2']!.link].sort());
    assert.deepEqual(alpha.links.map((l) => l.node).sort(), ['n1', 'n2']);
    assert.equal(relay.status().view_source, 'server');

    const ka = setInterval(() => n1.keepalive(), 200);
    try {
      // n2 was never heard: the first reports make it unseen (offline) while n1,
      // reported with a fresh last_seen in the same reports, stays online.
      n1.keepalive();
      const [v1, v2] = await waitFor('n2 unseen while n1 is seen', async () => {
        const v = [await nodeView('n1'), await nodeView('n2')];
        return v[1].unseen_by_relays === true && v[0].unseen_by_relays === false ? v : null;
      });
      assert.equal(v2.online, false, 'a node its relay never heard is offline');
      assert.equal(v1.online, true, 'a node its relay hears is online');
      // the change reaches the relay as a new view (sessions kept)
      await waitFor('the pushed view shows n1 online only', () => {
        const t = relay!.engine.view!.tenants[0]!;
        return t.online.includes(info['n1']!.id) && !t.online.includes(info['n2']!.id);
      });
      assert.equal(relay.engine.link(info['n1']!.link)!.endpointText(), `127.0.0.1:${n1.sock.address().port}`);
      assert.ok(relay.status().health.sent >= 1);
      // n2 starts keepalives: seen again, online
      n2.keepalive();
      const ka2 = setInterval(() => n2.keepalive(), 200);
      try {
        await waitFor('n2 online', async () => (await nodeView('n2')).online === true);
      } finally {
        clearInterval(ka2);
      }
      // and traffic flows through the relay
      n1.send(n2, 'hello-n2');
      await waitFor('n2 receives', () => n2.got.includes('hello-n2'));
      n2.send(n1, 'hello-n1');
      await waitFor('n1 receives', () => n1.got.includes('hello-n1'));
    } finally {
      clearInterval(ka);
    }
    const file = join(stateDir, 'relay-view.json');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const saved = JSON.parse(readFileSync(file, 'utf8'));
    await waitFor('the saved view is the one in force', () => JSON.parse(readFileSync(file, 'utf8')).hash === relay!.engine.view!.hash);
    assert.equal(saved.relay.name, 'edge');
  });

  it('keeps forwarding with its view when the server is gone; a restarted relay loads relay-view.json', async () => {
    const hash = relay!.engine.view!.hash;
    await srv.stop();
    await waitFor('health failures noticed', () => relay!.status().health.last_error !== null);
    assert.ok(logs.some((l) => /health report failed/.test(l)), logs.join('\n'));
    n1.keepalive();
    n2.keepalive();
    await sleep(100);
    n1.send(n2, 'server-down');
    await waitFor('forwarding without the server', () => n2.got.includes('server-down'));
    assert.equal(relay!.engine.view!.hash, hash);

    await relay!.stop();
    relay = null;
    relay = await runRelay({ server: srv.url, token: relayToken, listenPorts: [0], stateDir, bindHost4: '127.0.0.1', bindHost6: null, healthIntervalMs: 250, log });
    assert.equal(relay.status().view_source, 'saved');
    assert.equal(relay.engine.view!.hash, hash);
    assert.ok(logs.some((l) => l.includes('loaded the saved relay view')));
    const port = relay.engine.boundAddresses()[0]!.port;
    n1.relayPort = port;
    n2.relayPort = port;
    n1.keepalive();
    n2.keepalive();
    await sleep(100);
    n2.send(n1, 'after-restart');
    await waitFor('forwarding after a restart without the server', () => n1.got.includes('after-restart'));
    const st = relay.status();
    assert.ok(['connecting', 'down'].includes(st.control), st.control);
    await relay.stop();
    relay = null;
  });

  it('a deleted relay gets "end" and stops applying views; a refused token stops it too', async () => {
    srv = await spawnServer({ dataDir: dir, db: 'sqlite' });
    op = new Client(srv.url, srv.operatorKey());
    const rel = await op.post('/api/v1/relays', { name: 'doomed', endpoints: ['127.0.0.1:18021'] });
    assert.equal(rel.status, 201, rel.text);
    const dDir = tempDir('larktun-relay-doomed-');
    const dlogs: string[] = [];
    const doomed = await runRelay({ server: srv.url, token: rel.body.token, listenPorts: [0], stateDir: dDir, bindHost4: '127.0.0.1', bindHost6: null, healthIntervalMs: 250, log: (m) => dlogs.push(m) });
    try {
      await waitFor('doomed view', () => doomed.engine.view);
      assert.equal((await op.del(`/api/v1/relays/${rel.body.id}`)).status, 200);
      await waitFor('end handled', () => doomed.status().control === 'ended');
      assert.ok(dlogs.some((l) => /ended this relay's stream/.test(l)), dlogs.join('\n'));
    } finally {
      await doomed.stop();
      cleanup(dDir);
    }
    const bDir = tempDir('larktun-relay-bad-');
    const blogs: string[] = [];
    const bad = await runRelay({ server: srv.url, token: `lkrelay_000000000000_${'A'.repeat(43)}`, listenPorts: [0], stateDir: bDir, bindHost4: '127.0.0.1', bindHost6: null, log: (m) => blogs.push(m) });
    try {
      await waitFor('401 handled', () => bad.status().control === 'unauthorized');
      assert.ok(blogs.some((l) => /refused the relay token/.test(l)), blogs.join('\n'));
      assert.equal(bad.engine.view, null);
    } finally {
      await bad.stop();
      cleanup(bDir);
    }
  });
});
