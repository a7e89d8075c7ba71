// The batched UDP layer (src/dataplane/io/batch.ts) allocates nothing per
// datagram: queueing sends (nextBuffer + send + the sendmmsg flushes) and the
// receiving end's batch callback handing each datagram to a handler, measured
// with the GC-corrected heap meter (test/wire/alloc-meter.ts) on loopback.
// The receive window is asynchronous, so promise and timer bookkeeping of the
// waiting itself counts too: the bound is loose (node:dgram costs ~850 B per
// datagram), the send bound tight.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BatchPorts, loadNativeUdp } from '../../src/dataplane/io/batch.js';
import { heapAllocated, heapAllocatedAsync } from '../wire/alloc-meter.js';

const native = loadNativeUdp();
const skip = native instanceof Error ? native.message : false;

test('batched UDP send and receive allocate nothing per datagram', { skip }, async () => {
  const n = native as Exclude<typeof native, Error>;
  let got = 0;
  let bytes = 0;
  const common = { ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onSendError: () => {}, log: () => {} };
  const rx = new BatchPorts(n, { ...common, onDatagram: (_m, len) => void ((got++, (bytes += len))) }, true, null);
  const tx = new BatchPorts(n, { ...common, onDatagram: () => {} }, true, null);
  await rx.start();
  await tx.start();
  try {
    const port = rx.ports()[0]!;
    const sock = tx.sockFor(4)!;
    const BURST = 512;
    const send = (count: number, size: number): void => {
      for (let i = 0; i < count; i++) {
        const b = tx.nextBuffer(sock);
        b[0] = i & 0xff;
        tx.send(sock, b, size, port, '127.0.0.1');
      }
    };
    const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
    const exchange = async (bursts: number, size: number): Promise<void> => {
      for (let k = 0; k < bursts; k++) {
        const want = got + BURST;
        send(BURST, size);
        tx.flush();
        for (let spins = 0; got < want && spins < 2000; spins++) await tick();
        got = Math.max(got, want); // loss on a busy machine is not what is measured
      }
    };
    await exchange(100, 100); // warm-up
    // Send side: synchronous; the kernel may drop what the receiver cannot hold.
    let best = Infinity;
    for (let w = 0; w < 6; w++) {
      const r = heapAllocated(() => send(20 * BURST, 100));
      tx.flush();
      best = Math.min(best, r.bytes / (20 * BURST));
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(best < 1, `send allocates ${best.toFixed(2)} B per datagram`);
    // Both ends, mixed sizes (GSO runs and single datagrams).
    let bestBoth = Infinity;
    for (let w = 0; w < 4; w++) {
      const r = await heapAllocatedAsync(async () => {
        await exchange(20, 100);
        await exchange(20, 61 + (w % 3));
      });
      bestBoth = Math.min(bestBoth, r.bytes / (40 * BURST));
    }
    assert.ok(bestBoth < 16, `send + receive allocate ${bestBoth.toFixed(2)} B per datagram`);
    assert.ok(bytes > 0);
  } finally {
    await rx.close();
    await tx.close();
  }
});
