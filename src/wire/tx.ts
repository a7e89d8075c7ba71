// Sending half of one directional link (this node -> one peer).
import {
  FLAG_KEEPALIVE,
  HEADER_LEN,
  KEY_LEN,
  MAX_PLAINTEXT,
  OVERHEAD,
  TAG_LEN,
  WIRE_VERSION,
} from './constants.js';
import { linkKey, newObfsInput, newSessionInput, OBFS_INPUT_LEN, OBFS_INPUT_TAG_OFF, sessionKeyInto } from './kdf.js';
import { aeadSeal, blake2b256Keyed } from './sodium.js';
import { assertEpoch, assertPsk, wallClockEpoch } from './validate.js';
import { ViewCache } from './views.js';
import { lock, unlock } from './lock.js';
import { isTxShared, TX_EPOCH_HI, TX_EPOCH_LO, TX_EXHAUSTED, TX_LOCK, TX_SEQ_HI, TX_SEQ_LO } from './shared.js';

// Shared by every instance: the views are of the caller's buffers (an engine's
// one plaintext buffer serves all its links), so one cache serves them all and a
// link costs no view tables of its own. get() hands out a view used at once,
// and JavaScript runs one call at a time, so sharing is safe.
const TX_MSG_VIEWS = new ViewCache(MAX_PLAINTEXT);
const TX_OUT_VIEWS = new ViewCache(MAX_PLAINTEXT + TAG_LEN);
// Views of `out` at HEADER_LEN for sealing in place: a cache of their own, so
// that misses of rotating payload buffers in TX_MSG_VIEWS never keep `out` from
// being adopted.
const TX_INPLACE_VIEWS = new ViewCache(MAX_PLAINTEXT);

/**
 * A payload in a buffer the view cache does not hold (one of a ring's many
 * slots) and at most this long is copied into `out` and sealed in place there
 * (a byte loop is cheaper than a new view at this size, and allocates nothing);
 * a longer one gets a fresh view.
 */
export const TX_COPY_MAX = 256;

const EMPTY = Buffer.alloc(0);

/** Little-endian u32 at `b[off]` (a typed-array store keeps the low 8 bits). */
function put32(b: Buffer, off: number, v: number): void {
  b[off] = v;
  b[off + 1] = v >>> 8;
  b[off + 2] = v >>> 16;
  b[off + 3] = v >>> 24;
}

export interface WireTxOptions {
  /** 32-byte pre-shared key of this link. */
  readonly psk: Buffer;
  /** Node id of the sender (this node); goes on the wire as key_id. */
  readonly from: number;
  /** Node id of the receiving peer. */
  readonly to: number;
  /** Mask the header (subnetra's default). Both ends must agree. */
  readonly obfuscate?: boolean;
  /**
   * Session epoch in nanoseconds. Defaults to the wall clock now; must be
   * non-zero and at least 2024-01-01. A new epoch must be used whenever the
   * sequence counter starts again.
   */
  readonly epoch?: bigint;
  /**
   * Shared sending state (newTxShared): the epoch and the sequence counter live
   * there, so WireTx objects of several threads over the same words send one
   * session. `epoch` must then be left out.
   */
  readonly shared?: Int32Array;
}

/**
 * Seals inner packets into datagrams for one peer. Keeps the session key, the
 * sequence counter and all scratch buffers, so sealing allocates nothing.
 */
export class WireTx {
  readonly from: number;
  readonly to: number;
  readonly obfuscate: boolean;
  readonly epoch: bigint;

  private readonly link: Buffer;
  private readonly key = Buffer.alloc(KEY_LEN);
  /** Epoch halves as signed 32-bit integers (same bits): small integers, never boxed. */
  private readonly epochLo: number;
  private readonly epochHi: number;
  private readonly nonce = Buffer.alloc(12);
  private readonly pad = Buffer.alloc(32);
  private readonly padInput = newObfsInput();
  // The pad hash takes (ArrayBuffer, offset) operands: these never change.
  private readonly padAb: ArrayBufferLike;
  private readonly padOff: number;
  private readonly padInAb: ArrayBufferLike;
  private readonly padInOff: number;
  private readonly linkAb: ArrayBufferLike;
  private readonly linkOff: number;
  private readonly msgViews = TX_MSG_VIEWS;
  private readonly outViews = TX_OUT_VIEWS;
  /**
   * Next sequence number as two 32-bit halves (a full u64); starts at 1. Kept
   * as signed 32-bit integers (the same bits): a field holding a number above
   * 2^31 would box a new heap number on every store.
   */
  private seqHi = 0;
  private seqLo = 1;
  private exhausted = false;
  private readonly shared: Int32Array | null;

