// The seal and open paths allocate nothing per packet once the JIT has
// settled: the heap bytes per packet (v8.GCProfiler-corrected, see
// alloc-meter.ts) stay under a loose bound where a single boxed number (16 B)
// or a Buffer view (~96 B) per packet would blow it. Buffers are used as the
// daemon uses them: inner packets from rotating ring slots (plain TUN reads)
// or one fixed buffer, one seal buffer, one receive handover buffer.
//
// Each case is measured over several windows and the smallest counts: code
// that is still interpreted or baseline-compiled boxes numbers, and on a busy
// machine the optimizing compile may land late; allocation in the optimized
// code shows in every window.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_PLAINTEXT, MIN_EPOCH, RxCode, WireRx, WireTx, newRxShared, newTxShared } from '../../src/wire/index.js';
import { sodiumPath } from '../../src/wire/sodium.js';
import { TX_SEQ_LO } from '../../src/wire/shared.js';
import { heapAllocated } from './alloc-meter.js';

const SLOT = 2048;
const RING = 64;
const WINDOW = 20_000;
const WINDOWS = 12;
/** Bytes per packet: far below one boxed number (16 B) or one view (~96 B) per packet. */
const BOUND = 2;

interface Link {
  seal(i: number): number;
  open(len: number): void;
}

function link(opts: { obfuscate: boolean; size: number; ring: boolean; shared?: boolean }): Link {
  const psk = Buffer.alloc(32, 0x3c);
  // Epoch and sequence low halves above 2^31: boxed if anything handles them as unsigned numbers.
  const epoch = MIN_EPOCH + 0x80000000n + 77n;
  const txShared = newTxShared(epoch);
  txShared[TX_SEQ_LO] = 0x90000000 | 0;
  const tx = opts.shared
    ? new WireTx({ psk, from: 7, to: 9, obfuscate: opts.obfuscate, shared: txShared })
    : new WireTx({ psk, from: 7, to: 9, obfuscate: opts.obfuscate, epoch });
  // The counter's private halves are signed 32-bit integers (see WireTx): start above 2^31.
  if (!opts.shared) (tx as unknown as { seqLo: number }).seqLo = 0x90000000 | 0;
  const rx = new WireRx({ psk, from: 7, to: 9, obfuscate: opts.obfuscate, ...(opts.shared ? { shared: newRxShared() } : {}) });
  const ringMem = Buffer.alloc(RING * SLOT);
  const src: Buffer[] = [];
  for (let i = 0; i < (opts.ring ? RING : 1); i++) {
    const b = ringMem.subarray(i * SLOT, (i + 1) * SLOT);
    for (let j = 0; j < opts.size; j++) b[j] = (i * 3 + j) & 0xff;
    src.push(b);
  }
  const arena = Buffer.alloc(2 * SLOT);
  const sealBuf = arena.subarray(0, SLOT);
  const handover = arena.subarray(SLOT, 2 * SLOT);
  const plain = Buffer.alloc(MAX_PLAINTEXT);
  const size = opts.size;
  return {
    seal(i: number): number {
      const n = tx.seal(src[i % src.length]!, 0, size, sealBuf);
      arena.copyWithin(SLOT, 0, n); // the wire: seal buffer → receive handover buffer
      return n;
    },
    open(len: number): void {
      if (!rx.matches(handover, len) || rx.openMatched(handover, len, plain) !== RxCode.Accept) throw new Error('datagram not accepted');
    },
  };
}

function perPacket(run: () => void): number {
  let best = Infinity;
  for (let w = 0; w < WINDOWS; w++) {
    const r = heapAllocated(run);
    best = Math.min(best, r.bytes / WINDOW);
  }
  return best;
}

for (const c of [
  { name: '64 B from ring slots, obfuscated', obfuscate: true, size: 64, ring: true },
  { name: '64 B from ring slots, plain headers', obfuscate: false, size: 64, ring: true },
  { name: '1400 B from one buffer, obfuscated', obfuscate: true, size: 1400, ring: false },
  { name: '64 B, shared (multi-thread) session state', obfuscate: true, size: 64, ring: true, shared: true },
]) {
  test(`seal and open allocate nothing per packet: ${c.name}`, () => {
    const l = link(c);
    let i = 0;
    const sealOnly = (): void => {
      for (let k = 0; k < WINDOW; k++) l.seal(i++);
    };
    const sealOpen = (): void => {
      for (let k = 0; k < WINDOW; k++) l.open(l.seal(i++));
    };
    for (let k = 0; k < 10; k++) sealOpen(); // warm-up
    const seal = perPacket(sealOnly);
    const both = perPacket(sealOpen);
    assert.ok(seal < BOUND, `seal allocates ${seal.toFixed(2)} B per packet (crypto calls: ${sodiumPath})`);
    assert.ok(both < BOUND, `seal + open allocate ${both.toFixed(2)} B per packet (crypto calls: ${sodiumPath})`);
  });
}

test('the meter sees a per-packet allocation (a fresh view per packet)', () => {
  const buf = Buffer.alloc(SLOT);
  let keep = 0;
  const run = (): void => {
    for (let k = 0; k < WINDOW; k++) keep += buf.subarray(k & 63, 100).length;
  };
  for (let k = 0; k < 10; k++) run();
  const b = perPacket(run);
  assert.ok(keep > 0);
  assert.ok(b > 50, `a subarray per iteration measured ${b.toFixed(2)} B`);
});
