// The node-key proof (src/control/nodekey.ts): the exact message layout (daemons
// and servers of different versions must agree on it), and what verifies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, verify } from 'node:crypto';
import { generateNodeKey, isProvableNodeKey, nodeKeyOf, proofMessage, signRegistration, verifyRegistration } from '../../src/control/nodekey.js';

test('the proof message is label ‖ u8(32) ‖ nonce ‖ u16be-prefixed node_key ‖ u16be-prefixed tenant', () => {
  const nonce = Buffer.alloc(32, 7);
  const m = proofMessage(nonce, 'nodekey:ab', 'acmé');
  const expected = Buffer.concat([
    Buffer.from('larktun-v1-node-register'), Buffer.from([32]), nonce,
    Buffer.from([0, 10]), Buffer.from('nodekey:ab'), Buffer.from([0, 5]), Buffer.from('acmé', 'utf8'),
  ]);
  assert.equal(m.toString('hex'), expected.toString('hex'));
  assert.throws(() => proofMessage(Buffer.alloc(31), 'k', 't'), /32 bytes/);
});

test('a key pair signs a proof that verifies for exactly that nonce, key and tenant', () => {
  const id = generateNodeKey();
  assert.ok(isProvableNodeKey(id.nodeKey));
  assert.equal(nodeKeyOf(id.privateKey), id.nodeKey);
  const nonce = Buffer.alloc(32, 1);
  const sig = signRegistration(id.privateKey, nonce.toString('base64url'), id.nodeKey, 'acme');
  assert.equal(Buffer.from(sig, 'base64url').length, 64);
  assert.equal(verifyRegistration(id.nodeKey, nonce, 'acme', sig), true);
  // It is a plain Ed25519 signature of the message by the raw public key.
  const raw = Buffer.from(id.nodeKey.slice('nodekey:'.length), 'hex');
  const pub = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
  assert.equal(verify(null, proofMessage(nonce, id.nodeKey, 'acme'), pub, Buffer.from(sig, 'base64url')), true);

  const other = generateNodeKey();
  assert.equal(verifyRegistration(id.nodeKey, Buffer.alloc(32, 2), 'acme', sig), false, 'another nonce');
  assert.equal(verifyRegistration(id.nodeKey, nonce, 'acme2', sig), false, 'another tenant');
  assert.equal(verifyRegistration(other.nodeKey, nonce, 'acme', sig), false, 'another key');
  assert.equal(verifyRegistration(id.nodeKey, nonce, 'acme', sig.slice(0, -2)), false, 'short signature');
  assert.equal(verifyRegistration(id.nodeKey.toUpperCase(), nonce, 'acme', sig), false, 'not the nodekey:<hex> form');
  assert.equal(verifyRegistration(`nodekey:${'ff'.repeat(32)}`, nonce, 'acme', sig), false, 'not a curve point: false, no throw');
  assert.equal(isProvableNodeKey('QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE='), false);
});
