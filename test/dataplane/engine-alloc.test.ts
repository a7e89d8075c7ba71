// The node engine allocates nothing per packet, either way, with the packet
// filter on: an inner packet from the TUN (filter noteOutbound, route, seal,
// queue the datagram) and a datagram from a peer (find the peer, open, touch,
// filter check, write to the TUN). Measured with the GC-corrected heap meter
// (test/wire/alloc-meter.ts) over windows of packets handed to the engine's
// entry points synchronously, the way its UDP layer and the TUN hand them over:
// a datagram in one receive buffer, an inner packet in the TUN's one handover
// buffer (checked at the end of this file). One boxed number (a Date.now() on
// the packet path: 16 B) or one Buffer view (~96 B) per packet breaks the bound.
//
// Also here: engines whose packet clock base is long ago (a daemon up for
// weeks), and the TUN's handover buffer and per-batch hook.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { mkdtempSync, openSync, closeSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parsePrefix } from '../../src/net/addr.js';
import { Engine, PACKET_CLOCK_BASE } from '../../src/dataplane/engine.js';
import { WorkerEngine } from '../../src/dataplane/node-workers/pool.js';
import type { WorkerSnapshot } from '../../src/dataplane/node-workers/protocol.js';
import { FilterState, PacketFilter } from '../../src/dataplane/filter.js';
import type { UdpSock } from '../../src/dataplane/io/index.js';
import { WireTx } from '../../src/wire/index.js';
import { heapAllocated } from '../wire/alloc-meter.js';
import { udp } from './packets.js';

const P = (s: string) => parsePrefix(s);
const PSK = Buffer.alloc(32, 0x5e);
const DAY = 86_400_000;
/** Bytes per packet and direction: below one boxed number (16 B) or one view (~96 B) per packet. */
const BOUND = 4;
const WINDOW = 2000;
const WINDOWS = 10;
/** Flows the packets rotate through (each direction of each one is in the filter's table). */
const FLOWS = 8;

interface Rig {
  engine: Engine;
  /** Hands the engine one inner packet from the TUN (flow k, payload of `size` bytes). */
  fromTun(k: number, size: number): void;
  /** Hands the engine one datagram from the peer (the reply of flow k). */
  fromPeer(k: number, size: number, unsolicited?: boolean): void;
  tunWrites(): number;
  close(): Promise<void>;
}

async function rig(clockBase?: number): Promise<Rig> {
  // The peer's address: takes (and ignores) what the engine sends it.
  const sink = dgram.createSocket('udp4');
  await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
  const sinkPort = sink.address().port;
  let tunWrites = 0;
  const engine = new Engine({
    localId: 1,
    obfuscate: true,
    peers: [{ id: 2, name: 'peer', endpoint: { host: '127.0.0.1', port: sinkPort }, allowedSrc: [P('10.9.0.2/32')], psk: PSK }],
    rules: [
      { src: P('0.0.0.0/0'), dst: P('10.9.0.2/32'), action: 'forward', target: 2 },
      { src: P('0.0.0.0/0'), dst: P('10.9.0.1/32'), action: 'forward', target: 0 },
    ],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: { write: () => (tunWrites++, true) },
    ...(clockBase !== undefined ? { clockBase } : {}),
  });
  // No rules: inbound packets pass only as replies to flows the TUN side opened.
  engine.setFilter(new FilterState(PacketFilter.compile([])));
  await engine.start();
  const sock = (engine as unknown as { udp: { sockFor(f: 4 | 6): UdpSock } }).udp.sockFor(4);
  const onDatagram = (engine as unknown as { onDatagram(m: Buffer, len: number, addr: string, port: number, s: UdpSock): void }).onDatagram.bind(engine);
  const peerTx = new WireTx({ psk: PSK, from: 2, to: 1, obfuscate: true });
  const sizes = [64, 1400];
  const body = (size: number): string => 'x'.repeat(size - 28);
  const out = new Map(sizes.map((s) => [s, Array.from({ length: FLOWS }, (_, k) => udp('10.9.0.1', '10.9.0.2', 40000 + k, 5000, body(s)))]));
  const back = new Map(sizes.map((s) => [s, Array.from({ length: FLOWS }, (_, k) => udp('10.9.0.2', '10.9.0.1', 5000, 40000 + k, body(s)))]));
  const stray = new Map(sizes.map((s) => [s, udp('10.9.0.2', '10.9.0.1', 5000, 39999, body(s))]));
  // What the TUN hands over (TunDevice: one buffer in its ring's memory) and the UDP layer's receive buffer.
  const handover = Buffer.from(new SharedArrayBuffer(2048));
  const rxBuf = Buffer.alloc(2048);
  const peerSrc = Buffer.alloc(2048);
  const addr = '127.0.0.1';
  return {
    engine,
    fromTun(k, size) {
      const p = out.get(size)![k]!;
      handover.set(p);
      engine.onTunPacket(handover, p.length);
    },
    fromPeer(k, size, unsolicited = false) {
      const p = unsolicited ? stray.get(size)! : back.get(size)![k]!;
      // Sealed from one buffer (views of a few buffers only are cached: see wire/views.ts).
      peerSrc.set(p);
      const n = peerTx.seal(peerSrc, 0, p.length, rxBuf);
      onDatagram(rxBuf, n, addr, sinkPort, sock);
    },
    tunWrites: () => tunWrites,
    async close() {
      await engine.stop();
      await new Promise<void>((r) => sink.close(() => r()));
    },
  };
}

