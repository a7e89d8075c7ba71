// Micro-benchmark of the subnetra v1 hot path, no root needed.
//
// 1. `wire`: seal and open 1400-byte inner packets (obfuscated headers, the
//    default) for about two seconds, timed separately over batches; the same
//    for 64-byte inner packets (small-packet cost: per-call overhead dominates).
//    Buffers are used as the daemon uses them (see `pair`), copies included.
// 2. `wire_alloc`: heap bytes allocated per packet (garbage included, measured
//    with v8.GCProfiler: see test/wire/alloc-meter.ts) over BENCH_ALLOC_PACKETS
//    (default 10^6) packets on each path, after a warm-up:
//      seal_* / open_*       WireTx.seal, WireRx.matches + openMatched (64 B
//                            from ring slots; 1400 B from one fixed buffer, and
//                            seal_1400_ring: from ring slots, where a view is made)
//      udp_send              the batched UDP layer: nextBuffer + send (+ sendmmsg flushes)
//      udp_send_recv         both ends of it on loopback, the receiver's batch callback
//                            handing each datagram to a handler (async: anything else
//                            the event loop does meanwhile counts too)
//      engine_rx_64          a node Engine (src/dataplane/engine.ts) on loopback
//                            receiving 64-byte inner packets from a peer and
//                            writing them to a TUN sink (receive, open, route,
//                            deliver); engine_relay_64: forwarding them to another
//                            peer (open, route, seal, send). The sender's own
//                            sealing and sending count too (0 B, see above).
//    Target: ~0 B per packet (seal_1400_ring excepted: documented in DESIGN.md).
import { MAX_DATAGRAM, MAX_PLAINTEXT, MIN_EPOCH, RxCode, WireRx, WireTx } from '../src/wire/index.js';
import { sodiumPath } from '../src/wire/sodium.js';
import { BatchPorts, loadNativeUdp } from '../src/dataplane/io/batch.js';
import { heapAllocated, heapAllocatedAsync } from '../test/wire/alloc-meter.js';
import { PerformanceObserver } from 'node:perf_hooks';
import { Engine } from '../src/dataplane/engine.js';
import { parsePrefix } from '../src/net/addr.js';
import { udp as udpPacket } from '../test/dataplane/packets.js';

const BATCH = 256;
const SECONDS = 2;
const ALLOC_PACKETS = Number(process.env.BENCH_ALLOC_PACKETS ?? 1e6);

interface Result {
  packets: number;
  sealNs: number;
  openNs: number;
  gcs: number;
}

const SLOT = 2048;

/**
 * One link laid out as the daemon uses it: inner packets come from `src` (one
 * fixed buffer, like the TSO split scratch or the engine's plaintext buffer, or
 * one of BATCH rotating ring slots, like plain TUN reads), are sealed into one
 * seal buffer and copied into a slot of a tx arena (src/dataplane/io/batch.ts);
 * on the way back each slot is copied into one handover buffer and opened from
 * there into one plaintext buffer.
 */
interface Pair {
  tx: WireTx;
  rx: WireRx;
  size: number;
  ring: boolean;
  src: Buffer[];
  arena: Buffer;
  sealBuf: Buffer;
  handover: Buffer;
  lens: Int32Array;
  plain: Buffer;
}

function pair(obfuscate: boolean, size: number, ring: boolean): Pair {
  const psk = Buffer.alloc(32, 0xa5);
  // An epoch whose low half is above 2^31: a boxed number would show up in wire_alloc.
  const tx = new WireTx({ psk, from: 1, to: 2, epoch: MIN_EPOCH + 0x80000000n, obfuscate });
  const rx = new WireRx({ psk, from: 1, to: 2, obfuscate });
  const ringMem = Buffer.alloc(BATCH * SLOT);
  const src: Buffer[] = [];
  for (let i = 0; i < (ring ? BATCH : 1); i++) {
    const b = ringMem.subarray(i * SLOT, (i + 1) * SLOT);
    for (let j = 0; j < size; j++) b[j] = (i + j) & 0xff;
    src.push(b);
  }
  const arena = Buffer.alloc((BATCH + 2) * SLOT);
  return {
    tx,
    rx,
    size,
    ring,
    src,
    arena,
    sealBuf: arena.subarray(BATCH * SLOT, (BATCH + 1) * SLOT),
    handover: arena.subarray((BATCH + 1) * SLOT, (BATCH + 2) * SLOT),
    lens: new Int32Array(BATCH),
    plain: Buffer.alloc(MAX_PLAINTEXT),
  };
}

