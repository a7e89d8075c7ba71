// Link session state in shared memory, for packet engines that run one link on
// several worker threads at once. Every thread builds its own WireTx / WireRx
// (keys and scratch buffers are per thread) over the same state words, so:
// - senders draw sequence numbers from one counter (a number is never used
//   twice under one epoch, whichever thread seals);
// - receivers share one epoch and one replay window (a datagram accepted by
//   one thread is a replay to every other, wherever it arrives from).
// The words are guarded by a spin lock in word 0; the critical sections are a
// few loads and stores.
import { REPLAY_WORDS } from './replay.js';
import { assertEpoch, wallClockEpoch } from './validate.js';

// Sending side: lock, next sequence number (hi, lo), exhausted flag, epoch (hi, lo).
export const TX_LOCK = 0;
export const TX_SEQ_HI = 1;
export const TX_SEQ_LO = 2;
export const TX_EXHAUSTED = 3;
export const TX_EPOCH_HI = 4;
export const TX_EPOCH_LO = 5;
export const TX_SHARED_WORDS = 6;

// Receiving side: lock, current epoch (hi, lo; 0 = no session yet), replay window.
export const RX_LOCK = 0;
export const RX_EPOCH_HI = 1;
export const RX_EPOCH_LO = 2;
export const RX_WINDOW = 3;
export const RX_SHARED_WORDS = RX_WINDOW + REPLAY_WORDS;

/** Shared sending state of one link session: epoch (default: the wall clock now), sequence counter from 1. */
export function newTxShared(epoch: bigint = wallClockEpoch()): Int32Array {
  assertEpoch(epoch, 'epoch', true);
  const a = new Int32Array(new SharedArrayBuffer(TX_SHARED_WORDS * 4));
  a[TX_SEQ_LO] = 1;
  a[TX_EPOCH_HI] = Number(epoch >> 32n) | 0;
  a[TX_EPOCH_LO] = Number(epoch & 0xffffffffn) | 0;
  return a;
}

/** Shared receiving state of one link: no session yet, empty window. */
export function newRxShared(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(RX_SHARED_WORDS * 4));
}

export function isTxShared(a: Int32Array): boolean {
  return a.buffer instanceof SharedArrayBuffer && a.length === TX_SHARED_WORDS;
}

export function isRxShared(a: Int32Array): boolean {
  return a.buffer instanceof SharedArrayBuffer && a.length === RX_SHARED_WORDS;
}
