// Sets of IP addresses as sorted, disjoint, non-adjacent inclusive ranges per
// family. Immutable: every operation returns a new set. Canonical text for a
// range is the bare address (one address), the CIDR (aligned block) or "a-b".
import {
  type Family,
  type IPAddr,
  type Prefix,
  familyBits,
  familyMax,
  formatIP,
  parseIP,
  prefixLast,
  tryParsePrefix,
} from './addr.js';

export interface IPRange {
  readonly family: Family;
  readonly lo: bigint;
  readonly hi: bigint;
}

type Span = readonly [bigint, bigint];

function normalize(spans: Span[]): Span[] {
  if (spans.length <= 1) return spans.slice();
  const s = spans.slice().sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out: [bigint, bigint][] = [];
  for (const [lo, hi] of s) {
    const last = out[out.length - 1];
    if (last && lo <= last[1] + 1n) {
      if (hi > last[1]) last[1] = hi;
    } else {
      out.push([lo, hi]);
    }
  }
  return out;
}

function unionSpans(a: readonly Span[], b: readonly Span[]): Span[] {
  if (a.length === 0) return b.slice();
  if (b.length === 0) return a.slice();
  return normalize([...a, ...b]);
}

function intersectSpans(a: readonly Span[], b: readonly Span[]): Span[] {
  const out: Span[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const lo = a[i]![0] > b[j]![0] ? a[i]![0] : b[j]![0];
    const hi = a[i]![1] < b[j]![1] ? a[i]![1] : b[j]![1];
    if (lo <= hi) out.push([lo, hi]);
    if (a[i]![1] < b[j]![1]) i++;
    else j++;
  }
  return out;
}

function subtractSpans(a: readonly Span[], b: readonly Span[]): Span[] {
  const out: Span[] = [];
  let j = 0;
  for (const [alo, ahi] of a) {
    let lo = alo;
    while (j < b.length && b[j]![1] < lo) j++;
    let k = j;
    let done = false;
    while (k < b.length && b[k]![0] <= ahi) {
      const [blo, bhi] = b[k]!;
      if (blo > lo) out.push([lo, blo - 1n]);
      if (bhi >= ahi) {
        done = true;
        break;
      }
      lo = bhi + 1n;
      k++;
    }
    if (!done) out.push([lo, ahi]);
  }
  return out;
}

function overlapsSpans(a: readonly Span[], b: readonly Span[]): boolean {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i]![1] < b[j]![0]) i++;
    else if (b[j]![1] < a[i]![0]) j++;
    else return true;
  }
  return false;
}

function containsValue(spans: readonly Span[], v: bigint): boolean {
  let lo = 0;
  let hi = spans.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const s = spans[mid]!;
    if (v < s[0]) hi = mid - 1;
    else if (v > s[1]) lo = mid + 1;
    else return true;
  }
  return false;
}

/** Largest aligned block starting at lo that fits in [lo, hi]; returns its prefix length. */
function largestBlock(f: Family, lo: bigint, hi: bigint): number {
  const total = familyBits(f);
  let bits = total;
  while (bits > 0) {
    const size = 1n << BigInt(total - bits + 1);
    if (lo % size !== 0n || lo + size - 1n > hi) break;
    bits--;
  }
  return bits;
}

/** The prefix length when [lo, hi] is exactly one aligned block, else -1. */
export function rangeAsPrefixBits(f: Family, lo: bigint, hi: bigint): number {
  const bits = largestBlock(f, lo, hi);
  const size = 1n << BigInt(familyBits(f) - bits);
  return lo + size - 1n === hi ? bits : -1;
}

/** Canonical text: bare address, aligned CIDR, otherwise "a-b". */
export function formatRange(r: IPRange): string {
  const a = formatIP({ family: r.family, value: r.lo });
  if (r.lo === r.hi) return a;
  const bits = rangeAsPrefixBits(r.family, r.lo, r.hi);
  if (bits >= 0) return `${a}/${bits}`;
  return `${a}-${formatIP({ family: r.family, value: r.hi })}`;
}

/** "a-b" always (a single address stays bare). */
export function formatRangeAsRange(r: IPRange): string {
  const a = formatIP({ family: r.family, value: r.lo });
  if (r.lo === r.hi) return a;
  return `${a}-${formatIP({ family: r.family, value: r.hi })}`;
}

