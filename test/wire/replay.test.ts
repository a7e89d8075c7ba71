// Anti-replay window unit tests, and the window as seen through WireRx
// (out-of-order delivery, epoch changes, old epochs dropped before decrypt).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  HEADER_LEN,
  MAX_DATAGRAM,
  MAX_PLAINTEXT,
  MIN_EPOCH,
  REPLAY_WINDOW,
  ReplayWindow,
  RxCode,
  WireRx,
  WireTx,
} from '../../src/wire/index.js';

test('window is at least the 64 entries the protocol requires', () => {
  assert.ok(REPLAY_WINDOW >= 64);
});

test('first number is accepted, duplicates are not', () => {
  const w = new ReplayWindow();
  assert.equal(w.isEmpty, true);
  assert.equal(w.accept(5), true);
  assert.equal(w.accept(5), false);
  assert.equal(w.highest, 5n);
  assert.equal(w.isEmpty, false);
  // Lower unseen numbers inside the window are fine, once.
  assert.equal(w.accept(1), true);
  assert.equal(w.accept(1), false);
  assert.equal(w.accept(0), true);
  assert.equal(w.accept(0), false);
});

test('window edges: exactly REPLAY_WINDOW numbers below the top are tracked', () => {
  for (const top of [REPLAY_WINDOW + 3, 5 * REPLAY_WINDOW + 8, 5 * REPLAY_WINDOW + 39, 5 * REPLAY_WINDOW + 40, 2 ** 40 + 17]) {
    const w = new ReplayWindow();
    assert.equal(w.accept(top), true);
    assert.equal(w.accept(top - REPLAY_WINDOW), false, `top ${top}: one past the edge is too old`);
    assert.equal(w.accept(top - REPLAY_WINDOW + 1), true, `top ${top}: the oldest tracked slot`);
    assert.equal(w.accept(top - REPLAY_WINDOW + 1), false, `top ${top}: and only once`);
    assert.equal(w.accept(top - 1), true);
    assert.equal(w.accept(top - 1), false);
    assert.equal(w.accept(top), false);
  }
});

test('advancing by one keeps every remembered number', () => {
  const w = new ReplayWindow();
  for (let s = 1; s <= 3 * REPLAY_WINDOW; s++) assert.equal(w.accept(s), true);
  const top = 3 * REPLAY_WINDOW;
  for (let s = top; s > top - REPLAY_WINDOW; s--) assert.equal(w.accept(s), false, `seq ${s} replayed`);
  assert.equal(w.accept(top - REPLAY_WINDOW), false, 'too old');
});

test('far-ahead jump forgets the old range and rejects it as too old', () => {
  const w = new ReplayWindow();
  for (let s = 1; s <= 100; s++) w.accept(s);
  const far = 100 + 10 * REPLAY_WINDOW + 7;
  assert.equal(w.accept(far), true);
  assert.equal(w.highest, BigInt(far));
  for (let s = 1; s <= 100; s++) assert.equal(w.accept(s), false);
  // Numbers between the old top and the new one that are still in the window
  // were never seen, so they are accepted — stale bits must not leak through.
  for (let s = far - REPLAY_WINDOW + 1; s < far; s++) assert.equal(w.accept(s), true, `seq ${s}`);
});

test('jumps just under and over one ring turn leave no stale bits', () => {
  for (const jump of [31, 32, 33, REPLAY_WINDOW - 1, REPLAY_WINDOW, REPLAY_WINDOW + 1, REPLAY_WINDOW + 32, REPLAY_WINDOW + 33]) {
    const w = new ReplayWindow();
    for (let s = 1; s <= REPLAY_WINDOW; s++) w.accept(s);
    const top = REPLAY_WINDOW + jump;
    assert.equal(w.accept(top), true);
    for (let s = top - REPLAY_WINDOW + 1; s < top; s++) {
      const seen = s <= REPLAY_WINDOW;
      assert.equal(w.accept(s), !seen, `jump ${jump}, seq ${s}`);
    }
  }
});

