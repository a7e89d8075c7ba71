// TUN reader thread: a blocking read loop on the TUN file descriptor, off the
// libuv thread pool, handing packets to the main thread through a shared ring.
//
// Ring protocol (see tun.ts): ctrl[0] = packets written (by this thread),
// ctrl[1] = packets consumed (by the main thread), ctrl[2] = stop flag.
// Slot i of the ring is bytes [i*SLOT, (i+1)*SLOT) of `data`, its length in lens[i].
import { readSync } from 'node:fs';
import { workerData } from 'node:worker_threads';

interface TunWorkerData {
  fd: number;
  ctrl: SharedArrayBuffer;
  lens: SharedArrayBuffer;
  data: SharedArrayBuffer;
  slots: number;
  slotSize: number;
}

const wd = workerData as TunWorkerData;
const ctrl = new Int32Array(wd.ctrl);
const lens = new Int32Array(wd.lens);
const data = Buffer.from(wd.data);
const { slots, slotSize, fd } = wd;

let written = Atomics.load(ctrl, 0);
for (;;) {
  if (Atomics.load(ctrl, 2) !== 0) break;
  const consumed = Atomics.load(ctrl, 1);
  if (written - consumed >= slots) {
    // Ring full: wait for the main thread to consume (bounded wait re-checks stop).
    Atomics.wait(ctrl, 1, consumed, 100);
    continue;
  }
  const slot = written % slots;
  let n: number;
  try {
    n = readSync(fd, data, slot * slotSize, slotSize, null);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EINTR') continue;
    if (code === 'EBADF' || code === 'EBADFD') break; // device closed on shutdown
    throw err;
  }
  if (n <= 0) continue;
  lens[slot] = n;
  written = (written + 1) | 0;
  Atomics.store(ctrl, 0, written);
  Atomics.notify(ctrl, 0);
}
