// Header helpers for the data plane's peer lookup and for offline tools.
// headerKeyId is a hot-path peek; decodeHeader/unmaskHeader allocate and are
// meant for diagnostics (the CLI, tests, logs).
import { FLAG_KEEPALIVE, HEADER_LEN, KEY_LEN, TAG_LEN } from './constants.js';
import { newObfsInput, obfsPadInto } from './kdf.js';

/**
 * The key_id (sender node id) of a non-obfuscated datagram, or -1 when it is
 * too short to carry a header. Under obfuscation the key_id is masked; use
 * WireRx#matches to trial candidate peers instead.
 */
export function headerKeyId(dgram: Buffer, len: number = dgram.length): number {
  if (len < HEADER_LEN) return -1;
  return dgram[2]! | (dgram[3]! << 8);
}

/** The fields of a (cleartext) v1 header, for display. */
export interface WireHeader {
  readonly version: number;
  readonly flags: number;
  readonly keepalive: boolean;
  readonly keyId: number;
  readonly epoch: bigint;
  readonly seq: bigint;
}

/** Reads the 20-byte header at the start of `buf` (which must hold at least 20 bytes). */
export function decodeHeader(buf: Buffer): WireHeader {
  if (buf.length < HEADER_LEN) throw new RangeError(`a header needs ${HEADER_LEN} bytes, got ${buf.length}`);
  const flags = buf[1]!;
  return {
    version: buf[0]!,
    flags,
    keepalive: (flags & FLAG_KEEPALIVE) !== 0,
    keyId: buf.readUInt16LE(2),
    epoch: buf.readBigUInt64LE(4),
    seq: buf.readBigUInt64LE(12),
  };
}

/**
 * Returns a fresh copy of the 20 header bytes of an obfuscated datagram with
 * the pad removed, using the directional link key. `len` must be at least
 * header + tag. A wrong key simply yields garbage.
 */
export function unmaskHeader(dgram: Buffer, len: number, link: Buffer): Buffer {
  if (len < HEADER_LEN + TAG_LEN || len > dgram.length) {
    throw new RangeError(`an obfuscated datagram needs at least ${HEADER_LEN + TAG_LEN} bytes`);
  }
  if (link.length !== KEY_LEN) throw new RangeError(`link key must be ${KEY_LEN} bytes`);
  const pad = Buffer.alloc(32);
  obfsPadInto(pad, newObfsInput(), link, dgram, len - TAG_LEN);
  const out = Buffer.alloc(HEADER_LEN);
  for (let i = 0; i < HEADER_LEN; i++) out[i] = dgram[i]! ^ pad[i]!;
  return out;
}