test('random reordering agrees with an exact model', () => {
  // Deterministic LCG so failures reproduce.
  let state = 0x2545f491;
  const rnd = (n: number): number => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % n;
  };
  const w = new ReplayWindow();
  const seen = new Set<number>();
  let top = 0;
  let seenAny = false;
  let base = 1;
  for (let i = 0; i < 50_000; i++) {
    const r = rnd(100);
    let seq: number;
    if (r < 2) seq = base + rnd(4 * REPLAY_WINDOW); // occasional jump
    else if (r < 10) seq = Math.max(0, top - rnd(REPLAY_WINDOW + 50)); // old or replay
    else seq = top + 1 - rnd(40) + rnd(40); // mostly forward, some reordering
    if (seq < 0) seq = 0;
    base = Math.max(base, seq);
    const expect: boolean = !seen.has(seq) && (!seenAny || seq > top || top - seq < REPLAY_WINDOW);
    assert.equal(w.accept(seq), expect, `step ${i}, seq ${seq}, top ${top}`);
    if (expect) {
      seen.add(seq);
      if (!seenAny || seq > top) top = seq;
      seenAny = true;
    }
  }
});

test('reset starts over', () => {
  const w = new ReplayWindow();
  w.accept(10);
  w.accept(11);
  w.reset();
  assert.equal(w.isEmpty, true);
  assert.equal(w.accept(10), true);
  assert.equal(w.accept(1), true);
});

// ---- through WireRx ----

const psk = Buffer.alloc(32, 0x42);
const E1 = MIN_EPOCH + 1_000n;
const E2 = MIN_EPOCH + 2_000n;
const E0 = MIN_EPOCH + 500n;

function sealer(epoch: bigint, obfuscate = false): (seq: number, body?: Buffer) => Buffer {
  const tx = new WireTx({ psk, from: 3, to: 9, epoch, obfuscate });
  return (seq, body = Buffer.from([0x45, 0, 0, 20])) => {
    const out = Buffer.alloc(MAX_DATAGRAM);
    const n = tx.sealWithSeq(seq, body, 0, body.length, out);
    return out.subarray(0, n);
  };
}

function opener(obfuscate = false, epoch?: bigint): (d: Buffer) => RxCode {
  const rx = new WireRx({ psk, from: 3, to: 9, obfuscate, ...(epoch === undefined ? {} : { epoch }) });
  const out = Buffer.alloc(MAX_PLAINTEXT);
  const f = (d: Buffer): RxCode => rx.open(d, d.length, out);
  return Object.assign(f, { rx });
}

