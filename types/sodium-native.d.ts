// Hand-written declarations for the small part of sodium-native that Larktun
// uses. sodium-native is CommonJS; its module.exports object is the default
// export under ESM. Every function insists on exact-length typed-array views.
declare module 'sodium-native' {
  interface SodiumNative {
    readonly crypto_generichash_BYTES: number;
    readonly crypto_generichash_KEYBYTES: number;
    readonly crypto_aead_chacha20poly1305_ietf_ABYTES: number;
    readonly crypto_aead_chacha20poly1305_ietf_KEYBYTES: number;
    readonly crypto_aead_chacha20poly1305_ietf_NPUBBYTES: number;

    /** BLAKE2b: fills `output` (16..64 bytes) with the hash of `input`, keyed when `key` is given. */
    crypto_generichash(output: Uint8Array, input: Uint8Array, key?: Uint8Array | null): void;

    /** Seals `m` into `c` (exactly m.length + 16 bytes); returns bytes written. */
    crypto_aead_chacha20poly1305_ietf_encrypt(
      c: Uint8Array,
      m: Uint8Array,
      ad: Uint8Array | null,
      nsec: null,
      npub: Uint8Array,
      k: Uint8Array,
    ): number;

    /** Opens `c` into `m` (exactly c.length - 16 bytes); throws when authentication fails. */
    crypto_aead_chacha20poly1305_ietf_decrypt(
      m: Uint8Array,
      nsec: null,
      c: Uint8Array,
      ad: Uint8Array | null,
      npub: Uint8Array,
      k: Uint8Array,
    ): number;
  }

  const sodium: SodiumNative;
  export default sodium;
}
