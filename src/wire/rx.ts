// Receiving half of one directional link (one peer -> this node), with the
// receive order of the protocol: header checks, forward-only epoch check
// (older epochs are dropped before any crypto), authenticate and decrypt,
// adopt a newer epoch only once it authenticated (resetting the replay
// window), then the anti-replay window.
import {
  FLAG_KEEPALIVE,
  FLAGS_RESERVED,
  HEADER_LEN,
  KEY_LEN,
  MAX_DATAGRAM,
  MAX_PLAINTEXT,
  MIN_DATAGRAM,
  OVERHEAD,
  TAG_LEN,
  WIRE_VERSION,
} from './constants.js';
import { linkKey, newObfsInput, newSessionInput, OBFS_INPUT_LEN, OBFS_INPUT_TAG_OFF, sessionKeyInto } from './kdf.js';
import { aeadOpen, blake2b256Keyed } from './sodium.js';
import { ReplayWindow } from './replay.js';
import { assertEpoch, assertPsk } from './validate.js';
import { ViewCache } from './views.js';
import { lock, unlock } from './lock.js';
import { isRxShared, RX_EPOCH_HI, RX_EPOCH_LO, RX_LOCK, RX_WINDOW } from './shared.js';

// Shared by every instance: the views are of the caller's buffers (an engine's
// one plaintext buffer serves all its links), so one cache serves them all and a
// link costs no view tables of its own. get() hands out a view used at once,
// and JavaScript runs one call at a time, so sharing is safe.
const RX_BODY_VIEWS = new ViewCache(MAX_PLAINTEXT + TAG_LEN);
const RX_OUT_VIEWS = new ViewCache(MAX_PLAINTEXT);
// A small datagram in a buffer the cache does not hold (a ring slot, a fresh
// Buffer per datagram) is copied here and opened from this buffer's cached
// views, instead of allocating a view for it (see TX_COPY_MAX).
const RX_COPY_MAX = 256 + TAG_LEN;
const RX_SCRATCH = Buffer.alloc(RX_COPY_MAX);
const RX_SCRATCH_VIEWS = new ViewCache(RX_COPY_MAX);

/** Little-endian u32 at `b[off]` as a signed 32-bit integer (never a boxed number). */
function get32(b: Buffer, off: number): number {
  return b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24);
}

/** Little-endian u32 at `b[off]`; `v` signed or unsigned (a typed-array store keeps the low 8 bits). */
function put32(b: Buffer, off: number, v: number): void {
  b[off] = v;
  b[off + 1] = v >>> 8;
  b[off + 2] = v >>> 16;
  b[off + 3] = v >>> 24;
}

/** a < b as unsigned 32-bit values, both given as signed 32-bit integers. */
function ult(a: number, b: number): boolean {
  return (a ^ 0x80000000) < (b ^ 0x80000000);
}

/** Outcome of WireRx#open. Everything but Accept is a silent, counted drop. */
export const RxCode = {
  /** Authenticated, fresh; the plaintext is in `out`. */
  Accept: 0,
  /** Too short, too long, wrong version, reserved flag bits, key_id of another peer, or zero epoch. */
  Malformed: 1,
  /** Epoch older than the session already accepted on this link; dropped before decrypting. */
  OldEpoch: 2,
  /** Authentication failed: wrong key, wrong direction, or bytes changed in transit. */
  AuthFail: 3,
  /** Sequence number already seen, or too far behind the newest one. */
  Replay: 4,
} as const;
export type RxCode = (typeof RxCode)[keyof typeof RxCode];

/** Stable snake_case names per code, indexed by the code (for counters and logs). */
export const RX_CODE_NAMES: readonly string[] = ['accept', 'malformed', 'old_epoch', 'auth_fail', 'replay'];

export interface WireRxOptions {
  /** 32-byte pre-shared key of this link. */
  readonly psk: Buffer;
  /** Node id of the sending peer (the expected key_id). */
  readonly from: number;
  /** Node id of this node. */
  readonly to: number;
  /** Expect masked headers (subnetra's default). Both ends must agree. */
  readonly obfuscate?: boolean;
  /**
   * Preload a session at this epoch, e.g. restored state: anything older is
   * dropped. Default: no session yet, the first authentic datagram sets it.
   */
  readonly epoch?: bigint;
  /**
   * Shared receiving state (newRxShared): the session epoch and the replay
   * window live there, so WireRx objects of several threads over the same
   * words accept each datagram at most once between them. `epoch` must then
   * be left out.
   */
  readonly shared?: Int32Array;
}

