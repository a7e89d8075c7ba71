// PeerList (a node's peers as a view of a shared id vector) against a plain
// sorted array model, including growth in place into a shared buffer.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PeerList } from '../../src/acl/index.js';

const sortedUnique = (a: number[]): number[] => [...new Set(a)].sort((x, y) => x - y);

/** Every reader of a list agrees with the model array. */
function check(l: PeerList, want: number[]): void {
  assert.equal(l.length, want.length);
  assert.deepEqual(l.toArray(), want);
  assert.deepEqual([...l], want);
  assert.equal(JSON.stringify(l), JSON.stringify(want));
  const seen: number[] = [];
  l.forEach((x, i) => {
    assert.equal(i, seen.length);
    seen.push(x);
  });
  assert.deepEqual(seen, want);
  assert.deepEqual(l.map((x, i) => [x, i]), want.map((x, i) => [x, i]));
  assert.deepEqual(l.filter((x) => x % 2 === 0), want.filter((x) => x % 2 === 0));
  assert.equal(l.some((x) => x === want[0]), want.length > 0);
  assert.equal(l.every((x) => want.includes(x)), true);
  for (let i = 0; i < want.length; i++) {
    assert.equal(l.at(i), want[i]);
    assert.equal(l.indexOf(want[i]!), i);
    assert.ok(l.includes(want[i]!));
  }
  assert.equal(l.at(want.length), undefined);
  assert.equal(l.at(-1), want[want.length - 1]);
  // The public base/cut fields describe the same ids (the bench reads them directly).
  const direct: number[] = [];
  for (let i = 0; i < l.base.length; i++) if (i !== l.cut) direct.push(l.base[i]!);
  assert.deepEqual(direct, want);
}

describe('PeerList', () => {
  it('views a shared vector minus one id', () => {
    const all = PeerList.of([5, 1, 3, 3, 9]);
    check(all, [1, 3, 5, 9]);
    const no3 = all.without(3);
    check(no3, [1, 5, 9]);
    assert.equal(no3.base, all.base, 'shares the vector');
    assert.equal(all.without(4), all, 'an absent id gives the same list');
    check(no3.without(9), [1, 5]);
    check(no3.without(3), [1, 5, 9]);
    assert.ok(!no3.includes(3));
    assert.equal(no3.indexOf(3), -1);
    check(PeerList.EMPTY, []);
    check(PeerList.of([7]).without(7), []);
  });

  it('equals compares contents whatever the representation', () => {
    const a = PeerList.of([1, 2, 3]).without(1);
    const b = PeerList.of([2, 3]);
    const c = PeerList.of([2, 4]);
    assert.ok(a.equals(b) && b.equals(a));
    assert.ok(!a.equals(c) && !c.equals(a));
    assert.ok(!a.equals(PeerList.of([1, 2, 3])));
    assert.ok(PeerList.of([1, 2, 3]).without(2).equals(PeerList.of([1, 3, 4]).without(4)));
    assert.ok(!PeerList.of([1, 2, 3]).without(2).equals(PeerList.of([1, 2, 3]).without(3)));
  });

  it('grows in place for appended ids without changing earlier views', () => {
    let u = PeerList.of([1, 2, 3]).merged([4]);
    check(u, [1, 2, 3, 4]);
    const before = u;
    const viewBefore = before.without(2);
    u = u.merged([10, 11]);
    check(u, [1, 2, 3, 4, 10, 11]);
    assert.equal(u.base.buffer, before.base.buffer, 'same buffer');
    check(before, [1, 2, 3, 4]);
    check(viewBefore, [1, 3, 4]);
    // The older view is no longer the buffer's tip: merging into it copies.
    const fork = before.merged([7]);
    assert.notEqual(fork.base.buffer, before.base.buffer);
    check(fork, [1, 2, 3, 4, 7]);
    check(u, [1, 2, 3, 4, 10, 11]);
    // Ids in the middle copy too.
    const mid = u.merged([5]);
    check(mid, [1, 2, 3, 4, 5, 10, 11]);
    check(u, [1, 2, 3, 4, 10, 11]);
    // A view without an id merges into a new vector without it.
    check(u.without(3).merged([12]), [1, 2, 4, 10, 11, 12]);
  });

  it('keeps ids beyond 32 bits', () => {
    const big = 2 ** 40;
    const l = PeerList.of([big, 3, -2]);
    check(l, [-2, 3, big]);
    check(PeerList.of([1, 2]).merged([big]), [1, 2, big]);
    check(PeerList.of([1, 2]).merged([3]).merged([big]), [1, 2, 3, big]);
  });

  it('matches an array model under random merges and removals', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('merge' as const), ids: fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 6 }) }),
      fc.record({ kind: fc.constant('append' as const), n: fc.integer({ min: 1, max: 4 }) }),
      fc.record({ kind: fc.constant('without' as const), k: fc.nat() }),
      fc.record({ kind: fc.constant('back' as const), k: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 20 }), fc.array(op, { maxLength: 30 }), (init, ops) => {
        // Every list made so far with its model: none may change afterwards.
        const made: Array<[PeerList, number[]]> = [];
        let cur: [PeerList, number[]] = [PeerList.of(init), sortedUnique(init)];
        made.push(cur);
        for (const o of ops) {
          const [l, m] = cur;
          if (o.kind === 'merge') {
            const add = sortedUnique(o.ids);
            cur = [l.merged(add), sortedUnique([...m, ...add])];
          } else if (o.kind === 'append') {
            const top = m.length > 0 ? m[m.length - 1]! : 0;
            const add = Array.from({ length: o.n }, (_, i) => top + 1 + i);
            cur = [l.merged(add), [...m, ...add]];
          } else if (o.kind === 'without') {
            const id = m.length > 0 ? m[o.k % m.length]! : 0;
            cur = [l.without(id), m.filter((x) => x !== id)];
          } else {
            cur = made[o.k % made.length]!;
          }
          made.push(cur);
        }
        for (const [l, m] of made) {
          assert.deepEqual(l.toArray(), m);
          assert.ok(l.equals(PeerList.of(m)));
        }
      }),
      { numRuns: 300 },
    );
  });
});
