// Key schedule of subnetra v1: BLAKE2b-256 in its native keyed mode (not HMAC).
// Integers fed to the KDF are big-endian, unlike the little-endian header.
import sodium from 'sodium-native';
import { KEY_LEN } from './constants.js';
import { blake2b256Keyed } from './sodium.js';
import { assertEpoch, assertNodeId, assertPsk } from './validate.js';

const LINK_LABEL = Buffer.from('subnetra-v1-link', 'ascii');
const SESSION_LABEL = Buffer.from('subnetra-v1-session', 'ascii');
const OBFS_LABEL = Buffer.from('subnetra-v1-obfs', 'ascii');

/** Offset of the 8-byte big-endian epoch inside a session-KDF input. */
export const SESSION_INPUT_EPOCH_OFF = SESSION_LABEL.length;
/** Length of the session-KDF input (label ‖ u64be epoch). */
export const SESSION_INPUT_LEN = SESSION_LABEL.length + 8;
/** Offset of the 16-byte tag inside an obfuscation-pad input. */
export const OBFS_INPUT_TAG_OFF = OBFS_LABEL.length;
/** Length of the obfuscation-pad input (label ‖ tag). */
export const OBFS_INPUT_LEN = OBFS_LABEL.length + 16;

/**
 * Directional link key for traffic sent by node `from` to node `to`:
 * BLAKE2b-256(key = psk, "subnetra-v1-link" ‖ u32be(from) ‖ u32be(to)).
 */
export function linkKey(psk: Buffer, from: number, to: number): Buffer {
  assertPsk(psk);
  assertNodeId(from, 'from');
  assertNodeId(to, 'to');
  const msg = Buffer.alloc(LINK_LABEL.length + 8);
  LINK_LABEL.copy(msg, 0);
  msg.writeUInt32BE(from, LINK_LABEL.length);
  msg.writeUInt32BE(to, LINK_LABEL.length + 4);
  const out = Buffer.alloc(KEY_LEN);
  sodium.crypto_generichash(out, msg, psk);
  return out;
}

/**
 * Session key of one sender lifetime:
 * BLAKE2b-256(key = linkKey, "subnetra-v1-session" ‖ u64be(epoch)).
 */
export function sessionKey(link: Buffer, epoch: bigint): Buffer {
  if (link.length !== KEY_LEN) throw new RangeError(`link key must be ${KEY_LEN} bytes, got ${link.length}`);
  assertEpoch(epoch, 'epoch', false);
  const input = newSessionInput();
  input.writeBigUInt64BE(epoch, SESSION_INPUT_EPOCH_OFF);
  const out = Buffer.alloc(KEY_LEN);
  sodium.crypto_generichash(out, input, link);
  return out;
}

/** A reusable session-KDF input with the label already in place. */
export function newSessionInput(): Buffer {
  const b = Buffer.alloc(SESSION_INPUT_LEN);
  SESSION_LABEL.copy(b, 0);
  return b;
}

/**
 * Derives a session key into `out` without allocating. `input` comes from
 * newSessionInput(); the epoch is given as its two 32-bit halves.
 */
export function sessionKeyInto(out: Buffer, input: Buffer, link: Buffer, epochHi: number, epochLo: number): void {
  input.writeUInt32BE(epochHi, SESSION_INPUT_EPOCH_OFF);
  input.writeUInt32BE(epochLo, SESSION_INPUT_EPOCH_OFF + 4);
  sodium.crypto_generichash(out, input, link);
}

/** A reusable obfuscation-pad input with the label already in place. */
export function newObfsInput(): Buffer {
  const b = Buffer.alloc(OBFS_INPUT_LEN);
  OBFS_LABEL.copy(b, 0);
  return b;
}

/**
 * Computes the 32-byte header pad BLAKE2b-256(key = linkKey, "subnetra-v1-obfs" ‖ tag)
 * into `pad` (only its first 20 bytes are used). The tag is read from
 * `dgram[tagOff .. tagOff + 16]`; nothing is allocated. Throws RangeError
 * unless `pad` holds 32 bytes, `input` comes from newObfsInput(), `link` is
 * 32 bytes and the tag lies inside `dgram`. WireTx and WireRx do the same
 * inline, with their operands' buffers and offsets read once.
 */
export function obfsPadInto(pad: Buffer, input: Buffer, link: Buffer, dgram: Buffer, tagOff: number): void {
  // The hash below is called without sodium-native's argument checks (a bad
  // length there aborts the process), so check them here; off the packet path.
  if (pad.length < 32 || input.length !== OBFS_INPUT_LEN || link.length !== KEY_LEN || !(tagOff >= 0 && tagOff + 16 <= dgram.length)) {
    throw new RangeError('obfsPadInto: pad must hold 32 bytes, input come from newObfsInput(), link be 32 bytes and the tag lie inside dgram');
  }
  // A byte loop: Buffer#copy of a sub-range allocates a temporary view.
  for (let i = 0; i < 16; i++) input[OBFS_INPUT_TAG_OFF + i] = dgram[tagOff + i]!;
  blake2b256Keyed(pad.buffer, pad.byteOffset, input.buffer, input.byteOffset, OBFS_INPUT_LEN, link.buffer, link.byteOffset);
}