export class WireRx {
  readonly from: number;
  readonly to: number;
  readonly obfuscate: boolean;

  /** After Accept: length of the plaintext written to `out`. */
  plaintextLen = 0;
  /** After Accept: the datagram was a keepalive (flags bit 0). */
  keepalive = false;
  // Sequence halves of the last accepted datagram as signed 32-bit integers
  // (the same bits): a field holding a number above 2^31 would box a new heap
  // number on every store. lastSeqHi/lastSeqLo give them unsigned.
  private seqHiI32 = 0;
  private seqLoI32 = 0;

  private readonly link: Buffer;
  private key = Buffer.alloc(KEY_LEN);
  private candidate = Buffer.alloc(KEY_LEN);
  private readonly kdfInput = newSessionInput();
  /** Current session epoch as signed 32-bit halves (the bits of the unsigned ones); 0, 0: none yet. */
  private curHi = 0;
  private curLo = 0;
  private readonly window: ReplayWindow;
  private readonly shared: Int32Array | null;
  private readonly nonce = Buffer.alloc(12);
  private readonly hdr = Buffer.alloc(HEADER_LEN);
  private readonly pad = Buffer.alloc(32);
  private readonly padInput = newObfsInput();
  // The pad hash takes (ArrayBuffer, offset) operands: these never change.
  private readonly padAb: ArrayBufferLike;
  private readonly padOff: number;
  private readonly padInAb: ArrayBufferLike;
  private readonly padInOff: number;
  private readonly linkAb: ArrayBufferLike;
  private readonly linkOff: number;
  private readonly bodyViews = RX_BODY_VIEWS;
  private readonly outViews = RX_OUT_VIEWS;
  private readonly candHiLo = new Int32Array(2);