export class IPSet {
  private constructor(
    readonly v4: readonly Span[],
    readonly v6: readonly Span[],
  ) {}

  static readonly EMPTY = new IPSet([], []);

  static of(v4: Span[], v6: Span[]): IPSet {
    return new IPSet(normalize(v4), normalize(v6));
  }

  static fromRange(f: Family, lo: bigint, hi: bigint): IPSet {
    if (hi < lo) return IPSet.EMPTY;
    return f === 4 ? new IPSet([[lo, hi]], []) : new IPSet([], [[lo, hi]]);
  }

  static fromPrefix(p: Prefix): IPSet {
    return IPSet.fromRange(p.family, p.addr, prefixLast(p));
  }

  static fromAddr(a: IPAddr): IPSet {
    return IPSet.fromRange(a.family, a.value, a.value);
  }

  /** Parses "*", a bare address, a CIDR or an "a-b" range; null when invalid. */
  static parse(s: string): IPSet | null {
    if (s === '*') return IPSet.ALL;
    const dash = s.indexOf('-');
    if (dash > 0) {
      const a = parseIP(s.slice(0, dash));
      const b = parseIP(s.slice(dash + 1));
      if (!a || !b || a.family !== b.family || b.value < a.value) return null;
      return IPSet.fromRange(a.family, a.value, b.value);
    }
    const p = tryParsePrefix(s);
    return p ? IPSet.fromPrefix(p) : null;
  }

  static readonly ALL = new IPSet([[0n, familyMax(4)]], [[0n, familyMax(6)]]);

  static unionAll(sets: readonly IPSet[]): IPSet {
    const v4: Span[] = [];
    const v6: Span[] = [];
    for (const s of sets) {
      for (const x of s.v4) v4.push(x);
      for (const x of s.v6) v6.push(x);
    }
    return new IPSet(normalize(v4), normalize(v6));
  }

  isEmpty(): boolean {
    return this.v4.length === 0 && this.v6.length === 0;
  }

  union(o: IPSet): IPSet {
    if (o.isEmpty()) return this;
    if (this.isEmpty()) return o;
    return new IPSet(unionSpans(this.v4, o.v4), unionSpans(this.v6, o.v6));
  }

  intersect(o: IPSet): IPSet {
    return new IPSet(intersectSpans(this.v4, o.v4), intersectSpans(this.v6, o.v6));
  }

  subtract(o: IPSet): IPSet {
    if (o.isEmpty()) return this;
    return new IPSet(subtractSpans(this.v4, o.v4), subtractSpans(this.v6, o.v6));
  }

  overlaps(o: IPSet): boolean {
    return overlapsSpans(this.v4, o.v4) || overlapsSpans(this.v6, o.v6);
  }

  containsAddr(a: IPAddr): boolean {
    return containsValue(a.family === 4 ? this.v4 : this.v6, a.value);
  }

  containsValue(f: Family, v: bigint): boolean {
    return containsValue(f === 4 ? this.v4 : this.v6, v);
  }

  /** True when every address of `o` is in this set. */
  containsSet(o: IPSet): boolean {
    return o.subtract(this).isEmpty();
  }

  equals(o: IPSet): boolean {
    const eq = (a: readonly Span[], b: readonly Span[]): boolean =>
      a.length === b.length && a.every((x, i) => x[0] === b[i]![0] && x[1] === b[i]![1]);
    return eq(this.v4, o.v4) && eq(this.v6, o.v6);
  }

  ranges(): IPRange[] {
    const out: IPRange[] = [];
    for (const [lo, hi] of this.v4) out.push({ family: 4, lo, hi });
    for (const [lo, hi] of this.v6) out.push({ family: 6, lo, hi });
    return out;
  }

  /** Canonical strings, one per range, IPv4 first, ascending. */
  toStrings(): string[] {
    return this.ranges().map(formatRange);
  }

  /** Minimal CIDR decomposition, IPv4 first, ascending. */
  prefixes(): Prefix[] {
    const out: Prefix[] = [];
    for (const r of this.ranges()) {
      let lo = r.lo;
      while (lo <= r.hi) {
        const bits = largestBlock(r.family, lo, r.hi);
        out.push({ family: r.family, addr: lo, bits });
        const size = 1n << BigInt(familyBits(r.family) - bits);
        lo += size;
      }
    }
    return out;
  }

  toString(): string {
    return this.toStrings().join(',');
  }
}
