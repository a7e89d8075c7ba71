// The wire layer's two ways into libsodium (src/wire/sodium.ts): sodium-native's
// binding called directly (the default, after its self-test) and the public
// wrapper functions (the fallback) give the subnetra vectors byte for byte and
// the same verdicts; and every way a payload reaches the cipher (a cached
// buffer, a small payload copied from an uncached one, a large one through a
// fresh view, in place) seals the same bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HEADER_LEN, MAX_DATAGRAM, MAX_PLAINTEXT, MIN_EPOCH, RxCode, WireRx, WireTx } from '../../src/wire/index.js';
import { selectSodiumPath, sodiumPath } from '../../src/wire/sodium.js';
import { TX_COPY_MAX } from '../../src/wire/tx.js';
import { hex, loadVectors } from './vectors.js';

const file = loadVectors();

test('the binding passed its self-test here (the packet path does not fall back)', () => {
  assert.equal(sodiumPath, 'binding');
});

for (const path of ['binding', 'wrapper'] as const) {
  test(`${path}: subnetra sender vectors, plain and obfuscated, sealed and opened`, () => {
    assert.equal(selectSodiumPath(path), path);
    try {
      for (const v of file.vectors) {
        const i = v.input;
        const psk = hex(i.psk);
        const pt = hex(i.plaintext);
        const out = Buffer.alloc(MAX_DATAGRAM);
        const plain = Buffer.alloc(MAX_PLAINTEXT);
        for (const obfuscate of [false, true]) {
          const want = obfuscate ? file.obfuscated_vectors.find((o) => o.name === v.name)!.datagram : v.output.datagram;
          const tx = new WireTx({ psk, from: i.from_id, to: i.to_id, epoch: BigInt(i.epoch), obfuscate });
          const n = tx.sealWithSeq(BigInt(i.seq), pt, 0, pt.length, out);
          assert.equal(out.subarray(0, n).toString('hex'), want, `${v.name} obfuscate=${obfuscate}`);
          const rx = new WireRx({ psk, from: i.from_id, to: i.to_id, obfuscate });
          const d = hex(want);
          assert.equal(rx.open(d, d.length, plain), RxCode.Accept);
          assert.equal(plain.subarray(0, rx.plaintextLen).toString('hex'), i.plaintext);
          // One flipped tag bit: AuthFail (no exception on either path), and the window is untouched.
          const bad = Buffer.from(d);
          bad[bad.length - 1]! ^= 0x80;
          const rx2 = new WireRx({ psk, from: i.from_id, to: i.to_id, obfuscate });
          const code = obfuscate && !rx2.matches(bad, bad.length) ? RxCode.Malformed : rx2.open(bad, bad.length, plain);
          assert.ok(code === RxCode.AuthFail || code === RxCode.Malformed, `${v.name}: tampered datagram gave ${code}`);
          assert.equal(rx2.open(d, d.length, plain), RxCode.Accept);
        }
      }
      for (const c of file.receiver_cases) {
        const init = BigInt(c.init_epoch);
        const rx = new WireRx({ psk: hex(c.link.psk), from: c.link.from_id, to: c.link.to_id, obfuscate: false, ...(init === 0n ? {} : { epoch: init }) });
        const out = Buffer.alloc(MAX_PLAINTEXT);
        for (const step of c.steps) {
          const d = hex(step.datagram);
          const code = rx.open(d, d.length, out);
          assert.equal(code === RxCode.Accept ? 'accept' : 'drop', step.expect, `${c.name}: ${step.note}`);
          assert.equal(rx.epoch, BigInt(step.epoch_after), `${c.name}: ${step.note}`);
        }
      }
    } finally {
      selectSodiumPath('binding');
    }
  });
}

test('every way a payload reaches the cipher seals the same bytes, and opens from uncached buffers', () => {
  const psk = Buffer.alloc(32, 0x21);
  const epoch = MIN_EPOCH + 5n;
  for (const size of [0, 1, 64, TX_COPY_MAX, TX_COPY_MAX + 1, 1400]) {
    const payload = Buffer.alloc(size);
    for (let j = 0; j < size; j++) payload[j] = (j * 7 + size) & 0xff;
    const ref = new WireTx({ psk, from: 3, to: 4, epoch });
    const want = Buffer.alloc(MAX_DATAGRAM);
    const n = ref.sealWithSeq(9n, payload, 0, size, want);
    const tx = new WireTx({ psk, from: 3, to: 4, epoch });
    const out = Buffer.alloc(MAX_DATAGRAM);
    // Fresh buffers each time: never adopted by the view cache (the copy / fresh-view paths).
    for (let k = 0; k < 3; k++) {
      const src = Buffer.alloc(size + 11);
      payload.copy(src, 11);
      out.fill(0xaa);
      assert.equal(tx.sealWithSeq(9n, src, 11, size, out), n);
      assert.ok(out.subarray(0, n).equals(want.subarray(0, n)), `size ${size}, fresh source ${k}`);
    }
    // The same buffer again and again (cached), and in place inside `out`, and inside `out` at another offset.
    const fixed = Buffer.from(payload);
    for (let k = 0; k < 3; k++) {
      assert.equal(tx.sealWithSeq(9n, fixed, 0, size, out), n);
      assert.ok(out.subarray(0, n).equals(want.subarray(0, n)), `size ${size}, fixed source ${k}`);
    }
    payload.copy(out, HEADER_LEN);
    assert.equal(tx.sealWithSeq(9n, out, HEADER_LEN, size, out), n);
    assert.ok(out.subarray(0, n).equals(want.subarray(0, n)), `size ${size}, in place`);
    payload.copy(out, 3);
    assert.equal(tx.sealWithSeq(9n, out, 3, size, out), n);
    assert.ok(out.subarray(0, n).equals(want.subarray(0, n)), `size ${size}, inside out at offset 3`);
    // Opened from fresh buffers each time (small ones via the receive scratch).
    const rx = new WireRx({ psk, from: 3, to: 4 });
    const pt = Buffer.alloc(MAX_PLAINTEXT);
    for (let k = 0; k < 2; k++) {
      const d = Buffer.from(want.subarray(0, n));
      const r = rx.open(d, n, pt);
      assert.equal(r, k === 0 ? RxCode.Accept : RxCode.Replay, `size ${size}, open ${k}`);
      if (k === 0) assert.ok(pt.subarray(0, rx.plaintextLen).equals(payload));
    }
  }
});