  constructor(opts: WireRxOptions) {
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
      if (!isRxShared(this.shared)) throw new TypeError('shared must come from newRxShared()');
      if (opts.epoch !== undefined) throw new TypeError('the epoch lives in the shared state; leave it out');
      this.window = new ReplayWindow(new Uint32Array(this.shared.buffer, this.shared.byteOffset, this.shared.length), RX_WINDOW);
    } else this.window = new ReplayWindow();
    if (opts.epoch !== undefined && opts.epoch !== 0n) {
      assertEpoch(opts.epoch, 'epoch', false);
      const hi = Number(opts.epoch >> 32n);
      const lo = Number(opts.epoch & 0xffffffffn);
      this.curHi = hi | 0;
      this.curLo = lo | 0;
      sessionKeyInto(this.key, this.kdfInput, this.link, hi, lo);
    }
  }

  /** After Accept: high unsigned 32-bit half of its sequence number (a full u64). */
  get lastSeqHi(): number {
    return this.seqHiI32 >>> 0;
  }

  /** After Accept: low unsigned 32-bit half of its sequence number. */
  get lastSeqLo(): number {
    return this.seqLoI32 >>> 0;
  }

  /** After Accept: the datagram's sequence number. Allocates a bigint: not for the hot path. */
  get lastSeq(): bigint {
    return (BigInt(this.lastSeqHi) << 32n) | BigInt(this.lastSeqLo);
  }

  /** Epoch of the current receive session; 0n before the first accepted datagram. */
  get epoch(): bigint {
    const sh = this.shared;
    if (sh !== null) return (BigInt(sh[RX_EPOCH_HI]! >>> 0) << 32n) | BigInt(sh[RX_EPOCH_LO]! >>> 0);
    return (BigInt(this.curHi >>> 0) << 32n) | BigInt(this.curLo >>> 0);
  }

  /**
   * Cheap pre-filter: does this datagram look like it comes from `from` on this
   * link? Unmasks the header (when obfuscating) into scratch and checks
   * version 1 and key_id. Changes no session state. Under obfuscation this is
   * one keyed hash; a wrong key passes with probability below 2^-24, and open()
   * still authenticates.
   */
  matches(dgram: Buffer, len: number): boolean {
    if (!this.loadHeader(dgram, len)) return false;
    const h = this.obfuscate ? this.hdr : dgram;
    return h[0] === WIRE_VERSION && (h[2]! | (h[3]! << 8)) === this.from;
  }

  /**
   * Authenticates and decrypts `dgram[0 .. len]`, writing the plaintext to
   * `out[0 .. plaintextLen]` (`out` must not overlap `dgram` and must hold the
   * plaintext; MAX_PLAINTEXT bytes always suffice). Returns an RxCode; on
   * Accept the fields plaintextLen, keepalive, lastSeqHi/lastSeqLo and epoch describe the
   * datagram. Never throws for any datagram content and allocates nothing
   * unless the epoch changes.
   */
  open(dgram: Buffer, len: number, out: Buffer): RxCode {
    if (!this.loadHeader(dgram, len)) return RxCode.Malformed;
    return this.finish(dgram, len, out);
  }

  /**
   * open() for a datagram on which matches() just returned true: reuses the
   * header unmasked there instead of hashing again. Only valid immediately
   * after that call, on the same unchanged bytes.
   */
  openMatched(dgram: Buffer, len: number, out: Buffer): RxCode {
    return this.finish(dgram, len, out);
  }

  /** Copies the (unmasked) header into scratch; false when too short to do so. */
  private loadHeader(dgram: Buffer, len: number): boolean {
    if (!(len >= 0 && len <= dgram.length)) return false;
    if (!this.obfuscate) return len >= HEADER_LEN;
    if (len < MIN_DATAGRAM) return false;
    // pad = BLAKE2b-256(key = link, "subnetra-v1-obfs" ‖ tag); the tag is the last 16 bytes.
    const input = this.padInput;
    const tagOff = len - TAG_LEN;
    for (let i = 0; i < TAG_LEN; i++) input[OBFS_INPUT_TAG_OFF + i] = dgram[tagOff + i]!;
    blake2b256Keyed(this.padAb, this.padOff, this.padInAb, this.padInOff, OBFS_INPUT_LEN, this.linkAb, this.linkOff);
    const pad = this.pad;
    const hdr = this.hdr;
    for (let i = 0; i < HEADER_LEN; i++) hdr[i] = dgram[i]! ^ pad[i]!;
    return true;
  }

  private finish(dgram: Buffer, len: number, out: Buffer): RxCode {
    if (!(len >= MIN_DATAGRAM && len <= MAX_DATAGRAM && len <= dgram.length)) return RxCode.Malformed;
    const h = this.obfuscate ? this.hdr : dgram;
    const flags = h[1]!;
    if (h[0] !== WIRE_VERSION || (flags & FLAGS_RESERVED) !== 0) return RxCode.Malformed;
    if ((h[2]! | (h[3]! << 8)) !== this.from) return RxCode.Malformed;
    // Epoch and sequence halves as signed 32-bit integers (the same bits):
    // always small integers, so nothing is boxed whatever their values;
    // unsigned order is compared with the sign bit flipped (ult).
    const eLo = get32(h, 4);
    const eHi = get32(h, 8);
    if (eLo === 0 && eHi === 0) return RxCode.Malformed;
    const sLo = get32(h, 12);
    const sHi = get32(h, 16);

    if (this.shared !== null) return this.finishShared(dgram, len, out, flags, eHi, eLo, sHi, sLo);
    // Forward-only epochs.
    const curHi = this.curHi;
    const curLo = this.curLo;
    if (ult(eHi, curHi) || (eHi === curHi && ult(eLo, curLo))) return RxCode.OldEpoch;
    const newer = eHi !== curHi || eLo !== curLo;
    let key = this.key;
    if (newer) {
      // Candidate key for a newer epoch; not committed until it authenticates.
      // A run of datagrams at the same not-yet-accepted epoch derives it once.
      const c = this.candHiLo;
      if (c[0] !== eHi || c[1] !== eLo) {
        sessionKeyInto(this.candidate, this.kdfInput, this.link, eHi >>> 0, eLo >>> 0);
        c[0] = eHi;
        c[1] = eLo;
      }
      key = this.candidate;
    }

    if (!this.decrypt(dgram, len, out, sHi, sLo, key)) return RxCode.AuthFail;

    if (newer) {
      // Authentic: adopt the newer session and start a fresh window.
      this.candidate = this.key;
      this.key = key;
      this.candHiLo[0] = 0;
      this.candHiLo[1] = 0;
      this.curHi = eHi;
      this.curLo = eLo;
      this.window.reset();
    }
    if (!this.window.acceptHiLo(sHi, sLo)) return RxCode.Replay;

    this.plaintextLen = len - OVERHEAD;
    this.keepalive = (flags & FLAG_KEEPALIVE) !== 0;
    this.seqHiI32 = sHi;
    this.seqLoI32 = sLo;
    return RxCode.Accept;
  }

  /**
   * Authenticates and decrypts the body of `dgram[0 .. len]` into `out` under
   * `key`; false: it does not authenticate. `len` is within MIN_DATAGRAM ..
   * MAX_DATAGRAM and `dgram` (checked by the caller); `out` is checked here.
   */
  private decrypt(dgram: Buffer, len: number, out: Buffer, sHi: number, sLo: number, key: Buffer): boolean {
    const ptLen = len - OVERHEAD;
    if (out.length < ptLen) throw new RangeError(`out needs ${ptLen} bytes, has ${out.length}`);
    const nonce = this.nonce;
    put32(nonce, 0, sLo);
    put32(nonce, 4, sHi);
    const bodyLen = len - HEADER_LEN;
    let body = this.bodyViews.find(dgram, HEADER_LEN, bodyLen);
    if (body === null) {
      if (bodyLen <= RX_COPY_MAX) {
        const scratch = RX_SCRATCH;
        for (let i = 0; i < bodyLen; i++) scratch[i] = dgram[HEADER_LEN + i]!;
        body = RX_SCRATCH_VIEWS.get(scratch, 0, bodyLen);
      } else body = dgram.subarray(HEADER_LEN, len);
    }
    return aeadOpen(this.outViews.get(out, 0, ptLen), body, nonce, key);
  }

  /**
   * finish() over shared state. this.key stays the key of epoch (curHi, curLo)
   * as seen by this thread; the session epoch and the window are the shared
   * ones, read and changed under the lock (before decrypting: is the epoch
   * already older; after: adopt it if newer, then the window). Halves are
   * signed 32-bit integers, as in finish().
   */
  private finishShared(
    dgram: Buffer,
    len: number,
    out: Buffer,
    flags: number,
    eHi: number,
    eLo: number,
    sHi: number,
    sLo: number,
  ): RxCode {
    const sh = this.shared!;
    lock(sh, RX_LOCK);
    let shHi = sh[RX_EPOCH_HI]!;
    let shLo = sh[RX_EPOCH_LO]!;
    unlock(sh, RX_LOCK);
    if (ult(eHi, shHi) || (eHi === shHi && ult(eLo, shLo))) return RxCode.OldEpoch;

    let key = this.key;
    const ours = eHi === this.curHi && eLo === this.curLo && (eHi !== 0 || eLo !== 0);
    if (!ours) {
      const c = this.candHiLo;
      if (c[0] !== eHi || c[1] !== eLo) {
        sessionKeyInto(this.candidate, this.kdfInput, this.link, eHi >>> 0, eLo >>> 0);
        c[0] = eHi;
        c[1] = eLo;
      }
      key = this.candidate;
    }

    if (!this.decrypt(dgram, len, out, sHi, sLo, key)) return RxCode.AuthFail;
    if (!ours) {
      // Authentic: this thread now keys epoch (eHi, eLo).
      this.candidate = this.key;
      this.key = key;
      this.candHiLo[0] = 0;
      this.candHiLo[1] = 0;
      this.curHi = eHi;
      this.curLo = eLo;
    }

    lock(sh, RX_LOCK);
    shHi = sh[RX_EPOCH_HI]!;
    shLo = sh[RX_EPOCH_LO]!;
    if (ult(eHi, shHi) || (eHi === shHi && ult(eLo, shLo))) {
      unlock(sh, RX_LOCK); // another thread adopted a newer session meanwhile
      return RxCode.OldEpoch;
    }
    if (eHi !== shHi || eLo !== shLo) {
      sh[RX_EPOCH_HI] = eHi;
      sh[RX_EPOCH_LO] = eLo;
      this.window.reset();
    }
    const fresh = this.window.acceptHiLo(sHi, sLo);
    unlock(sh, RX_LOCK);
    if (!fresh) return RxCode.Replay;

    this.plaintextLen = len - OVERHEAD;
    this.keepalive = (flags & FLAG_KEEPALIVE) !== 0;
    this.seqHiI32 = sHi;
    this.seqLoI32 = sLo;
    return RxCode.Accept;
  }
}
