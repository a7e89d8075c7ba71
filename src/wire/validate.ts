// Argument checks shared by the KDF, sender and receiver constructors. These run
// at set-up time, never per packet, and throw with a message naming the field.
import { MAX_EPOCH, MAX_NODE_ID, MIN_EPOCH, MIN_NODE_ID, PSK_LEN } from './constants.js';

export function assertNodeId(id: number, name: string): void {
  if (!Number.isInteger(id) || id < MIN_NODE_ID || id > MAX_NODE_ID) {
    throw new RangeError(`${name} must be an integer node id in ${MIN_NODE_ID}..${MAX_NODE_ID}, got ${String(id)}`);
  }
}

export function assertPsk(psk: Buffer, name = 'psk'): void {
  if (!Buffer.isBuffer(psk) || psk.length !== PSK_LEN) {
    throw new RangeError(`${name} must be a ${PSK_LEN}-byte Buffer`);
  }
}

/**
 * Checks an epoch. With `strict` (what a sender must emit) it must be at least
 * 2024-01-01 in nanoseconds; otherwise only non-zero. Always below 2^64.
 */
export function assertEpoch(epoch: bigint, name: string, strict: boolean): void {
  if (typeof epoch !== 'bigint' || epoch <= 0n || epoch > MAX_EPOCH) {
    throw new RangeError(`${name} must be a non-zero unsigned 64-bit bigint, got ${String(epoch)}`);
  }
  if (strict && epoch < MIN_EPOCH) {
    throw new RangeError(
      `${name} must be at least ${MIN_EPOCH} (2024-01-01T00:00:00Z in ns), got ${epoch}; is the clock set?`,
    );
  }
}

/**
 * The current wall-clock time in nanoseconds, as a sender's boot epoch. Fails
 * closed (throws) when the clock is before 2024-01-01 rather than emitting a
 * low epoch that peers would reject or that could repeat a previous session.
 */
export function wallClockEpoch(): bigint {
  const ms = Date.now();
  // Sub-millisecond part from the monotonic clock, so two quick restarts within
  // one millisecond still get distinct epochs.
  const subMs = process.hrtime.bigint() % 1_000_000n;
  const epoch = BigInt(ms) * 1_000_000n + subMs;
  assertEpoch(epoch, 'wall-clock epoch', true);
  return epoch;
}
