// The node engine on two worker threads (WorkerEngine), on loopback without a
// TUN: simulated spokes speak the wire protocol, so the shared session state
// (one replay window for both workers), the shared endpoints (learned by one
// worker, used by the other) and the summed counters are checked directly.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { parsePrefix } from '../../src/net/addr.js';
import { ipv4 } from './packets.js';
import { WorkerEngine, PUBLISH_MS } from '../../src/dataplane/node-workers/pool.js';
import { chooseWorkers } from '../../src/dataplane/node-workers/count.js';
import { WireRx, WireTx, RxCode } from '../../src/wire/index.js';
import type { PeerSpec } from '../../src/dataplane/engine.js';

const P = (s: string) => parsePrefix(s);
const psk = (b: number): Buffer => Buffer.alloc(32, b);
const HUB = 1;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Spoke {
  readonly sock = dgram.createSocket('udp4');
  readonly tx: WireTx;
  readonly rx: WireRx;
  readonly got: string[] = [];
  constructor(readonly id: number, key: Buffer) {
    this.tx = new WireTx({ psk: key, from: id, to: HUB, obfuscate: true });
    this.rx = new WireRx({ psk: key, from: HUB, to: id, obfuscate: true });
    this.sock.on('message', (m) => {
      const out = Buffer.alloc(2048);
      if (this.rx.open(m, m.length, out) === RxCode.Accept && !this.rx.keepalive) this.got.push(out.subarray(20, this.rx.plaintextLen).toString());
    });
  }
  bind(): Promise<void> {
    return new Promise((r) => this.sock.bind(0, '127.0.0.1', () => r()));
  }
  seal(pkt: Buffer, keepalive = false): Buffer {
    const out = Buffer.alloc(2048);
    const n = this.tx.seal(pkt, 0, pkt.length, out, keepalive);
    return Buffer.from(out.subarray(0, n));
  }
}

/** Sends `d` to the hub from a fresh socket (a new source port: the kernel may pick the other worker's socket). */
async function sendFromNewPort(d: Buffer, port: number): Promise<void> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  await new Promise<void>((r) => s.send(d, port, '127.0.0.1', () => r()));
  s.close();
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const a = new Spoke(2, psk(0xa2));
const b = new Spoke(3, psk(0xb3));
let hub: WorkerEngine;
let port = 0;
const fatal: string[] = [];

function specs(keyA = psk(0xa2)): PeerSpec[] {
  return [
    { id: 2, name: 'a', endpoint: null, allowedSrc: [P('10.9.0.2/32')], psk: keyA },
    { id: 3, name: 'b', endpoint: null, allowedSrc: [P('10.9.0.3/32')], psk: psk(0xb3) },
  ];
}

before(async () => {
  await a.bind();
  await b.bind();
  hub = new WorkerEngine({
    workers: 2,
    localId: HUB,
    obfuscate: true,
    peers: specs(),
    rules: [
      { src: P('0.0.0.0/0'), dst: P('10.9.0.2/32'), action: 'forward', target: 2 },
      { src: P('0.0.0.0/0'), dst: P('10.9.0.3/32'), action: 'forward', target: 3 },
    ],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: null,
    udpBatch: true,
    onFatal: (m) => fatal.push(m),
  });
  await hub.start();
  port = hub.listenPorts()[0]!;
});

after(async () => {
  await hub.stop();
  a.sock.close();
  b.sock.close();
});

test('two workers share one port, and status lists both', async () => {
  assert.ok(port > 0);
  assert.equal(hub.workers, 2);
  await hub.refresh();
  const ws = hub.workerStatus();
  assert.deepEqual(ws.map((w) => w.index), [0, 1]);
  for (const w of ws) assert.equal(w.udp_io.path, 'batch');
});

test('a datagram replayed to the other worker\'s socket is refused as a replay', async () => {
  const d = a.seal(Buffer.alloc(0), true); // a keepalive: accepted without a TUN
  await sendFromNewPort(d, port);
  await until('the first copy to be accepted', () => hub.counters.keepalive_rx === 1);
  // The same bytes from 24 more source ports: the reuseport hash spreads them
  // over both workers' sockets; every one is a replay wherever it lands.
  for (let i = 0; i < 24; i++) await sendFromNewPort(d, port);
  await until('24 replays', () => hub.counters.drop_replay === 24);
  await sleep(PUBLISH_MS * 2);
  const ws = hub.workerStatus();
  const accepted = ws.findIndex((w) => w.counters.keepalive_rx === 1);
  assert.ok(accepted >= 0, 'one worker accepted the datagram');
  const other = ws[1 - accepted]!;
  assert.ok(other.counters.drop_replay > 0, `the other worker saw replays: ${JSON.stringify(ws.map((w) => w.counters.drop_replay))}`);
  assert.equal(hub.counters.keepalive_rx, 1, 'accepted exactly once in all');
});

