// Link session state shared between threads (src/wire/shared.ts): senders on
// several threads draw each sequence number once; receivers on several
// threads accept each datagram once and share one forward-only epoch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawnWorker } from '../../src/runtime/worker.js';
import { MIN_EPOCH, RxCode, WireRx, WireTx, newRxShared, newTxShared } from '../../src/wire/index.js';

function run<T>(data: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const w = spawnWorker(import.meta.url, 'shared-worker', { workerData: data });
    w.once('message', (m) => resolve(m as T));
    w.once('error', reject);
  });
}

test('two WireTx over one shared state: one epoch, one counter, same bytes as a lone sender', () => {
  const psk = randomBytes(32);
  const epoch = MIN_EPOCH + 12345n;
  const shared = newTxShared(epoch);
  const a = new WireTx({ psk, from: 1, to: 2, shared });
  const b = new WireTx({ psk, from: 1, to: 2, shared });
  const lone = new WireTx({ psk, from: 1, to: 2, epoch });
  assert.equal(a.epoch, epoch);
  assert.equal(b.epoch, epoch);
  const pay = Buffer.from('hello, shared world');
  const outA = Buffer.alloc(100);
  const outB = Buffer.alloc(100);
  const outL = Buffer.alloc(100);
  const nA = a.seal(pay, 0, pay.length, outA);
  lone.seal(pay, 0, pay.length, outL);
  assert.deepEqual(outA.subarray(0, nA), outL.subarray(0, nA), 'seq 1 through the shared state is byte-identical');
  const nB = b.seal(pay, 0, pay.length, outB);
  lone.seal(pay, 0, pay.length, outL);
  assert.deepEqual(outB.subarray(0, nB), outL.subarray(0, nB), 'the other sender continues at seq 2');
  assert.equal(a.nextSeq, 3n);
  assert.throws(() => new WireTx({ psk, from: 1, to: 2, shared, epoch }), /leave it out/);
  assert.throws(() => new WireTx({ psk, from: 1, to: 2, shared: new Int32Array(6) }), /newTxShared/);
  // A caller error consumes no number.
  assert.throws(() => a.seal(pay, 0, pay.length, Buffer.alloc(10)), RangeError);
  assert.equal(a.nextSeq, 3n);
});

test('two threads sealing at once never draw the same sequence number', async () => {
  const psk = randomBytes(32);
  const shared = newTxShared();
  const count = 20000;
  const [r1, r2] = await Promise.all([
    run<{ seqs: Float64Array }>({ mode: 'seal', psk, shared, count }),
    run<{ seqs: Float64Array }>({ mode: 'seal', psk, shared, count }),
  ]);
  const all = new Set<number>([...r1.seqs, ...r2.seqs]);
  assert.equal(all.size, 2 * count, 'every number drawn once');
  assert.equal(Math.min(...all), 1);
  assert.equal(Math.max(...all), 2 * count);
});

test('two WireRx over one shared state: a datagram accepted by one is a replay to the other', () => {
  const psk = randomBytes(32);
  const tx = new WireTx({ psk, from: 1, to: 2 });
  const shared = newRxShared();
  const r1 = new WireRx({ psk, from: 1, to: 2, shared });
  const r2 = new WireRx({ psk, from: 1, to: 2, shared });
  const out = Buffer.alloc(100);
  const plain = Buffer.alloc(100);
  const n = tx.seal(Buffer.from('x'), 0, 1, out);
  assert.equal(r1.open(out, n, plain), RxCode.Accept);
  assert.equal(r2.open(out, n, plain), RxCode.Replay);
  assert.equal(r1.open(out, n, plain), RxCode.Replay);
  assert.equal(r2.epoch, tx.epoch);
  // A newer epoch adopted by one thread makes the old one old for both.
  const tx2 = new WireTx({ psk, from: 1, to: 2, epoch: tx.epoch + 1000n });
  const old = Buffer.alloc(100);
  const nOld = tx.seal(Buffer.from('y'), 0, 1, old);
  const n2 = tx2.seal(Buffer.from('z'), 0, 1, out);
  assert.equal(r2.open(out, n2, plain), RxCode.Accept);
  assert.equal(r1.open(old, nOld, plain), RxCode.OldEpoch);
  assert.equal(r1.epoch, tx2.epoch);
  // r1 still derives the new epoch's key on its own and keeps accepting.
  const n3 = tx2.seal(Buffer.from('w'), 0, 1, out);
  assert.equal(r1.open(out, n3, plain), RxCode.Accept);
  assert.equal(r2.open(out, n3, plain), RxCode.Replay);
  assert.throws(() => new WireRx({ psk, from: 1, to: 2, shared, epoch: MIN_EPOCH }), /leave it out/);
});

test('two threads opening the same datagrams accept each exactly once', async () => {
  const psk = randomBytes(32);
  const tx = new WireTx({ psk, from: 1, to: 2, obfuscate: false });
  const dgrams: Uint8Array[] = [];
  for (let i = 0; i < 3000; i++) {
    const out = Buffer.alloc(100);
    const n = tx.seal(Buffer.alloc(32, i & 0xff), 0, 32, out);
    dgrams.push(new Uint8Array(out.subarray(0, n)));
  }
  const shared = newRxShared();
  const [a, b] = await Promise.all([
    run<{ accepted: number; replays: number }>({ mode: 'open', psk, shared, dgrams }),
    run<{ accepted: number; replays: number }>({ mode: 'open', psk, shared, dgrams }),
  ]);
  assert.equal(a.accepted + b.accepted, dgrams.length, 'each datagram accepted once between the threads');
  assert.equal(a.replays + b.replays, dgrams.length, 'and refused as a replay by the other');
});
