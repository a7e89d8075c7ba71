// The three libsodium calls of the packet path, made as cheaply as
// sodium-native allows.
//
// sodium-native's public functions are JavaScript wrappers that check every
// argument (a dozen assert() calls) and throw on a failed authentication; under
// them sits the compiled binding (`sodium-native/binding.js`), which takes the
// same typed arrays, or for BLAKE2b (ArrayBuffer, offset, length) triples, and
// returns a status instead of throwing. At 64-byte packets the wrappers cost
// about a sixth of each call and a failed open allocates an Error with a stack
// trace, so the packet path calls the binding directly. The binding's own
// checks are C assert()s that abort the process: every caller here passes
// lengths it has already validated (the wire layer's callers never see that
// difference).
//
// The binding is not sodium-native's documented API, so it is adopted only
// after a self-test at load: known inputs through both the binding and the
// public functions must give the same bytes and statuses. If the binding is
// missing or differs (another sodium-native version), the public functions
// are used instead and `sodiumPath` says 'wrapper' (correct, but that path
// makes three Buffer views per pad hash: it is not allocation-free).
import { createRequire } from 'node:module';
import sodium from 'sodium-native';

interface Binding {
  crypto_aead_chacha20poly1305_ietf_encrypt(c: Uint8Array, m: Uint8Array, ad: undefined, npub: Uint8Array, k: Uint8Array): number;
  crypto_aead_chacha20poly1305_ietf_decrypt(m: Uint8Array, c: Uint8Array, ad: undefined, npub: Uint8Array, k: Uint8Array): number;
  crypto_generichash(
    out: ArrayBufferLike,
    outOff: number,
    outLen: number,
    input: ArrayBufferLike,
    inOff: number,
    inLen: number,
    key: ArrayBufferLike,
    keyOff: number,
    keyLen: number,
  ): number;
}

/**
 * ChaCha20-Poly1305 (IETF) seal: `c` (exactly m.length + 16 bytes) receives
 * ciphertext ‖ tag. `npub` is 12 bytes, `k` 32.
 */
export let aeadSeal: (c: Uint8Array, m: Uint8Array, npub: Uint8Array, k: Uint8Array) => void;
/**
 * ChaCha20-Poly1305 (IETF) open: `m` (exactly c.length - 16 bytes) receives
 * the plaintext; false when the tag does not authenticate (nothing thrown,
 * nothing allocated).
 */
export let aeadOpen: (m: Uint8Array, c: Uint8Array, npub: Uint8Array, k: Uint8Array) => boolean;
/**
 * Keyed BLAKE2b with a 32-byte output and a 32-byte key, every operand given
 * as (ArrayBuffer, byte offset): out[outOff .. +32] = BLAKE2b-256(key = k[kOff .. +32], in[inOff .. +inLen]).
 */
export let blake2b256Keyed: (
  out: ArrayBufferLike,
  outOff: number,
  input: ArrayBufferLike,
  inOff: number,
  inLen: number,
  k: ArrayBufferLike,
  kOff: number,
) => void;

/** Which entry points are in use: 'binding' (direct) or 'wrapper' (the public functions). */
export let sodiumPath: 'binding' | 'wrapper';

function useWrappers(): void {
  aeadSeal = (c, m, npub, k) => {
    sodium.crypto_aead_chacha20poly1305_ietf_encrypt(c as Buffer, m as Buffer, null, null, npub as Buffer, k as Buffer);
  };
  aeadOpen = (m, c, npub, k) => {
    try {
      sodium.crypto_aead_chacha20poly1305_ietf_decrypt(m as Buffer, null, c as Buffer, null, npub as Buffer, k as Buffer);
      return true;
    } catch {
      return false;
    }
  };
  blake2b256Keyed = (out, outOff, input, inOff, inLen, k, kOff) => {
    sodium.crypto_generichash(
      Buffer.from(out as ArrayBuffer, outOff, 32),
      Buffer.from(input as ArrayBuffer, inOff, inLen),
      Buffer.from(k as ArrayBuffer, kOff, 32),
    );
  };
  sodiumPath = 'wrapper';
}

