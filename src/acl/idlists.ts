// Ascending lists of ids (nodes, unit-rules): membership, unions, differences
// and in-place-free updates. Lists handed around are shared: treat them as
// read-only and build new ones to change them.
import { sortUnique } from './model.js';

export const NONE: readonly number[] = Object.freeze([]) as readonly number[];

const memberships = new WeakMap<readonly number[], (id: number) => boolean>();

/** O(1) membership test for an ascending id list (built once per list). */
export function membership(ids: readonly number[]): (id: number) => boolean {
  let f = memberships.get(ids);
  if (!f) {
    const max = ids.length > 0 ? ids[ids.length - 1]! : 0;
    if (ids.length <= 8) {
      f = (id: number): boolean => ids.includes(id);
    } else if (max < 50_000_000) {
      const bits = new Uint8Array(max + 1);
      for (const x of ids) bits[x] = 1;
      f = (id: number): boolean => id <= max && bits[id] === 1;
    } else {
      const set = new Set(ids);
      f = (id: number): boolean => set.has(id);
    }
    memberships.set(ids, f);
  }
  return f;
}

export function mergeSorted(lists: ReadonlyArray<readonly number[]>): number[] {
  if (lists.length === 0) return [];
  if (lists.length === 1) return lists[0]!.slice();
  let n = 0;
  for (let i = 0; i < lists.length; i++) n += lists[i]!.length;
  const out: number[] = new Array<number>(n);
  let w = 0;
  for (let i = 0; i < lists.length; i++) {
    const l = lists[i]!;
    for (let k = 0; k < l.length; k++) out[w++] = l[k]!;
  }
  return sortUnique(out);
}

/** Ascending union of ascending lists; shares the input when there is only one. */
export function unionOf(lists: ReadonlyArray<readonly number[]>): readonly number[] {
  if (lists.length === 0) return NONE;
  if (lists.length === 1) return lists[0]!;
  return mergeSorted(lists);
}

/** Ascending position of `id` in an ascending list (where it is or would be inserted). */
export function lowerBound(a: readonly number[], id: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid]! < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Sets whether `id` is in an ascending list; returns the same list when nothing changes. */
export function withMember(a: readonly number[], id: number, member: boolean): readonly number[] {
  const k = lowerBound(a, id);
  const present = a[k] === id;
  if (present === member) return a;
  const out = a.slice();
  if (member) out.splice(k, 0, id);
  else out.splice(k, 1);
  return out;
}

export interface Delta {
  readonly added: readonly number[];
  readonly removed: readonly number[];
}

export const NO_DELTA: Delta = { added: NONE, removed: NONE };

export const isNoDelta = (d: Delta): boolean => d.added.length === 0 && d.removed.length === 0;

export function sameIds(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function sameStrings(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  if (!a || !b) return a === b;
  return a === b || (a.length === b.length && a.every((x, i) => x === b[i]));
}

export function sameNums(a: readonly number[], b: readonly number[]): boolean {
  return a === b || (a.length === b.length && a.every((x, i) => x === b[i]));
}

/** Walks two ascending id lists, reporting ids only in `a` (added=false) or only in `b` (added=true). */
export function diffSorted(a: readonly number[], b: readonly number[], fn: (id: number, added: boolean) => void): void {
  if (a === b) return;
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i]! < b[j]!)) fn(a[i++]!, false);
    else if (i >= a.length || b[j]! < a[i]!) fn(b[j++]!, true);
    else {
      i++;
      j++;
    }
  }
}

export function symDiff(a: readonly number[], b: readonly number[], out: Set<number>): void {
  diffSorted(a, b, (x) => out.add(x));
}

export function sameList<T>(a: readonly T[], b: readonly T[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function addTo<K, V>(m: Map<K, Set<V>>, k: K, v: V): void {
  let s = m.get(k);
  if (!s) m.set(k, (s = new Set()));
  s.add(v);
}

export const ascending = (a: number, b: number): number => a - b;
