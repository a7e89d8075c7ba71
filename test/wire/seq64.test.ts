// The wire `seq` is a full u64: the replay window and the receive path take
// sequence numbers above 2^53 (as two 32-bit halves), stay exact across the
// 2^32 and 2^53 steps and up to 2^64 - 1, and allocate nothing per packet;
// `debug wire seal/open` accept and print any u64 sequence number.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { MAX_DATAGRAM, MAX_PLAINTEXT, MAX_SEQ, MIN_EPOCH, REPLAY_WINDOW, ReplayWindow, RxCode, WireRx, WireTx } from '../../src/wire/index.js';

const U64_MAX = (1n << 64n) - 1n;
const hi = (s: bigint): number => Number(s >> 32n);
const lo = (s: bigint): number => Number(s & 0xffffffffn);

test('MAX_SEQ is 2^64 - 1', () => {
  assert.equal(MAX_SEQ, U64_MAX);
});

for (const top of [1n << 32n, (1n << 32n) + 5n, (1n << 32n) + 1000n, 1n << 53n, (1n << 53n) + 1n, (1n << 63n) + 31n, U64_MAX - 32n, U64_MAX]) {
  test(`window edges at top ${top}`, () => {
    const w = new ReplayWindow();
    const acc = (s: bigint): boolean => w.acceptHiLo(hi(s), lo(s));
    assert.equal(acc(top), true);
    assert.equal(w.highest, top);
    assert.equal(acc(top - BigInt(REPLAY_WINDOW)), false, 'one past the edge is too old');
    assert.equal(acc(top - BigInt(REPLAY_WINDOW) + 1n), true, 'the oldest tracked slot');
    assert.equal(acc(top - BigInt(REPLAY_WINDOW) + 1n), false, 'and only once');
    assert.equal(acc(top - 1n), true);
    assert.equal(acc(top - 1n), false);
    assert.equal(acc(top), false);
    // Far below (a whole high step or more): too old, not a wrap-around.
    if (top >= 1n << 32n) assert.equal(acc(top - (1n << 32n)), false);
    assert.equal(acc(0n), false);
  });
}

test('crossing 2^32 one by one keeps every number exactly once', () => {
  const w = new ReplayWindow();
  const start = (1n << 32n) - 2n * BigInt(REPLAY_WINDOW);
  for (let s = start; s < start + 4n * BigInt(REPLAY_WINDOW); s++) assert.equal(w.acceptHiLo(hi(s), lo(s)), true, `seq ${s}`);
  const top = start + 4n * BigInt(REPLAY_WINDOW) - 1n;
  for (let s = top; s > top - BigInt(REPLAY_WINDOW); s--) assert.equal(w.acceptHiLo(hi(s), lo(s)), false, `replayed ${s}`);
  assert.equal(w.highest, top);
});

test('a jump across 2^32 clears exactly the words it passes', () => {
  const win = BigInt(REPLAY_WINDOW);
  for (const jump of [1n, 31n, 32n, 33n, win - 1n, win, win + 1n, 2n * win - 1n, 2n * win, 2n * win + 1n]) {
    const w = new ReplayWindow();
    const base = (1n << 32n) - 600n;
    for (let s = base - win - 76n; s <= base; s++) w.accept(s);
    const top = base + jump;
    assert.equal(w.accept(top), true);
    for (let s = top - BigInt(REPLAY_WINDOW) + 1n; s < top; s++) {
      assert.equal(w.accept(s), s > base, `jump ${jump}, seq ${s}`);
    }
  }
});

test('near 2^64: the last numbers are accepted once, no wrap to 0', () => {
  const w = new ReplayWindow();
  for (let s = U64_MAX - 3000n; s <= U64_MAX; s += 3n) assert.equal(w.accept(s), true);
  assert.equal(w.highest, U64_MAX);
  assert.equal(w.accept(U64_MAX), false);
  assert.equal(w.accept(U64_MAX - 1n), true);
  assert.equal(w.accept(U64_MAX - 3n), false);
  assert.equal(w.accept(0n), false);
  assert.equal(w.accept(1023n), false);
});

