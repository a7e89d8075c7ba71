// A node's peers: an immutable, ascending list of node ids that is a view of
// a shared id vector, minus at most one id (the node itself).
//
// Nodes with the same rule memberships have the same peer union (compile.ts,
// SigData); most of them are members of it and must not list themselves. A
// plain array per node would copy the union once per node (thousands of ids,
// hundreds of nodes per join); a PeerList shares the union's vector and only
// remembers where the node's own id sits. The vector is a typed array, so
// the garbage collector neither scans nor copies its contents.
//
// To readers a PeerList is an ascending, read-only list of numbers: length,
// at(), iteration, includes(), some()/every()/filter()/map()/forEach(),
// equals(), toArray(); JSON.stringify writes it as an array.

/** Ascending node ids (Int32Array when they fit, as node ids do; Float64Array otherwise). */
export type IdVec = Int32Array | Float64Array;

const EMPTY_VEC: IdVec = new Int32Array(0);

/** A vector for ascending ids from `lo` to `hi`. */
function vecFor(n: number, lo: number, hi: number): IdVec {
  return n === 0 || (lo >= -0x80000000 && hi <= 0x7fffffff && Number.isInteger(lo) && Number.isInteger(hi)) ? new Int32Array(n) : new Float64Array(n);
}

/**
 * Per buffer: how many elements from its start some vector uses. A vector
 * that ends there may grow in place into the spare capacity after it (the
 * new vector is a longer view of the same buffer; the shorter views keep
 * their length and contents), so appending ids above every present one,
 * as joins do (new node ids are the largest), writes only the new ids.
 */
const used = new WeakMap<ArrayBufferLike, number>();

