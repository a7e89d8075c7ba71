// Secrets handed out once (operator key, API keys, auth keys, node tokens) and
// stored only as SHA-256 hashes. A secret is "<kind>_<id>_<random>": the id part
// is stored in clear to find the row; the whole string is hashed and compared in
// constant time. The random part is 256 bits, so a fast hash is sufficient.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

export type SecretKind = 'lkop' | 'lkapi' | 'lkauth' | 'lknode' | 'lkrelay';

export interface NewSecret {
  secret: string;
  prefix: string;
  hash: string;
}

export function newSecret(kind: SecretKind): NewSecret {
  const prefix = randomBytes(6).toString('hex');
  const secret = `${kind}_${prefix}_${randomBytes(32).toString('base64url')}`;
  return { secret, prefix, hash: hashSecret(secret) };
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Splits a presented secret into kind and prefix, or null when malformed. */
export function parseSecret(secret: string): { kind: SecretKind; prefix: string } | null {
  const m = /^(lkop|lkapi|lkauth|lknode|lkrelay)_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$/.exec(secret);
  if (!m) return null;
  return { kind: m[1] as SecretKind, prefix: m[2] as string };
}

export function secretMatches(secret: string, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(secret), 'hex');
  const b = Buffer.from(storedHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Random per-link pre-shared key, 32 bytes, base64. */
export function newPsk(): string {
  return randomBytes(32).toString('base64');
}

/** A relay link's pre-shared key: 32 random bytes, hex. */
export function newLinkPsk(): string {
  return randomBytes(32).toString('hex');
}