  constructor(opts: WireTxOptions) {
    assertPsk(opts.psk);
    this.from = opts.from;
    this.to = opts.to;
    this.link = linkKey(opts.psk, opts.from, opts.to); // validates the ids
    this.padAb = this.pad.buffer;
    this.padOff = this.pad.byteOffset;
    this.padInAb = this.padInput.buffer;
    this.padInOff = this.padInput.byteOffset;
    this.linkAb = this.link.buffer;
    this.linkOff = this.link.byteOffset;
    this.obfuscate = opts.obfuscate ?? true;
    this.shared = opts.shared ?? null;
    if (this.shared !== null) {
      if (!isTxShared(this.shared)) throw new TypeError('shared must come from newTxShared()');
      if (opts.epoch !== undefined) throw new TypeError('epoch comes from the shared state; leave it out');
    }
    const sh = this.shared;
    const epoch =
      sh !== null ? (BigInt(sh[TX_EPOCH_HI]! >>> 0) << 32n) | BigInt(sh[TX_EPOCH_LO]! >>> 0) : (opts.epoch ?? wallClockEpoch());
    assertEpoch(epoch, 'epoch', true);
    this.epoch = epoch;
    const hi = Number(epoch >> 32n);
    const lo = Number(epoch & 0xffffffffn);
    this.epochHi = hi | 0;
    this.epochLo = lo | 0;
    sessionKeyInto(this.key, newSessionInput(), this.link, hi, lo);
  }

  /** The sequence number the next seal() will use (starts at 1). Allocates: not for the hot path. */
  get nextSeq(): bigint {
    const sh = this.shared;
    if (sh !== null) return (BigInt(sh[TX_SEQ_HI]! >>> 0) << 32n) | BigInt(sh[TX_SEQ_LO]! >>> 0);
    return (BigInt(this.seqHi >>> 0) << 32n) | BigInt(this.seqLo >>> 0);
  }

  /**
   * Seals `payload[payloadOff .. payloadOff + payloadLen]` into a datagram
   * written at `out[0..]` and returns its length (payloadLen + OVERHEAD).
   * Consumes one sequence number. The payload may already sit in place at
   * `out[HEADER_LEN..]` (payload === out, payloadOff === HEADER_LEN): the
   * cipher works in place (a payload elsewhere in `out` is moved there
   * first). Throws RangeError on a caller error (payload too large, out too
   * small); never for any payload content.
   */
  seal(payload: Buffer, payloadOff: number, payloadLen: number, out: Buffer, keepalive = false): number {
    if (this.shared !== null) return this.sealShared(payload, payloadOff, payloadLen, out, keepalive);
    if (this.exhausted) throw new RangeError('sequence space exhausted; start a new epoch');
    const n = this.write(this.seqLo, this.seqHi, payload, payloadOff, payloadLen, out, keepalive);
    if (this.seqLo !== -1) this.seqLo = (this.seqLo + 1) | 0;
    else if (this.seqHi !== -1) {
      this.seqLo = 0;
      this.seqHi = (this.seqHi + 1) | 0;
    } else this.exhausted = true;
    return n;
  }

  /** seal() drawing the sequence number from the shared counter. */
  private sealShared(payload: Buffer, payloadOff: number, payloadLen: number, out: Buffer, keepalive: boolean): number {
    // Check the caller's arguments before a number is consumed (write() would throw after).
    if (!(payloadLen >= 0 && payloadLen <= MAX_PLAINTEXT && payloadOff >= 0 && payloadOff + payloadLen <= payload.length && out.length >= payloadLen + OVERHEAD)) {
      return this.write(0, 0, payload, payloadOff, payloadLen, out, keepalive); // throws the RangeError
    }
    const sh = this.shared!;
    lock(sh, TX_LOCK);
    if (sh[TX_EXHAUSTED] !== 0) {
      unlock(sh, TX_LOCK);
      throw new RangeError('sequence space exhausted; start a new epoch');
    }
    // Signed 32-bit halves (the same bits), as in seal().
    const lo = sh[TX_SEQ_LO]!;
    const hi = sh[TX_SEQ_HI]!;
    if (lo !== -1) sh[TX_SEQ_LO] = (lo + 1) | 0;
    else if (hi !== -1) {
      sh[TX_SEQ_LO] = 0;
      sh[TX_SEQ_HI] = (hi + 1) | 0;
    } else sh[TX_EXHAUSTED] = 1;
    unlock(sh, TX_LOCK);
    return this.write(lo, hi, payload, payloadOff, payloadLen, out, keepalive);
  }

