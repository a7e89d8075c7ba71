// A spin lock in shared memory, for the few words of state several packet
// workers update together (a link's sequence counter, its replay window, a
// flow table). Critical sections are a handful of loads and stores, so a
// waiter spins; a holder cannot be descheduled for long, but to keep every
// loop bounded a waiter that spun SPIN_LIMIT times sleeps 50 µs between tries
// (Atomics.wait is allowed on worker threads and, in Node, on the main thread).
//
// Word values: 0 free, 1 held. Not reentrant.

const SPIN_LIMIT = 256;

export function lock(a: Int32Array, i: number): void {
  if (Atomics.compareExchange(a, i, 0, 1) === 0) return;
  let spins = 0;
  for (;;) {
    if (Atomics.load(a, i) === 0 && Atomics.compareExchange(a, i, 0, 1) === 0) return;
    if (++spins >= SPIN_LIMIT) {
      Atomics.wait(a, i, 1, 0.05);
      spins = 0;
    }
  }
}

export function unlock(a: Int32Array, i: number): void {
  Atomics.store(a, i, 0);
}

/** A zeroed Int32Array of `words` words over a new SharedArrayBuffer. */
export function sharedWords(words: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(words * 4));
}