function sealBatch(p: Pair): void {
  const { tx, src, arena, sealBuf, lens, size } = p;
  const seal = BATCH * SLOT;
  const nsrc = src.length;
  for (let i = 0; i < BATCH; i++) {
    const n = tx.seal(src[i % nsrc]!, 0, size, sealBuf);
    arena.copyWithin(i * SLOT, seal, seal + n);
    lens[i] = n;
  }
}

function openBatch(p: Pair): void {
  const { rx, arena, handover, lens, plain } = p;
  const ho = (BATCH + 1) * SLOT;
  for (let i = 0; i < BATCH; i++) {
    const len = lens[i]!;
    arena.copyWithin(ho, i * SLOT, i * SLOT + len);
    if (!rx.matches(handover, len) || rx.openMatched(handover, len, plain) !== RxCode.Accept) {
      throw new Error('benchmark datagram was not accepted');
    }
  }
}

function run(obfuscate: boolean, size: number, ring: boolean, seconds: number): Result {
  const p = pair(obfuscate, size, ring);
  for (let i = 0; i < 20; i++) {
    sealBatch(p);
    openBatch(p);
  }
  let gcs = 0;
  const obs = new PerformanceObserver((l) => {
    gcs += l.getEntries().length;
  });
  obs.observe({ entryTypes: ['gc'] });
  let sealNs = 0;
  let openNs = 0;
  let packets = 0;
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    const t0 = process.hrtime.bigint();
    sealBatch(p);
    const t1 = process.hrtime.bigint();
    openBatch(p);
    const t2 = process.hrtime.bigint();
    sealNs += Number(t1 - t0);
    openNs += Number(t2 - t1);
    packets += BATCH;
  }
  obs.disconnect();
  return { packets, sealNs, openNs, gcs };
}

const pps = (n: number, ns: number): number => Math.round((n * 1e9) / ns);
const mbps = (n: number, size: number, ns: number): number => Math.round(((n * size * 8) / ns) * 1e3);
const perPacket = (bytes: number, packets: number): number => Number((bytes / packets).toFixed(2));

/**
 * Bytes per packet on the seal and open paths, after a warm-up that lets the
 * JIT settle. Every opened datagram must be fresh (a replay is rejected), so
 * seal alone is measured, then seal and open alternating; open is the difference.
 */
function wireAlloc(obfuscate: boolean, size: number, ring: boolean): { seal: number; open: number; gcs: number } {
  const p = pair(obfuscate, size, ring);
  for (let i = 0; i < 400; i++) {
    sealBatch(p);
    openBatch(p);
  }
  const rounds = Math.max(1, Math.round(ALLOC_PACKETS / BATCH));
  const s = heapAllocated(() => {
    for (let i = 0; i < rounds; i++) sealBatch(p);
  });
  openBatch(p); // the last batch sealed above
  const so = heapAllocated(() => {
    for (let i = 0; i < rounds; i++) {
      sealBatch(p);
      openBatch(p);
    }
  });
  const packets = rounds * BATCH;
  return { seal: perPacket(s.bytes, packets), open: perPacket(Math.max(0, so.bytes - s.bytes), packets), gcs: s.gcs + so.gcs };
}