  /** Seals an empty-bodied keepalive (flags bit 0) into `out`; returns OVERHEAD. */
  sealKeepalive(out: Buffer): number {
    return this.seal(EMPTY, 0, 0, out, true);
  }

  /**
   * Like seal(), but with an explicit sequence number and without touching the
   * counter. For tests and the debug CLI: reusing a number under the same
   * epoch breaks the cipher, so the data plane must use seal().
   */
  sealWithSeq(
    seq: number | bigint,
    payload: Buffer,
    payloadOff: number,
    payloadLen: number,
    out: Buffer,
    keepalive = false,
  ): number {
    const s = BigInt(seq);
    if (s < 0n || s > 0xffffffffffffffffn) throw new RangeError(`seq must be an unsigned 64-bit integer, got ${s}`);
    return this.write(Number(s & 0xffffffffn) | 0, Number(s >> 32n) | 0, payload, payloadOff, payloadLen, out, keepalive);
  }

  private write(
    seqLo: number,
    seqHi: number,
    payload: Buffer,
    payloadOff: number,
    payloadLen: number,
    out: Buffer,
    keepalive: boolean,
  ): number {
    if (!(payloadLen >= 0 && payloadLen <= MAX_PLAINTEXT)) {
      throw new RangeError(`payload of ${payloadLen} bytes exceeds the ${MAX_PLAINTEXT}-byte maximum`);
    }
    if (!(payloadOff >= 0 && payloadOff + payloadLen <= payload.length)) {
      throw new RangeError('payload range lies outside the payload buffer');
    }
    const total = payloadLen + OVERHEAD;
    if (out.length < total) throw new RangeError(`out needs ${total} bytes, has ${out.length}`);

    // Take the views before writing the header: with an in-place payload the
    // header bytes are outside the message range anyway.
    const body = this.outViews.get(out, HEADER_LEN, payloadLen + TAG_LEN);
    let msg: Buffer | null;
    if (payload === out) {
      // Sealed in place (the cipher allows it); moved there first if it sits elsewhere in `out`.
      if (payloadOff !== HEADER_LEN) out.copyWithin(HEADER_LEN, payloadOff, payloadOff + payloadLen);
      msg = TX_INPLACE_VIEWS.get(out, HEADER_LEN, payloadLen);
    } else {
      msg = this.msgViews.find(payload, payloadOff, payloadLen);
      if (msg === null) {
        if (payloadLen <= TX_COPY_MAX) {
          // Copied into `out`, whose views are cached, and sealed in place there.
          for (let i = 0; i < payloadLen; i++) out[HEADER_LEN + i] = payload[payloadOff + i]!;
          msg = TX_INPLACE_VIEWS.get(out, HEADER_LEN, payloadLen);
        } else msg = payload.subarray(payloadOff, payloadOff + payloadLen);
      }
    }

    // Byte stores rather than Buffer#writeUInt32LE: a half above 2^31 is not a
    // small integer, and handing it to a call that is not inlined would box it.
    const nonce = this.nonce;
    put32(nonce, 0, seqLo);
    put32(nonce, 4, seqHi);
    aeadSeal(body, msg, nonce, this.key);

    out[0] = WIRE_VERSION;
    out[1] = keepalive ? FLAG_KEEPALIVE : 0;
    const from = this.from;
    out[2] = from;
    out[3] = from >>> 8;
    put32(out, 4, this.epochLo);
    put32(out, 8, this.epochHi);
    put32(out, 12, seqLo);
    put32(out, 16, seqHi);

    if (this.obfuscate) {
      // pad = BLAKE2b-256(key = link, "subnetra-v1-obfs" ‖ tag); the tag is the last 16 bytes.
      const input = this.padInput;
      const tagOff = total - TAG_LEN;
      for (let i = 0; i < TAG_LEN; i++) input[OBFS_INPUT_TAG_OFF + i] = out[tagOff + i]!;
      blake2b256Keyed(this.padAb, this.padOff, this.padInAb, this.padInOff, OBFS_INPUT_LEN, this.linkAb, this.linkOff);
      const pad = this.pad;
      for (let i = 0; i < HEADER_LEN; i++) out[i] = out[i]! ^ pad[i]!;
    }
    return total;
  }
}