function useBinding(b: Binding): void {
  const enc = b.crypto_aead_chacha20poly1305_ietf_encrypt;
  const dec = b.crypto_aead_chacha20poly1305_ietf_decrypt;
  const gh = b.crypto_generichash;
  aeadSeal = (c, m, npub, k) => {
    enc(c, m, undefined, npub, k);
  };
  aeadOpen = (m, c, npub, k) => dec(m, c, undefined, npub, k) === m.length;
  blake2b256Keyed = (out, outOff, input, inOff, inLen, k, kOff) => {
    gh(out, outOff, 32, input, inOff, inLen, k, kOff, 32);
  };
  sodiumPath = 'binding';
}

/** Known inputs through the binding and the public functions: same bytes, same verdicts. */
function bindingAgrees(b: Binding): boolean {
  const key = Buffer.alloc(32);
  const nonce = Buffer.alloc(12);
  const msg = Buffer.alloc(67);
  for (let i = 0; i < 32; i++) key[i] = (i * 7 + 3) & 0xff;
  for (let i = 0; i < 12; i++) nonce[i] = i + 1;
  for (let i = 0; i < msg.length; i++) msg[i] = (i * 13) & 0xff;
  const c1 = Buffer.alloc(msg.length + 16);
  const c2 = Buffer.alloc(msg.length + 16);
  sodium.crypto_aead_chacha20poly1305_ietf_encrypt(c1, msg, null, null, nonce, key);
  if (b.crypto_aead_chacha20poly1305_ietf_encrypt(c2, msg, undefined, nonce, key) !== c2.length || !c1.equals(c2)) return false;
  const m2 = Buffer.alloc(msg.length);
  if (b.crypto_aead_chacha20poly1305_ietf_decrypt(m2, c2, undefined, nonce, key) !== msg.length || !m2.equals(msg)) return false;
  c2[c2.length - 1]! ^= 1;
  if (b.crypto_aead_chacha20poly1305_ietf_decrypt(m2, c2, undefined, nonce, key) === msg.length) return false;
  const h1 = Buffer.alloc(32);
  const arena = Buffer.alloc(32 + 67 + 32 + 3); // out, input and key at odd offsets inside one buffer
  sodium.crypto_generichash(h1, msg, key);
  msg.copy(arena, 33);
  key.copy(arena, 101);
  b.crypto_generichash(arena.buffer, arena.byteOffset + 1, 32, arena.buffer, arena.byteOffset + 33, msg.length, arena.buffer, arena.byteOffset + 101, 32);
  return h1.equals(arena.subarray(1, 33));
}

let binding: Binding | null = null;

function load(): void {
  try {
    const req = createRequire(import.meta.url);
    // The binding's calling convention is that of sodium-native 5.
    const major = Number(String((req('sodium-native/package.json') as { version?: string }).version ?? '').split('.')[0]);
    if (major !== 5) return;
    const b = req('sodium-native/binding.js') as Binding;
    if (
      typeof b.crypto_aead_chacha20poly1305_ietf_encrypt === 'function' &&
      typeof b.crypto_aead_chacha20poly1305_ietf_decrypt === 'function' &&
      typeof b.crypto_generichash === 'function' &&
      bindingAgrees(b)
    ) {
      binding = b;
    }
  } catch {
    binding = null;
  }
}

/**
 * Chooses the entry points: 'binding' when it passed the self-test (otherwise
 * the wrappers stay), 'wrapper' always possible. Returns the path now in use.
 * For tests and benchmarks that compare the two; the default is the binding.
 */
export function selectSodiumPath(path: 'binding' | 'wrapper'): 'binding' | 'wrapper' {
  if (path === 'binding' && binding !== null) useBinding(binding);
  else useWrappers();
  return sodiumPath;
}

load();
selectSodiumPath('binding');