async function udpAlloc(): Promise<Record<string, unknown>> {
  const n = loadNativeUdp();
  if (n instanceof Error) return { skipped: n.message };
  let got = 0;
  const common = { ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onSendError: () => {}, log: () => {} };
  const rx = new BatchPorts(n, { ...common, onDatagram: () => void got++ }, true, null);
  const tx = new BatchPorts(n, { ...common, onDatagram: () => {} }, true, null);
  await rx.start();
  await tx.start();
  const port = rx.ports()[0]!;
  const sock = tx.sockFor(4)!;
  const SIZE = 64 + 36;
  const send = (count: number): void => {
    for (let i = 0; i < count; i++) {
      const b = tx.nextBuffer(sock);
      b[0] = i & 0xff;
      tx.send(sock, b, SIZE, port, '127.0.0.1');
    }
  };
  const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
  // Bursts the receiver's socket buffer holds; each waits until all arrived (or a short timeout: loss).
  const BURST = 1024;
  const exchange = async (packets: number): Promise<number> => {
    let lost = 0;
    for (let sent = 0; sent < packets; sent += BURST) {
      const want = got + BURST;
      send(BURST);
      tx.flush();
      for (let spins = 0; got < want && spins < 2000; spins++) await tick();
      if (got < want) {
        lost += want - got;
        got = want;
      }
    }
    return lost;
  };
  await exchange(200 * BURST); // warm-up
  const s = heapAllocated(() => {
    for (let i = 0; i < ALLOC_PACKETS; i += BURST) {
      send(BURST);
      tx.flush();
    }
  });
  await new Promise((r) => setTimeout(r, 200));
  let lost = 0;
  const rounds = Math.ceil(ALLOC_PACKETS / BURST) * BURST;
  const sr = await heapAllocatedAsync(async () => {
    lost = await exchange(rounds);
  });
  const st = rx.status();
  await rx.close();
  await tx.close();
  return {
    udp_send: perPacket(s.bytes, Math.ceil(ALLOC_PACKETS / BURST) * BURST),
    udp_send_recv: perPacket(sr.bytes, rounds),
    udp_datagram_bytes: SIZE,
    udp_lost: lost,
    udp_gro: st.gro,
    udp_rx_max_batch: st.rx_max_batch,
    gcs: s.gcs + sr.gcs,
  };
}

/** Heap bytes per packet through a node engine: delivered to its TUN sink, and relayed to a second peer. */
async function engineAlloc(): Promise<Record<string, unknown>> {
  const n = loadNativeUdp();
  if (n instanceof Error) return { engine_skipped: n.message };
  const HUB = 1;
  const P = parsePrefix;
  const pskA = Buffer.alloc(32, 0xa2);
  const pskB = Buffer.alloc(32, 0xb3);
  let delivered = 0;
  const engine = new Engine({
    localId: HUB,
    obfuscate: true,
    peers: [
      { id: 2, name: 'a', endpoint: null, allowedSrc: [P('10.9.0.2/32')], psk: pskA },
      { id: 3, name: 'b', endpoint: null, allowedSrc: [P('10.9.0.3/32')], psk: pskB },
    ],
    rules: [
      { src: P('0.0.0.0/0'), dst: P('10.9.0.3/32'), action: 'forward', target: 3 },
      { src: P('0.0.0.0/0'), dst: P('10.9.0.1/32'), action: 'forward', target: 0 },
    ],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: { write: () => (delivered++, true) },
    udpBatch: true,
  });
  await engine.start();
  const hubPort = engine.boundAddresses()[0]!.port;
  // Peer sockets: A sends, B only announces itself (its socket never needs to read).
  const common = { ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onSendError: () => {}, log: () => {} };
  const ioA = new BatchPorts(n, { ...common, onDatagram: () => {} }, true, null);
  const ioB = new BatchPorts(n, { ...common, onDatagram: () => {} }, true, null);
  await ioA.start();
  await ioB.start();
  const txA = new WireTx({ psk: pskA, from: 2, to: HUB });
  const txB = new WireTx({ psk: pskB, from: 3, to: HUB });
  const sA = ioA.sockFor(4)!;
  const sB = ioB.sockFor(4)!;
  const toHub = udpPacket('10.9.0.2', '10.9.0.1', 4000, 5000, 'x'.repeat(64 - 28));
  const toB = udpPacket('10.9.0.2', '10.9.0.3', 4000, 5000, 'x'.repeat(64 - 28));
  const kb = ioB.nextBuffer(sB);
  ioB.send(sB, kb, txB.sealKeepalive(kb), hubPort, '127.0.0.1'); // B's endpoint becomes known
  ioB.flush();
  const BURST = 512;
  const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
  const exchange = async (pkt: Buffer, bursts: number, counter: () => number): Promise<void> => {
    for (let k = 0; k < bursts; k++) {
      const want = counter() + BURST;
      for (let i = 0; i < BURST; i++) {
        const b = ioA.nextBuffer(sA);
        ioA.send(sA, b, txA.seal(pkt, 0, pkt.length, b), hubPort, '127.0.0.1');
      }
      ioA.flush();
      for (let spins = 0; counter() < want && spins < 2000; spins++) await tick();
    }
  };
  const relayed = (): number => engine.counters.relay_packets;
  const out: Record<string, unknown> = {};
  for (const [name, pkt, counter] of [
    ['engine_rx_64', toHub, () => delivered],
    ['engine_relay_64', toB, relayed],
  ] as const) {
    await exchange(pkt, 100, counter); // warm-up
    const c0 = counter();
    const r = await heapAllocatedAsync(() => exchange(pkt, Math.max(1, Math.round(ALLOC_PACKETS / 4 / BURST)), counter));
    const done = counter() - c0;
    out[name] = done > 0 ? perPacket(r.bytes, done) : null;
  }
  await ioA.close();
  await ioB.close();
  await engine.stop();
  return out;
}