test('random 64-bit traffic agrees with an exact bigint model', () => {
  let state = 0x1234567;
  const rnd = (n: number): number => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % n;
  };
  for (const base of [(1n << 32n) - 3000n, (1n << 53n) - 3000n, (1n << 63n) - 1500n, U64_MAX - 40_000n]) {
    const w = new ReplayWindow();
    const seen = new Set<bigint>();
    let top = 0n;
    let any = false;
    for (let i = 0; i < 20_000; i++) {
      const r = rnd(100);
      let seq: bigint;
      if (r < 2) seq = (any ? top : base) + BigInt(rnd(4 * REPLAY_WINDOW));
      else if (r < 12) seq = (any ? top : base) - BigInt(rnd(REPLAY_WINDOW + 50));
      else seq = (any ? top : base) + 1n - BigInt(rnd(40)) + BigInt(rnd(40));
      if (seq > U64_MAX) seq = U64_MAX - BigInt(rnd(10));
      const want: boolean = !seen.has(seq) && (!any || seq > top || top - seq < BigInt(REPLAY_WINDOW));
      assert.equal(w.acceptHiLo(hi(seq), lo(seq)), want, `base ${base} step ${i} seq ${seq} top ${top}`);
      if (want) {
        seen.add(seq);
        if (!any || seq > top) top = seq;
        any = true;
      }
    }
  }
});

// ---- through WireRx / WireTx ----

const psk = Buffer.alloc(32, 0x17);
const EPOCH = MIN_EPOCH + 77n;

function sealAt(seq: bigint, obfuscate: boolean): Buffer {
  const tx = new WireTx({ psk, from: 4, to: 8, epoch: EPOCH, obfuscate });
  const out = Buffer.alloc(MAX_DATAGRAM);
  const body = Buffer.from([0x45, 0, 0, 20, 1, 2, 3]);
  return Buffer.from(out.subarray(0, tx.sealWithSeq(seq, body, 0, body.length, out)));
}

for (const obfuscate of [false, true]) {
  test(`${obfuscate ? 'obfuscated' : 'plain'}: WireRx accepts sequence numbers above 2^53, exactly`, () => {
    const rx = new WireRx({ psk, from: 4, to: 8, obfuscate });
    const pt = Buffer.alloc(MAX_PLAINTEXT);
    for (const s of [(1n << 53n) + 1n, (1n << 53n) + 3n, (1n << 53n) + 2n, (1n << 60n), U64_MAX - 1n, U64_MAX]) {
      const d = sealAt(s, obfuscate);
      assert.equal(rx.open(d, d.length, pt), RxCode.Accept, `seq ${s}`);
      assert.equal(rx.lastSeq, s);
      assert.equal(rx.lastSeqHi, hi(s));
      assert.equal(rx.lastSeqLo, lo(s));
      assert.equal(rx.open(d, d.length, pt), RxCode.Replay, `replayed seq ${s}`);
    }
    // Far behind the top now.
    const old = sealAt((1n << 53n) + 4n, obfuscate);
    assert.equal(rx.open(old, old.length, pt), RxCode.Replay);
  });
}

test('WireTx counter carries from the low half into the high half', () => {
  const tx = new WireTx({ psk, from: 4, to: 8, epoch: EPOCH, obfuscate: false });
  // Move the counter next to 2^32 through its private halves (no public setter:
  // the data plane never chooses a counter). They hold signed 32-bit integers
  // with the bits of the unsigned halves (see WireTx).
  Object.assign(tx as unknown as { seqHi: number; seqLo: number }, { seqHi: 0, seqLo: 0xfffffffe | 0 });
  const rx = new WireRx({ psk, from: 4, to: 8, obfuscate: false });
  const out = Buffer.alloc(MAX_DATAGRAM);
  const pt = Buffer.alloc(MAX_PLAINTEXT);
  for (const want of [0xfffffffen, 0xffffffffn, 1n << 32n, (1n << 32n) + 1n]) {
    assert.equal(tx.nextSeq, want);
    const n = tx.sealKeepalive(out);
    assert.equal(rx.open(out, n, pt), RxCode.Accept);
    assert.equal(rx.lastSeq, want);
  }
  Object.assign(tx as unknown as { seqHi: number; seqLo: number }, { seqHi: 0xffffffff | 0, seqLo: 0xffffffff | 0 });
  tx.sealKeepalive(out);
  assert.throws(() => tx.sealKeepalive(out), /sequence space exhausted/);
});

