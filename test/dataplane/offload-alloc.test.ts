// The TUN offload paths allocate nothing per packet (src/dataplane/offload.ts):
// splitting a TSO read in the TUN ring (scratch in the ring's memory: copies
// are copyWithin) and coalescing packets handed over in one receive buffer
// (copies through cached views). Its own file: the optimizing compiler sees
// these functions only as the data plane calls them (the other offload tests
// feed them many kinds of buffers). Measured with the GC-corrected heap meter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { splitGso, GroBatch, SplitResult, VNET_HDR_LEN, GSO_TCPV4, VNET_F_NEEDS_CSUM } from '../../src/dataplane/offload.js';
import { heapAllocated } from '../wire/alloc-meter.js';

const ACK = 0x10;
const MSS = 1380;
const SEGS = 47;

/** An IPv4 TCP data segment (32-byte TCP header), seq given; checksums are not needed on these paths' inputs. */
function tcp(into: Buffer, at: number, seq: number, payload: number): number {
  const len = 20 + 32 + payload;
  into.fill(0, at, at + 52);
  into[at] = 0x45;
  into.writeUInt16BE(len & 0xffff, at + 2);
  into.writeUInt16BE(0x4000, at + 6);
  into[at + 8] = 64;
  into[at + 9] = 6;
  into.writeUInt32BE(0x0a590002, at + 12);
  into.writeUInt32BE(0x0a590001, at + 16);
  into.writeUInt16BE(40000, at + 20);
  into.writeUInt16BE(5201, at + 22);
  into.writeUInt32BE(seq >>> 0, at + 24);
  into.writeUInt32BE(777, at + 28);
  into[at + 32] = 8 << 4;
  into[at + 33] = ACK;
  into.writeUInt16BE(501, at + 34);
  into.fill(0x61, at + 52, at + len);
  return len;
}

/** Smallest bytes per unit over three windows of `run()`, each doing `units` units, after `warm` runs. */
function perUnit(run: () => void, units: number, warm: number): number {
  for (let i = 0; i < warm; i++) run();
  let best = Infinity;
  for (let w = 0; w < 3; w++) best = Math.min(best, heapAllocated(run).bytes / units);
  return best;
}

test('splitting a TSO read in the TUN ring allocates nothing per segment (and the meter sees Buffer#copy)', () => {
  // The ring's layout: read slots, then the scratch, in one SharedArrayBuffer (TunDevice).
  const arena = Buffer.from(new SharedArrayBuffer(3 * 70000));
  const plen = tcp(arena, VNET_HDR_LEN, 0xfffff000, MSS * SEGS); // the sequence number wraps inside the read
  arena[0] = VNET_F_NEEDS_CSUM;
  arena[1] = GSO_TCPV4;
  arena.writeUInt16LE(52, 2);
  arena.writeUInt16LE(MSS, 4);
  arena.writeUInt16LE(20, 6);
  arena.writeUInt16LE(16, 8);
  const len = VNET_HDR_LEN + plen;
  const keep = Buffer.from(arena.subarray(0, len)); // the split rewrites the read in place: each round starts over
  const pkt = arena.subarray(VNET_HDR_LEN, 70000);
  const scratch = arena.subarray(140000, 140000 + 65535);
  let segs = 0;
  const emit = (_p: Buffer, l: number): void => {
    segs++;
    if (l !== 52 + MSS) throw new Error(`segment of ${l} bytes`);
  };
  const ROUNDS = 1000;
  const rounds = (a: Buffer | null) => (): void => {
    for (let i = 0; i < ROUNDS; i++) {
      arena.set(keep, 0);
      if (splitGso(arena, 0, len, pkt, scratch, emit, a) !== SplitResult.Ok) throw new Error('split refused');
    }
  };
  const inRing = perUnit(rounds(arena), ROUNDS * SEGS, 3);
  // The scratch holds the last segment built.
  assert.equal(scratch.readUInt32BE(24), (0xfffff000 + (SEGS - 1) * MSS) >>> 0, 'the last segment carries the wrapped sequence number');
  assert.equal(segs, 6 * ROUNDS * SEGS, 'every segment of every round');
  const withCopy = perUnit(rounds(null), ROUNDS * SEGS, 3);
  assert.ok(inRing < 0.5, `split in the ring: ${inRing.toFixed(2)} B per segment`);
  assert.ok(withCopy > 50, `Buffer#copy makes a view per segment: ${withCopy.toFixed(1)} B measured`);
});

test('coalescing segments handed over in one receive buffer allocates nothing per packet', () => {
  let written = 0;
  let bytes = 0;
  const gro = new GroBatch((_b, _o, l) => {
    written++;
    bytes += l;
    return true;
  }, true, true);
  const rx = Buffer.alloc(2048); // the engine's receive buffer, one packet after another
  const PER_FLUSH = 40;
  let seq = 1000;
  const ROUNDS = 300;
  const run = (): void => {
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < PER_FLUSH; i++) {
        const l = tcp(rx, 0, seq, MSS);
        seq = (seq + MSS) >>> 0;
        gro.add(rx, l);
      }
      gro.flush();
    }
  };
  const builders = perUnit(() => {
    for (let r = 0; r < ROUNDS * PER_FLUSH; r++) tcp(rx, 0, 1, MSS);
  }, ROUNDS * PER_FLUSH, 3);
  const total = perUnit(run, ROUNDS * PER_FLUSH, 3);
  assert.ok(written > 0 && gro.coalesced > written, `runs were coalesced (${gro.coalesced} packets in ${written} writes)`);
  assert.ok(total - builders < 0.5, `coalescing: ${(total - builders).toFixed(2)} B per packet (building the input: ${builders.toFixed(2)})`);
});