/** The position of `id` in an ascending vector, or -1. */
function find(v: IdVec, id: number): number {
  let lo = 0;
  let hi = v.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const x = v[mid]!;
    if (x === id) return mid;
    if (x < id) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

class PeerIterator implements IterableIterator<number> {
  private i = 0;
  private readonly n: number;
  constructor(
    private readonly base: IdVec,
    private readonly cut: number,
  ) {
    this.n = base.length;
  }
  next(): IteratorResult<number, undefined> {
    let i = this.i;
    if (i === this.cut) i++;
    if (i >= this.n) {
      this.i = i;
      return { done: true, value: undefined };
    }
    this.i = i + 1;
    return { done: false, value: this.base[i]! };
  }
  [Symbol.iterator](): IterableIterator<number> {
    return this;
  }
}

export class PeerList implements Iterable<number> {
  static readonly EMPTY = new PeerList(EMPTY_VEC, 0);

  /**
   * The shared ascending vector this list is a view of (other lists may
   * share it; never write to it). Exposed for identity checks and for
   * counting the storage an update allocates.
   */
  readonly base: IdVec;
  /** Index in `base` of the one id left out; `base.length` when none is. */
  readonly cut: number;
  readonly length: number;

  private constructor(base: IdVec, cut: number) {
    this.base = base;
    this.cut = cut;
    this.length = cut < base.length ? base.length - 1 : base.length;
  }

  /** A list of the given ids (any order, duplicates allowed). */
  static of(ids: ArrayLike<number> | Iterable<number>): PeerList {
    const a = Array.from(ids as ArrayLike<number>).sort((x, y) => x - y);
    let w = 0;
    for (let i = 0; i < a.length; i++) if (i === 0 || a[i] !== a[w - 1]) a[w++] = a[i]!;
    a.length = w;
    return PeerList.wrap(PeerList.vec(a));
  }

  /** An ascending, duplicate-free array as a vector (copied). */
  static vec(sorted: ArrayLike<number>): IdVec {
    const n = sorted.length;
    if (n === 0) return EMPTY_VEC;
    const v = vecFor(n, sorted[0]!, sorted[n - 1]!);
    for (let i = 0; i < n; i++) v[i] = sorted[i]!;
    return v;
  }

  /** A vector of `n` slots for ascending ids from `lo` to `hi` (filled by the caller). */
  static alloc(n: number, lo: number, hi: number): IdVec {
    return n === 0 ? EMPTY_VEC : vecFor(n, lo, hi);
  }

  /** The whole of an ascending, duplicate-free vector (taken over, not copied: never write to it afterwards). */
  static wrap(base: IdVec): PeerList {
    return base.length === 0 ? PeerList.EMPTY : new PeerList(base, base.length);
  }

  /** This list without `id`: the same object when `id` is not in it. */
  without(id: number): PeerList {
    const k = find(this.base, id);
    if (k < 0 || k === this.cut) return this;
    if (this.cut < this.base.length) {
      // Already missing one id: copy without both (not needed by the compiler, kept for completeness).
      const out: number[] = [];
      for (let i = 0; i < this.base.length; i++) if (i !== k && i !== this.cut) out.push(this.base[i]!);
      return PeerList.wrap(PeerList.vec(out));
    }
    return new PeerList(this.base, k);
  }

  /**
   * This list plus ascending, duplicate-free `add`: a new vector with spare
   * capacity, or (when every added id is above the present ones and the
   * vector's buffer has room after it) a longer view of the same buffer.
   */
  merged(add: readonly number[]): PeerList {
    if (add.length === 0) return this;
    const a = this.base;
    const cut = this.cut;
    const n = this.length + add.length;
    const lo = Math.min(this.length > 0 ? this.at(0)! : add[0]!, add[0]!);
    const hi = Math.max(this.length > 0 ? this.at(this.length - 1)! : add[add.length - 1]!, add[add.length - 1]!);
    if (
      cut === a.length &&
      a.length > 0 &&
      add[0]! > a[a.length - 1]! &&
      a.byteOffset === 0 &&
      used.get(a.buffer) === a.length &&
      a.buffer.byteLength >= n * a.BYTES_PER_ELEMENT &&
      (a instanceof Float64Array || (hi <= 0x7fffffff && Number.isInteger(hi)))
    ) {
      const grown: IdVec = a instanceof Int32Array ? new Int32Array(a.buffer, 0, n) : new Float64Array(a.buffer, 0, n);
      for (let j = 0; j < add.length; j++) grown[a.length + j] = add[j]!;
      used.set(a.buffer, n);
      return new PeerList(grown, n);
    }
    // Room to grow by an eighth in place.
    const cap = n + Math.max(16, n >> 3);
    const out = vecFor(cap, lo, hi);
    const na = a.length;
    const nb = add.length;
    let i = 0;
    let j = 0;
    let w = 0;
    while (i < na && j < nb) {
      if (i === cut) {
        i++;
        continue;
      }
      const x = a[i]!;
      const y = add[j]!;
      if (x < y) {
        out[w++] = x;
        i++;
      } else if (y < x) {
        out[w++] = y;
        j++;
      } else {
        out[w++] = x;
        i++;
        j++;
      }
    }
    for (; i < na; i++) if (i !== cut) out[w++] = a[i]!;
    while (j < nb) out[w++] = add[j++]!;
    const view: IdVec = out instanceof Int32Array ? new Int32Array(out.buffer, 0, w) : new Float64Array(out.buffer, 0, w);
    used.set(out.buffer, w);
    return new PeerList(view, w);
  }

  at(i: number): number | undefined {
    if (i < 0) i += this.length;
    if (i < 0 || i >= this.length) return undefined;
    return this.base[i < this.cut ? i : i + 1];
  }

  /** Ascending position of `id`, or -1. */
  indexOf(id: number): number {
    const k = find(this.base, id);
    if (k < 0 || k === this.cut) return -1;
    return k < this.cut ? k : k - 1;
  }

  includes(id: number): boolean {
    const k = find(this.base, id);
    return k >= 0 && k !== this.cut;
  }

  has(id: number): boolean {
    return this.includes(id);
  }

  forEach(fn: (id: number, index: number) => void): void {
    const b = this.base;
    const cut = this.cut;
    let w = 0;
    for (let i = 0, n = b.length; i < n; i++) if (i !== cut) fn(b[i]!, w++);
  }

  some(fn: (id: number, index: number) => boolean): boolean {
    const b = this.base;
    const cut = this.cut;
    let w = 0;
    for (let i = 0, n = b.length; i < n; i++) if (i !== cut && fn(b[i]!, w++)) return true;
    return false;
  }

  every(fn: (id: number, index: number) => boolean): boolean {
    const b = this.base;
    const cut = this.cut;
    let w = 0;
    for (let i = 0, n = b.length; i < n; i++) if (i !== cut && !fn(b[i]!, w++)) return false;
    return true;
  }

  filter(fn: (id: number, index: number) => boolean): number[] {
    const out: number[] = [];
    const b = this.base;
    const cut = this.cut;
    let w = 0;
    for (let i = 0, n = b.length; i < n; i++) {
      if (i === cut) continue;
      const x = b[i]!;
      if (fn(x, w++)) out.push(x);
    }
    return out;
  }

  map<T>(fn: (id: number, index: number) => T): T[] {
    const out = new Array<T>(this.length);
    const b = this.base;
    const cut = this.cut;
    let w = 0;
    for (let i = 0, n = b.length; i < n; i++) {
      if (i === cut) continue;
      out[w] = fn(b[i]!, w);
      w++;
    }
    return out;
  }

  [Symbol.iterator](): IterableIterator<number> {
    return new PeerIterator(this.base, this.cut);
  }

  /** A new plain array of the ids. */
  toArray(): number[] {
    const out = new Array<number>(this.length);
    const b = this.base;
    const cut = this.cut;
    let w = 0;
    for (let i = 0, n = b.length; i < n; i++) if (i !== cut) out[w++] = b[i]!;
    return out;
  }

  toJSON(): number[] {
    return this.toArray();
  }

  /** Same ids (identity shortcuts first). */
  equals(o: PeerList): boolean {
    if (this === o) return true;
    if (this.length !== o.length) return false;
    if (this.base === o.base) return this.cut === o.cut || this.length === 0;
    const a = this.base;
    const b = o.base;
    let i = 0;
    let j = 0;
    for (let n = 0; n < this.length; n++) {
      if (i === this.cut) i++;
      if (j === o.cut) j++;
      if (a[i++] !== b[j++]) return false;
    }
    return true;
  }
}