// ---- no allocation per packet ----

/** Runs `fn` after a full GC and reports the scavenges it caused and its heap growth. */
async function allocationsOf(fn: () => void): Promise<{ gcs: number; grew: number }> {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  fn(); // warm up (compile, feedback vectors)
  const entries: number[] = [];
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) entries.push(e.startTime);
  });
  obs.observe({ entryTypes: ['gc'] });
  gc();
  await new Promise((r) => setTimeout(r, 20));
  const t0 = performance.now();
  const before = v8.getHeapStatistics().used_heap_size;
  fn();
  const grew = v8.getHeapStatistics().used_heap_size - before;
  const t1 = performance.now();
  await new Promise((r) => setTimeout(r, 50));
  obs.disconnect();
  return { gcs: entries.filter((t) => t >= t0 && t <= t1).length, grew };
}

test('the replay window allocates nothing per packet, above 2^53 too', async () => {
  const w = new ReplayWindow();
  let h = 0x00300000;
  let l = 0xfffff000;
  const r = await allocationsOf(() => {
    for (let i = 0; i < 2_000_000; i++) {
      w.acceptHiLo(h, l);
      w.acceptHiLo(h, (l - 7) >>> 0);
      if (l === 0xffffffff) {
        l = 0;
        h++;
      } else l++;
    }
  });
  assert.equal(r.gcs, 0, `garbage collections during 4M window checks (heap grew ${r.grew} bytes)`);
  assert.ok(r.grew < 256 * 1024, `heap grew ${r.grew} bytes`);
});

test('WireRx.open allocates nothing per packet for seq above 2^53', async () => {
  const rx = new WireRx({ psk, from: 4, to: 8, obfuscate: false });
  const pt = Buffer.alloc(MAX_PLAINTEXT);
  const dgrams = Array.from({ length: 64 }, (_, i) => sealAt((1n << 60n) + BigInt(i), false));
  const codes = new Uint32Array(8);
  const r = await allocationsOf(() => {
    for (let i = 0; i < 20_000; i++) {
      const d = dgrams[i & 63]!;
      codes[rx.open(d, d.length, pt)]!++;
    }
  });
  assert.equal(r.gcs, 0, `garbage collections during 20k opens (heap grew ${r.grew} bytes)`);
  // 64 accepted (in the warm-up run), every other open a replay: none malformed.
  assert.equal(codes[RxCode.Accept], 64);
  assert.equal(codes[RxCode.Replay], 2 * 20_000 - 64);
});

// ---- debug wire CLI ----

const repo = fileURLToPath(new URL('../../', import.meta.url));
function larktun(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'test/wire/cli-entry.ts', ...args], { cwd: repo, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('debug wire seal/open round-trip seq 2^53 + 1 and 2^64 - 1', () => {
  const base = ['--psk', psk.toString('hex'), '--from', '4', '--to', '8'];
  for (const seq of [(1n << 53n) + 1n, U64_MAX]) {
    for (const obf of [[], ['--obfuscate']]) {
      const s = larktun('debug', 'wire', 'seal', ...base, '--epoch', EPOCH.toString(), '--seq', seq.toString(), '--payload', 'abcd', ...obf);
      assert.equal(s.code, 0, s.stderr);
      const o = larktun('debug', 'wire', 'open', ...base, '--datagram', s.stdout.trim(), ...obf);
      assert.equal(o.code, 0, o.stderr);
      assert.deepEqual(JSON.parse(o.stdout), { keepalive: false, epoch: EPOCH.toString(), seq: seq.toString(), payload: 'abcd' });
    }
  }
  const over = larktun('debug', 'wire', 'seal', ...base, '--epoch', EPOCH.toString(), '--seq', (U64_MAX + 1n).toString());
  assert.equal(over.code, 2);
  assert.match(over.stderr, /--seq must be a decimal integer in 1\.\.18446744073709551615/);
});