const obfs = run(true, 1400, false, SECONDS * 0.5);
const plain = run(false, 1400, false, SECONDS * 0.2);
const small = run(true, 64, true, SECONDS * 0.3);

process.stdout.write(
  `${JSON.stringify({
    bench: 'wire',
    payload_bytes: 1400,
    obfuscate: true,
    source: 'fixed buffer (TSO split scratch)',
    crypto_calls: sodiumPath,
    packets: obfs.packets,
    seal_pps: pps(obfs.packets, obfs.sealNs),
    open_pps: pps(obfs.packets, obfs.openNs),
    seal_mbps: mbps(obfs.packets, 1400, obfs.sealNs),
    open_mbps: mbps(obfs.packets, 1400, obfs.openNs),
    plain_seal_pps: pps(plain.packets, plain.sealNs),
    plain_open_pps: pps(plain.packets, plain.openNs),
    small_payload_bytes: 64,
    small_source: 'rotating ring slots (plain TUN reads)',
    small_seal_pps: pps(small.packets, small.sealNs),
    small_open_pps: pps(small.packets, small.openNs),
    small_seal_ns: Math.round(small.sealNs / small.packets),
    small_open_ns: Math.round(small.openNs / small.packets),
    gc_events: obfs.gcs + plain.gcs + small.gcs,
    node: process.version,
  })}\n`,
);

const a64 = wireAlloc(true, 64, true);
const a1400 = wireAlloc(true, 1400, false);
const a1400r = wireAlloc(true, 1400, true);
const aPlain = wireAlloc(false, 64, true);
const io = await udpAlloc();
const eng = await engineAlloc();
process.stdout.write(
  `${JSON.stringify({
    bench: 'wire_alloc',
    unit: 'heap bytes per packet',
    packets: ALLOC_PACKETS,
    seal_64: a64.seal,
    open_64: a64.open,
    seal_1400: a1400.seal,
    open_1400: a1400.open,
    seal_1400_ring: a1400r.seal,
    plain_seal_64: aPlain.seal,
    plain_open_64: aPlain.open,
    ...io,
    ...eng,
    wire_gcs: a64.gcs + a1400.gcs + a1400r.gcs + aPlain.gcs,
  })}\n`,
);
process.exit(0);
