// Node identity: a node's key pair and the proof of possession it gives when it
// registers. Pure (node:crypto only), shared by the server (verifies) and the
// managed daemon and tests (sign).
//
// The node key is an Ed25519 public key, written `nodekey:<64 hex digits>` (the
// form peers see in their maps). The private key stays in the node's state dir.
// To register, a node asks the server for a nonce (POST /node/v1/register/challenge)
// and signs
//
//   "larktun-v1-node-register" ‖ u8(32) ‖ nonce ‖ u16be(len) ‖ node_key ‖ u16be(len) ‖ tenant
//
// (node_key and tenant as UTF-8). The label separates this signature from any
// other use of the key; the nonce is single-use and bound to the auth key it was
// issued for; the tenant name comes with the nonce.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';

export const NODE_KEY_PREFIX = 'nodekey:';
export const REGISTER_PROOF_LABEL = 'larktun-v1-node-register';
export const NONCE_BYTES = 32;
const SIGNATURE_BYTES = 64;
/** DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw 32-byte key follows. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
const NODE_KEY_RE = /^nodekey:([0-9a-f]{64})$/;

export interface NodeKeyPair {
  /** `nodekey:<hex>`: the public key, as registered and shown to peers. */
  nodeKey: string;
  /** The private key, PKCS#8 DER in base64 (what the state file keeps). */
  privateKey: string;
}

function publicFromPrivate(priv: KeyObject): string {
  const raw = createPublicKey(priv).export({ format: 'der', type: 'spki' }).subarray(ED25519_SPKI_PREFIX.length);
  return `${NODE_KEY_PREFIX}${raw.toString('hex')}`;
}

function loadPrivate(privateKey: string): KeyObject {
  const k = createPrivateKey({ key: Buffer.from(privateKey, 'base64'), format: 'der', type: 'pkcs8' });
  if (k.asymmetricKeyType !== 'ed25519') throw new Error(`node private key is ${k.asymmetricKeyType ?? 'unknown'}, not Ed25519`);
  return k;
}

export function generateNodeKey(): NodeKeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  return { nodeKey: publicFromPrivate(privateKey), privateKey: privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64') };
}

/** The node key of a stored private key; throws when it is not an Ed25519 PKCS#8 key. */
export function nodeKeyOf(privateKey: string): string {
  return publicFromPrivate(loadPrivate(privateKey));
}

/** True when `nodeKey` is an Ed25519 node key (`nodekey:` and 64 hex digits), the only kind that can be proven. */
export function isProvableNodeKey(nodeKey: string): boolean {
  return NODE_KEY_RE.test(nodeKey);
}

export function proofMessage(nonce: Buffer, nodeKey: string, tenant: string): Buffer {
  if (nonce.length !== NONCE_BYTES) throw new Error(`nonce must be ${NONCE_BYTES} bytes`);
  const field = (s: string): Buffer => {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(b.length);
    return Buffer.concat([len, b]);
  };
  return Buffer.concat([Buffer.from(REGISTER_PROOF_LABEL, 'ascii'), Buffer.from([NONCE_BYTES]), nonce, field(nodeKey), field(tenant)]);
}

/** The registration proof: an Ed25519 signature, base64url. `nonce` as the server sent it (base64url). */
export function signRegistration(privateKey: string, nonce: string, nodeKey: string, tenant: string): string {
  return sign(null, proofMessage(Buffer.from(nonce, 'base64url'), nodeKey, tenant), loadPrivate(privateKey)).toString('base64url');
}

/** Whether `signature` (base64url) proves possession of `nodeKey` for this nonce and tenant. Never throws. */
export function verifyRegistration(nodeKey: string, nonce: Buffer, tenant: string, signature: string): boolean {
  const m = NODE_KEY_RE.exec(nodeKey);
  if (!m) return false;
  const sig = Buffer.from(signature, 'base64url');
  if (sig.length !== SIGNATURE_BYTES || nonce.length !== NONCE_BYTES) return false;
  try {
    const pub = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, Buffer.from(m[1] as string, 'hex')]), format: 'der', type: 'spki' });
    return verify(null, proofMessage(nonce, nodeKey, tenant), pub, sig);
  } catch {
    return false; // not a point on the curve
  }
}

/**
 * A short fingerprint of a node key for people to compare: "SHA256:" and the
 * unpadded base64 of the SHA-256 of the raw 32-byte key (as ssh-keygen -l shows
 * keys). A key that is not an Ed25519 node key is hashed as its text.
 */
export function nodeKeyFingerprint(nodeKey: string): string {
  const m = NODE_KEY_RE.exec(nodeKey);
  const raw = m ? Buffer.from(m[1] as string, 'hex') : Buffer.from(nodeKey, 'utf8');
  return `SHA256:${createHash('sha256').update(raw).digest('base64').replace(/=+$/, '')}`;
}
