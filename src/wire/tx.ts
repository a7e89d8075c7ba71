// Sending half of one directional link (this node -> one peer).
import sodium from 'sodium-native';
import {
  FLAG_KEEPALIVE,
  HEADER_LEN,
  KEY_LEN,
  MAX_PLAINTEXT,
  OVERHEAD,
  TAG_LEN,
  WIRE_VERSION,
} from './constants.js';
import { linkKey, newObfsInput, newSessionInput, obfsPadInto, sessionKeyInto } from './kdf.js';
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

const EMPTY = Buffer.alloc(0);

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
  private readonly epochLo: number;
  private readonly epochHi: number;
  private readonly nonce = Buffer.alloc(12);
  private readonly pad = Buffer.alloc(32);
  private readonly padInput = newObfsInput();
  private readonly msgViews = TX_MSG_VIEWS;
  private readonly outViews = TX_OUT_VIEWS;
  /** Next sequence number as two unsigned 32-bit halves (a full u64); starts at 1. */
  private seqHi = 0;
  private seqLo = 1;
  private exhausted = false;
  private readonly shared: Int32Array | null;

  constructor(opts: WireTxOptions) {
    assertPsk(opts.psk);
    this.from = opts.from;
    this.to = opts.to;
    this.link = linkKey(opts.psk, opts.from, opts.to); // validates the ids
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
    this.epochHi = Number(epoch >> 32n);
    this.epochLo = Number(epoch & 0xffffffffn);
    sessionKeyInto(this.key, newSessionInput(), this.link, this.epochHi, this.epochLo);
  }

  /** The sequence number the next seal() will use (starts at 1). Allocates: not for the hot path. */
  get nextSeq(): bigint {
    const sh = this.shared;
    if (sh !== null) return (BigInt(sh[TX_SEQ_HI]! >>> 0) << 32n) | BigInt(sh[TX_SEQ_LO]! >>> 0);
    return (BigInt(this.seqHi) << 32n) | BigInt(this.seqLo);
  }

  /**
   * Seals `payload[payloadOff .. payloadOff + payloadLen]` into a datagram
   * written at `out[0..]` and returns its length (payloadLen + OVERHEAD).
   * Consumes one sequence number. The payload may already sit in place at
   * `out[HEADER_LEN..]` (payload === out, payloadOff === HEADER_LEN): the
   * cipher works in place. Throws RangeError on a caller error (payload too
   * large, out too small); never for any payload content.
   */
  seal(payload: Buffer, payloadOff: number, payloadLen: number, out: Buffer, keepalive = false): number {
    if (this.shared !== null) return this.sealShared(payload, payloadOff, payloadLen, out, keepalive);
    if (this.exhausted) throw new RangeError('sequence space exhausted; start a new epoch');
    const n = this.write(this.seqLo, this.seqHi, payload, payloadOff, payloadLen, out, keepalive);
    if (this.seqLo !== 0xffffffff) this.seqLo++;
    else if (this.seqHi !== 0xffffffff) {
      this.seqLo = 0;
      this.seqHi++;
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
    const lo = sh[TX_SEQ_LO]! >>> 0;
    const hi = sh[TX_SEQ_HI]! >>> 0;
    if (lo !== 0xffffffff) sh[TX_SEQ_LO] = (lo + 1) | 0;
    else if (hi !== 0xffffffff) {
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
    return this.write(Number(s & 0xffffffffn), Number(s >> 32n), payload, payloadOff, payloadLen, out, keepalive);
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
    const msg = this.msgViews.get(payload, payloadOff, payloadLen);
    const body = this.outViews.get(out, HEADER_LEN, payloadLen + TAG_LEN);

    const nonce = this.nonce;
    nonce.writeUInt32LE(seqLo, 0);
    nonce.writeUInt32LE(seqHi, 4);
    sodium.crypto_aead_chacha20poly1305_ietf_encrypt(body, msg, null, null, nonce, this.key);

    out[0] = WIRE_VERSION;
    out[1] = keepalive ? FLAG_KEEPALIVE : 0;
    out.writeUInt16LE(this.from, 2);
    out.writeUInt32LE(this.epochLo, 4);
    out.writeUInt32LE(this.epochHi, 8);
    out.writeUInt32LE(seqLo, 12);
    out.writeUInt32LE(seqHi, 16);

    if (this.obfuscate) {
      const pad = this.pad;
      obfsPadInto(pad, this.padInput, this.link, out, total - TAG_LEN);
      for (let i = 0; i < HEADER_LEN; i++) out[i] = out[i]! ^ pad[i]!;
    }
    return total;
  }
}
