// Sizes and fixed values of the subnetra v1 datagram. The numbers come from the
// conformance vectors file (header_len, tag_len, max_plaintext, wire_version).

/** Byte 0 of every v1 datagram. */
export const WIRE_VERSION = 1;
/** Fixed cleartext (or masked) header in front of the ciphertext. */
export const HEADER_LEN = 20;
/** Poly1305 authenticator appended after the ciphertext. */
export const TAG_LEN = 16;
/** Largest inner packet a datagram may carry (v1 raw_direct inner MTU). */
export const MAX_PLAINTEXT = 1452;
/** Bytes a datagram adds on top of its inner packet. */
export const OVERHEAD = HEADER_LEN + TAG_LEN;
/** Smallest well-formed datagram: header and tag around an empty body (a keepalive). */
export const MIN_DATAGRAM = OVERHEAD;
/** Largest well-formed datagram. */
export const MAX_DATAGRAM = MAX_PLAINTEXT + OVERHEAD;

/** flags bit 0: the datagram is a keepalive, not a tunnelled packet. */
export const FLAG_KEEPALIVE = 0x01;
/** Every other flags bit is reserved and must be zero in v1. */
export const FLAGS_RESERVED = 0xfe;

/** 2024-01-01T00:00:00Z in nanoseconds: the lowest epoch a sender may use. */
export const MIN_EPOCH = 1_704_067_200_000_000_000n;
/** Epochs are unsigned 64-bit values. */
export const MAX_EPOCH = (1n << 64n) - 1n;

/** Node ids are the on-wire key_id, so they must fit a non-zero u16. */
export const MIN_NODE_ID = 1;
export const MAX_NODE_ID = 0xffff;

/**
 * Largest sequence number: seq is a full unsigned 64-bit value. The hot path
 * keeps it as two 32-bit halves (no BigInt per packet).
 */
export const MAX_SEQ = 0xffffffffffffffffn;

/** Length of the keys produced by the KDF and used by the AEAD. */
export const KEY_LEN = 32;
/** Length of a pre-shared link key. */
export const PSK_LEN = 32;