for (const obfuscate of [false, true]) {
  const mode = obfuscate ? 'obfuscated' : 'plain';

  test(`${mode}: out-of-order delivery within 64 is accepted once`, () => {
    const seal = sealer(E1, obfuscate);
    const open = opener(obfuscate);
    const order: number[] = [];
    for (let s = 1; s <= 64; s++) order.push(s);
    // Deterministic shuffle.
    for (let i = order.length - 1; i > 0; i--) {
      const j = (i * 7919) % (i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const dgrams = new Map(order.map((s) => [s, seal(s)]));
    for (const s of order) assert.equal(open(dgrams.get(s)!), RxCode.Accept, `seq ${s}`);
    for (const s of order) assert.equal(open(dgrams.get(s)!), RxCode.Replay, `replayed seq ${s}`);
  });

  test(`${mode}: a packet older than the window is a replay drop`, () => {
    const seal = sealer(E1, obfuscate);
    const open = opener(obfuscate);
    const old = seal(1);
    assert.equal(open(seal(REPLAY_WINDOW + 5)), RxCode.Accept);
    assert.equal(open(old), RxCode.Replay);
  });

  test(`${mode}: a newer epoch resets the window; the old epoch is then refused before decrypt`, () => {
    const s1 = sealer(E1, obfuscate);
    const s2 = sealer(E2, obfuscate);
    const open = opener(obfuscate);
    const rx = (open as unknown as { rx: WireRx }).rx;
    const e1seq7 = s1(7);
    assert.equal(open(e1seq7), RxCode.Accept);
    assert.equal(rx.epoch, E1);
    assert.equal(open(s1(8)), RxCode.Accept);
    // Restarted sender: new epoch, seq from 1 again.
    assert.equal(open(s2(1)), RxCode.Accept);
    assert.equal(rx.epoch, E2);
    assert.equal(rx.lastSeq, 1n);
    assert.equal(open(s2(1)), RxCode.Replay);
    assert.equal(open(s2(2)), RxCode.Accept);
    // Anything from E1, even never-seen seqs, is an old epoch now.
    assert.equal(open(s1(9)), RxCode.OldEpoch);
    assert.equal(open(e1seq7), RxCode.OldEpoch);
    assert.equal(rx.epoch, E2);
  });

  test(`${mode}: old-epoch datagrams are dropped before any crypto`, () => {
    const s1 = sealer(E1, obfuscate);
    const s0 = sealer(E0, obfuscate);
    const open = opener(obfuscate);
    assert.equal(open(s1(1)), RxCode.Accept);
    // Corrupt the body and tag of an older-epoch datagram: had it been
    // decrypted, the result would be AuthFail; it must be OldEpoch instead.
    const d = Buffer.from(s0(50));
    if (!obfuscate) {
      for (let i = HEADER_LEN; i < d.length; i++) d[i]! ^= 0x5a;
      assert.equal(open(d), RxCode.OldEpoch);
    } else {
      // Under obfuscation the tag keys the header mask, so corrupt only the
      // ciphertext (the header still unmasks correctly).
      d[HEADER_LEN]! ^= 0xff;
      assert.equal(open(d), RxCode.OldEpoch);
    }
  });

  test(`${mode}: a forged newer epoch changes nothing`, () => {
    const s1 = sealer(E1, obfuscate);
    const s2 = sealer(E2, obfuscate);
    const open = opener(obfuscate);
    const rx = (open as unknown as { rx: WireRx }).rx;
    const first = s1(1);
    assert.equal(open(first), RxCode.Accept);
    const forged = Buffer.from(s2(1));
    forged[HEADER_LEN]! ^= 1; // ciphertext bit flip
    assert.equal(open(forged), RxCode.AuthFail);
    assert.equal(rx.epoch, E1, 'epoch not adopted');
    assert.equal(open(first), RxCode.Replay, 'window not reset');
    assert.equal(open(s1(2)), RxCode.Accept);
    // The genuine newer epoch still goes through afterwards.
    assert.equal(open(s2(1)), RxCode.Accept);
    assert.equal(rx.epoch, E2);
  });
}

test('preloaded epoch: older dropped, same accepted, newer adopted', () => {
  const open = opener(false, E1);
  const rx = (open as unknown as { rx: WireRx }).rx;
  assert.equal(rx.epoch, E1);
  assert.equal(open(sealer(E0)(1)), RxCode.OldEpoch);
  assert.equal(open(sealer(E1)(1)), RxCode.Accept);
  assert.equal(open(sealer(E2)(1)), RxCode.Accept);
  assert.equal(rx.epoch, E2);
});

test('WireTx counter starts at 1 and the receiver sees the same numbers', () => {
  const tx = new WireTx({ psk, from: 3, to: 9, epoch: E1, obfuscate: true });
  const rx = new WireRx({ psk, from: 3, to: 9, obfuscate: true });
  assert.equal(tx.nextSeq, 1n);
  const out = Buffer.alloc(MAX_DATAGRAM);
  const pt = Buffer.alloc(MAX_PLAINTEXT);
  const body = Buffer.from('inner packet');
  for (let s = 1; s <= 5; s++) {
    const n = tx.seal(body, 0, body.length, out);
    assert.equal(rx.open(out, n, pt), RxCode.Accept);
    assert.equal(rx.lastSeq, BigInt(s));
    assert.equal(pt.subarray(0, rx.plaintextLen).toString(), 'inner packet');
  }
  const k = tx.sealKeepalive(out);
  assert.equal(rx.open(out, k, pt), RxCode.Accept);
  assert.equal(rx.keepalive, true);
  assert.equal(rx.plaintextLen, 0);
  assert.equal(rx.lastSeq, 6n);
  assert.equal(tx.nextSeq, 7n);
});
