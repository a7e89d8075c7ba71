// TUN reader thread: reads the TUN file descriptor in batches, off the libuv
// thread pool, handing packets to the main thread through a shared ring.
//
// Ring protocol (see tun.ts): ctrl[0] = packets written (stored by this
// thread, inside the native readBatch, as each packet lands), ctrl[1] =
// packets consumed (by the main thread), ctrl[2] = stop flag, ctrl[3] =
// batches published (wakeups; packets per batch for `status`), ctrl[4] =
// packets the kernel failed to hand over on a read and dropped. Slot i of the
// ring is bytes [i*SLOT, (i+1)*SLOT) of `data`, its length in lens[i]. The
// counters wrap as unsigned 32-bit numbers; slots is a power of two.
//
// One readBatch call waits for the first packet, then reads until the device
// has no more to give (or `batch` packets, or the ring is full), and this
// thread wakes the consumer once per call: one notify per batch rather than
// one per packet, and no per-packet cost of node's readSync.
import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { workerData } from 'node:worker_threads';
import type { NativeTun } from './tun.js';

interface TunWorkerData {
  /** This thread's own non-blocking duplicate of the queue's fd (native readerFd); closed when it stops. */
  fd: number;
  ctrl: SharedArrayBuffer;
  lens: SharedArrayBuffer;
  data: SharedArrayBuffer;
  slots: number;
  slotSize: number;
  /** Most packets one readBatch call reads before the consumer is woken. */
  batch: number;
  /** The native addon (larktun_tun.node). */
  addon: string;
}

/** How long one wait for the device lasts before the stop flag is looked at again. */
const WAIT_MS = 200;

const wd = workerData as TunWorkerData;
const native = createRequire(import.meta.url)(path.resolve(wd.addon)) as NativeTun;
const ctrl = new Int32Array(wd.ctrl);
const lens = new Int32Array(wd.lens);
const data = new Uint8Array(wd.data);
const { slots, slotSize, fd, batch } = wd;

try {
  readLoop();
} finally {
  closeSync(fd);
}

function readLoop(): void {
  for (;;) {
    if (Atomics.load(ctrl, 2) !== 0) break;
    let n: number;
    try {
      n = native.readBatch(fd, data, lens, ctrl, slots, slotSize, batch, WAIT_MS);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EBADF' || code === 'EBADFD' || code === 'EIO') break; // device deleted or closed on shutdown
      throw err;
    }
    if (n > 0) {
      Atomics.add(ctrl, 3, 1);
      Atomics.notify(ctrl, 0);
      continue;
    }
    // Nothing read: the wait timed out, or the ring is full. For a full ring,
    // wait for the main thread to consume (bounded, to re-check the stop flag).
    const written = Atomics.load(ctrl, 0);
    const consumed = Atomics.load(ctrl, 1);
    if ((written - consumed) >>> 0 >= slots) Atomics.wait(ctrl, 1, consumed, 100);
  }
}
