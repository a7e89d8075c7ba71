// The batched UDP I/O layer (native recvmmsg/sendmmsg, UDP GRO/GSO) against the
// node:dgram path: the same bytes on the wire both ways (subnetra vectors and a
// scripted engine exchange), batches larger than the receive arena, malformed
// datagrams inside a batch, the offload fallback reported in status, and the
// existing engine/relay tests run once per path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createUdpIo, createUdpIoWith, ioSummary, type UdpIo, type DatagramHandler } from '../../src/dataplane/io/index.js';
import { RX_SLOTS } from '../../src/dataplane/io/batch.js';
import { AddrNames, META_WORDS, formatAddr, parseAddr } from '../../src/dataplane/io/addr.js';
import { Engine } from '../../src/dataplane/engine.js';
import { RelayEngine } from '../../src/dataplane/relay.js';
import { parsePrefix } from '../../src/net/addr.js';
import { WireTx, WireRx, RxCode } from '../../src/wire/index.js';
import { udp } from './packets.js';
import { loadVectors, hex } from '../wire/vectors.js';
import { netnsSkipReason } from '../e2e/netns.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Mode {
  name: string;
  batch: boolean;
  offload: boolean;
}
const MODES: Mode[] = [
  { name: 'batch+offload', batch: true, offload: true },
  { name: 'batch', batch: true, offload: false },
  { name: 'dgram', batch: false, offload: false },
];

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function waitFor(what: string, pred: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function openIo(mode: Mode, onDatagram: DatagramHandler, errs = { n: 0 }): Promise<UdpIo> {
  const io = createUdpIo(
    { ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onDatagram, onSendError: (n) => void (errs.n += n), log: () => {}, batch: mode.batch, offload: mode.offload },
    {},
  );
  await io.start();
  return io;
}

function rawSocket(onMsg: (m: Buffer) => void): Promise<dgram.Socket> {
  const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  s.on('message', (m) => onMsg(m));
  return new Promise((r) => s.bind(0, '127.0.0.1', () => r(s)));
}

/** Every datagram of the subnetra vector file, then runs that make GSO (and GRO) segment. */
function wireList(): Buffer[] {
  const v = loadVectors();
  const out: Buffer[] = [];
  for (const s of v.vectors) out.push(hex(s.output.datagram));
  for (const c of v.receiver_cases) for (const st of c.steps) out.push(hex(st.datagram));
  for (const o of v.obfuscated_vectors) out.push(hex(o.datagram));
  // 100 equal-size datagrams (one GSO run is at most 64 segments), then odd sizes.
  for (let i = 0; i < 100; i++) out.push(Buffer.alloc(1432, i));
  for (let i = 0; i < 5; i++) out.push(Buffer.alloc(1400 + i, 200 + i));
  out.push(Buffer.alloc(1, 9));
  return out;
}

test('addresses are named as node:dgram names them (inet_ntop) and parse back', () => {
  const cases = ['127.0.0.1', '0.0.0.0', '255.255.255.255', '::1', '::', 'fe80::1', '2001:db8::1:0:0:1', '1:0:1:0:1:0:1:0', 'fd7a:115c:a1e0::a', '1::', '2001:db8:0:1:1:1:1:1', '::ffff:10.1.2.3'];
  for (const s of cases) {
    const p = parseAddr(s);
    assert.ok(p, s);
    assert.equal(formatAddr(p.bytes, 0, p.family), s);
  }
  assert.equal(parseAddr('1.2.3'), null);
  assert.equal(parseAddr('1.2.3.256'), null);
  assert.equal(parseAddr('1::2::3'), null);
  assert.equal(parseAddr('12345::'), null);
  assert.equal(formatAddr(parseAddr('2001:0db8:0000:0000:0000:0000:0000:0001')!.bytes, 0, 6), '2001:db8::1');
});

test('the address table names 20 000 distinct sources right while they evict each other', () => {
  const meta = new Int32Array(4 * META_WORDS);
  const bytes = new Uint8Array(meta.buffer);
  const names = new AddrNames(meta);
  const put = (slot: number, family: 4 | 6, addr: Uint8Array): void => {
    meta.fill(0, slot * META_WORDS, (slot + 1) * META_WORDS);
    meta[slot * META_WORDS + 2] = family;
    bytes.set(addr, (slot * META_WORDS + 3) * 4);
  };
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 10_000; i++) {
      const v4 = new Uint8Array([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]);
      put(i & 3, 4, v4);
      assert.equal(names.name(i & 3), `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      const v6 = parseAddr(`fd00::1:${i.toString(16)}`)!.bytes;
      put((i + 1) & 3, 6, v6);
      assert.equal(names.name((i + 1) & 3), `fd00::1:${i.toString(16)}`);
    }
  }
  // Same bytes, other family: not the same address.
  put(0, 4, new Uint8Array([0, 0, 0, 0]));
  assert.equal(names.name(0), '0.0.0.0');
  put(0, 6, new Uint8Array(16));
  assert.equal(names.name(0), '::');
  // A known address is a hit: formatted once.
  const before = names.misses;
  for (let i = 0; i < 1000; i++) names.name(0);
  assert.equal(names.misses, before);
});

test('IPv6: both paths exchange datagrams over ::1 byte for byte and name the source as dgram does', async () => {
  for (const mode of MODES) {
    const got: { hex: string; from: string }[] = [];
    const io = createUdpIo(
      { ports: [0], bindHost4: '127.0.0.1', bindHost6: '::1', onDatagram: (m, len, addr, port) => void got.push({ hex: m.subarray(0, len).toString('hex'), from: `${addr}:${port}` }), onSendError: () => {}, log: () => {}, batch: mode.batch, offload: mode.offload },
      {},
    );
    await io.start();
    const peer = dgram.createSocket({ type: 'udp6', ipv6Only: true });
    const back: string[] = [];
    peer.on('message', (m) => back.push(m.toString('hex')));
    await new Promise<void>((r) => peer.bind(0, '::1', () => r()));
    try {
      const p6 = io.boundAddresses().find((a) => a.family === 6);
      assert.ok(p6, `${mode.name}: an IPv6 socket`);
      const list = Array.from({ length: 20 }, (_, i) => Buffer.alloc(100 + i, i));
      for (const d of list) peer.send(d, p6.port, '::1');
      await waitFor('20 over IPv6', () => got.length === 20);
      assert.deepEqual(got.map((g) => g.hex), list.map((d) => d.toString('hex')));
      assert.ok(got.every((g) => g.from === `::1:${peer.address().port}`), got[0]!.from);
      const sock = io.sockFor(6)!;
      for (const d of list) {
        const b = io.nextBuffer(sock);
        d.copy(b);
        io.send(sock, b, d.length, peer.address().port, '::1');
      }
      await waitFor('20 back over IPv6', () => back.length === 20);
      assert.deepEqual(back, list.map((d) => d.toString('hex')));
    } finally {
      await io.close();
      peer.close();
    }
  }
});

test('send: every path puts the subnetra vectors (and GSO runs) on the wire byte for byte, in order', async () => {
  const list = wireList();
  for (const mode of MODES) {
    const got: Buffer[] = [];
    const cap = await rawSocket((m) => got.push(m));
    const errs = { n: 0 };
    const io = await openIo(mode, () => {}, errs);
    try {
      const sock = io.sockFor(4)!;
      for (const d of list) {
        const b = io.nextBuffer(sock);
        d.copy(b);
        io.send(sock, b, d.length, cap.address().port, '127.0.0.1');
      }
      await waitFor(`${list.length} datagrams (${mode.name})`, () => got.length >= list.length);
      assert.equal(errs.n, 0);
      assert.deepEqual(got.map((b) => b.toString('hex')), list.map((b) => b.toString('hex')), mode.name);
      const st = io.status();
      assert.equal(st.path, mode.batch ? 'batch' : 'dgram');
      if (mode.batch) {
        assert.equal(st.tx_datagrams, list.length);
        assert.ok(st.tx_syscalls < list.length / 4, `${st.tx_syscalls} sendmmsg calls for ${list.length} datagrams`);
        if (mode.offload && st.gso) assert.ok(st.gso_sends >= 2, 'equal-size runs went out as GSO super-datagrams');
        if (!mode.offload) assert.equal(st.gso_sends, 0);
      }
    } finally {
      await io.close();
      cap.close();
    }
  }
});

test('receive: every path hands over each datagram byte for byte; a burst larger than the arena is split into full batches', async () => {
  const list = wireList();
  for (let i = 0; i < 300; i++) list.push(Buffer.alloc(200, i & 255).fill(i >> 8, 0, 1));
  assert.ok(list.length > RX_SLOTS);
  for (const mode of MODES) {
    const got: Buffer[] = [];
    const from: string[] = [];
    const io = await openIo(mode, (msg, len, addr, port) => {
      got.push(Buffer.from(msg.subarray(0, len)));
      from.push(`${addr}:${port}`);
    });
    const src = await rawSocket(() => {});
    try {
      const port = io.boundAddresses()[0]!.port;
      // One synchronous loop: everything is queued before the I/O layer's next poll.
      for (const d of list) src.send(d, port, '127.0.0.1');
      await waitFor(`${list.length} datagrams (${mode.name})`, () => got.length >= list.length);
      assert.deepEqual(got.map((b) => b.toString('hex')), list.map((b) => b.toString('hex')), mode.name);
      assert.ok(from.every((f) => f === `127.0.0.1:${src.address().port}`));
      const st = io.status();
      if (mode.batch) {
        assert.equal(st.rx_max_batch, RX_SLOTS, 'the first batch filled the whole arena');
        assert.ok(st.rx_batches >= Math.ceil(list.length / RX_SLOTS));
        assert.ok(st.rx_syscalls < list.length / 8, `${st.rx_syscalls} recvmmsg calls for ${list.length} datagrams`);
      }
    } finally {
      await io.close();
      src.close();
    }
  }
});

test('batch to batch: GSO runs arrive as GRO super-datagrams and are split into slots, in order, byte for byte', async () => {
  const mode = MODES[0]!;
  const got: Buffer[] = [];
  const rx = await openIo(mode, (msg, len) => void got.push(Buffer.from(msg.subarray(0, len))));
  const tx = await openIo(mode, () => {});
  try {
    const list: Buffer[] = [];
    for (let i = 0; i < 300; i++) list.push(Buffer.alloc(1432, i & 255).fill(i >> 8, 0, 1));
    const sock = tx.sockFor(4)!;
    const port = rx.boundAddresses()[0]!.port;
    for (const d of list) {
      const b = tx.nextBuffer(sock);
      d.copy(b);
      tx.send(sock, b, d.length, port, '127.0.0.1');
    }
    await waitFor('300 datagrams', () => got.length >= list.length);
    assert.deepEqual(got.map((b) => b.toString('hex')), list.map((b) => b.toString('hex')));
    const ts = tx.status();
    const rs = rx.status();
    if (ts.gso && rs.gro) {
      assert.ok(ts.gso_sends >= 5, `gso_sends=${ts.gso_sends}`);
      assert.ok(rs.gro_datagrams > 0, `gro_datagrams=${rs.gro_datagrams}`);
      assert.ok(rs.rx_syscalls < 20, `rx_syscalls=${rs.rx_syscalls}`);
      assert.equal(rs.rx_max_batch, RX_SLOTS);
    }
  } finally {
    await rx.close();
    await tx.close();
  }
});

test('status: offloads on where the kernel has them; forced off or dgram, it says so and why', async () => {
  const on = await openIo(MODES[0]!, () => {});
  const st = on.status();
  await on.close();
  assert.equal(st.path, 'batch');
  const [maj, min] = os.release().split('.').map(Number) as [number, number];
  if (maj > 5 || (maj === 5 && min >= 0)) {
    assert.equal(st.gro, true, 'UDP_GRO exists since Linux 5.0');
    assert.equal(st.gso, true, 'UDP_SEGMENT exists since Linux 4.18');
    assert.equal(st.offload_reason, null);
  } else {
    assert.ok(st.gro || st.gso || st.offload_reason !== null);
  }
  assert.match(ioSummary(st), /^batch .*GRO on, GSO on$/);

  const envOff = createUdpIo({ ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onDatagram: () => {}, onSendError: () => {}, log: () => {} }, { LARKTUN_UDP_OFFLOAD: '0' });
  await envOff.start();
  const so = envOff.status();
  await envOff.close();
  assert.deepEqual([so.path, so.gro, so.gso, so.offload_reason], ['batch', false, false, 'LARKTUN_UDP_OFFLOAD=0']);
  assert.equal(ioSummary(so), 'batch (recvmmsg/sendmmsg), GRO off, GSO off (LARKTUN_UDP_OFFLOAD=0)');

  const envDgram = createUdpIo({ ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onDatagram: () => {}, onSendError: () => {}, log: () => {} }, { LARKTUN_UDP_BATCH: '0' });
  await envDgram.start();
  const sd = envDgram.status();
  await envDgram.close();
  assert.deepEqual([sd.path, sd.reason, sd.gro, sd.gso], ['dgram', 'LARKTUN_UDP_BATCH=0', false, false]);

  // The addon missing (not built, other OS): dgram, said in status and logged once.
  const logs: string[] = [];
  const noAddon = createUdpIoWith(() => new Error('UDP addon not built (x.node is missing)'), { ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onDatagram: () => {}, onSendError: () => {}, log: (m) => logs.push(m) }, {});
  await noAddon.start();
  const sn = noAddon.status();
  await noAddon.close();
  assert.deepEqual([sn.path, sn.reason], ['dgram', 'UDP addon not built (x.node is missing)']);
  assert.deepEqual(logs, ['batched UDP unavailable (UDP addon not built (x.node is missing)); using node:dgram']);
  assert.equal(ioSummary(sn), 'dgram (UDP addon not built (x.node is missing))');

  // The relay engine reports its path in status(); with offloads off it still forwards.
  const relay = new RelayEngine({ listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, udpOffload: false });
  await relay.start();
  const rs = relay.status();
  await relay.stop();
  assert.equal(rs.io.path, 'batch');
  assert.equal(rs.io.gro, false);
  assert.equal(rs.io.gso, false);
  assert.equal(rs.io.offload_reason, 'offloads turned off by configuration');
});

test('GSO on a path with a small MTU: the refused run is resent plainly, smaller runs keep GSO', async (t) => {
  const skip = netnsSkipReason();
  if (skip) return t.skip(skip);
  const ns = `lkgso${process.pid}`;
  assert.equal(spawnSync('ip', ['netns', 'add', ns]).status, 0);
  try {
    assert.equal(spawnSync('ip', ['-n', ns, 'link', 'set', 'lo', 'mtu', '1300', 'up']).status, 0);
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', path.join(ROOT, 'test', 'dataplane', 'udp-gso-mtu.ts')], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { ok: boolean; received: number; send_errors: number; status: { gso: boolean; gso_sends: number; gso_fallbacks: number; tx_datagrams: number } };
    assert.equal(out.ok, true, `received ${out.received} of 200, bytes and order checked`);
    assert.equal(out.send_errors, 0);
    assert.equal(out.status.gso_fallbacks, 1, 'one refused GSO run, then 1400-byte runs go out plainly');
    assert.equal(out.status.gso, true, 'GSO stays on for segments that fit');
    assert.ok(out.status.gso_sends >= 2, `gso_sends=${out.status.gso_sends}: the 1000-byte runs`);
    assert.equal(out.status.tx_datagrams, 200);
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
});

// ---- the node engine over each path --------------------------------------------------

const HUB = 1;
const EPOCH = 1_800_000_000_000_000_000n;
const key = (b: number): Buffer => Buffer.alloc(32, b);

class Spoke {
  sock!: dgram.Socket;
  readonly raw: Buffer[] = [];
  readonly got: Buffer[] = [];
  readonly tx: WireTx;
  readonly rx: WireRx;
  constructor(readonly id: number) {
    this.tx = new WireTx({ psk: key(id), from: id, to: HUB, obfuscate: true, epoch: EPOCH + BigInt(id) });
    this.rx = new WireRx({ psk: key(id), from: HUB, to: id, obfuscate: true });
  }
  async bind(): Promise<void> {
    this.sock = await rawSocket((m) => {
      this.raw.push(m);
      const out = Buffer.alloc(2048);
      if (this.rx.open(m, m.length, out) === RxCode.Accept && !this.rx.keepalive) this.got.push(Buffer.from(out.subarray(0, this.rx.plaintextLen)));
    });
  }
  seal(pkt: Buffer, keepalive = false): Buffer {
    const out = Buffer.alloc(2048);
    return Buffer.from(out.subarray(0, this.tx.seal(pkt, 0, pkt.length, out, keepalive)));
  }
}

async function hub(mode: Mode): Promise<{ engine: Engine; a: Spoke; b: Spoke; port: number }> {
  const a = new Spoke(2);
  const b = new Spoke(3);
  await a.bind();
  await b.bind();
  const engine = new Engine({
    localId: HUB,
    obfuscate: true,
    peers: [
      { id: 2, name: 'a', endpoint: { host: '127.0.0.1', port: a.sock.address().port }, allowedSrc: [parsePrefix('10.9.0.2/32')], psk: key(2) },
      { id: 3, name: 'b', endpoint: { host: '127.0.0.1', port: b.sock.address().port }, allowedSrc: [parsePrefix('10.9.0.3/32')], psk: key(3) },
    ],
    rules: [
      { src: parsePrefix('0.0.0.0/0'), dst: parsePrefix('10.9.0.2/32'), action: 'forward', target: 2 },
      { src: parsePrefix('0.0.0.0/0'), dst: parsePrefix('10.9.0.3/32'), action: 'forward', target: 3 },
    ],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: null,
    udpBatch: mode.batch,
    udpOffload: mode.offload,
  });
  await engine.start();
  // Fixed send epochs, so that two runs seal the same bytes.
  for (const id of [2, 3]) engine.peer(id)!.tx = new WireTx({ psk: key(id), from: HUB, to: id, obfuscate: true, epoch: EPOCH + 100n + BigInt(id) });
  return { engine, a, b, port: engine.boundAddresses()[0]!.port };
}

// The inner packets, made once (packets.ts numbers IPv4 ids globally).
const N = 60;
const AB = Array.from({ length: N }, (_, i) => udp('10.9.0.2', '10.9.0.3', 1000, 2000, `a${i}`.padEnd(i % 3 === 0 ? 1300 : 40 + i, '.')));
const BA = Array.from({ length: N }, (_, i) => udp('10.9.0.3', '10.9.0.2', 2000, 1000, `b${i}`.padEnd(1300, '-')));

async function scriptedExchange(mode: Mode): Promise<{ toA: string[]; toB: string[] }> {
  const { engine, a, b, port } = await hub(mode);
  try {
    engine.sendKeepalives();
    await waitFor('keepalives', () => a.raw.length === 1 && b.raw.length === 1);
    // Bursts: equal-size runs to one peer are what GSO coalesces on the batched path.
    for (const p of AB) a.sock.send(a.seal(p), port, '127.0.0.1');
    await waitFor('a → b', () => b.got.length === N);
    for (const p of BA) b.sock.send(b.seal(p), port, '127.0.0.1');
    await waitFor('b → a', () => a.got.length === N);
    engine.sendKeepalives();
    await waitFor('keepalives', () => a.raw.length === N + 2 && b.raw.length === N + 2);
    assert.equal(engine.counters.relay_packets, 2 * N);
    return { toA: a.raw.map((x) => x.toString('hex')), toB: b.raw.map((x) => x.toString('hex')) };
  } finally {
    await engine.stop();
    a.sock.close();
    b.sock.close();
  }
}

test('node engine: a scripted exchange puts the same bytes on the wire with batching on (with and without offloads) and off', async () => {
  const runs = [];
  for (const mode of MODES) runs.push(await scriptedExchange(mode));
  assert.equal(runs[0]!.toA.length, 62);
  assert.deepEqual(runs[1], runs[0]);
  assert.deepEqual(runs[2], runs[0]);
  assert.deepEqual(runs[0]!.toA.length, N + 2);
});

test('malformed datagrams inside one batch are dropped and counted; the rest of the batch is processed', async () => {
  for (const mode of MODES) {
    const { engine, a, b, port } = await hub(mode);
    try {
      const before = engine.ioStatus().rx_batches;
      const burst = [
        a.seal(udp('10.9.0.2', '10.9.0.3', 1, 2, 'one')),
        Buffer.alloc(10), // shorter than a header and tag
        a.seal(udp('10.9.0.2', '10.9.0.3', 1, 2, 'two')),
        Buffer.alloc(2100, 1), // larger than a receive slot: truncated by the kernel
        a.seal(udp('10.9.0.2', '10.9.0.3', 1, 2, 'three')),
        Buffer.alloc(1600, 2), // larger than any datagram
        Buffer.alloc(0),
        a.seal(udp('10.9.0.2', '10.9.0.3', 1, 2, 'four')),
      ];
      for (const d of burst) a.sock.send(d, port, '127.0.0.1');
      await waitFor('four forwarded', () => b.got.length === 4);
      await sleep(50);
      assert.deepEqual(b.got.map((p) => p.subarray(28).toString()), ['one', 'two', 'three', 'four'], mode.name);
      assert.equal(engine.counters.drop_malformed, 4, mode.name);
      assert.equal(engine.counters.relay_packets, 4);
      if (mode.batch) assert.equal(engine.ioStatus().rx_batches - before, 1, 'the burst was one batch');
    } finally {
      await engine.stop();
      a.sock.close();
      b.sock.close();
    }
  }
});

// ---- the existing engine and relay suites, once per path --------------------------------

function runTests(files: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=tap', ...files], {
      cwd: ROOT,
      // Without the parent's NODE_TEST_CONTEXT: the child is a test run of its own.
      env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_TEST_CONTEXT')), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

for (const [name, env] of [
  ['batched', { LARKTUN_UDP_BATCH: '1' }],
  ['batched, offloads off', { LARKTUN_UDP_BATCH: '1', LARKTUN_UDP_OFFLOAD: '0' }],
  ['dgram', { LARKTUN_UDP_BATCH: '0' }],
] as const) {
  test(`the relay and node engine suites pass over the ${name} path`, { timeout: 180_000 }, async () => {
    const r = await runTests(['test/dataplane/relay.test.ts', 'test/dataplane/engine.test.ts', 'test/dataplane/relay-rtt.test.ts'], env);
    const failed = r.out.split('\n').filter((l) => /^\s*not ok/.test(l));
    assert.equal(r.code, 0, `${failed.join('\n')}\n${r.out.slice(-4000)}`);
    assert.match(r.out, /# fail 0/);
    const pass = /# pass (\d+)/.exec(r.out);
    assert.ok(pass && Number(pass[1]) >= 20, `ran ${pass?.[1]} tests`);
  });
}