/** Smallest heap bytes per packet over WINDOWS windows of WINDOW calls of `one(i)`. */
async function perPacket(one: (i: number) => void): Promise<number> {
  let best = Infinity;
  for (let w = 0; w < WINDOWS; w++) {
    const r = heapAllocated(() => {
      for (let i = 0; i < WINDOW; i++) one(i);
    });
    best = Math.min(best, r.bytes / WINDOW);
    // The queued datagrams go out, the sink reads them: outside the window.
    await new Promise((r) => setImmediate(r));
  }
  return best;
}

async function measure(r: Rig, label: string, note: (msg: string) => void): Promise<void> {
  const c = r.engine.counters;
  for (const size of [64, 1400]) {
    const sent = c.udp_tx_packets;
    const written = r.tunWrites();
    const toTun = await perPacket((i) => r.fromTun(i % FLOWS, size));
    const fromPeer = await perPacket((i) => r.fromPeer(i % FLOWS, size));
    // Both directions did their work: every packet sealed and sent, every reply through the filter to the TUN.
    assert.equal(c.udp_tx_packets - sent, WINDOWS * WINDOW, `${label} ${size} B: every TUN packet sent to the peer`);
    assert.equal(r.tunWrites() - written, WINDOWS * WINDOW, `${label} ${size} B: every reply written to the TUN`);
    note(`${label}, ${size} B: ${toTun.toFixed(2)} B per packet from the TUN, ${fromPeer.toFixed(2)} B per packet from the peer`);
    assert.ok(toTun <= BOUND, `${label}: a ${size} B packet from the TUN allocates ${toTun.toFixed(2)} B`);
    assert.ok(fromPeer <= BOUND, `${label}: a ${size} B packet from the peer allocates ${fromPeer.toFixed(2)} B`);
  }
  assert.equal(c.drop_filter, 0);
  assert.equal(c.drop_send_error, 0);
}

test('the node engine allocates nothing per packet, TUN to peer and peer to TUN, filter on', async (t) => {
  const r = await rig();
  try {
    // The filter is on: an inbound packet that answers nothing is dropped.
    r.fromPeer(0, 64, true);
    assert.equal(r.engine.counters.drop_filter, 1);
    r.engine.counters.drop_filter = 0;
    await measure(r, 'clock base at process start', (m) => t.diagnostic(m));
    const p = r.engine.peer(2)!;
    const now = Date.now();
    assert.ok(p.lastSeenMs > now - 60_000 && p.lastSeenMs <= now, `last heard is wall-clock ms: ${p.lastSeenMs} vs ${now}`);
    assert.ok(p.online(now));
  } finally {
    await r.close();
  }
});

test('a packet clock base 20 days back: same decisions, wall-clock times, still no allocation', async (t) => {
  const base = Date.now() - 20 * DAY;
  const r = await rig(base);
  try {
    assert.equal(r.engine.clockBase, base);
    const rel = r.engine.packetClock;
    assert.ok(rel >= 20 * DAY && rel < 20 * DAY + 60_000 && rel < 2 ** 31, `packet clock ${rel}`);
    r.fromPeer(0, 64, true);
    assert.equal(r.engine.counters.drop_filter, 1, 'unsolicited: dropped');
    r.engine.counters.drop_filter = 0;
    const before = Date.now();
    r.fromTun(3, 64);
    r.fromPeer(3, 64);
    assert.equal(r.tunWrites(), 1, 'the reply to a flow the TUN side opened passes');
    const p = r.engine.peer(2)!;
    assert.ok(p.lastSeenMs >= before - 1000 && p.lastSeenMs <= Date.now(), `last heard ${p.lastSeenMs} is wall-clock, not ${rel}`);
    await measure(r, 'clock base 20 days back', (m) => t.diagnostic(m));
  } finally {
    await r.close();
  }
});