test('an endpoint learned by one worker is used by both: spoke to spoke through the hub', async () => {
  // Each spoke introduces itself (a keepalive from its own socket); then packets both ways.
  a.sock.send(a.seal(Buffer.alloc(0), true), port, '127.0.0.1');
  b.sock.send(b.seal(Buffer.alloc(0), true), port, '127.0.0.1');
  await until('both endpoints learned', () => hub.peers.every((p) => p.endpointText() !== null));
  for (let i = 0; i < 20; i++) {
    a.sock.send(a.seal(ipv4('10.9.0.2', '10.9.0.3', `a${i}`)), port, '127.0.0.1');
    b.sock.send(b.seal(ipv4('10.9.0.3', '10.9.0.2', `b${i}`)), port, '127.0.0.1');
  }
  await until('every packet relayed', () => a.got.length === 20 && b.got.length === 20);
  assert.deepEqual(b.got, Array.from({ length: 20 }, (_, i) => `a${i}`), 'in order');
  assert.deepEqual(a.got, Array.from({ length: 20 }, (_, i) => `b${i}`), 'in order');
  await sleep(PUBLISH_MS * 2);
  assert.equal(hub.counters.relay_packets, 40);
  const pa = hub.peer(2)!;
  assert.ok(pa.rxPackets >= 21 && pa.txPackets === 20, `per-peer counts summed: rx=${pa.rxPackets} tx=${pa.txPackets}`);
  assert.ok(pa.online(Date.now()));
});

test('a key change starts a new shared session; the old key still opens datagrams for the grace period', async () => {
  const before = hub.counters.udp_rx_packets;
  hub.setPeers(specs(psk(0xa9)));
  await sleep(50);
  const fresh = new WireTx({ psk: psk(0xa9), from: 2, to: HUB, obfuscate: true });
  const out = Buffer.alloc(2048);
  const n = fresh.seal(Buffer.alloc(0), 0, 0, out, true);
  a.sock.send(out.subarray(0, n), port, '127.0.0.1');
  a.sock.send(a.seal(Buffer.alloc(0), true), port, '127.0.0.1'); // old key, next sequence number
  await until('both accepted', () => hub.counters.udp_rx_packets === before + 2);
  // What the hub sends to a now goes out under the new key.
  const rxNew = new WireRx({ psk: psk(0xa9), from: HUB, to: 2, obfuscate: true });
  const got: number[] = [];
  const probe = (m: Buffer): void => {
    if (rxNew.open(m, m.length, Buffer.alloc(2048)) === RxCode.Accept) got.push(m.length);
  };
  a.sock.on('message', probe);
  b.sock.send(b.seal(ipv4('10.9.0.3', '10.9.0.2', 'after')), port, '127.0.0.1');
  await until('a packet sealed with the new key', () => got.length === 1);
  a.sock.off('message', probe);
});

test('LARKTUN_WORKERS, the flag and the config key pick the count; 1 without the batched path', () => {
  const yes = (): boolean => true;
  assert.deepEqual(chooseWorkers(undefined, null, {}, 4, yes), { workers: 4, from: 'one per core' });
  assert.equal(chooseWorkers(undefined, 3, {}, 4, yes).workers, 3);
  assert.equal(chooseWorkers(undefined, 3, { LARKTUN_WORKERS: '2' }, 4, yes).workers, 2);
  assert.equal(chooseWorkers('1', 3, { LARKTUN_WORKERS: '2' }, 4, yes).workers, 1);
  assert.equal(chooseWorkers('2', null, { LARKTUN_UDP_BATCH: '0' }, 4, yes).workers, 1);
  assert.equal(chooseWorkers('2', null, {}, 4, () => false).workers, 1);
  assert.throws(() => chooseWorkers('0', null, {}, 4, yes), /--workers must be a whole number of packet threads from 1 to 64/);
  assert.throws(() => chooseWorkers(undefined, null, { LARKTUN_WORKERS: 'two' }, 4, yes), /LARKTUN_WORKERS/);
});

test('a worker that dies is reported as fatal', async () => {
  const w = new WorkerEngine({
    workers: 2,
    localId: HUB,
    obfuscate: true,
    peers: [],
    rules: [],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: null,
    onFatal: (m) => fatal.push(m),
  });
  await w.start();
  const slots = (w as unknown as { slots: { worker: { terminate(): Promise<number> } }[] }).slots;
  await slots[1]!.worker.terminate();
  await until('the failure to be reported', () => fatal.length === 1);
  assert.match(fatal[0]!, /packet worker 1 exited unexpectedly/);
  await w.stop();
});