test('a packet clock base 30 days back (beyond small integers): same decisions, wall-clock times', async () => {
  // 2^31 ms is 24.8 days: the packet times are boxed numbers now (allocating,
  // see PACKET_CLOCK_BASE), but every decision and time must be the same.
  const base = Date.now() - 30 * DAY;
  const r = await rig(base);
  try {
    assert.ok(r.engine.packetClock > 2 ** 31);
    r.fromPeer(1, 1400, true);
    assert.equal(r.engine.counters.drop_filter, 1);
    for (let i = 0; i < 50; i++) {
      r.fromTun(i % FLOWS, 1400);
      r.fromPeer(i % FLOWS, 1400);
    }
    assert.equal(r.tunWrites(), 50);
    assert.equal(r.engine.counters.drop_filter, 1);
    const p = r.engine.peer(2)!;
    assert.ok(Math.abs(p.lastSeenMs - Date.now()) < 60_000, `last heard ${p.lastSeenMs}`);
    assert.ok(p.online(Date.now()));
  } finally {
    await r.close();
  }
});

test('engines default to one packet clock base per thread (a flow table outlives an engine)', async () => {
  const r1 = await rig();
  const r2 = await rig();
  try {
    assert.equal(r1.engine.clockBase, PACKET_CLOCK_BASE);
    assert.equal(r2.engine.clockBase, PACKET_CLOCK_BASE);
  } finally {
    await r1.close();
    await r2.close();
  }
});

test('packet workers run on the pool\'s packet clock base (their flow table is shared)', async () => {
  const base = Date.now() - 20 * DAY;
  const pool = new WorkerEngine({
    workers: 2,
    localId: 1,
    obfuscate: true,
    peers: [],
    rules: [],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: null,
    udpBatch: true,
    clockBase: base,
    onFatal: (m) => assert.fail(m),
  });
  await pool.start();
  try {
    await pool.refresh();
    const snaps = (pool as unknown as { slots: { snap: WorkerSnapshot | null }[] }).slots.map((s) => s.snap?.clockBase);
    assert.deepEqual(snaps, [base, base]);
  } finally {
    await pool.stop();
  }
});

test('the TUN hands every packet over in one buffer, after the batch hook', async () => {
  const { TunDevice, SLOT_SIZE } = await import('../../src/dataplane/tun.js');
  // A plain file as the "device": each read is one packet (a full slot, then the short rest).
  const dir = mkdtempSync(path.join(tmpdir(), 'tun-handover-'));
  const file = path.join(dir, 'q');
  const lens = [SLOT_SIZE, SLOT_SIZE, 700];
  const bytes = Buffer.alloc(lens.reduce((a, b) => a + b));
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 13 + (i >> 11)) & 0xff;
  writeFileSync(file, bytes);
  const fd = openSync(file, 'r');
  const dev = TunDevice.fromQueue({ name: 'handover', fd, vnetHdr: false, offloads: 0, note: '' });
  const got: { buf: Buffer; copy: Buffer; batches: number }[] = [];
  let batches = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${got.length} packets`)), 5000);
      dev.start(
        (buf, len) => {
          got.push({ buf, copy: Buffer.from(buf.subarray(0, len)), batches });
          if (got.length === lens.length) {
            clearTimeout(timer);
            resolve();
          }
        },
        undefined,
        () => void batches++,
      );
    });
  } finally {
    dev.close();
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  let at = 0;
  for (let i = 0; i < lens.length; i++) {
    assert.equal(got[i]!.buf, got[0]!.buf, `packet ${i}: the same buffer object`);
    assert.deepEqual(got[i]!.copy, bytes.subarray(at, at + lens[i]!), `packet ${i}: its bytes`);
    assert.ok(got[i]!.batches >= 1, 'the batch hook ran before the packet');
    at += lens[i]!;
  }
});