test('flowQueue: both directions of a flow pick the same TUN queue, and flows spread over the queues', async () => {
  const { flowQueue } = await import('../../src/dataplane/tun.js');
  const v4 = (src: number, dst: number, sport: number, dport: number, proto = 6): Buffer => {
    const b = Buffer.alloc(40);
    b[0] = 0x45;
    b[9] = proto;
    b.writeUInt32BE(src >>> 0, 12);
    b.writeUInt32BE(dst >>> 0, 16);
    b.writeUInt16BE(sport, 20);
    b.writeUInt16BE(dport, 22);
    return b;
  };
  const v6 = (src: number, dst: number, sport: number, dport: number): Buffer => {
    const b = Buffer.alloc(48);
    b[0] = 0x60;
    b[6] = 17;
    b.writeUInt32BE(0xfd000000, 8);
    b.writeUInt32BE(src >>> 0, 20);
    b.writeUInt32BE(0xfd000000, 24);
    b.writeUInt32BE(dst >>> 0, 36);
    b.writeUInt16BE(sport, 40);
    b.writeUInt16BE(dport, 42);
    return b;
  };
  let state = 12345;
  const rnd = (): number => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
  for (const queues of [2, 3, 4]) {
    const seen = new Array<number>(queues).fill(0);
    for (let i = 0; i < 2000; i++) {
      const [a, b, p, q] = [rnd(), rnd(), rnd() & 0xffff, rnd() & 0xffff];
      const mk = i % 2 === 0 ? v4 : v6;
      const fwd = flowQueue(mk(a, b, p, q), 0, 48, queues);
      assert.equal(flowQueue(mk(b, a, q, p), 0, 48, queues), fwd, 'the reply direction picks the same queue');
      assert.ok(fwd >= 0 && fwd < queues);
      seen[fwd]!++;
    }
    for (const n of seen) assert.ok(n > 2000 / queues / 2, `flows spread over ${queues} queues: ${seen.join(',')}`);
  }
  // Flows differing only in their ports land on different queues (not only by address).
  const byPort = new Set<number>();
  for (let port = 1000; port < 1064; port++) byPort.add(flowQueue(v4(0x0a000001, 0x0a000002, port, 5201), 0, 40, 4));
  assert.equal(byPort.size, 4);
  assert.equal(flowQueue(Buffer.alloc(40), 0, 40, 4), 0, 'not IP: queue 0');
  assert.equal(flowQueue(v4(1, 2, 3, 4), 0, 40, 1), 0, 'one queue');
});

test('config key workers: 1..64, absent means not set', async () => {
  const { validateConfig } = await import('../../src/daemon/config.js');
  const base = { role: 'hub', virtual_subnet: '10.9.0.0/24', local_id: 1, peers: [{ id: 2, allowed_src: '10.9.0.2/32', psk: '0123456789abcdef'.repeat(4) }] };
  const ok = validateConfig(base, 'c.json');
  assert.equal(ok.config?.workers, null, JSON.stringify(ok.problems));
  assert.equal(validateConfig({ ...base, workers: 2 }, 'c.json').config?.workers, 2);
  for (const bad of [0, 65, 1.5, '2']) {
    const r = validateConfig({ ...base, workers: bad }, 'c.json');
    assert.equal(r.config, undefined, `workers ${JSON.stringify(bad)} is refused`);
    assert.ok(r.problems.some((p) => p.path === '$.workers' && p.severity === 'error'), JSON.stringify(r.problems));
  }
});

test('a packet is written on the TUN queue its flow is read from, else on the queue of its hash', async () => {
  const { TunDevice, flowQueue, newFlowTable } = await import('../../src/dataplane/tun.js');
  const { mkdtempSync, openSync, closeSync, readFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(tmpdir(), 'nw-queues-'));
  // Two "queues" that are plain files: what a worker writes where can be read back.
  const files = [path.join(dir, 'q0'), path.join(dir, 'q1')];
  const fds = files.map((f) => openSync(f, 'w'));
  const desc = fds.map((fd) => ({ name: 'nwtest', fd, vnetHdr: false, offloads: 0, note: '' }));
  const flows = newFlowTable();
  const q0 = TunDevice.fromQueue(desc[0]!, desc, flows);
  const q1 = TunDevice.fromQueue(desc[1]!, desc, flows);
  const udp = (src: string, dst: string, sport: number, dport: number): Buffer => {
    const b = ipv4(src, dst, 'x'.repeat(8));
    b[9] = 17;
    b.writeUInt16BE(sport, 20);
    b.writeUInt16BE(dport, 22);
    return b;
  };
  // A flow whose hash picks queue 0.
  let sport = 40000;
  while (flowQueue(udp('10.9.0.2', '10.9.0.3', sport, 53), 0, 28, 2) !== 0) sport++;
  const out = udp('10.9.0.2', '10.9.0.3', sport, 53);
  const reply = udp('10.9.0.3', '10.9.0.2', 53, sport);
  assert.ok(q0.write(reply, 0, reply.length), 'unknown flow: written on the queue of its hash');
  assert.equal(readFileSync(files[0]!).length, reply.length);
  // Queue 1's worker reads the flow's outgoing packet: replies now go to queue 1, whichever worker writes them.
  (q1 as unknown as { noteRead(p: Buffer, len: number): void }).noteRead(out, out.length);
  assert.ok(q0.write(reply, 0, reply.length));
  assert.ok(q1.write(reply, 0, reply.length));
  assert.equal(readFileSync(files[1]!).length, 2 * reply.length, 'both written on queue 1');
  assert.equal(readFileSync(files[0]!).length, reply.length, 'queue 0 got nothing more');
  q0.close();
  q1.close();
  for (const fd of fds) closeSync(fd);
});
